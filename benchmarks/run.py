"""xpnn against PyTorch CPU, side by side: ``python -m benchmarks [--quick]``.

Every workload runs xpnn (on the current backend, ``XPNN_BACKEND``) and the same model in
plain eager PyTorch in one process, alternating repetitions after a warm-up, with the same
initial values, data, batch order, dtype (float32) and optimizer. PyTorch gets as many
threads as NumPy's BLAS has (read with threadpoolctl); nothing else is changed: the run
prints the thread counts and BLAS variables it found. For a contention-robust comparison
run it again with one thread::

    OPENBLAS_NUM_THREADS=1 python -m benchmarks --quick

The table (medians, min-max, xpnn / PyTorch) is printed and written to
``benchmarks/results/<date>-<threads>t[-quick].md``.

Workloads (``--only`` takes a comma-separated subset of these names):
    ceiling   NumPy (and PyTorch) float32 matmul GFLOP/s on a large square product
    mlp       784-128-10 SGD epoch of 60,000 MNIST-shaped samples, batch 32, 128, 512
    step      the same network, single-sample SGD steps (µs per step)
    target    784-256-10 SGD, He init, to 96% test accuracy on MNIST (needs --data)
    conv      Conv2D forward + backward at Darknet53 shapes
    cnn       training batches of the small MNIST CNN
    darknet   Darknet53 inference at 256x256, batch 1 and 8 (s/image, GFLOP/s)
    layers    Darknet53's time per conv + BatchNorm + LeakyReLU shape inside whole-model runs
    memory    Darknet53 peak resident memory, one process per framework
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

from benchmarks.context import Context
from benchmarks.timing import (
    HEADER,
    blas_threads,
    describe_environment,
    load_average,
    match_torch_threads,
)

WORKLOADS = ("ceiling", "mlp", "step", "target", "conv", "cnn", "darknet", "layers", "memory")


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="xpnn vs PyTorch CPU, side by side.",
        epilog=__doc__.split("Workloads", 1)[1].join(["Workloads", ""]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions and smaller runs (a few minutes on 2 cores)")
    parser.add_argument("--only", default=",".join(WORKLOADS),
                        help=f"comma-separated workloads (default all: {','.join(WORKLOADS)})")
    parser.add_argument("--data", default=os.environ.get("XPNN_DATA"),
                        help="folder holding MNIST's idx files (default $XPNN_DATA)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="maximum timed repetitions per workload (default 7)")
    parser.add_argument("--pause", type=float, default=0.2,
                        help="seconds between contenders, so spinning BLAS threads go idle")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"),
                        help="folder for the markdown result (default benchmarks/results)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--smoke", action="store_true",
                        help="with --backend: the smallest sizes and one repetition, to "
                        "check the harness runs (no meaningful timings)")
    parser.add_argument("--backend", default=None,
                        help="run the device harness instead (benchmarks/device.py): xpnn "
                        "on this backend (cupy, torch, ...) against PyTorch on the same "
                        "device")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
    return args, chosen


def device_main(args) -> int:
    """``--backend NAME``: the device harness of :mod:`benchmarks.device`."""
    from benchmarks import device
    from xpnn import backends

    ok, version, reason = backends.probe(args.backend)
    if not ok:
        print(f"error: --backend {args.backend} cannot run here: {reason}", file=sys.stderr)
        return 2
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: --backend compares with PyTorch, which is not installed",
              file=sys.stderr)
        return 2
    ctx = Context(quick=args.quick, repeats=args.repeats, pause=args.pause, torch=True,
                  data_dir=args.data, smoke=args.smoke,
                  warmup=0 if args.smoke else Context.warmup)
    lines = [f"# xpnn on {args.backend} {version} vs PyTorch on the same device "
             f"({'quick' if args.quick else 'full'} run, {datetime.datetime.now():%Y-%m-%d %H:%M})",
             "", f"- Machine: {describe_environment()}", "", HEADER]
    print("\n".join(lines), flush=True)
    results = device.run(ctx, args.backend)
    lines += [r.markdown() for r in results]
    for result in results:
        print(result.markdown(), flush=True)
    lines += ["", *(f"- {note}" for note in ctx.notes)]
    print("\n".join(f"- {note}" for note in ctx.notes))
    if not args.no_write:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        name = f"{datetime.date.today():%Y-%m-%d}-{args.backend}{'-quick' if args.quick else ''}.md"
        (out / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"Wrote {out / name}")
    return 0


def main(argv=None) -> int:
    args, chosen = _parse(argv)
    if args.backend is not None:
        return device_main(args)
    try:
        import torch  # noqa: F401

        has_torch = True
    except ImportError:
        has_torch = False
    ctx = Context(quick=args.quick, repeats=args.repeats, pause=args.pause, torch=has_torch,
                  data_dir=args.data)
    import xpnn
    from xpnn.backends import allocator

    allocator.keep_freed_memory()  # as fit does when training starts (XPNN_MALLOC_TUNING=0: off)

    lines = [f"# xpnn vs PyTorch CPU ({'quick' if args.quick else 'full'} run, "
             f"{datetime.datetime.now():%Y-%m-%d %H:%M})", ""]
    threads_note = match_torch_threads()
    lines += [f"- Machine: {describe_environment()}",
              f"- Threads: {threads_note}",
              f"- xpnn backend: {xpnn.backends.current().name}",
              f"- Host memory (both frameworks share the process's allocator): "
              f"{allocator.status()}",
              f"- Load average at start: {load_average()}"]
    if not has_torch:
        lines.append("- **PyTorch is not installed: xpnn-only numbers** "
                     "(pip install torch --index-url https://download.pytorch.org/whl/cpu).")
    print("\n".join(lines), flush=True)

    results = []
    started = time.perf_counter()
    if "ceiling" in chosen:
        from benchmarks.ceiling import matmul_gflops

        size = 2048 if args.quick else 4096
        ctx.ceiling = matmul_gflops(size)
        line = f"- Ceiling: NumPy float32 matmul {size}x{size}: {ctx.ceiling:.0f} GFLOP/s"
        if has_torch:
            line += f"; PyTorch: {matmul_gflops(size, 'torch'):.0f} GFLOP/s"
        lines.append(line)
        print(line, flush=True)

    from benchmarks import convnets, darknet, mlp

    runners = {"mlp": mlp.epochs, "step": mlp.single_steps, "target": mlp.time_to_accuracy,
               "conv": convnets.conv_layers, "cnn": convnets.mnist_cnn_training,
               "darknet": darknet.inference, "layers": darknet.layers,
               "memory": darknet.memory}
    print("\n" + HEADER, flush=True)
    for name in chosen:
        if name == "ceiling":
            continue
        for result in runners[name](ctx):
            results.append(result)
            print(result.markdown(), flush=True)

    lines += ["", HEADER, *(r.markdown() for r in results), ""]
    lines.append("Ratio below 1: xpnn is faster (or smaller). Times are medians of alternating "
                 "runs in one process; memory is measured in a separate process per framework.")
    lines += [f"- {note}" for note in ctx.notes]
    lines.append(f"- Load average at end: {load_average()}; suite took "
                 f"{time.perf_counter() - started:.0f} s.")
    for note in ctx.notes:
        print(f"- {note}")
    print(lines[-1])
    if not args.no_write:
        threads, _ = blas_threads()
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        mode = "-quick" if args.quick else ""
        name = f"{datetime.date.today():%Y-%m-%d}-{threads or 'x'}t{mode}.md"
        (out / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"Wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
