"""DP-suited defaults for unset keys, and private statistics outside the accountant (issue 8, defects 4 and 7)."""

import pytest

from fedtrain.config import RunConfig, dump_toml, load_config
from fedtrain.config.dp_defaults import (
    DP_DEFAULTS,
    SAMPLE_DP_DEFAULTS,
    dp_default_changes,
    format_dp_default_changes,
    table_keys,
)
from fedtrain.errors import ConfigError
from fedtrain.privacy.unaccounted import label_counts_allowed, unaccounted_statistics

GENERIC = RunConfig().to_flat()
OPT_IN = {"dp-allow-unaccounted-statistics": True}


def flower_run_config(**overrides: object) -> dict:
    """What ``flwr run`` passes: the whole app table (generic defaults) with the overrides on top."""
    return {**GENERIC, **{k.replace("_", "-"): v for k, v in overrides.items()}}


def test_dp_defaults_fill_the_unset_keys_and_keep_the_set_ones():
    # model=mlp set: the MLP recipe (the linear recipe's keys are covered in test_dp_recipes.py)
    cfg = load_config(overrides="dp-level=sample model=mlp activation=relu batch-size=32").to_flat()
    assert (cfg["model"], cfg["activation"], cfg["batch-size"]) == ("mlp", "relu", 32)  # set by the user: kept
    assert cfg["hidden-sizes"] == "128" and cfg["local-epochs"] == 1 and cfg["normalize"] == "range"
    assert cfg["fraction-evaluate"] == 0.0 and cfg["client-eval-fraction"] == 0.0
    assert set(cfg["dp-defaults-applied"].split(",")) == set(DP_DEFAULTS) | set(SAMPLE_DP_DEFAULTS) - {
        "activation",
        "batch-size",
    }


def test_dp_defaults_via_a_full_flower_run_config():
    # Every key is present in the base; only those that differ from the generic default were set.
    cfg = load_config(base=flower_run_config(dp_level="sample", learning_rate=0.5, local_epochs=3)).to_flat()
    assert (cfg["learning-rate"], cfg["local-epochs"]) == (0.5, 3)
    assert (cfg["model"], cfg["batch-size"], cfg["normalize"]) == ("linear", 128, "dp-standard")
    # model='mlp' equals the generic default, so a pretrain stage is what keeps the MLP recipe here
    raw = flower_run_config(dp_level="sample", plan="pretrain,finetune", activation="elu", local_epochs=3)
    cfg = load_config(base=raw).to_flat()
    assert (cfg["activation"], cfg["local-epochs"]) == ("elu", 3)
    assert (cfg["model"], cfg["hidden-sizes"], cfg["batch-size"], cfg["normalize"]) == ("mlp", "128", 16, "range")


def test_a_file_key_at_its_generic_default_counts_as_set(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('dp-level = "sample"\nmodel = "mlp"\nhidden-sizes = "128,64"\n')
    cfg = load_config(file=path)
    assert (cfg.model.model, cfg.model.hidden_sizes) == ("mlp", "128,64")


def test_resolution_is_idempotent_and_equal_for_server_and_clients(tmp_path):
    raw = flower_run_config(dp_level="sample", learning_rate=0.1)
    server, client = load_config(base=raw), load_config(base=dict(raw))
    assert server == client
    # The in-process runtime passes the resolved config as the run config; resume reads config.toml.
    assert load_config(base=server.to_flat()) == server
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(server))
    assert load_config(file=path) == server


def test_an_explicit_generic_value_survives_a_round_trip_through_the_run_config():
    # normalize='standard' equals the generic default: only the marker tells the next load it was chosen.
    cfg = load_config(overrides={"dp-level": "sample", "normalize": "standard", "activation": "relu", **OPT_IN})
    again = load_config(base=cfg.to_flat())
    assert again == cfg and (again.data.normalize, again.model.activation) == ("standard", "relu")


def test_no_dp_means_generic_defaults_and_no_log_line():
    cfg = load_config(overrides="num-rounds=3")
    assert cfg.to_flat() == {**GENERIC, "num-rounds": 3}
    assert dp_default_changes(cfg) == {}


def test_user_level_dp_gets_only_the_budget_keeping_defaults():
    cfg = load_config(overrides="dp-level=user").to_flat()
    assert (cfg["normalize"], cfg["fraction-evaluate"]) == ("range", 0.0)
    assert (cfg["hidden-sizes"], cfg["batch-size"]) == (GENERIC["hidden-sizes"], GENERIC["batch-size"])


