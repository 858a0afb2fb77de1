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
import time
from contextlib import contextmanager
from types import MethodType

import numpy as np

from benchmarks.context import Context
from benchmarks.timing import Result, alternate, gflops
from xpnn.backends import numpy_conv
from xpnn.backends.numpy_conv import Strategy

GFLOP_PER_IMAGE = 18.57  # 52 convolutions + classifier at 256x256 (multiply-add = 2 FLOP)
SIZE = 256


def _input(batch: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((batch, 3, SIZE, SIZE), dtype=np.float32)


def inference(ctx: Context) -> list[Result]:
    from xpnn.models import Darknet53

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
    ctx.notes.append(f"Darknet53 inference: {_im2col_in_use()}.")
    return results


def _im2col_in_use() -> str:
    """Which im2col xpnn's inference convolutions ran: the compiled one only where numba
    is on and loaded already (an earlier workload of this process trained with it), the
    NumPy twin otherwise (what a process that only runs inference, such as
    ``examples/darknet53.py``, gets)."""
    from xpnn.backends.numpy_conv import compiled

    with compiled.inference():  # the rule the inference convolution itself applies
        uses_compiled = compiled.usable(np.empty(0, dtype=np.float32))
    if uses_compiled:
        return ("numba's compiled im2col (numba was loaded by an earlier workload of this "
                "process; a process that only runs inference uses the NumPy im2col: "
                "`python -m benchmarks --only darknet` measures that)")
    return "the NumPy im2col (numba not loaded in this process, or off)"


class TimedStrategy(Strategy):
    """A NumPy convolution strategy that runs ``inner`` and adds the time of each inference
    forward to ``spent[key]``: how the ``layers`` workload sees inside whole-model runs
    without touching xpnn's code."""

    name = "timed"

    def __init__(self, inner: Strategy, spent: dict, key: tuple):
        self.inner, self.spent, self.key = inner, spent, key

    def supports(self, x_shape, w_shape, stride, padding, dilation=(1, 1), groups=1) -> bool:
        return self.inner.supports(x_shape, w_shape, stride, padding, dilation, groups)

    def forward(self, x, w, bias, stride, padding, scale=None, negative_slope=None,
                **geometry):
        start = time.perf_counter()
        y = self.inner.forward(x, w, bias, stride, padding, scale, negative_slope, **geometry)
        self.spent[self.key] += time.perf_counter() - start
        return y

    def forward_train(self, x, w, bias, stride, padding, **geometry):
        return self.inner.forward_train(x, w, bias, stride, padding, **geometry)

    def backward(self, dy, x, w, stride, padding, saved, need_dx=True, **geometry):
        return self.inner.backward(dy, x, w, stride, padding, saved, need_dx, **geometry)


def _layer_key(w_shape, stride, width) -> tuple:
    """(kernel size, stride, in channels, out channels, input width) of a convolution."""
    return (w_shape[2], stride[0], w_shape[1], w_shape[0], width)


@contextmanager
def _timed_convolutions(backend, spent: dict, strategies: dict):
    """While active, ``backend.ops.conv2d`` runs the planned NumPy strategy wrapped in a
    :class:`TimedStrategy` (time per layer shape into ``spent``, the strategy's name into
    ``strategies``); the kernel table's own entry is put back afterwards."""
    original = backend.ops.conv2d

    def timed_conv2d(backend, x, w, bias, stride, padding, *, scale=None,
                     negative_slope=None, dilation=(1, 1), groups=1, strategy=None):
        geometry = numpy_conv.geometry(w.shape, dilation, groups)
        inner = numpy_conv.resolve(strategy, x.shape, w.shape, stride, padding, x.itemsize,
                                   False, **geometry)
        key = _layer_key(w.shape, stride, x.shape[-1])
        strategies[key] = inner.name
        return numpy_conv.conv2d(backend, x, w, bias, stride, padding, scale=scale,
                                 negative_slope=negative_slope, dilation=dilation,
                                 groups=groups, strategy=TimedStrategy(inner, spent, key))

    backend.ops.conv2d = MethodType(timed_conv2d, backend)
    try:
        yield
    finally:
        backend.ops.conv2d = original


def layers(ctx: Context) -> list[Result]:
    """Where the Darknet53 time goes: each conv + BatchNorm + LeakyReLU shape's total time
    inside whole-model runs (not in isolation: caches and BLAS threads as the model leaves
    them), both frameworks alternating, batch 1 (and 8 unless --quick).

    xpnn's side is the fused convolution kernel (BatchNorm and the activation run inside
    it), timed by wrapping the planned NumPy strategy (:class:`TimedStrategy`); PyTorch's
    is each ConvBNAct module, timed by forward hooks."""
    if not ctx.torch:
        ctx.notes.append("Darknet53 layers: skipped, it compares with PyTorch.")
        return []
    from collections import defaultdict

    from benchmarks import torch_models
    from xpnn.layers.blocks import ConvBNAct
    from xpnn.models import Darknet53

    model = Darknet53(seed=0)
    if model.backend.name != "numpy":
        ctx.notes.append(f"Darknet53 layers: skipped, it times the NumPy convolution "
                         f"strategies (backend: {model.backend.name}).")
        return []
    net = torch_models.load_xpnn_state(torch_models.Darknet53(), model.state_dict()).eval()
    spent: dict[str, dict] = {"xpnn": defaultdict(float), "torch": defaultdict(float)}
    strategies: dict[tuple, str] = {}

    def key(conv, x) -> tuple:
        return _layer_key(tuple(conv.weight.shape), conv.stride, x.shape[-1])

    starts: dict = {}
    hooks = []
    for module in net.modules():
        if isinstance(module, torch_models.ConvBNAct):
            hooks.append(module.register_forward_pre_hook(
                lambda m, inputs: starts.__setitem__(id(m), time.perf_counter())))
            hooks.append(module.register_forward_hook(
                lambda m, inputs, out: spent["torch"].__setitem__(
                    key(m.conv, inputs[0]),
                    spent["torch"][key(m.conv, inputs[0])] + time.perf_counter() - starts[id(m)])))
    layer_count = defaultdict(int)
    for block in model.modules():
        if isinstance(block, ConvBNAct):
            layer_count[(block.conv.kernel_size[0], block.conv.stride[0],
                         block.conv.in_channels, block.conv.out_channels)] += 1
    results = []
    try:
        with _timed_convolutions(model.backend, spent["xpnn"], strategies):
            for batch in (1,) if ctx.quick else (1, 8):
                results += _layers_at(ctx, batch, model, net, spent, strategies, layer_count)
    finally:
        for hook in hooks:
            hook.remove()
    return results


def _layers_at(ctx, batch, model, net, spent, strategies, layer_count) -> list[Result]:
    import torch

    x = _input(batch)
    xt = torch.from_numpy(x)
    per_run: dict[str, list] = {"xpnn": [], "torch": []}
    runs = ctx.reps(5, 3) if batch == 1 else ctx.reps(3, 2)
    for repetition in range(ctx.warmup + runs):
        for side in ("xpnn", "torch"):
            spent[side].clear()
            if side == "xpnn":
                model(x)
            else:
                with torch.inference_mode():
                    net(xt)
            if repetition >= ctx.warmup:
                per_run[side].append(dict(spent[side]))
            time.sleep(ctx.pause)
    results = []
    for shape in per_run["xpnn"][0]:
        k, stride, c_in, c_out, size = shape
        label = (f"Darknet53 layers {k}x{k}{' s2' if stride == 2 else ''} "
                 f"{c_in}->{c_out} @{size} (x{layer_count[shape[:4]]}), batch {batch}")
        xpnn_times = [run[shape] for run in per_run["xpnn"]]
        torch_times = [run.get(shape, 0.0) for run in per_run["torch"]]
        flop = 2 * k * k * c_in * c_out * (size // stride) ** 2 * batch * layer_count[shape[:4]]
        note = (f"xpnn {gflops(flop, float(np.median(xpnn_times))):.0f} GFLOP/s "
                f"({strategies[shape]})")
        results.append(Result(label, "ms", 1e3, xpnn_times, torch_times, note))
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
        from xpnn.models import Darknet53

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
