"""Build a validated :class:`RunConfig` from defaults, a TOML file and ``key=value`` overrides.

All problems are collected before failing, so a user fixes a config in one pass.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedtrain.config.data_source import check_data_source, fitted_on_server_file
from fedtrain.config.dp_defaults import NONE_APPLIED, apply_dp_defaults, table_keys
from fedtrain.config.dp_recipes import check_dp_recipes
from fedtrain.config.export import check_export
from fedtrain.config.schema import SECTIONS, RunConfig
from fedtrain.config.secagg import check_secagg
from fedtrain.errors import ConfigError
from fedtrain.registry import names_of

__all__ = [
    "KNOWN_STAGES",
    "dump_toml",
    "flat_keys",
    "load_config",
    "parse_class_keep",
    "parse_int_list",
    "parse_overrides",
    "toml_value",
]

# Stages a plan may name: the stage registry's entries (read when a config is validated).
KNOWN_STAGES = names_of("fedtrain.federation.stages:STAGES")

_PAIR = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")


def flat_keys() -> dict[str, tuple[str, dataclasses.Field[Any]]]:
    """Map every kebab-case key to its section name and dataclass field."""
    keys: dict[str, tuple[str, dataclasses.Field[Any]]] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            key = f.name.replace("_", "-")
            if key in keys:  # pragma: no cover - guards the schema itself
                raise RuntimeError(f"config key {key!r} is declared twice")
            keys[key] = (section, f)
    return keys


def parse_overrides(text: str) -> dict[str, Any]:
    """Parse Flower's ``"key=value key2=value2"`` syntax.

    Values are TOML (``0.1``, ``true``, ``'text'``); unlike ``flwr run``, a bare word that is
    not valid TOML is taken as a string, so ``model=cnn`` works.
    """
    pairs = _PAIR.findall(text)
    leftover = _PAIR.sub("", text).strip()
    if leftover:
        raise ConfigError(
            f"cannot parse {leftover!r} in --run-config; use space-separated key=value pairs, "
            "e.g. \"num-rounds=5 model='cnn'\""
        )
    out: dict[str, Any] = {}
    twice: dict[str, list[str]] = {}
    for key, raw in pairs:
        if key in out:  # the last value would win silently: a typo or a copied line, never what was meant
            twice.setdefault(key, [_show(out[key])]).append(raw)
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except (tomllib.TOMLDecodeError, RecursionError):
            out[key] = raw
    if twice:
        raise ConfigError(
            [f"--run-config sets {key} {len(values)} times ({', '.join(values)}); give each key once" for key, values in
             twice.items()]
        )  # fmt: skip
    return out


def _show(value: Any) -> str:
    """A parsed override as the user wrote it (near enough for a message)."""
    return toml_value(value) if isinstance(value, (bool, int, float, str)) else repr(value)


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing .toml file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from None
    # Accept a whole pyproject.toml as well as a flat file of keys.
    table: Any = data
    for name in ("tool", "flwr", "app", "config"):
        table = table.get(name) if isinstance(table, dict) else None
    if isinstance(table, dict):
        data = table
    where = f"config file {str(path)!r}"
    keys = flat_keys()
    flat: dict[str, Any] = {}
    places: dict[str, str] = {}
    problems: list[str] = []

    def put(key: str, value: Any, place: str) -> None:
        if key in flat:
            problems.append(f"{where} sets {key} twice ({places[key]} and {place}); keep one")
        flat[key], places[key] = value, place

    for key, value in data.items():
        if not isinstance(value, dict):
            put(key, value, "as a flat key")
            continue
        if key not in SECTIONS:
            raise ConfigError(
                f"{where}: table [{key}] is not a section; use flat keys or one of the sections {', '.join(SECTIONS)}"
            )
        for inner, inner_value in value.items():
            # A key under the wrong heading would otherwise load silently (keys are unique across sections).
            if inner in keys and keys[inner][0] != key:
                problems.append(
                    f"{where}: {inner} is not a key of [{key}]; it belongs in [{keys[inner][0]}] (or write it as a "
                    "flat key above the first table)"
                )
            put(inner, inner_value, f"in [{key}]")
    if problems:
        raise ConfigError(problems)
    return flat


def _check_value(key: str, f: dataclasses.Field[Any], value: Any) -> tuple[Any, str | None]:
    """Coerce ``value`` to the field's type and check its range; return (value, problem)."""
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "bool": bool, "str": str}[f.type]
    meta = f.metadata
    if kind is bool:
        if not isinstance(value, bool):
            return value, f"{key}={value!r} must be true or false"
    elif kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            return value, f"{key}={value!r} must be an integer"
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, f"{key}={value!r} must be a number"
        try:
            value = float(value)
        except OverflowError:  # an integer too large for a float
            return (
                value,
                f"{key}={str(value)[:12]}... ({len(str(value))} digits) is too large for a number; give a finite value",
            )
        if not math.isfinite(value):
            # inf or nan would run to the end with a NaN loss in every round
            return value, f"{key}={value!r} is not a finite number; give a finite value"
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # `hidden-sizes=32` arrives as a TOML integer
    elif not isinstance(value, str):
        return value, f"{key}={value!r} must be a string (quote it: {key}='{value}')"
    if meta.get("choices") and value not in meta["choices"]:
        close = difflib.get_close_matches(str(value), meta["choices"], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return value, f"{key}={value!r} is not one of {', '.join(meta['choices'])}{hint}"
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value < low or (meta["low_open"] and value == low)):
        op = ">" if meta["low_open"] else ">="
        return value, f"{key}={value!r} is out of range: must be {op} {low}"
    if high is not None and (value > high or (meta["high_open"] and value == high)):
        op = "<" if meta["high_open"] else "<="
        return value, f"{key}={value!r} is out of range: must be {op} {high}"
    return value, None


