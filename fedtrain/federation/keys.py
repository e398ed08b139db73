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

NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
