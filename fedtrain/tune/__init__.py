"""``fedtrain tune``: a hyperparameter search over config keys (Optuna), selecting on validation only.

The search states its own privacy cost: under sample-level DP, releasing the best trial is post-processing
of every trial, so the search spends the composition of all trials' histories per client
(:mod:`fedtrain.tune.privacy`).
"""

from fedtrain.tune.search import TuneResult, run_tune
from fedtrain.tune.space import Param, parse_space

__all__ = ["Param", "TuneResult", "parse_space", "run_tune"]
