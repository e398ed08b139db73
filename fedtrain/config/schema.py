"""The typed run configuration: one dataclass per section, flat kebab-case keys.

Every setting is declared once here, with its default, type, allowed values and meaning.
The Flower app table (``[tool.flwr.app.config]`` in ``pyproject.toml``) and
``docs/configuration.md`` are generated from these declarations and a test keeps them equal.
A field ``learning_rate`` is the key ``learning-rate``; keys are unique across sections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fedtrain.registry import names_of

__all__ = [
    "DataConfig",
    "ExportConfig",
    "ModelConfig",
    "OutputConfig",
    "PartitionConfig",
    "PretrainConfig",
    "PrivacyConfig",
    "RunConfig",
    "RuntimeConfig",
    "StrategyConfig",
    "TrainConfig",
    "setting",
]


def setting(
    default: Any,
    help: str,
    *,
    choices: Sequence[str] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """Declare one configuration field with its meaning and allowed range.

    ``choices`` that name algorithms come from their registry (:func:`fedtrain.registry.names_of`),
    resolved when first read, so a new registry entry is a valid value without an edit here.
    """
    meta = {
        "help": help,
        "choices": choices,
        "low": low,
        "high": high,
        "low_open": low_open,
        "high_open": high_open,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is prepared."""

    dataset: str = setting(
        "digits",
        "`digits` (scikit-learn's 8x8 digits, embedded) or `file` (read `data-path`).",
        choices=("digits", "file"),
    )
    data_path: str = setting(
        "",
        "Path of the user data when `dataset=file`: a .npz (arrays x, y), a .csv, a folder "
        "with IDX files (MNIST format) or an image folder (one subfolder per class).",
    )
    data_format: str = setting(
        "auto",
        "Format of `data-path`; `auto` infers it from the suffix or folder contents.",
        choices=names_of("fedtrain.data.loaders:DATA_FORMATS", before=("auto",)),
    )
    label_column: str = setting("label", "Name of the label column in a CSV file.")
    test_fraction: float = setting(
        0.2,
        "Share of the data held out as the central test split (stratified).",
        low=0.0,
        high=0.9,
        low_open=True,
    )
    val_fraction: float = setting(
        0.1,
        "Share of the remaining data the server keeps for validation (early stopping, "
        "best checkpoint); 0: no validation split, the last round is reported and early stopping is off (the "
        "test split is never used to select).",
        low=0.0,
        high=0.5,
    )
    normalize: str = setting(
        "standard",
        "Input scaling, stored with the model: `standard` (z-score, clipped to +-5) and `minmax` (to [0, 1]) are "
        "fitted on the pooled training split; `range` divides by the format's nominal maximum (16 for digits, "
        "255 for images) and reads no data, so it costs no privacy; or `none`. Under DP the default is `range`, "
        "and `standard`/`minmax` need `dp-allow-unaccounted-statistics=true`. `dp-standard` (sample-level DP, "
        "simulation): the z-score from each client's clipped, Gaussian-noised sums of x and x^2, a release that "
        "spends `normalize-dp-share` of the budget and is composed into every client's accountant.",
        choices=("standard", "minmax", "range", "none", "dp-standard"),
    )
    normalize_dp_share: float = setting(
        0.1,
        "`normalize=dp-standard`: share of `dp-target-epsilon` the normalisation release spends on its own; DP-SGD's "
        "noise is calibrated so that both together stay within the budget.",
        low=0.0,
        high=1.0,
        low_open=True,
        high_open=True,
    )
    normalize_dp_clip: float = setting(
        4.0,
        "`normalize=dp-standard`: L2 bound on each record's (x, x^2) scaled by the input maximum (the release's "
        "sensitivity).",
        low=0.0,
        low_open=True,
    )
    label_noise: float = setting(
        0.0,
        "Share of training labels replaced by a different random class (experiments).",
        low=0.0,
        high=1.0,
        high_open=True,
    )
    class_keep: str = setting(
        "",
        "Class imbalance for experiments: `class:ratio` pairs, e.g. `0:0.1,3:0.5` keeps 10% "
        "of class 0 and 50% of class 3 in the training split. Empty keeps everything.",
    )
    data_source: str = setting(
        "partition",
        "Where data lives. `partition`: every process derives the whole federation's data from the seed "
        "(simulation; a node with `data-path` in its node config still reads only that file). `node`: each node "
        "reads the file at its node config's `data-path` and the server reads no client data (deployment).",
        choices=("partition", "node"),
    )
    server_data_path: str = setting(
        "",
        "With `data-source=node`: the server's own labelled file (npz, CSV, IDX or image folder, told apart by "
        "suffix or contents; e.g. `fedtrain split`'s "
        "`server-test.npz`). Central evaluation uses it (`val-fraction` of it for validation); without one "
        "central evaluation is skipped. Classes, input shape and normalisation come from it.",
    )
    input_shape: str = setting(
        "",
        "With `data-source=node` and no `server-data-path`: the model's input shape, e.g. `1,8,8` or `64`.",
    )
    classes: str = setting(
        "",
        "With `data-source=node`: the federation's class names in label order, comma-separated, e.g. "
        "`0,1,2,3,4,5,6,7,8,9`; required without `server-data-path`. Node files are mapped onto them by name.",
    )
    input_max: float = setting(
        0.0,
        "With `data-source=node` and no `server-data-path`: the inputs' nominal maximum for `normalize=range` "
        "(16 for digits, 255 for 8-bit images); 0: unknown.",
        low=0.0,
    )
    normalize_local: bool = setting(
        False,
        "With `data-source=node`: each node fits `normalize` on its own training records instead of applying the "
        "normaliser the server sends. Refused under DP (the statistics are outside the budget).",
    )


