"""The A/B helper ``python -m benchmarks.experiments.step_parts`` runs end to end (its
numbers are not checked: no timing assertions in tests)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "benchmarks.experiments.step_parts", *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_cnn_step_is_timed():
    out = run("cnn", "--batch", "2")
    assert re.search(r"MNIST CNN train_step, batch 2: [0-9.]+ ms \(median\)", out), out


def test_every_part_of_the_mlp_step_is_timed():
    out = run("mlp", "--batch", "512")
    for part in ("loader", "forward", "loss", "backward", "step", "total"):
        assert re.search(rf"{part} [0-9.]+", out), out
