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


def test_a_training_step_that_updates_nothing_fails(monkeypatch, capsys):
    """The training rows compare the updates, so a step that changes no parameter (e.g. an
    optimizer bug) fails, however small the update is next to the initial weights."""
    step = selfcheck._train_step
    calls = {"n": 0}

    def no_update_on_the_tested_backend(build, shape, backend):
        updates = step(build, shape, backend)
        calls["n"] += 1
        if calls["n"] % 2 == 1:  # the backend under test runs first, then the reference
            return {name: 0.0 * value for name, value in updates.items()}
        return updates

    monkeypatch.setattr(selfcheck, "_train_step", no_update_on_the_tested_backend)
    assert selfcheck.main("numpy", darknet=False) == 1
    out = capsys.readouterr().out
    assert [line.split("|")[4].strip() for line in out.splitlines()
            if "training steps" in line] == ["FAIL", "FAIL"]


def test_a_device_the_backend_cannot_use_exits_2(capsys):
    assert selfcheck.main("numpy", "gpu:7", darknet=False) == 2
    assert "cannot use device 'gpu:7'" in capsys.readouterr().err