@dataclass(frozen=True)
class PartitionConfig:
    """How the training split is divided among clients."""

    num_clients: int = setting(10, "Number of clients (partitions, SuperNodes).", low=1)
    partitioner: str = setting(
        "dirichlet",
        "`iid`, `dirichlet` (label skew, see `dirichlet-alpha`), `pathological` "
        "(`classes-per-client` classes each) or `quantity-skew` (sizes ~ Dirichlet).",
        choices=names_of("fedtrain.data.partition:PARTITIONERS"),
    )
    dirichlet_alpha: float = setting(
        0.5,
        "Concentration of the label Dirichlet; smaller is more skewed.",
        low=0.0,
        low_open=True,
    )
    classes_per_client: int = setting(2, "Classes per client for `pathological`.", low=1)
    quantity_alpha: float = setting(
        1.0,
        "Concentration of the size Dirichlet for `quantity-skew`.",
        low=0.0,
        low_open=True,
    )
    min_partition_size: int = setting(
        10,
        "Smallest allowed client partition; skewed draws are repeated until it holds.",
        low=1,
    )
    labeled_fraction: float = setting(
        1.0,
        "Share of each client's training data that keeps its labels; fine-tuning uses only that part, "
        "pretraining uses all of it (the 'limited labelled data' setting).",
        low=0.0,
        high=1.0,
        low_open=True,
    )
    client_eval_fraction: float = setting(
        0.1,
        "Share of each client's partition kept for client-side evaluation.",
        low=0.0,
        high=0.5,
    )


@dataclass(frozen=True)
class ModelConfig:
    """The network the federation trains."""

    model: str = setting(
        "mlp",
        "`mlp`, `linear` (multinomial logistic regression: fewest parameters, suits DP at small epsilon) or `cnn` "
        "(small CNN with GroupNorm).",
        choices=names_of("fedtrain.models.zoo:MODELS"),
    )
    hidden_sizes: str = setting(
        "128,64",
        "MLP hidden layer widths, comma-separated; each is one addressable layer.",
    )
    activation: str = setting(
        "relu",
        "Hidden activation.",
        choices=names_of("fedtrain.models.layers:ACTIVATIONS"),
    )
    dropout: float = setting(0.0, "Dropout after each hidden layer.", low=0.0, high=1.0, high_open=True)
    residual: bool = setting(False, "Skip connections around hidden layers of equal width.")
    init: str = setting(
        "default",
        "Weight initialisation: torch's `default`, `xavier`, `kaiming` or `orthogonal`.",
        choices=names_of("fedtrain.models.layers:INITIALIZERS"),
    )
    cnn_channels: str = setting("16,32", "CNN convolution channels, comma-separated.")
    cnn_groups: int = setting(4, "GroupNorm groups per convolution (must divide its channels).", low=1)


