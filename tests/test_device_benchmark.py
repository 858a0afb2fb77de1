"""``python -m benchmarks --backend NAME`` (the device harness) runs end to end: here on
the CPU with the torch backend, as it would with cupy on a GPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_device_harness_runs_with_the_torch_backend():
    pytest.importorskip("torch")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--backend", "torch", "--smoke", "--no-write",
         "--pause", "0"], capture_output=True, text=True, timeout=600, cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout + done.stderr
    for row in ("| MLP 784-128-10 SGD epoch, batch 128 |",
                "| MNIST CNN training step, batch 256 |",
                "| Darknet53 256x256 inference, float32, batch 1 |",
                "| Darknet53 256x256 inference, mixed float16, batch 1 |"):
        assert row in done.stdout, done.stdout
    assert "max |xpnn - PyTorch| logit difference" in done.stdout
    assert "Darknet53 mixed float16 on torch: max |Δlogit| against float32 xpnn" in done.stdout


def test_a_backend_that_cannot_run_is_refused():
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--backend", "cupy",
                           "--no-write"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    if done.returncode == 0:
        pytest.skip("CuPy runs here")
    assert done.returncode == 2 and "--backend cupy cannot run here" in done.stderr
