"""Every name exchanged between the ServerApp and the ClientApp: record names and config/metric keys.

One module for all of them, below every layer (``privacy/`` reads replies too, and must not import
``federation/``). Kebab-case, as Flower's own wire keys (``server-round``, ``num-examples``).
"""

# Records of a message's RecordDict.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# Train/evaluate config sent by the server.
PHASE = "phase"
LR = "lr"
SERVER_ROUND = "server-round"  # set by Flower's strategies
GLOBAL_ROUND = "global-round"  # round counted over all phases, seeds local shuffling
PROXIMAL_MU = "proximal-mu"  # set by Flower's FedProx
LAYER = "layer"  # pretrain: the hidden layer (0-based) this phase trains
FREEZE_DEPTH = "freeze-depth"  # finetune: hidden layers kept frozen this round (linear probe)
ADAPTIVE_FLAG = "dp-user-adaptive"  # user-level DP: the client runs Flower's adaptive clipping mod
# Train config on resume: one JSON history per partition id ("" = none), for clients that lost Context.state.
RESTORE_HISTORY = "dp-restore-history"

# Reply metrics.
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
PARTITION_ID = "partition-id"
DP_DECLINED = "dp-declined"  # 1 when the budget guard refused the round
DP_EPSILON = "dp-epsilon"  # the client's own figure; the server recomputes it from the history
DP_SIGMA = "dp-sigma"
DP_SAMPLE_RATE = "dp-q"
DP_STEPS = "dp-steps"
USER_DP_WEIGHT = "dp-weight"  # equal weights, required by Flower's user-level DP accounting

# The evidence a reply must carry to count as private under sample-level DP.
DP_EVIDENCE = (DP_DECLINED, DP_EPSILON, DP_SIGMA, DP_SAMPLE_RATE, DP_STEPS)

# A ConfigRecord in the train reply: the client's whole accountant history (ClientAccountant.state_dict()).
DP_HISTORY = "dp-history"

# The federation's data agreement, sent with every train and evaluate config (fedtrain.data.source.spec_to_config):
# a node reading its own file maps its labels onto these classes and scales with this normaliser.
DATA_CLASSES = "data-classes"  # list of class names, in label order
DATA_INPUT_SHAPE = "data-input-shape"  # list of ints, the model's input shape
NORM_METHOD = "norm-method"
NORM_SHAPE = "norm-shape"  # shape of shift and scale (sent flattened)
NORM_SHIFT = "norm-shift"
NORM_SCALE = "norm-scale"
NORM_CLIP = "norm-clip"  # absent: no clipping

# SecAgg+ (round-exchange secaggplus): the legacy fitins/fitres layout Flower's workflow and mod need.
SECAGG_KEYS = "secagg-keys"  # fitins.config: array names, in the order of fitins.parameters
SECAGG_CLIPPING_RANGE = "secagg-clipping-range"  # fitins.config: what the mod clips each scaled value to
SECAGG_MAX_WEIGHT = "secagg-max-weight"  # fitins.config: the weight a client's update is scaled against
SECAGG_CLIPPED = "secagg-clipped"  # fitres.metrics: values of this update the mod will clip
SECAGG_VALUES = "secagg-values"  # fitres.metrics: values in the update
SECAGG_LISTS = "secagg-lists"  # fitins.config: the train config's list entries, as JSON (legacy configs hold scalars)