@dataclass(frozen=True)
class TrainConfig:
    """Local training on each client."""

    local_epochs: int = setting(2, "Local epochs per round.", low=1)
    batch_size: int = setting(
        32,
        "Mini-batch size; 0 = full batch (gradient descent), 1 = single sample (SGD).",
        low=0,
    )
    optimizer: str = setting(
        "momentum",
        "Local optimizer.",
        choices=names_of("fedtrain.train.optimizers:OPTIMIZERS"),
    )
    learning_rate: float = setting(0.05, "Local learning rate (before the schedule).", low=0.0, low_open=True)
    momentum: float = setting(
        0.9, "Momentum for `momentum`, `nesterov` and `rmsprop`.", low=0.0, high=1.0, high_open=True
    )
    weight_decay: float = setting(0.0, "L2 penalty (decoupled for `adamw`).", low=0.0)
    l1: float = setting(0.0, "L1 penalty on weights.", low=0.0)
    lr_schedule: str = setting(
        "constant",
        "Learning rate against server round.",
        choices=names_of("fedtrain.train.schedules:SCHEDULES"),
    )
    lr_step_rounds: int = setting(10, "`step`: rounds between decays.", low=1)
    lr_gamma: float = setting(0.5, "`step`/`exponential`: decay factor.", low=0.0, high=1.0, low_open=True)
    warmup_rounds: int = setting(3, "`warmup`: rounds of linear warm-up, then constant.", low=0)
    clip_grad_norm: float = setting(0.0, "Clip the gradient norm to this value; 0 = off.", low=0.0)
    clip_grad_value: float = setting(0.0, "Clip each gradient entry to +-value; 0 = off.", low=0.0)
    label_smoothing: float = setting(0.0, "Label smoothing of the cross-entropy.", low=0.0, high=1.0, high_open=True)
    loss: str = setting(
        "cross-entropy",
        "Supervised loss: `cross-entropy`, or `gce` (generalized cross-entropy, Zhang & Sabuncu 2018), robust to "
        "label noise; both take `label-smoothing` and `class-weights`.",
        choices=names_of("fedtrain.train.losses:LOSSES"),
    )
    gce_q: float = setting(
        0.7,
        "`gce`: exponent q; towards 0 it is cross-entropy, 1 is mean absolute error.",
        low=0.0,
        high=1.0,
        low_open=True,
    )
    class_weights: str = setting(
        "none",
        "`balanced` weighs the loss by the client's inverse class frequency; under sample-level DP it needs "
        "`dp-allow-unaccounted-statistics=true` (the weights depend on all of the client's labels, outside "
        "DP-SGD's per-record clipping).",
        choices=("none", "balanced"),
    )
    augment: str = setting(
        "none",
        "Augment image-shaped inputs during local training: `shift` (random shifts of up to `augment-shift` pixels), "
        "`shift-rotate` (also rotations of up to `augment-rotation` degrees) or `none`.",
        choices=("none", "shift", "shift-rotate"),
    )
    augment_shift: float = setting(1.0, "`augment`: largest shift in pixels, each direction.", low=0.0)
    augment_rotation: float = setting(10.0, "`augment=shift-rotate`: largest rotation in degrees.", low=0.0, high=180.0)
    augment_multiplicity: int = setting(
        1,
        "`augment`: augmentations of each record per batch. Under sample-level DP their per-sample gradients are "
        "averaged before clipping (augmentation multiplicity, De et al. 2022), so privacy is unchanged.",
        low=1,
    )
    sampler: str = setting(
        "uniform",
        "`weighted` oversamples rare classes (class-balanced sampling with replacement); refused under "
        "sample-level DP, whose accounting assumes uniform Poisson sampling.",
        choices=("uniform", "weighted"),
    )