def test_dp_defaults_off_keeps_the_generic_values_and_the_refusals():
    # The escape hatch of `flwr run`, where a value equal to the generic default counts as not set.
    raw = flower_run_config(dp_level="sample", dp_defaults=False, normalize="standard", **{k: True for k in OPT_IN})
    cfg = load_config(base=raw).to_flat()
    assert {k: cfg[k] for k in table_keys()} == {k: GENERIC[k] for k in table_keys()}
    with pytest.raises(ConfigError, match="normalize='standard' is refused"):
        load_config(overrides="dp-level=sample dp-defaults=false")


def test_client_evaluation_kept_on_keeps_its_share():
    cfg = load_config(overrides={"dp-level": "sample", "fraction-evaluate": 0.5, **OPT_IN})
    assert cfg.partition.client_eval_fraction == GENERIC["client-eval-fraction"]


def test_cnn_keeps_its_mlp_keys_untouched():
    cfg = load_config(overrides="dp-level=sample model=cnn")
    assert "hidden-sizes" not in dp_default_changes(cfg) and cfg.model.activation == GENERIC["activation"]


def test_log_line_names_the_changed_keys():
    line = format_dp_default_changes(dp_default_changes(load_config(overrides="dp-level=sample")))
    assert line.startswith("DP defaults applied (keys you did not set): ")
    assert "model=linear" in line and "learning-rate=1.0" in line and "normalize=dp-standard" in line
    line = format_dp_default_changes(dp_default_changes(load_config(overrides="dp-level=sample model=mlp")))
    assert "hidden-sizes=128" in line and "activation=tanh" in line and "normalize=range" in line


def test_a_hand_written_marker_must_name_dp_default_keys():
    with pytest.raises(ConfigError, match="dp-defaults-applied"):
        load_config(overrides="dp-level=sample dp-defaults-applied=seed")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ("dp-level=sample normalize=standard", "normalize='standard'"),
        ("dp-level=both normalize=minmax", "normalize='minmax'"),
        ("dp-level=user normalize=standard", "normalize='standard'"),
        ("dp-level=sample class-weights=balanced", "class-weights='balanced'"),
        ("dp-level=sample fraction-evaluate=0.5", "fraction-evaluate=0.5"),
    ],
)
def test_statistics_outside_the_budget_are_refused_without_the_opt_in(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides)
    message = str(err.value)
    assert f"{key} is refused under dp-level" in message and "dp-allow-unaccounted-statistics=true" in message
    # Allowed with the opt-in, and then listed.
    cfg = load_config(overrides=f"{overrides} dp-allow-unaccounted-statistics=true")
    assert any(item.startswith(key) for item in unaccounted_statistics(cfg))


def test_the_same_keys_are_fine_without_dp():
    load_config(overrides="normalize=standard class-weights=balanced fraction-evaluate=0.5")


def test_balanced_weights_are_covered_by_user_level_dp():
    cfg = load_config(overrides="dp-level=user class-weights=balanced")
    assert not any("class-weights" in item for item in unaccounted_statistics(cfg))


def test_unaccounted_statistics_in_plain_words():
    assert unaccounted_statistics(load_config()) == []
    # The DP defaults read nothing outside the budget: no fitted scaling, no client evaluation, no train
    # loss sent, no label counts in the report.
    default_dp = load_config(overrides="dp-level=sample")
    assert not label_counts_allowed(default_dp)
    assert unaccounted_statistics(default_dp) == []
    everything = load_config(
        overrides={
            "dp-level": "sample",
            "normalize": "standard",
            "class-weights": "balanced",
            "fraction-evaluate": 0.5,
            **OPT_IN,
        }
    )
    items = unaccounted_statistics(everything)
    assert "normalize='standard': per-feature mean and std of the pooled training split of all clients" in items
    assert "class-weights='balanced': label counts of each client (they weight its loss)" in items
    assert any(i.startswith("fraction-evaluate=0.5: loss and accuracy") for i in items)
    assert any(i.startswith("report=true: label counts of each client") for i in items)
    assert any(i.startswith("train loss of each client") for i in items)


def test_unaccounted_module_reads_only_the_config():
    import ast
    import inspect

    import fedtrain.privacy.unaccounted as mod

    imported = {n.module for n in ast.walk(ast.parse(inspect.getsource(mod))) if isinstance(n, ast.ImportFrom)}
    assert not any(m.startswith(("fedtrain.federation", "fedtrain.runtime")) for m in imported)
