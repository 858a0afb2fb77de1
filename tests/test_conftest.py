"""The suite's own summary (tests/conftest.py): one line per backend with its counts, the
skip reasons grouped with counts, and pytest's last line kept as it is."""

import importlib.util
from pathlib import Path

import pytest

from xpnn import backends

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py").read_text()
TESTS = '''
import pytest

def test_on_every_backend(backend):
    assert backend.name

def test_without_a_backend():
    pass

@pytest.mark.skip(reason="a reason shared by two tests")
def test_skipped_once():
    pass

@pytest.mark.skip(reason="a reason shared by two tests")
def test_skipped_twice():
    pass
'''

XDIST = [] if importlib.util.find_spec("xdist") else [
    pytest.mark.skip(reason="pytest-xdist is not installed")]


@pytest.mark.parametrize("options", [
    pytest.param(["-p", "no:xdist"], id="one-process"),
    pytest.param(["-n", "1"], id="xdist", marks=XDIST),  # reports come back from a worker
])
def test_the_summary_counts_per_backend_and_groups_skip_reasons(pytester, options):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_summary=TESTS)
    result = pytester.runpytest_subprocess("-q", "-rfE", *options)
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if "xpnn: tests per backend" in line)
    runnable = [name for name in backends.NAMES if backends.probe(name)[0]]
    summary = lines[start + 1:]
    assert [line.split()[0] for line in summary[:len(backends.NAMES) + 1]] == [
        *backends.NAMES, "other"]
    for name in backends.NAMES:
        line = next(line for line in summary if line.split()[0] == name)
        assert line.split()[1:] == ["1", "passed" if name in runnable else "skipped"], line
    other = next(line for line in summary if line.startswith("other tests"))
    assert other.split()[2:] == ["1", "passed,", "2", "skipped"], other
    assert any(line.split(None, 1) == ["2", "a reason shared by two tests"]
               for line in summary)
    skipped = 2 + len(backends.NAMES) - len(runnable)
    result.assert_outcomes(passed=1 + len(runnable), skipped=skipped)
    assert not any(line.startswith("SKIPPED") for line in lines)  # -rfE: no line per skip
    assert lines[-1].startswith(f"{1 + len(runnable)} passed, {skipped} skipped in ")