@dataclass(frozen=True)
class PretrainConfig:
    """Greedy layer-wise pretraining (plan phase `pretrain`): one federated phase per hidden layer."""

    pretrain_method: str = setting(
        "autoencoder",
        "How each hidden layer is trained: `autoencoder`, `denoising` (autoencoder on corrupted inputs) or `rbm` "
        "(restricted Boltzmann machine, contrastive divergence CD-k).",
        choices=names_of("fedtrain.pretrain.methods:METHODS"),
    )
    pretrain_rounds: int = setting(5, "Rounds per hidden layer.", low=1)
    pretrain_epochs: int = setting(1, "Local epochs per pretraining round.", low=1)
    pretrain_optimizer: str = setting(
        "adam",
        "Local optimizer while pretraining.",
        choices=names_of("fedtrain.train.optimizers:OPTIMIZERS"),
    )
    pretrain_learning_rate: float = setting(0.005, "Local learning rate while pretraining.", low=0.0, low_open=True)
    pretrain_batch_size: int = setting(32, "Mini-batch size while pretraining; 0 = full batch.", low=0)
    corruption: float = setting(
        0.3, "`denoising`: share of input features set to zero.", low=0.0, high=1.0, high_open=True
    )
    rbm_k: int = setting(1, "`rbm`: Gibbs steps of contrastive divergence (CD-k).", low=1)
    rbm_visible: str = setting(
        "auto",
        "`rbm`: visible units; `bernoulli` for inputs in [0, 1], `gaussian` (unit variance) for standardised "
        "inputs; `auto` picks from `normalize` for layer 1 and from `activation` above it.",
        choices=("auto", "bernoulli", "gaussian"),
    )
    freeze_rounds: int = setting(
        0, "Fine-tuning keeps the pretrained hidden layers frozen for this many rounds (linear probe).", low=0
    )


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy: sample-level (Opacus DP-SGD on clients) and user-level (Flower's DP wrappers)."""

    dp_level: str = setting(
        "none",
        "`sample` protects single records (DP-SGD on each client), `user` protects whole clients (clipped "
        "updates, server noise), `both` does both.",
        choices=("none", "sample", "user", "both"),
    )
    dp_defaults: bool = setting(
        True,
        "Under DP, the keys you did not set take DP-suited defaults (the table 'DP defaults' below) and a log "
        "line names them; false keeps every generic default (the refusals of statistics outside the budget "
        "still apply). With `flwr run`, a key set to its generic default counts as not set: set this to false "
        "to keep such a value.",
    )
    dp_defaults_applied: str = setting(
        "",
        "Written by fedtrain into the resolved `config.toml`: the keys that took a DP default, comma-separated "
        "(`none` when no key did). A config that holds it is final, so loading it again changes nothing; "
        "leave it empty.",
    )
    dp_allow_unaccounted_statistics: bool = setting(
        False,
        "Opt-in to private statistics that no accountant covers: under DP, `normalize=standard`/`minmax` "
        "(fitted on the pooled training data of all clients), `class-weights=balanced` (each client's label "
        "counts; sample-level DP), `fraction-evaluate>0` (unnoised client metrics) and the label-distribution "
        "plot are refused unless this is true. epsilon then does not cover them; summary.json lists them under "
        "`privacy.outside_budget`.",
    )
    dp_noise_seed: str = setting(
        "run",
        "Where DP noise and Poisson sampling get their seeds: `run` derives them from `seed` (reproducible, for "
        "experiments: anyone who knows `seed`, which summary.json records, can regenerate the noise); `os` takes "
        "them from the operating system's entropy (runs are not reproducible). Neither makes torch's or numpy's "
        "generator a CSPRNG.",
        choices=("run", "os"),
    )
    dp_target_epsilon: float = setting(
        3.0,
        "Sample-level budget per client for the whole run; sigma is calibrated to it unless "
        "`dp-noise-multiplier` is set, and a client declines a round that would pass it.",
        low=0.0,
        low_open=True,
    )
    dp_noise_multiplier: float = setting(
        0.0, "Sample-level noise multiplier sigma; 0 calibrates it from `dp-target-epsilon`.", low=0.0
    )
    dp_delta: float = setting(
        1e-5,
        "Sample-level delta; must be below 1/(records of the smallest client).",
        low=0.0,
        high=1.0,
        low_open=True,
        high_open=True,
    )
    dp_max_grad_norm: float = setting(1.0, "Per-sample gradient clipping norm C.", low=0.0, low_open=True)
    dp_accountant: str = setting(
        "rdp",
        "Accountant for sample-level epsilon: `rdp` (Renyi DP at whole orders) or `prv` (privacy random variables: "
        "a tighter bound on the same mechanism, so less noise for the same epsilon; the linear DP recipe's default).",
        choices=names_of("fedtrain.privacy.accountant:ACCOUNTANTS"),
    )
    dp_grad_sample_mode: str = setting(
        "auto",
        "How Opacus computes per-sample gradients; `auto` uses `ghost` for MLPs at batch >= 128, else `hooks`.",
        choices=("auto", "hooks", "ew", "ghost"),
    )
    dp_max_physical_batch_size: int = setting(
        0, "Split logical batches into physical ones of at most this size (memory); 0 = off.", low=0
    )
    dp_fix_model: bool = setting(
        False, "Let Opacus replace unsupported layers (BatchNorm -> GroupNorm, LSTM -> DPLSTM); off: refuse."
    )
    dp_user_clipping: str = setting(
        "server",
        "User-level DP wrapper: fixed clipping at the `server` or the `client`, or adaptive clipping "
        "(`adaptive-server`, `adaptive-client`).",
        choices=("server", "client", "adaptive-server", "adaptive-client"),
    )
    dp_user_noise_multiplier: float = setting(
        1.0, "User-level noise multiplier z (noise std = z * clip / sampled clients).", low=0.0, low_open=True
    )
    dp_user_clipping_norm: float = setting(
        1.0, "User-level clipping norm of a client update (initial norm when adaptive).", low=0.0, low_open=True
    )
    dp_user_delta: float = setting(
        1e-3, "User-level delta (should be below 1/num-clients).", low=0.0, high=1.0, low_open=True, high_open=True
    )
    dp_user_max_epsilon: float = setting(
        0.0, "User-level budget; the run stops before a round that would pass it. 0 = no limit.", low=0.0
    )


@dataclass(frozen=True)
class StrategyConfig:
    """Server-side aggregation and the plan of stages."""

    plan: str = setting(
        "finetune",
        "Stages to run in order, comma-separated: `pretrain` (one federated stage per hidden layer), `finetune`, "
        "`export`. `pretrain` comes before any `finetune`, `export` last; each of the two at most once (`finetune` "
        "may repeat: it continues training).",
    )
    round_exchange: str = setting(
        "message",
        "How a round's messages travel between server and clients: `message` (Flower's Message API, updates in "
        "the clear); `secaggplus` (secure aggregation); `vectorised` (in-process only: a fine-tuning round's "
        "clients trained together in one batched call, DP-SGD included, with the replies the ClientApp would "
        "send; what it does not cover trains on the ClientApp, with a log line saying why; see docs/simulation.md).",
        choices=names_of("fedtrain.federation.exchange:EXCHANGES"),
    )
    strategy: str = setting(
        "fedavg",
        "Aggregation strategy (Flower's own classes).",
        choices=names_of("fedtrain.aggregation.strategies:STRATEGIES"),
    )
    num_rounds: int = setting(30, "Rounds of the fine-tuning phase (an upper bound with early stopping).", low=1)
    fraction_train: float = setting(
        1.0, "Share of clients sampled for training each round.", low=0.0, high=1.0, low_open=True
    )
    fraction_evaluate: float = setting(
        0.5,
        "Share of clients sampled for client-side evaluation; 0 = off. Under DP the default is 0, and a value "
        "above 0 needs `dp-allow-unaccounted-statistics=true` (clients send unnoised metrics of their records).",
        low=0.0,
        high=1.0,
    )
    min_clients: int = setting(2, "Minimum clients per round (and that must be available).", low=1)
    proximal_mu: float = setting(0.01, "`fedprox`: weight of the proximal term mu/2 |w - w_global|^2.", low=0.0)
    server_learning_rate: float = setting(1.0, "`fedavgm`: server learning rate.", low=0.0, low_open=True)
    server_momentum: float = setting(0.9, "`fedavgm`: server momentum.", low=0.0, high=1.0, high_open=True)
    server_eta: float = setting(0.01, "`fedadam`/`fedyogi`: server learning rate.", low=0.0, low_open=True)
    server_tau: float = setting(0.001, "`fedadam`/`fedyogi`: adaptivity (epsilon).", low=0.0, low_open=True)
    server_averaging: str = setting(
        "none",
        "Average the global model's iterates at the server and evaluate, select, checkpoint and export the average "
        "(clients still train from the last iterate): `ema` (exponential moving average, `server-ema-decay`), "
        "`polyak` (mean of every iterate from `server-averaging-start`) or `none`. Post-processing of released "
        "models: costs no privacy.",
        choices=("none", "ema", "polyak"),
    )
    server_ema_decay: float = setting(
        0.9, "`server-averaging=ema`: decay per round (warmed up as min(decay, (1+n)/(10+n))).", low=0.0, high=1.0,
        high_open=True,
    )  # fmt: skip
    server_averaging_start: int = setting(
        1, "`server-averaging`: first round of each federated stage that enters the average.", low=1
    )
    trimmed_beta: float = setting(0.2, "`fedtrimmedavg`: share cut from each tail.", low=0.0, high=0.5, high_open=True)
    krum_malicious: int = setting(0, "`krum`: number of malicious clients tolerated.", low=0)
    early_stopping_patience: int = setting(
        0,
        "Stop after this many rounds without validation improvement; 0 = off.",
        low=0,
    )
    early_stopping_min_delta: float = setting(0.001, "Smallest accuracy gain that counts as improvement.", low=0.0)


@dataclass(frozen=True)
class RuntimeConfig:
    """How the federation is executed."""

    runtime: str = setting(
        "inprocess",
        "`inprocess` (no Ray, deterministic) or `simulation` (`flwr run .`, Ray).",
        choices=("inprocess", "simulation"),
    )
    seed: int = setting(0, "Seed for data splits, partitions, initialisation and sampling.", low=0)
    torch_threads: int = setting(1, "Torch threads per client process (1 is fastest for small models).", low=1)
    client_runtime: str = setting(
        "torch",
        "What trains on the clients: `torch` (torch + Opacus) or `onnx` (ONNX Runtime + numpy, "
        "gradient graphs the server publishes; no torch on the device, docs/edge.md). A node's config "
        "`client-runtime` overrides it for that node.",
        choices=("torch", "onnx"),
    )
    round_timeout: float = setting(3600.0, "Seconds the server waits for replies each round.", low=0.0, low_open=True)
    inprocess_workers: int = setting(
        1,
        "`inprocess`: processes that run a round's ClientApp calls at once (forked from the server; 2 on 2 cores "
        "trains 2 clients at a time); the run is the same with any number. 1 = in the server's process.",
        low=1,
    )


@dataclass(frozen=True)
class OutputConfig:
    """Where results go."""

    out_dir: str = setting("runs", "Folder that holds run folders.")
    run_name: str = setting("", "Suffix of the run folder name (letters, digits, `-`, `_`).")
    resume_dir: str = setting("", "Run folder to resume from its latest checkpoint; empty = new run.")
    progress: bool = setting(True, "Show a progress bar over rounds.")
    report: bool = setting(True, "Write PNG plots and report.html at the end.")


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation with Flower's SecAgg+ (see docs/secure-aggregation.md)."""

    secure_aggregation: bool = setting(
        False,
        "Mask every client update with SecAgg+ (Flower's protocol): the server learns only the weighted mean of "
        "the updates of each round, in every federated stage. Same as `round-exchange=secaggplus`.",
    )
    secagg_num_shares: float = setting(
        0.0,
        "Shares of each client's secrets (its neighbours in the protocol): a count (> 2), a fraction (<= 1) of the "
        "round's sampled clients, or 0 = automatic: every client up to 7, else 2 * ceil(log2 K) + 1 of K (the cost "
        "grows with the shares; SecAgg+ needs only logarithmically many).",
        low=0.0,
    )
    secagg_reconstruction_threshold: float = setting(
        0.5,
        "Shares needed to rebuild a lost client's mask: a count (< shares), or a fraction (<= 1) of the shares. "
        "More clients than shares minus threshold lost in a round halt it.",
        low=0.0,
        low_open=True,
    )
    secagg_clipping_range: float = setting(
        0.0,
        "Each value of a client's scaled update is clipped to +-this before quantisation; 0 = automatic, from the "
        "round's learning rate, the local steps and the gradient clipping. Clipped values are counted per round.",
        low=0.0,
    )
    secagg_quantization_range: int = setting(4194304, "Levels of the quantisation (2^22).", low=2)
    secagg_modulus_range: int = setting(
        4294967296, "Modulus of the masked sums: a power of two above the quantisation range (2^32).", low=2
    )
    secagg_max_weight: float = setting(
        0.0,
        "The weight (records) a client's update is scaled against before clipping; 0 = the largest client's "
        "training records (simulation) or 1000.",
        low=0.0,
    )
    secagg_timeout: float = setting(0.0, "Seconds each protocol stage waits for replies; 0 = round-timeout.", low=0.0)
    secagg_halt_policy: str = setting(
        "retry",
        "When a round's protocol halts (too many clients lost): `retry` it without the lost clients (twice at "
        "most), `skip` the round (the model stays), or `stop` the run.",
        choices=("retry", "skip", "stop"),
    )
    secagg_clipped_warning: float = setting(
        0.001, "Warn when more than this share of a round's update values were clipped.", low=0.0, high=1.0
    )


@dataclass(frozen=True)
class ExportConfig:
    """ONNX export for devices: the `export` stage of the plan and `fedtrain export` (see docs/export.md)."""

    export_formats: str = setting(
        "fp32,fp16,int8-static,int8-dynamic",
        "Comma-separated formats to write: `fp32`, `fp16` (fp32 inputs and outputs kept), `int8-static` (QDQ, "
        "activation ranges from `export-calibration`), `int8-dynamic` (weights only).",
    )
    export_ort: bool = setting(True, "Also write each format in ORT format (`.ort`, for minimal ONNX Runtime builds).")
    export_checkpoint: str = setting(
        "best",
        "Weights to export: `best` (the round selected by validation; the last round without a validation split) "
        "or `latest`.",
        choices=("best", "latest"),
    )
    export_calibration: str = setting(
        "server",
        "Where int8-static takes its activation ranges: `server` (the server's own validation split: no client "
        "data, nothing outside the DP budget) or `input-range` (samples drawn uniformly from the declared raw "
        "input range: data-independent, usually less accurate).",
        choices=("server", "input-range"),
    )
    export_calibration_samples: int = setting(
        200, "Calibration samples for int8-static (at most; at least 16 must be available).", low=16
    )
    export_max_accuracy_drop: float = setting(
        1.0,
        "Refuse to write a quantised or fp16 model whose test accuracy is more than this many points below fp32's.",
        low=0.0,
    )
    export_force: bool = setting(False, "Write every format even when its accuracy drop is over the threshold.")
    export_latency_calls: int = setting(
        1000, "Single-sample calls (1 thread) whose median is each format's latency; 0 skips the timing.", low=0
    )


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "partition": PartitionConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "pretrain": PretrainConfig,
    "privacy": PrivacyConfig,
    "strategy": StrategyConfig,
    "runtime": RuntimeConfig,
    "output": OutputConfig,
    "secagg": SecAggConfig,
    "export": ExportConfig,
}


