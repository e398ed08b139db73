import tomllib
from pathlib import Path

import pytest

from fedtrain.config import RunConfig, dump_toml, load_config, parse_overrides
from fedtrain.config.reference import render_markdown
from fedtrain.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_app_table_equals_schema_defaults():
    # Prepare
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    # Assert: `flwr run .` and `fedtrain run` see the same defaults
    assert table == RunConfig().to_flat()


def test_configuration_reference_is_current():
    assert (ROOT / "docs" / "configuration.md").read_text() == render_markdown()


def test_every_key_is_documented_with_default():
    text = render_markdown()
    for key, _value in RunConfig().to_flat().items():
        assert f"| `{key}` |" in text, key


def test_overrides_use_flower_syntax_and_bare_words():
    assert parse_overrides("num-rounds=5 model=cnn learning-rate=0.1 residual=true run-name='a b'") == {
        "num-rounds": 5,
        "model": "cnn",
        "learning-rate": 0.1,
        "residual": True,
        "run-name": "a b",
    }


def test_layering_defaults_file_overrides(tmp_path):
    # Prepare
    path = tmp_path / "exp.toml"
    path.write_text('num-rounds = 7\nmodel = "cnn"\n[train]\nlearning-rate = 0.2\n')
    # Execute
    cfg = load_config(file=path, overrides="num-rounds=9")
    # Assert
    assert (cfg.strategy.num_rounds, cfg.model.model, cfg.train.learning_rate) == (9, "cnn", 0.2)


def test_dumped_config_loads_back_equal(tmp_path):
    cfg = load_config(overrides="model=cnn num-clients=4 residual=true lr-schedule=cosine")
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
    assert load_config(file=path) == cfg


def test_int_is_accepted_for_float_and_integral_float_for_int():
    cfg = load_config(overrides={"learning-rate": 1, "num-rounds": 3.0})
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.strategy.num_rounds, int)


BAD = [
    ("num-round=5", "did you mean 'num-rounds'"),
    ("learning-rate=0", "learning-rate=0.0 is out of range: must be > 0.0"),
    ("learning-rate=fast", "learning-rate='fast' must be a number"),
    ("num-clients=0", "num-clients=0 is out of range"),
    ("batch-size=-1", "batch-size=-1 is out of range"),
    ("model=resnet", "model='resnet' is not one of mlp, cnn"),
    ("optimizer=adm", "did you mean 'adam'"),
    ("residual=1", "residual=1 must be true or false"),
    ("hidden-sizes=64,x", "hidden-sizes='64,x' must be comma-separated positive integers"),
    ("min-clients=20", "min-clients=20 is larger than num-clients=10"),
    ("dataset=file", "dataset='file' needs data-path"),
    ("plan=finetune,pretrian", "unknown stages ['pretrian']"),
    ("dirichlet-alpha=0", "dirichlet-alpha=0.0 is out of range: must be > 0.0"),
    ("class-keep=0:2", "ratio 2 for class 0 must be in (0, 1]"),
    ("model=cnn cnn-channels=16,30", "cnn-groups=4 must divide every cnn-channels value"),
    ("strategy=krum krum-malicious=4", "krum-malicious=4 needs num-clients > 2*f+2"),
    ("run-name=a/b", "run-name='a/b' may only hold"),
    ("fraction-train=1.5", "fraction-train=1.5 is out of range: must be <= 1.0"),
    ("num-clients=true", "num-clients=True must be an integer"),
    ("label-column=[1]", "label-column=[1] must be a string"),
]


@pytest.mark.parametrize(("override", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_key_value_and_fix(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=override)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(overrides="num-round=5 model=x batch-size=-2")
    assert len(err.value.problems) == 3


def test_bad_toml_file_is_a_config_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("num-rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(file=path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(file=tmp_path / "missing.toml")


def test_unparseable_override_string():
    with pytest.raises(ConfigError, match="cannot parse"):
        parse_overrides("num-rounds 5")


def test_weighted_sampler_message_does_not_recommend_an_unaccounted_option():
    with pytest.raises(ConfigError) as err:
        load_config(overrides="dp-level=sample sampler=weighted")
    message = str(err.value)
    assert "sampler='weighted' is refused under sample-level DP" in message and "sampler='uniform'" in message
    assert "'balanced' instead" not in message
    assert "dp-allow-unaccounted-statistics=true" in message  # honest about what balanced weights cost


def test_early_stopping_needs_a_validation_split():
    with pytest.raises(ConfigError, match="early-stopping-patience=3 needs a validation split: set val-fraction > 0"):
        load_config(overrides="early-stopping-patience=3 val-fraction=0")
    load_config(overrides="early-stopping-patience=3")


@pytest.mark.parametrize("key", ["optimizer", "pretrain-optimizer"])
def test_nesterov_without_momentum_is_refused_before_any_run(key, tmp_path, capsys):
    from fedtrain.cli import main

    with pytest.raises(ConfigError, match="needs momentum > 0"):
        load_config(overrides={key: "nesterov", "momentum": 0.0})
    assert main(["run", "--run-config", f"{key}=nesterov momentum=0 out-dir={tmp_path}"]) == 2
    assert "needs momentum > 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no run folder
