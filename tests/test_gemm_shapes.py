"""``python -m benchmarks.experiments.gemm_shapes`` runs end to end and its shape lists
describe the products xpnn runs (its timings are not checked: no timing assertions in
tests)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.experiments.gemm_shapes", *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_every_workload_prints_a_row_per_product_and_a_sum():
    pytest.importorskip("torch")
    done = run("--repeats", "1", "--budget", "0.0005", "--pause", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for workload, products in (("mlp", 15), ("cnn", 20), ("darknet", 16)):
        table = out.split(f"| {workload} product |")[1].split("\n\n")[0]
        rows = [line for line in table.splitlines()[2:] if line.startswith("|")]
        assert len(rows) == products + 1, table
        assert rows[-1].startswith("| **sum**"), table
        for row in rows:
            cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
            assert len(cells) == 4, row
            numpy_us, torch_us, ratio = map(float, cells[1:])
            # the ratio of so short a run may print as 0.00
            assert numpy_us > 0 and torch_us > 0 and ratio >= 0, row


def test_an_unknown_workload_is_named_in_the_error():
    done = run("--only", "mlp,resnet")
    assert done.returncode == 2
    assert "unknown workload(s) resnet" in done.stderr


def test_the_darknet_list_holds_its_52_convolutions_and_their_flops():
    """The repeat-weighted shapes add up to Darknet53's 52 convolutions and to the
    suite's FLOP count without the classifier (18.57 GFLOP per 256x256 image with it)."""
    code = ("from benchmarks.experiments.gemm_shapes import _darknet\n"
            "shapes = _darknet()\n"
            "print(sum(s[6] for s in shapes), sum(2 * s[1] * s[2] * s[3] * s[6] for s in shapes))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    convolutions, flops = map(int, done.stdout.split())
    assert convolutions == 52
    classifier = 2 * 1024 * 1000
    assert abs(flops + classifier - 18.57e9) < 0.01e9, flops
