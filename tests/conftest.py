"""Test fixtures: every backend test runs once per backend, and a short summary per backend.

``backend`` yields an active :class:`xpnn.backends.Backend`. array-api-strict runs on its
non-default ``device1``, so a forgotten ``device=`` fails here as it would on a GPU. JAX runs
with float64 on because building its backend turns it on (the tests do not). Backends that
cannot run here (CuPy without a GPU, torch or JAX not installed) show as SKIPPED, with the
reason.

The list comes from ``xpnn.backends.NAMES``, so a newly registered backend joins every
backend test; a test that runs once per backend takes the ``backend`` fixture rather than
keeping its own list. Run one backend with ``pytest -k jax``.

At the end of the run, ``pytest_terminal_summary`` prints one line per backend (passed,
failed, skipped) and the skip reasons grouped with their counts, in place of one SKIPPED
line per test (``pytest -ra`` brings those back); pytest's own last line ("N passed, M
skipped in ...") is unchanged.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from xpnn import backends

# (name, device) for every backend xpnn has, in the order the summary lists them.
# array-api-strict runs on a non-default device so that a forgotten ``device=`` fails.
TEST_DEVICES = {"array_api_strict": "device1"}
BACKENDS = [(name, TEST_DEVICES.get(name)) for name in backends.NAMES]
BACKEND_PARAMS = [pytest.param((name, device), id=name) for name, device in BACKENDS]

_PROPERTY = "xpnn_backend"  # the user property naming a test's backend (survives xdist)
_NO_BACKEND = "other tests"  # tests not parametrized by the backend fixture
_OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")


def skip_unless_runnable(name: str) -> None:
    """Skip the calling test, with the reason, when backend ``name`` cannot run here."""
    can_run, _, reason = backends.probe(name)
    if not can_run:
        pytest.skip(f"{name} backend unavailable: {reason}")


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    name, device = request.param
    skip_unless_runnable(name)
    with backends.use(name, device=device) as active:
        yield active


def pytest_collection_modifyitems(items):
    """Tag every test with its backend so the summary can count per backend (also under
    pytest-xdist, where the reports come back from the workers without their items)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("backend") if callspec is not None else None
        if isinstance(param, tuple):
            item.user_properties.append((_PROPERTY, param[0]))


def pytest_terminal_summary(terminalreporter):
    """One line per backend and the skip reasons grouped with counts."""
    per_backend: dict[str, Counter] = defaultdict(Counter)
    skip_reasons: Counter = Counter()
    for outcome in _OUTCOMES:
        for report in terminalreporter.stats.get(outcome, []):
            per_backend[_backend_of(report)][outcome] += 1
            if outcome == "skipped":
                skip_reasons[_skip_reason(report)] += 1
    if not per_backend:
        return
    rank = {name: index for index, (name, _) in enumerate(BACKENDS)}  # then "other tests"
    names = sorted(per_backend, key=lambda name: rank.get(name, len(rank)))
    width = max(len(name) for name in names)
    terminalreporter.section("xpnn: tests per backend")
    for name in names:
        counts = ", ".join(f"{per_backend[name][outcome]} {outcome}" for outcome in _OUTCOMES
                           if per_backend[name][outcome])
        terminalreporter.write_line(f"{name:<{width}}  {counts}")
    if skip_reasons:
        terminalreporter.write_line("skipped, by reason:")
        for reason, count in skip_reasons.most_common():
            terminalreporter.write_line(f"{count:>6}  {reason}")


def _backend_of(report) -> str:
    for key, value in getattr(report, "user_properties", ()):
        if key == _PROPERTY:
            return value
    return _NO_BACKEND


def _skip_reason(report) -> str:
    """The reason text of a skipped report (a ``(path, line, reason)`` triple locally, a
    list after pytest-xdist's round trip, a string for some plugins)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple | list) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")
