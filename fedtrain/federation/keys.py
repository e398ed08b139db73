"""Names of the records and config entries exchanged between ServerApp and ClientApp.

Wire keys are kebab-case, as in Flower (``server-round``, ``num-examples``, ``proximal-mu``).
"""

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

PHASE = "phase"
LR = "lr"
SERVER_ROUND = "server-round"  # set by Flower's strategies
GLOBAL_ROUND = "global-round"  # round counted over all phases, seeds local shuffling
PROXIMAL_MU = "proximal-mu"  # set by Flower's FedProx
LAYER = "layer"  # pretrain: the hidden layer (0-based) this phase trains
FREEZE_DEPTH = "freeze-depth"  # finetune: hidden layers kept frozen this round (linear probe)

NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"

# Per-client reply fields the server reads one by one (not only aggregated); defined with the ledger.
from fedtrain.privacy.wire import (  # noqa: E402, F401  (re-exported: every wire key in one namespace)
    DP_DECLINED,
    DP_EPSILON,
    DP_HISTORY,
    DP_SAMPLE_RATE,
    DP_SIGMA,
    DP_STEPS,
    PARTITION_ID,
    USER_DP_WEIGHT,
)
