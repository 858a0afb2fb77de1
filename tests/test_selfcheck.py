"""``python -m xpnn.backends --check NAME`` (xpnn.selfcheck)."""

import subprocess
import sys

import pytest

from xpnn import backends, selfcheck


def test_numpy_passes_every_check_and_prints_the_table(capsys):
    assert selfcheck.main("numpy", darknet=False) == 0
    out = capsys.readouterr().out
    assert "| Conv2D 3x3 stride 2 (training)" in out and "| MNIST CNN: 2 training steps" in out
    assert "FAIL" not in out and "checks passed" in out


def test_a_non_default_device_passes_as_a_gpu_would(capsys):
    if not backends.probe("array_api_strict")[0]:
        pytest.skip("array-api-strict cannot run here")
    assert selfcheck.main("array_api_strict", "device1", darknet=False) == 0
    assert "array_api_strict (device1)" in capsys.readouterr().out


def test_a_wrong_result_fails_the_check(monkeypatch, capsys):
    run = selfcheck._run_layer

    def off_by_a_little(build, shape, mode, backend, dtype, rng_seed=0):
        y, dx, grads = run(build, shape, mode, backend, dtype, rng_seed)
        return (y * 1.001 if dtype == "float32" else y), dx, grads

    monkeypatch.setattr(selfcheck, "_run_layer", off_by_a_little)
    assert selfcheck.main("numpy", darknet=False) == 1
    out = capsys.readouterr().out
    assert "| Dense (training)" in out and "FAIL" in out and "FAILED" in out


def test_a_backend_that_cannot_run_here_exits_2_with_the_reason():
    unavailable = [name for name in backends.NAMES if not backends.probe(name)[0]]
    if not unavailable:
        pytest.skip("every backend runs here")
    done = subprocess.run([sys.executable, "-m", "xpnn.backends", "--check", unavailable[0]],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"the {unavailable[0]} backend cannot run here" in done.stderr


def test_an_unknown_backend_name_exits_2():
    done = subprocess.run([sys.executable, "-m", "xpnn.backends", "--check", "bogus"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--check expected one of numpy" in done.stderr