@dataclass(frozen=True)
class RunConfig:
    """The whole run configuration: one frozen dataclass per section."""

    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    @property
    def exchange(self) -> str:
        """The round exchange that carries this run's rounds (``secure-aggregation`` selects SecAgg+)."""
        return "secaggplus" if self.secagg.secure_aggregation else self.strategy.round_exchange

    @property
    def phases(self) -> list[str]:
        """Phase names of the plan, in order (``pretrain`` stands for one phase per hidden layer)."""
        return [p.strip() for p in self.strategy.plan.split(",") if p.strip()]

    @property
    def num_hidden_layers(self) -> int:
        """Hidden layers of the model (layer-wise pretraining runs one phase for each)."""
        if self.model.model == "mlp":
            return len([h for h in self.model.hidden_sizes.split(",") if h.strip()])
        return len([c for c in self.model.cnn_channels.split(",") if c.strip()])

    @property
    def sample_dp(self) -> bool:
        """Whether clients run DP-SGD."""
        return self.privacy.dp_level in ("sample", "both")

    @property
    def user_dp(self) -> bool:
        """Whether the server wraps its strategy with Flower's user-level DP."""
        return self.privacy.dp_level in ("user", "both")

    def to_flat(self) -> dict[str, bool | int | float | str]:
        """Return the kebab-case ``key -> value`` mapping (Flower's run-config form)."""
        flat: dict[str, bool | int | float | str] = {}
        for section in SECTIONS:
            part = getattr(self, section)
            for f in dataclasses.fields(part):
                flat[f.name.replace("_", "-")] = getattr(part, f.name)
        return flat

    def replace(self, **changes: dict[str, Any]) -> RunConfig:
        """Return a copy with some fields of some sections changed."""
        updated = {name: dataclasses.replace(getattr(self, name), **kw) for name, kw in changes.items()}
        return dataclasses.replace(self, **updated)
