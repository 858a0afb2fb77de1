"""Shared pieces of the hardening tests: trial counts, per-case bounds, and a report.

The fuzz and kill tests record how many cases they ran and what happened to them in the
session-wide ``hardening_report`` dict. At the end of the run the counts are printed in
pytest's terminal summary (visible without ``-s``) and written as JSON to
``<pytest basetemp>/hardening_report.json``, or to the file named by
``XPNN_HARDENING_REPORT``.

More trials for longer local runs: ``XPNN_FUZZ_TRIALS`` (mutations per seed file and
format) and ``XPNN_KILL_TRIALS`` (SIGKILLs per saver).
"""

from __future__ import annotations

import json
import os

import pytest

_REPORT: dict[str, dict] = {}


FUZZ_TRIALS_DEFAULT = 120  # per seed file and format: about 10 s in all on a laptop core
KILL_TRIALS_DEFAULT = 24  # per saver (xpnn.io.save, fit checkpoints)


def _trials(variable: str, default: int) -> int:
    """The trial count from the environment variable ``variable``, else ``default``."""
    value = os.environ.get(variable, "")
    return int(value) if value.strip() else default


@pytest.fixture(scope="session")
def fuzz_trials() -> int:
    """Random mutations per seed file and format (``XPNN_FUZZ_TRIALS``)."""
    return _trials("XPNN_FUZZ_TRIALS", FUZZ_TRIALS_DEFAULT)


@pytest.fixture(scope="session")
def kill_trials() -> int:
    """SIGKILLs per saver (``XPNN_KILL_TRIALS``)."""
    return _trials("XPNN_KILL_TRIALS", KILL_TRIALS_DEFAULT)


@pytest.fixture(scope="session")
def hardening_report(tmp_path_factory):
    """``{name: {counter: value}}`` filled by the tests; written out at session end."""
    yield _REPORT
    if _REPORT:
        path = os.environ.get("XPNN_HARDENING_REPORT") or str(
            tmp_path_factory.getbasetemp() / "hardening_report.json")
        with open(path, "w") as handle:
            json.dump(_REPORT, handle, indent=2, sort_keys=True)
        _REPORT.setdefault("_written_to", {"path": path})


def pytest_terminal_summary(terminalreporter):
    if not _REPORT:
        return
    terminalreporter.section("xpnn hardening report")
    for name, counts in sorted(_REPORT.items()):
        if name.startswith("_"):
            continue
        text = ", ".join(f"{key}={value}" for key, value in counts.items())
        terminalreporter.write_line(f"{name}: {text}")
    written = _REPORT.get("_written_to")
    if written:
        terminalreporter.write_line(f"(written to {written['path']})")
