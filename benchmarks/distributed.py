"""``python -m benchmarks.distributed``: data-parallel training on 1 rank against N ranks.

For each number of ranks it starts ``mpiexec -n R python -m benchmarks.distributed
--worker``, which trains the MNIST MLP (784-128-10) and the MNIST CNN (``mnist_cnn``) with
:func:`xpnn.fit` on synthetic MNIST-shaped data at a fixed *global* batch (each rank takes
``global / R`` samples per step, so every run makes the same updates) and reports per epoch:
the wall time, and the share of it spent in the gradient all-reduce (timed around the
communicator's ``allreduce`` calls, so it includes waiting for the slower rank). The table
gives the speed-up of R ranks over 1.

Threads: nothing is changed by default; each rank's BLAS uses what the environment says
(on an N-core machine, R ranks that each start N threads oversubscribe it). Pass
``--threads-per-rank K`` (or ``share``: cores // R) to set OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS and MKL_NUM_THREADS for the ranks; the table says what ran.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WORKLOADS = ("mlp", "cnn")


def _worker(args) -> None:
    import numpy as np

    from xpnn import distributed
    from xpnn.layers import Dense, Flatten, ReLU, Sequential
    from xpnn.models import mnist_cnn
    from xpnn.optim import SGD
    from xpnn.training import fit

    comm = distributed.init()
    timed = {"seconds": 0.0, "calls": 0}
    allreduce = comm.allreduce

    def timed_allreduce(arrays, op="sum"):
        began = time.perf_counter()
        try:
            return allreduce(arrays, op)
        finally:
            timed["seconds"] += time.perf_counter() - began
            timed["calls"] += 1

    comm.allreduce = timed_allreduce
    rng = np.random.default_rng(0)
    results = {}
    for workload in args.workloads:
        samples = args.mlp_samples if workload == "mlp" else args.cnn_samples
        shape = (784,) if workload == "mlp" else (1, 28, 28)
        x = rng.random((samples, *shape), dtype=np.float32)
        y = rng.integers(0, 10, samples)
        if workload == "mlp":
            model = Sequential([Flatten(), Dense(784, 128), ReLU(), Dense(128, 10)], seed=0)
        else:
            model = mnist_cnn(seed=0)
        optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9)
        per_rank = args.global_batch // comm.size
        epochs = []
        for epoch in range(args.epochs + 1):  # the first epoch warms up
            timed["seconds"], timed["calls"] = 0.0, 0
            comm.barrier()
            began = time.perf_counter()
            fit(model, (x, y), optimizer=optimizer, epochs=1, batch_size=per_rank,
                seed=epoch, verbose=False, progress=False, communicator=comm,
                log_every=10**6)  # one epoch per call, in another order each time
            wall = time.perf_counter() - began
            if epoch:
                epochs.append((wall, timed["seconds"]))
        walls = sorted(w for w, _ in epochs)
        shares = sorted(a / w for w, a in epochs)
        slowest = comm.allgather_object(walls[len(walls) // 2])
        results[workload] = {"seconds": max(slowest), "samples": samples,
                             "allreduce_share": shares[len(shares) // 2],
                             "per_rank_batch": per_rank}
    if comm.rank == 0:
        Path(args.out).write_text(json.dumps(results))


def _launch(args, ranks: int, out: Path) -> dict:
    env = dict(os.environ)
    threads = args.threads_per_rank
    if threads == "share":
        threads = str(max(1, (os.cpu_count() or 1) // ranks))
    if threads:
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = threads
    mpiexec = Path(sys.executable).with_name("mpiexec")
    command = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks),
               sys.executable, "-m", "benchmarks.distributed", "--worker", "--out", str(out),
               "--epochs", str(args.epochs), "--global-batch", str(args.global_batch),
               "--mlp-samples", str(args.mlp_samples), "--cnn-samples", str(args.cnn_samples),
               "--workloads", *args.workloads]
    subprocess.run(command, check=True, env=env, cwd=Path(__file__).resolve().parents[1])
    result = json.loads(out.read_text())
    result["threads"] = env.get("OMP_NUM_THREADS", "(not set)")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up)")
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--mlp-samples", type=int, default=60_000)
    parser.add_argument("--cnn-samples", type=int, default=6_000)
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--threads-per-rank", default=None,
                        help="set OMP/OPENBLAS/MKL_NUM_THREADS of each rank: a number, or "
                        "'share' (cores // ranks); default: leave the environment alone")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    uneven = [ranks for ranks in args.ranks if args.global_batch % ranks]
    if uneven:
        parser.error(f"--global-batch {args.global_batch} must split evenly over the ranks. "
                     f"Received: --ranks {' '.join(map(str, uneven))}")
    if args.worker:
        _worker(args)
        return 0
    import tempfile

    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for ranks in args.ranks:
            rows[ranks] = _launch(args, ranks, Path(folder) / f"{ranks}.json")
    print(f"data-parallel xpnn.fit, NumPy backend, global batch {args.global_batch}, "
          f"median of {args.epochs} epochs (slowest rank), {os.cpu_count()} cores\n")
    print("| workload | ranks | batch per rank | BLAS threads per rank | epoch s | "
          "speed-up vs 1 rank | all-reduce share |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base = rows.get(1) or rows[min(rows)]
    for workload in args.workloads:
        for ranks, result in rows.items():
            r = result[workload]
            speedup = base[workload]["seconds"] / r["seconds"]
            print(f"| {workload} ({r['samples']:,} samples) | {ranks} | {r['per_rank_batch']} | "
                  f"{result['threads']} | {r['seconds']:.2f} | {speedup:.2f} | "
                  f"{r['allreduce_share']:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
