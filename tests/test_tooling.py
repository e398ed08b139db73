"""CI runs what the README promises, and the static checks the issue asks for are configured."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands(script: str) -> list[str]:
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in script.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _readme_test_command() -> str:
    block = re.search(r"# 2\. Install and run the tests.*?\n(.+?)\n", (ROOT / "README.md").read_text())
    assert block, "README.md lost its 'Install and run the tests' command"
    return block.group(1).strip()


def test_ci_ends_with_exactly_the_readme_test_command():
    commands = _commands((ROOT / ".ci" / "run").read_text())
    assert commands[-1] == _readme_test_command()


def test_ci_runs_every_static_check_before_the_tests():
    commands = _commands((ROOT / ".ci" / "run").read_text())
    assert "set -euo pipefail" in commands
    checks = ["ruff check .", "ruff format --check .", "mypy", "lint-imports"]
    assert [c for c in commands if c in checks] == checks
    assert commands.index("lint-imports") < len(commands) - 1


def test_the_dev_extra_brings_the_static_checkers():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dev = {re.split(r"[<>=\[ ]", req, maxsplit=1)[0] for req in meta["project"]["optional-dependencies"]["dev"]}
    assert {"ruff", "mypy", "import-linter", "pytest"} <= dev
    assert set(meta["tool"]["mypy"]["packages"]) == {"fedtrain", "server", "clients"}
    assert set(meta["tool"]["importlinter"]["root_packages"]) == {"fedtrain", "server", "clients"}


def test_the_layering_rules_of_the_issue_are_contracts():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    forbidden = {
        (src, dst)
        for c in contracts
        if c["type"] == "forbidden" and not c.get("allow_indirect_imports")
        for src in c["source_modules"]
        for dst in c["forbidden_modules"]
    }
    assert {("fedtrain", "server"), ("fedtrain", "clients")} <= forbidden
    assert {("fedtrain.privacy", "fedtrain.federation"), ("fedtrain.privacy", "fedtrain.runtime")} <= forbidden
    assert not any(c.get("ignore_imports") for c in contracts)  # no exceptions carved out of the rules