def parse_int_list(key: str, text: str) -> list[int]:
    """Parse ``"128,64"`` into ``[128, 64]``; raise :class:`ConfigError` naming ``key``."""
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"{key}={text!r} must be comma-separated positive integers, e.g. '128,64'") from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"{key}={text!r} must be comma-separated positive integers, e.g. '128,64'")
    return values


def parse_class_keep(text: str) -> dict[int, float]:
    """Parse ``"0:0.1,3:0.5"`` into ``{0: 0.1, 3: 0.5}``."""
    keep: dict[int, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            cls, ratio = part.split(":")
            keep[int(cls)] = float(ratio)
        except ValueError:
            raise ConfigError(f"class-keep={text!r}: {part!r} must be class:ratio, e.g. '0:0.1,3:0.5'") from None
        if not 0.0 < keep[int(cls)] <= 1.0:
            raise ConfigError(f"class-keep={text!r}: ratio {ratio} for class {cls} must be in (0, 1]")
    return keep


def _cross_checks(cfg: RunConfig) -> list[str]:
    """Checks that involve more than one key."""
    problems: list[str] = []
    for check in (
        lambda: parse_int_list("hidden-sizes", cfg.model.hidden_sizes),
        lambda: parse_int_list("cnn-channels", cfg.model.cnn_channels),
        lambda: parse_class_keep(cfg.data.class_keep),
    ):
        try:
            check()
        except ConfigError as err:
            problems.extend(err.problems)
    if not problems and cfg.model.model == "cnn":
        bad = [c for c in parse_int_list("cnn-channels", cfg.model.cnn_channels) if c % cfg.model.cnn_groups]
        if bad:
            problems.append(f"cnn-groups={cfg.model.cnn_groups} must divide every cnn-channels value; {bad} do not")
    if cfg.strategy.min_clients > cfg.partition.num_clients:
        problems.append(
            f"min-clients={cfg.strategy.min_clients} is larger than num-clients={cfg.partition.num_clients}; "
            "the server would wait forever: lower min-clients"
        )
    if cfg.data.dataset == "file" and not cfg.data.data_path:
        problems.append(
            "dataset='file' needs data-path: set data-path='path/to/data.npz' (or .csv, IDX or image folder)"
        )
    if cfg.data.dataset == "digits" and cfg.data.data_path:
        problems.append(f"data-path={cfg.data.data_path!r} is ignored with dataset='digits': also set dataset='file'")
    phases = [p.strip() for p in cfg.strategy.plan.split(",") if p.strip()]
    unknown = [p for p in phases if p not in KNOWN_STAGES]
    if not phases or unknown:
        problems.append(
            f"plan={cfg.strategy.plan!r} has unknown stages {unknown}; known stages: {', '.join(KNOWN_STAGES)}"
        )
    problems.extend(_plan_order(cfg.strategy.plan, phases))
    if "pretrain" in phases and cfg.model.model != "mlp":
        problems.append(
            f"plan={cfg.strategy.plan!r}: layer-wise pretraining needs model='mlp' (got {cfg.model.model!r})"
        )
    if cfg.strategy.strategy == "krum" and 2 * cfg.strategy.krum_malicious + 2 >= cfg.partition.num_clients:
        problems.append(
            f"krum-malicious={cfg.strategy.krum_malicious} needs num-clients > 2*f+2 = "
            f"{2 * cfg.strategy.krum_malicious + 2}; lower krum-malicious or add clients"
        )
    if cfg.strategy.fraction_evaluate > 0 and cfg.partition.client_eval_fraction == 0:
        problems.append(
            "fraction-evaluate>0 needs client-eval-fraction>0 (clients have nothing to evaluate on); set one of them"
        )
    nesterov = [k for k, name in (("optimizer", cfg.train.optimizer), ("pretrain-optimizer",
                cfg.pretrain.pretrain_optimizer)) if name == "nesterov"]  # fmt: skip
    if nesterov and cfg.train.momentum == 0:
        problems.append(
            f"{nesterov[0]}='nesterov' needs momentum > 0 (Nesterov's look-ahead is a momentum step); set "
            "momentum=0.9, or use optimizer='sgd'"
        )
    if cfg.sample_dp and cfg.train.sampler != "uniform":
        problems.append(
            f"sampler={cfg.train.sampler!r} is refused under sample-level DP: oversampling breaks the accountant's "
            "uniform Poisson sampling assumption and understates epsilon; use sampler='uniform'. "
            "(class-weights='balanced' also reads each client's label counts outside the accountant, so under DP "
            "it needs dp-allow-unaccounted-statistics=true and the summary lists it as outside the budget)"
        )
    if cfg.sample_dp:
        for key, value in (
            ("clip-grad-norm", cfg.train.clip_grad_norm),
            ("clip-grad-value", cfg.train.clip_grad_value),
        ):
            if value > 0:
                problems.append(
                    f"{key}={value:g} is refused under sample-level DP (dp-level={cfg.privacy.dp_level!r}): DP-SGD "
                    f"already clips each per-sample gradient to norm dp-max-grad-norm={cfg.privacy.dp_max_grad_norm:g} "
                    f"before adding noise, and Opacus would overwrite a second clip; set {key}=0 and tune "
                    "dp-max-grad-norm instead"
                )
    problems.extend(_unaccounted_checks(cfg))
    problems.extend(check_data_source(cfg))
    problems.extend(check_secagg(cfg))
    problems.extend(check_export(cfg))
    problems.extend(check_dp_recipes(cfg))
    if cfg.strategy.early_stopping_patience > 0 and cfg.data.val_fraction == 0:
        problems.append(
            f"early-stopping-patience={cfg.strategy.early_stopping_patience} needs a validation split: set "
            "val-fraction > 0; with val-fraction=0 the model of the last round is reported"
        )
    if cfg.user_dp and cfg.strategy.strategy not in ("fedavg", "fedprox"):
        problems.append(
            f"dp-level={cfg.privacy.dp_level!r} (user-level DP) needs strategy='fedavg' or 'fedprox': Flower's DP "
            f"wrappers account only for plain averaging, not {cfg.strategy.strategy!r}"
        )
    if cfg.output.run_name and not re.fullmatch(r"[A-Za-z0-9_-]+", cfg.output.run_name):
        problems.append(f"run-name={cfg.output.run_name!r} may only hold letters, digits, '-' and '_'")
    return problems


# Stages by name (config must not import the federation layer): once-only stages, and the stage that must end a plan.
_ONCE = ("pretrain", "export")
_LAST = "export"


def _plan_order(plan: str, phases: list[str]) -> list[str]:
    """Plans whose order makes no sense: a stage that would undo or miss the work of another.

    ``finetune`` may repeat (it continues training the same model); extension stages are not judged.
    """
    problems: list[str] = []
    for name in _ONCE:
        if phases.count(name) > 1:
            what = "pretraining again would overwrite the trained layers" if name == "pretrain" else (
                "the second export would replace the first one's files")  # fmt: skip
            problems.append(f"plan={plan!r} names {name} {phases.count(name)} times: {what}; name it once")
    if "pretrain" in phases and "finetune" in phases[: phases.index("pretrain")]:
        problems.append(
            f"plan={plan!r} runs pretrain after finetune: layer-wise pretraining would overwrite the fine-tuned "
            "model's hidden layers; put pretrain first, e.g. plan='pretrain,finetune'"
        )
    if _LAST in phases[:-1]:
        problems.append(
            f"plan={plan!r} has stages after {_LAST}: the exported files would not hold the final model; "
            f"put {_LAST} last, e.g. plan='finetune,{_LAST}'"
        )
    elif phases == [_LAST]:
        problems.append(
            f"plan={plan!r} exports the untrained initial model; train first, e.g. plan='finetune,{_LAST}' (or use "
            "`fedtrain export RUN_DIR` on a finished run)"
        )
    return problems


_OPT_IN = "or set dp-allow-unaccounted-statistics=true to accept it (epsilon then does not cover it)"


def _unaccounted_checks(cfg: RunConfig) -> list[str]:
    """Under DP, refuse private statistics outside the accountant unless the user opted in."""
    problems: list[str] = []
    pc = cfg.privacy
    applied = [k for k in pc.dp_defaults_applied.split(",") if k and k != NONE_APPLIED]
    unknown = [k for k in applied if k not in table_keys()]
    if unknown:
        problems.append(
            f"dp-defaults-applied={pc.dp_defaults_applied!r} names keys without a DP default: {unknown}; "
            "leave dp-defaults-applied empty (fedtrain fills it in)"
        )
    if pc.dp_level == "none" or pc.dp_allow_unaccounted_statistics:
        return problems
    level = f"dp-level={pc.dp_level!r}"
    if cfg.data.normalize in ("standard", "minmax") and not fitted_on_server_file(cfg):
        what = "mean and std" if cfg.data.normalize == "standard" else "minimum and maximum"
        problems.append(
            f"normalize={cfg.data.normalize!r} is refused under {level}: it fits the per-feature {what} on the "
            "pooled training data of all clients, which real clients could not pool and no accountant covers; "
            f"use normalize='range' (divides by the format's maximum, reads no data) or 'none', {_OPT_IN}"
        )
    if cfg.sample_dp and cfg.train.class_weights == "balanced":
        problems.append(
            f"class-weights='balanced' is refused under {level}: the weights come from each client's label "
            "counts, so one record changes every other record's loss and DP-SGD's per-record clipping does not "
            f"bound it; use class-weights='none', {_OPT_IN}"
        )
    if cfg.strategy.fraction_evaluate > 0:
        problems.append(
            f"fraction-evaluate={cfg.strategy.fraction_evaluate:g} is refused under {level}: client-side "
            "evaluation sends the loss and accuracy on each client's records to the server without noise; "
            f"use fraction-evaluate=0 (the server still evaluates on its own splits), {_OPT_IN}"
        )
    return problems


def _user_set(given: Mapping[str, Any], base: Mapping[str, Any] | None, checked: Mapping[str, Any]) -> set[str]:
    """Keys the user set: from the file or overrides, or from ``base`` with a non-default value.

    ``flwr run`` passes every key of the app table as ``base``, so a base value equal to the generic
    default is taken as not set.
    """
    defaults = RunConfig().to_flat()
    return set(given) | {k for k in base or () if k in checked and checked[k] != defaults[k]}


def load_config(
    *,
    file: str | Path | None = None,
    overrides: Mapping[str, Any] | str | None = None,
    base: Mapping[str, Any] | None = None,
    preset: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Return the validated config: defaults, then ``base``, then ``preset``, then ``file``, then ``overrides``.

    A ``preset``'s keys (:mod:`fedtrain.config.presets`) count as set, as the file's and the overrides' do, so the
    DP defaults never replace them; ``base`` keys count as set only with a value other than the generic default.

    Under DP, the keys the user did not set then take DP-suited defaults
    (:mod:`fedtrain.config.dp_defaults`); the result records them in ``dp-defaults-applied`` and
    loading it again gives the same config.

    Raises
    ------
    ConfigError
        Listing every unknown key (with the closest valid key), wrong type and out-of-range value.
    """
    given: dict[str, Any] = {}  # from the file and the overrides: set by the user
    if file is not None:
        given.update(_read_toml(Path(file)))
    if isinstance(overrides, str):
        overrides = parse_overrides(overrides)
    if overrides:
        given.update(overrides)
    values: dict[str, Any] = {**(base or {}), **(preset or {}), **given}

    keys = flat_keys()
    problems: list[str] = []
    per_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; see docs/configuration.md"
            problems.append(f"unknown config key {key!r}{hint}")
            continue
        section, f = keys[key]
        value, problem = _check_value(key, f, value)
        if problem:
            problems.append(problem)
        else:
            per_section[section][f.name] = value
            checked[key] = value
    if problems:
        raise ConfigError(problems)
    cfg = RunConfig(**{s: cls(**per_section[s]) for s, cls in SECTIONS.items()})
    cfg = apply_dp_defaults(cfg, _user_set({**(preset or {}), **given}, base, checked))
    problems = _cross_checks(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def toml_value(value: Any) -> str:
    """A scalar as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "inf" if value == math.inf else repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


def dump_toml(cfg: RunConfig) -> str:
    """Serialise the config as flat TOML, one commented block per section."""
    lines: list[str] = []
    keys = flat_keys()
    flat = cfg.to_flat()
    for section in SECTIONS:
        lines.append(f"# --- {section} ---")
        for key, (sec, _) in keys.items():
            if sec == section:
                lines.append(f"{key} = {toml_value(flat[key])}")
    return "\n".join(lines) + "\n"
