"""Darknet53 inference at 256x256: seconds per image and GFLOP/s in one process
(alternating), and peak resident memory of each framework in a process of its own.

    python -m benchmarks.darknet memory --framework xpnn --batch 8

runs one framework alone and prints JSON with its peak resident set (VmHWM): the
interpreter, the framework, the model (41.6 M float32 parameters, 167 MB) and the
inference itself.

Both frameworks get the same weights (random, from xpnn's seed, copied into PyTorch).
xpnn runs ``model(x)`` (evaluation mode: BatchNorm folded into the convolutions); PyTorch
runs ``net.eval()`` under ``torch.inference_mode()`` (eager, BatchNorm not folded: what a
user of plain PyTorch gets).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from benchmarks.context import Context
from benchmarks.timing import Result, alternate, gflops

GFLOP_PER_IMAGE = 18.57  # 52 convolutions + classifier at 256x256 (multiply-add = 2 FLOP)
SIZE = 256


def _input(batch: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((batch, 3, SIZE, SIZE), dtype=np.float32)


def inference(ctx: Context) -> list[Result]:
    from xpnn.models.darknet53 import Darknet53

    model = Darknet53(seed=0)
    net = None
    if ctx.torch:
        import torch

        from benchmarks import torch_models

        net = torch_models.load_xpnn_state(torch_models.Darknet53(), model.state_dict()).eval()
    results = []
    for batch in (1, 8):
        x = _input(batch)
        contenders = {"xpnn": lambda x=x: model(x)}
        if net is not None:
            xt = torch.from_numpy(x)

            def torch_run(xt=xt):
                with torch.inference_mode():
                    return net(xt)

            contenders["torch"] = torch_run
            if batch == 1:  # the two implementations agree (same weights, folded BN)
                diff = float(np.max(np.abs(np.asarray(model(x)) - torch_run().numpy())))
                scale = float(np.max(np.abs(torch_run().numpy())))
                ctx.notes.append(f"Darknet53: max |xpnn - PyTorch| logit difference "
                                 f"{diff:.2e} (largest logit {scale:.2e}).")
        repeats = ctx.reps(5, 3) if batch == 1 else ctx.reps(3, 2)
        times = alternate(contenders, repeats=repeats, warmup=ctx.warmup, pause=ctx.pause)
        per_image = float(np.median(times["xpnn"])) / batch
        note = f"xpnn {ctx.of_ceiling(gflops(GFLOP_PER_IMAGE * 1e9, per_image))}"
        if "torch" in times:
            torch_image = float(np.median(times["torch"])) / batch
            note += f"; PyTorch {gflops(GFLOP_PER_IMAGE * 1e9, torch_image):.0f} GFLOP/s"
        results.append(Result(f"Darknet53 256x256 inference, batch {batch}", "s/image",
                              1.0 / batch, times["xpnn"], times.get("torch"), note))
    return results


def memory(ctx: Context, batches=(1, 8)) -> list[Result]:
    """Peak resident memory of each framework running Darknet53 inference alone."""
    results = []
    for batch in batches:
        peaks = {}
        for framework in ("xpnn", "torch") if ctx.torch else ("xpnn",):
            command = [sys.executable, "-m", "benchmarks.darknet", "memory",
                       "--framework", framework, "--batch", str(batch)]
            done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(),
                                  cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            if done.returncode != 0:
                ctx.notes.append(f"Darknet53 memory ({framework}, batch {batch}) failed: "
                                 f"{done.stderr.strip().splitlines()[-1:]}")
                continue
            peaks[framework] = json.loads(done.stdout.strip().splitlines()[-1])
        if "xpnn" not in peaks:
            continue
        mb = 1 / 2**20
        xp = peaks["xpnn"]
        th = peaks.get("torch")
        note = (f"after building the model: xpnn {xp['built'] * mb:.0f} MB"
                + (f", PyTorch {th['built'] * mb:.0f} MB" if th else "")
                + "; one process per framework")
        results.append(Result(f"Darknet53 peak resident memory, batch {batch}", "MB", mb,
                              [xp["peak"]], [th["peak"]] if th else None, note))
    return results


# -- the child process -----------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure(framework: str, batch: int, runs: int) -> dict:
    x = _input(batch)
    if framework == "xpnn":
        from xpnn.models.darknet53 import Darknet53

        model = Darknet53(seed=0)
        built = _status_kb("VmRSS") * 1024
        for _ in range(runs):
            model(x)
        assert "torch" not in sys.modules, "the xpnn process must not load PyTorch"
    else:
        import torch

        from benchmarks.timing import match_torch_threads

        match_torch_threads()
        from benchmarks import torch_models

        net = torch_models.Darknet53().eval()
        built = _status_kb("VmRSS") * 1024
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            for _ in range(runs):
                net(xt)
    return {"framework": framework, "batch": batch, "built": built,
            "peak": _status_kb("VmHWM") * 1024}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.darknet")
    commands = parser.add_subparsers(dest="command", required=True)
    mem = commands.add_parser("memory", help="peak RSS of one framework (prints JSON)")
    mem.add_argument("--framework", choices=("xpnn", "torch"), required=True)
    mem.add_argument("--batch", type=int, default=1)
    mem.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(_measure(args.framework, args.batch, args.runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
