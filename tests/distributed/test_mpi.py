"""xpnn.distributed across real processes: ``mpiexec -n 2`` runs tests/distributed/mpi_worker.py.

Skipped, with the reason, where mpi4py or an ``mpiexec`` is missing (CI installs the
``distributed`` extra, which brings both). Every launch has a timeout, so a rank stuck in
a collective fails the test instead of hanging the suite, and each rank's BLAS runs one
thread (two ranks share this machine's cores).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("mpi_worker.py")
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 240


def _mpiexec() -> str | None:
    beside_python = Path(sys.executable).with_name("mpiexec")
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("mpiexec")


def _skip_reason() -> str:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return 'mpi4py is not installed (pip install "xpnn[distributed]")'
    if _mpiexec() is None:
        return 'no mpiexec found (pip install "xpnn[distributed]" brings MPICH\'s)'
    return ""


pytestmark = pytest.mark.skipif(bool(_skip_reason()), reason=_skip_reason() or "MPI present")


def launch(args: list[str], tmp_path: Path, *, ranks: int = 2, timeout: float = TIMEOUT):
    """Run ``mpiexec -n ranks python ARGS``; returns (completed process, seconds)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT), XPNN_BACKEND="numpy",
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("XPNN_DATA", None)
    started = time.perf_counter()
    done = subprocess.run([_mpiexec(), "-n", str(ranks), sys.executable, *args],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=tmp_path)
    return done, time.perf_counter() - started


def run_scenario(name: str, tmp_path: Path) -> dict:
    done, _ = launch([str(WORKER), name, str(tmp_path)], tmp_path)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert f"scenario {name} passed on 2 ranks" in done.stdout
    return json.loads((tmp_path / f"{name}.json").read_text())


def test_collectives_sum_average_and_broadcast_rank_dependent_arrays(tmp_path):
    result = run_scenario("collectives", tmp_path)
    assert result["size"] == 2 and "numpy" in result["backends"]


def test_every_rank_holds_rank_0s_parameters_after_the_broadcast(tmp_path):
    result = run_scenario("broadcast", tmp_path)
    assert "rank 1" in result["message"]


def test_two_ranks_with_batch_b_equal_one_process_with_batch_2b(tmp_path):
    result = run_scenario("equivalence", tmp_path)
    assert result["sgd"] < 1e-12 and result["adam"] < 1e-12
    assert max(result.values()) < 1e-12, result


def test_stop_decisions_agree_on_every_rank_and_with_one_process(tmp_path):
    result = run_scenario("stopping", tmp_path)
    assert result["patience"][1].startswith("no test-loss improvement")
    assert result["target_accuracy"][1].startswith("reached target accuracy")


def test_sync_batchnorm_equals_the_global_batch_and_per_rank_statistics_differ(tmp_path):
    result = run_scenario("batchnorm", tmp_path)
    assert result["synced"] < 1e-10 < 1e-6 < result["per_rank"]


def test_checkpoint_and_resume_with_two_ranks(tmp_path):
    result = run_scenario("resume", tmp_path)
    assert result["after_epochs"] < 1e-12 and result["after_ctrl_c"] < 1e-12
    assert "global batch" in result["message"]


def test_errors_on_one_rank_are_raised_on_every_rank_so_none_waits(tmp_path):
    messages = run_scenario("failures_agree", tmp_path)
    assert "rank 1" in messages["data"]


def test_an_exception_on_rank_1_ends_the_job_and_keeps_the_last_checkpoint(tmp_path):
    from xpnn.io import load_metadata

    done, seconds = launch([str(WORKER), "planted_failure", str(tmp_path)], tmp_path,
                           timeout=120)
    assert done.returncode != 0
    assert "[rank 1]" in done.stderr and "planted failure on rank 1" in done.stderr
    assert "training went on" not in done.stderr
    assert seconds < 60, f"the job took {seconds:.1f} s to end"
    position = json.loads(load_metadata(tmp_path / "kept.safetensors")["position"])
    assert (position["epoch"], position["batches_done"], position["ranks"]) == (1, 0, 2)


def test_sharded_inference_returns_outputs_in_input_order(tmp_path):
    assert run_scenario("inference", tmp_path) == {"rows": 7}


def test_mnist_example_trains_data_parallel_and_prints_once(tmp_path):
    # the embedded 4,000-image sample: no MNIST in this (empty) cache folder
    args = [str(ROOT / "examples" / "mnist.py"), "--epochs", "2", "--batch-size", "32",
            "--checkpoint", str(tmp_path / "mnist.safetensors")]
    done, _ = launch(args, tmp_path)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert done.stdout.count("epoch 2/2") == 1, done.stdout
    assert "2 ranks" in done.stdout, done.stdout
    resumed, _ = launch(args[:2] + ["3"] + args[3:] + ["--resume",
                                                       str(tmp_path / "mnist.safetensors")],
                        tmp_path)
    assert resumed.returncode == 0, f"{resumed.stdout}\n{resumed.stderr}"
    assert resumed.stdout.count("epoch 3/3") == 1 and "epoch 1/3" not in resumed.stdout


def test_darknet53_example_splits_images_over_ranks_and_prints_them_in_order(tmp_path,
                                                                            tiny_darknet):
    images = tiny_darknet
    args = [str(ROOT / "examples" / "darknet53.py"), *images, "--weights", "tiny.safetensors",
            "--batch-size", "2", "--top", "3"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), XPNN_BACKEND="numpy")
    one = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=TIMEOUT)
    two, _ = launch(args, tmp_path)
    assert one.returncode == two.returncode == 1  # one file was not an image
    results = [line for line in one.stdout.splitlines() if "%" in line or line.startswith("img")]
    assert [line for line in results if line.startswith("img")] == [
        name for name in images if name != "broken.png"]
    assert len(results) == 5 * 4
    assert [line for line in two.stdout.splitlines()
            if "%" in line or line.startswith("img")] == results
    assert two.stdout.count("Darknet53 from") == 1
    assert "summed over 2 ranks" in two.stdout
    assert two.stderr.count("broken.png") == 1
