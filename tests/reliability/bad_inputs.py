"""The bad-input cases: what a user gets wrong, the exit code of its family and the message they must see.

Each case is a ``fedtrain`` command line (run through :func:`fedtrain.cli.main`) built from the files a
``make`` function writes into the test's own folder. ``expect`` is a regular expression the one ``error:`` line
must match: it pins what is wrong, where, and the fix. The test files parametrise over these lists, and
``gen_errors_doc.py`` renders docs/errors.md from the messages the suite saw, so the table cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Families and their exit codes (fedtrain/errors.py, fedtrain/deploy/errors.py, fedtrain/edge/errors.py).
EXIT_CODES = {
    "config": 2,
    "cli": 2,
    "data": 3,
    "model": 4,
    "checkpoint": 5,
    "export": 6,
    "deploy": 7,
}

# A tiny run, for the cases that need a run folder (one module-scoped run serves them all).
TINY = "num-clients=2 num-rounds=1 hidden-sizes=8 local-epochs=1 progress=false report=false"


@dataclass(frozen=True)
class Ctx:
    """What a case may use: its own folder, and (when it asks) the tiny run folder and its ONNX model."""

    tmp: Path
    run: Path | None = None
    onnx: Path | None = None


@dataclass(frozen=True)
class Case:
    """One bad input: ``argv`` for ``fedtrain``, the family of its error and the regex its message must match."""

    id: str
    family: str
    what: str  # the mistake, in words (the docs table)
    argv: Callable[[Ctx], list[str]]
    expect: str
    needs_run: bool = False
    xfail: str = ""  # a defect in a file this suite's owner does not own: strict xfail with the reason
    code: int | None = None  # when it differs from the family's (argparse's 2 for a misused predict)
    tags: tuple[str, ...] = field(default=())

    @property
    def exit_code(self) -> int:
        return self.code if self.code is not None else EXIT_CODES[self.family]


# Messages seen in this session, by case id, with the test's folders replaced by placeholders (docs/errors.md).
OBSERVED: dict[str, str] = {}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Run ``fedtrain ARGV`` in this process; return (exit code, stdout, stderr)."""
    import contextlib
    import io
    import warnings

    from fedtrain.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", RuntimeWarning)  # numpy's would print file:line lines on the terminal
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
    runtime = [str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)]
    assert not runtime, f"RuntimeWarning on the way to the error: {runtime}"
    return code, out.getvalue(), err.getvalue()


def normalise(text: str, ctx: Ctx) -> str:
    """``text`` with the session's folders as placeholders, so the docs do not depend on where tests ran."""
    for path, name in ((ctx.onnx, "MODEL.onnx"), (ctx.run, "RUN"), (ctx.tmp, "DIR")):
        if path is not None:
            text = text.replace(str(path), name)
    return text


def check(case: Case, ctx: Ctx) -> str:
    """Run ``case`` and assert its exit code and its one-line message; return the line."""
    import re

    argv = case.argv(ctx)
    code, _out, err = run_cli(argv)
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("error: "), line
    OBSERVED[case.id] = normalise(line, ctx)  # a known defect (xfail) is documented as it is
    assert re.search(case.expect, line), f"{line!r} does not match {case.expect!r}"
    assert code == case.exit_code, f"exit code {code}, documented {case.exit_code}: {line}"
    return line


def params(cases: list[Case]) -> list:
    """``cases`` for ``pytest.mark.parametrize``; a known defect outside this suite's files is a strict xfail."""
    import pytest

    marks = {c.id: [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [] for c in cases}
    return [pytest.param(c, id=c.id, marks=marks[c.id]) for c in cases]
