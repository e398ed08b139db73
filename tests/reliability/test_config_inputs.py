"""Bad configuration: keys, types, ranges, non-finite values, combinations, duplicates, TOML files, DP, SecAgg+.

Each case goes through ``fedtrain config`` (the config loader, nothing runs); the parser is fuzzed with hypothesis.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_inputs import Case, Ctx, check, params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedtrain.config import RunConfig, load_config, parse_overrides
from fedtrain.errors import ConfigError


def _rc(text: str):
    return lambda ctx: ["config", "--run-config", text]


def _file(name: str, body: str | bytes):
    def argv(ctx: Ctx) -> list[str]:
        path = ctx.tmp / name
        path.write_bytes(body if isinstance(body, bytes) else body.encode())
        return ["config", "--config", str(path)]

    return argv


C = "config"
CASES = [
    # keys and types
    Case(
        "unknown-key",
        C,
        "a misspelt key",
        _rc("num-round=5"),
        r"unknown config key 'num-round'; did you mean 'num-rounds'",
    ),
    Case("type-number", C, "a word for a number", _rc("learning-rate=fast"), r"learning-rate='fast' must be a number"),
    Case("type-bool", C, "1 for a boolean", _rc("residual=1"), r"residual=1 must be true or false"),
    Case("type-int", C, "a fraction for a count", _rc("num-rounds=2.5"), r"num-rounds=2\.5 must be an integer"),
    Case("type-string", C, "a list for a string", _rc("label-column=[1]"), r"label-column=\[1\] must be a string"),
    Case("choice", C, "an unknown model", _rc("model=resnet"), r"model='resnet' is not one of mlp, cnn"),
    Case("choice-close", C, "a misspelt optimizer", _rc("optimizer=adm"), r"did you mean 'adam'"),
    Case("unparsable", C, "a pair without =", _rc("num-rounds 5"), r"cannot parse 'num-rounds 5'.*key=value pairs"),
    # ranges and non-finite values
    Case("range-low", C, "zero clients", _rc("num-clients=0"), r"num-clients=0 is out of range: must be >= 1"),
    Case(
        "range-open",
        C,
        "a zero learning rate",
        _rc("learning-rate=0"),
        r"learning-rate=0\.0 is out of range: must be > 0\.0",
    ),
    Case(
        "range-high",
        C,
        "a fraction above 1",
        _rc("fraction-train=1.5"),
        r"fraction-train=1\.5 is out of range: must be <= 1\.0",
    ),
    Case(
        "nonfinite-inf",
        C,
        "learning-rate=inf",
        _rc("learning-rate=inf"),
        r"learning-rate=inf is not a finite number; give a finite value",
    ),
    Case(
        "nonfinite-nan", C, "learning-rate=nan", _rc("learning-rate=nan"), r"learning-rate=nan is not a finite number"
    ),
    Case(
        "nonfinite-minus-inf",
        C,
        "a timeout of -inf",
        _rc("round-timeout=-inf"),
        r"round-timeout=-inf is not a finite number",
    ),
    Case(
        "nonfinite-overflow",
        C,
        "a number beyond float range",
        _rc("weight-decay=1e999"),
        r"weight-decay=inf is not a finite number",
    ),
    Case(
        "nonfinite-bigint",
        C,
        "an integer too large for a float",
        _rc("momentum=" + "9" * 400),
        r"momentum=9{12}\.\.\. \(400 digits\) is too large for a number; give a finite value",
    ),
    # duplicates
    Case(
        "duplicate-key",
        C,
        "a key set twice",
        _rc("num-rounds=5 num-rounds=7"),
        r"--run-config sets num-rounds 2 times \(5, 7\); give each key once",
    ),
    Case(
        "duplicate-quoted",
        C,
        "a key set twice, once quoted",
        _rc("model=mlp model='cnn'"),
        r"sets model 2 times \(\"mlp\", 'cnn'\)",
    ),
    # combinations
    Case(
        "min-clients",
        C,
        "more clients per round than clients",
        _rc("min-clients=20"),
        r"min-clients=20 is larger than num-clients=10.*lower min-clients",
    ),
    Case(
        "file-without-path",
        C,
        "dataset=file without a path",
        _rc("dataset=file"),
        r"dataset='file' needs data-path: set data-path=",
    ),
    Case(
        "path-without-file",
        C,
        "a data-path with the embedded digits",
        _rc("data-path=x.npz"),
        r"data-path='x\.npz' is ignored with dataset='digits': also set dataset='file'",
    ),
    Case(
        "krum",
        C,
        "krum with too few clients",
        _rc("strategy=krum krum-malicious=4"),
        r"krum-malicious=4 needs num-clients > 2\*f\+2 = 10",
    ),
    Case(
        "nesterov",
        C,
        "Nesterov without momentum",
        _rc("optimizer=nesterov momentum=0"),
        r"optimizer='nesterov' needs momentum > 0",
    ),
    Case(
        "cnn-groups",
        C,
        "GroupNorm groups that do not divide",
        _rc("model=cnn cnn-channels=16,30"),
        r"cnn-groups=4 must divide every cnn-channels value; \[30\] do not",
    ),
    Case(
        "hidden-sizes",
        C,
        "a word in hidden-sizes",
        _rc("hidden-sizes=64,x"),
        r"hidden-sizes='64,x' must be comma-separated positive integers, e\.g\. '128,64'",
    ),
    Case(
        "hidden-zero",
        C,
        "a zero-width layer",
        _rc("hidden-sizes=0"),
        r"hidden-sizes='0' must be comma-separated positive integers",
    ),
    Case(
        "class-keep",
        C,
        "a keep ratio above 1",
        _rc("class-keep=0:2"),
        r"class-keep='0:2': ratio 2 for class 0 must be in \(0, 1\]",
    ),
    Case(
        "patience-no-val",
        C,
        "early stopping without validation",
        _rc("early-stopping-patience=3 val-fraction=0"),
        r"early-stopping-patience=3 needs a validation split: set val-fraction > 0",
    ),
    Case(
        "run-name",
        C,
        "a slash in the run name",
        _rc("run-name=a/b"),
        r"run-name='a/b' may only hold letters, digits, '-' and '_'",
    ),
    Case(
        "eval-without-split",
        C,
        "client evaluation with nothing to evaluate",
        _rc("client-eval-fraction=0"),
        r"fraction-evaluate>0 needs client-eval-fraction>0",
    ),
    # plans
    Case(
        "plan-unknown",
        C,
        "a misspelt stage",
        _rc("plan=finetune,pretrian"),
        r"plan='finetune,pretrian' has unknown stages \['pretrian'\]; known stages: pretrain, finetune, export",
    ),
    Case("plan-empty", C, "an empty plan", _rc("plan=''"), r"plan='' has unknown stages \[\]"),
    Case(
        "plan-pretrain-after-finetune",
        C,
        "pretraining after fine-tuning",
        _rc("plan=finetune,pretrain"),
        r"runs pretrain after finetune: layer-wise pretraining would overwrite the fine-tuned model's hidden layers; "
        r"put pretrain first",
    ),
    Case(
        "plan-export-not-last",
        C,
        "a stage after export",
        _rc("plan=export,finetune"),
        r"has stages after export: the exported files would not hold the final model; put export last",
    ),
    Case(
        "plan-pretrain-twice",
        C,
        "pretrain twice",
        _rc("plan=pretrain,pretrain,finetune"),
        r"names pretrain 2 times: pretraining again would overwrite the trained layers; name it once",
    ),
    Case(
        "plan-export-twice",
        C,
        "export twice",
        _rc("plan=finetune,export,export"),
        r"names export 2 times: the second export would replace the first one's files",
    ),
    Case(
        "plan-export-only",
        C,
        "export with nothing trained",
        _rc("plan=export"),
        r"plan='export' exports the untrained initial model; train first, e\.g\. plan='finetune,export'",
    ),
    Case(
        "plan-pretrain-cnn",
        C,
        "pretraining a CNN",
        _rc("plan=pretrain,finetune model=cnn"),
        r"layer-wise pretraining needs model='mlp' \(got 'cnn'\)",
    ),
    # differential privacy
    Case(
        "dp-epsilon-zero",
        C,
        "a zero privacy budget",
        _rc("dp-level=sample dp-target-epsilon=0"),
        r"dp-target-epsilon=0\.0 is out of range: must be > 0\.0",
    ),
    Case(
        "dp-epsilon-negative",
        C,
        "a negative privacy budget",
        _rc("dp-level=sample dp-target-epsilon=-1"),
        r"dp-target-epsilon=-1\.0 is out of range: must be > 0\.0",
    ),
    Case(
        "dp-epsilon-inf",
        C,
        "an infinite privacy budget",
        _rc("dp-level=sample dp-target-epsilon=inf"),
        r"dp-target-epsilon=inf is not a finite number",
    ),
    Case(
        "dp-delta-one",
        C,
        "delta = 1",
        _rc("dp-level=sample dp-delta=1"),
        r"dp-delta=1\.0 is out of range: must be < 1\.0",
    ),
    Case(
        "dp-delta-zero",
        C,
        "delta = 0",
        _rc("dp-level=sample dp-delta=0"),
        r"dp-delta=0\.0 is out of range: must be > 0\.0",
    ),
    Case(
        "dp-clip-zero",
        C,
        "a zero clipping norm",
        _rc("dp-level=sample dp-max-grad-norm=0"),
        r"dp-max-grad-norm=0\.0 is out of range: must be > 0\.0",
    ),
    Case(
        "dp-noise-negative",
        C,
        "a negative noise multiplier",
        _rc("dp-level=sample dp-noise-multiplier=-0.5"),
        r"dp-noise-multiplier=-0\.5 is out of range: must be >= 0\.0",
    ),
    Case(
        "dp-user-noise-zero",
        C,
        "user-level DP without noise",
        _rc("dp-level=user dp-user-noise-multiplier=0"),
        r"dp-user-noise-multiplier=0\.0 is out of range: must be > 0\.0",
    ),
    Case(
        "dp-level",
        C,
        "an unknown DP level",
        _rc("dp-level=record"),
        r"dp-level='record' is not one of none, sample, user, both",
    ),
    Case(
        "dp-weighted-sampler",
        C,
        "oversampling under DP-SGD",
        _rc("dp-level=sample sampler=weighted"),
        r"sampler='weighted' is refused under sample-level DP.*use sampler='uniform'",
    ),
    Case(
        "dp-double-clip",
        C,
        "gradient clipping under DP-SGD",
        _rc("dp-level=sample clip-grad-norm=1"),
        r"clip-grad-norm=1 is refused under sample-level DP.*set clip-grad-norm=0",
    ),
    Case(
        "dp-user-krum",
        C,
        "user-level DP with krum",
        _rc("dp-level=user strategy=krum"),
        r"dp-level='user' \(user-level DP\) needs strategy='fedavg' or 'fedprox'",
    ),
    Case(
        "dp-standardise",
        C,
        "pooled statistics under DP",
        _rc("dp-level=sample normalize=standard"),
        r"normalize='standard' is refused under dp-level='sample'.*use normalize='range'",
    ),
    # secure aggregation
    Case(
        "secagg-even-shares",
        C,
        "an even share count",
        _rc("secure-aggregation=true secagg-num-shares=4"),
        r"secagg-num-shares=4: use an odd count",
    ),
    Case(
        "secagg-fraction-shares",
        C,
        "a share count that is not whole",
        _rc("secure-aggregation=true secagg-num-shares=2.5"),
        r"secagg-num-shares=2\.5: a count must be a whole number above 2",
    ),
    Case(
        "secagg-two-shares",
        C,
        "two shares",
        _rc("secure-aggregation=true secagg-num-shares=2"),
        r"secagg-num-shares=2: a count must be a whole number above 2",
    ),
    Case(
        "secagg-threshold",
        C,
        "a threshold not below the shares",
        _rc("secure-aggregation=true secagg-num-shares=5 secagg-reconstruction-threshold=7"),
        r"secagg-reconstruction-threshold=7 must be below secagg-num-shares=5",
    ),
    Case(
        "secagg-threshold-zero",
        C,
        "a zero threshold",
        _rc("secure-aggregation=true secagg-reconstruction-threshold=0"),
        r"secagg-reconstruction-threshold=0\.0 is out of range: must be > 0\.0",
    ),
    Case(
        "secagg-modulus",
        C,
        "a modulus that is not a power of two",
        _rc("secure-aggregation=true secagg-modulus-range=5000000"),
        r"secagg-modulus-range=5000000 must be a power of two above secagg-quantization-range=4194304",
    ),
    Case(
        "secagg-krum",
        C,
        "SecAgg+ with krum",
        _rc("secure-aggregation=true strategy=krum"),
        r"strategy='krum' needs every client's update, which SecAgg\+ hides",
    ),
    Case(
        "secagg-one-client",
        C,
        "SecAgg+ with one client per round",
        _rc("secure-aggregation=true min-clients=1"),
        r"SecAgg\+ needs at least 2 clients per round: set min-clients >= 2",
    ),
    Case(
        "secagg-server-clip",
        C,
        "server-side clipping with SecAgg+",
        _rc("secure-aggregation=true dp-level=user"),
        r"dp-user-clipping='server' with SecAgg\+.*use dp-user-clipping='client'",
    ),
    # TOML files
    Case(
        "toml-missing",
        C,
        "a config file that does not exist",
        lambda ctx: ["config", "--config", str(ctx.tmp / "nope.toml")],
        r"config file '.*nope\.toml' does not exist; pass an existing \.toml file",
    ),
    Case(
        "toml-invalid",
        C,
        "a file that is not TOML",
        _file("bad.toml", "num-rounds = = 3\n"),
        r"config file '.*bad\.toml' is not valid TOML: Invalid value \(at line 1, column 14\)",
    ),
    Case(
        "toml-not-utf8",
        C,
        "a file that is not UTF-8",
        _file("latin.toml", b"run-name = '\xe9'\n"),
        r"config file '.*latin\.toml' is not valid TOML",
    ),
    Case(
        "toml-wrong-section",
        C,
        "a key under the wrong [section]",
        _file("s.toml", '[train]\nhidden-sizes = "8"\n'),
        r"'.*s\.toml': hidden-sizes is not a key of \[train\]; it belongs in \[model\]",
    ),
    Case(
        "toml-unknown-table",
        C,
        "a table that is not a section",
        _file("t.toml", "[training]\nlocal-epochs = 2\n"),
        r"table \[training\] is not a section; use flat keys or one of the sections data, partition",
    ),
    Case(
        "toml-set-twice",
        C,
        "a key both flat and in its section",
        _file("d.toml", "num-rounds = 3\n[strategy]\nnum-rounds = 5\n"),
        r"sets num-rounds twice \(as a flat key and in \[strategy\]\); keep one",
    ),
    Case(
        "toml-unknown-key",
        C,
        "an unknown key in a file",
        _file("u.toml", "[train]\nlerning-rate = 0.1\n"),
        r"unknown config key 'lerning-rate'; did you mean 'learning-rate'",
    ),
    Case(
        "toml-wrong-type",
        C,
        "a quoted number in a file",
        _file("q.toml", 'num-rounds = "5"\n'),
        r"num-rounds='5' must be an integer",
    ),
    Case(
        "toml-nonfinite",
        C,
        "inf in a file",
        _file("i.toml", "[train]\nlearning-rate = inf\n"),
        r"learning-rate=inf is not a finite number",
    ),
    Case("toml-tool-scalar", C, "a stray 'tool' key", _file("p.toml", "tool = 3\n"), r"unknown config key 'tool'"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_config_is_one_clear_line(case: Case, tmp_path: Path):
    check(case, Ctx(tmp_path))


def test_all_problems_of_a_run_config_are_listed_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(overrides="learning-rate=inf num-rounds=5 num-rounds=6")
    assert [p.split(" ")[0] for p in err.value.problems] == ["--run-config"]  # parsing fails before the values
    with pytest.raises(ConfigError) as err:
        load_config(overrides="learning-rate=inf momentum=nan num-clients=0")
    assert len(err.value.problems) == 3


def test_plans_that_make_sense_still_load():
    for plan in ("finetune", "pretrain,finetune", "finetune,finetune", "pretrain,finetune,export", "finetune,export"):
        assert load_config(overrides={"plan": plan}).phases == plan.split(",")


def test_a_key_in_its_own_section_and_a_pyproject_table_load(tmp_path: Path):
    path = tmp_path / "ok.toml"
    path.write_text('[model]\nhidden-sizes = "8"\n[train]\nlearning-rate = 0.2\n')
    cfg = load_config(file=path)
    assert (cfg.model.hidden_sizes, cfg.train.learning_rate) == ("8", 0.2)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[tool.flwr.app.config]\nnum-rounds = 4\n[tool.other]\nx = 1\n")
    assert load_config(file=pyproject).strategy.num_rounds == 4


# --- fuzzing: any input loads or raises ConfigError, never another exception -----------------------------------

_KEYS = sorted(RunConfig().to_flat())
_WORD = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_SCALAR = st.one_of(
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    _WORD,
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(_WORD, st.integers(), max_size=1),
)
_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(st.text(max_size=60))
def test_fuzz_run_config_text(text: str):
    try:
        load_config(overrides=parse_overrides(text))
    except ConfigError as err:
        assert str(err)


_TOKEN = st.one_of(st.sampled_from(_KEYS), st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_", min_size=1, max_size=10))
_RAW = st.one_of(
    st.sampled_from(
        [
            "inf",
            "-inf",
            "nan",
            "1e999",
            "true",
            "'x'",
            '"y"',
            "[1,2]",
            "{a=1}",
            "1979-05-27",
            "0x10",
            "1_000",
            "[[[[[[[[",
            "'",
            '"',
            "=",
            "0,1",
            "2.5",
            "-1",
            "0",
        ]
    ),
    st.text(alphabet="0123456789.,:-+eE'\"[]{}=abcinftru", min_size=1, max_size=12),
)


@_FUZZ
@given(st.lists(st.tuples(_TOKEN, _RAW), max_size=5))
def test_fuzz_run_config_pairs(pairs: list[tuple[str, str]]):
    text = " ".join(f"{k}={v}" for k, v in pairs)
    try:
        load_config(overrides=text)
    except ConfigError as err:
        assert str(err)


@_FUZZ
@given(st.dictionaries(st.sampled_from(_KEYS), _SCALAR, max_size=6))
def test_fuzz_typed_overrides(values: dict):
    try:
        load_config(overrides=values)
    except ConfigError as err:
        assert str(err)


@_FUZZ
@given(st.dictionaries(st.sampled_from(["model", "train", "data", "strategy", "tool", "x"]),
                       st.one_of(_SCALAR, st.dictionaries(st.sampled_from([*_KEYS, "flwr", "app", "config"]),
                                                          _SCALAR, max_size=3)), max_size=3))  # fmt: skip
def test_fuzz_toml_file(tmp_path_factory, doc: dict):
    import json

    lines, tables = [], []
    for key, value in doc.items():
        if isinstance(value, dict):
            tables.append(f"[{key}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in value.items()))
        else:
            lines.append(f"{key} = {_toml(value)}\n")
    path = tmp_path_factory.mktemp("fuzz") / "f.toml"
    path.write_text("".join(lines + tables), encoding="utf-8")
    try:
        load_config(file=path)
    except ConfigError as err:
        assert str(err), json.dumps(doc, default=str)


def _toml(value) -> str:
    import json
    import math

    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)
