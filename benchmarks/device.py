"""``python -m benchmarks --backend NAME``: xpnn on backend NAME against PyTorch on the
same device, in one process, alternating.

For ``--backend cupy`` PyTorch runs on CUDA device 0 (xpnn's GPU); for ``--backend torch``
it runs where xpnn's torch backend runs (the CPU here, so CI exercises this harness);
NumPy and the others compare with PyTorch on the CPU. Every timed run ends with the
device's queue drained (``Backend.synchronize``, ``torch.cuda.synchronize``), so a GPU's
asynchronous launches are measured, not just queued. Both sides get the same initial
values, batches and optimizer, with their data already on the device.

Workloads: the MNIST MLP epoch (784-128-10, batch 128, SGD), MNIST CNN training steps
(``mnist_cnn``, batch 256, SGD with momentum), Darknet53 256x256 inference at batch 1, 8
and 64 (1 and 8 with ``--quick``) in float32 and in mixed float16 (xpnn's
``MixedPrecision("mixed_float16").predict``, which casts the weights to float16 at each call,
against PyTorch's ``autocast(float16)``, which casts each layer's weights as it runs), and on
GPUs the peak device memory of Darknet53 at the largest batch.
"""

from __future__ import annotations

import numpy as np

from benchmarks.context import Context
from benchmarks.timing import Result, alternate

__all__ = ["run"]


def _torch_device(backend):
    """Where PyTorch should run to compare with ``backend``."""
    import torch

    device = getattr(backend, "device", None)
    if isinstance(device, torch.device):
        return device
    if backend.name == "cupy":
        return torch.device("cuda", int(getattr(device, "id", 0)))
    return torch.device("cpu")


def _timed(run, backend, torch_device):
    """``run`` followed by waiting for both frameworks' device queues."""

    def timed():
        run()
        backend.synchronize()
        if torch_device.type == "cuda":
            import torch

            torch.cuda.synchronize(torch_device)

    return timed


def mlp_epoch(ctx: Context, backend, torch_device) -> list[Result]:
    import torch
    import torch.nn.functional as F

    from benchmarks import torch_models
    from benchmarks.mlp import LOSS, build_pair, synthetic_mnist
    from xpnn import backends
    from xpnn.optim import SGD
    from xpnn.training import train_step

    n, batch = ctx.size(60_000, 15_000, 512), 128
    x, y = synthetic_mnist(n)
    with backends.use(backend):
        model, _ = build_pair((784, 128, 10), with_torch=False)
        optimizer = SGD(model.parameters(), lr=0.01)
        xd, yd = backend.asarray(x), backend.asarray(y, "int64")
    net = torch_models.load_xpnn_state(torch_models.mlp((784, 128, 10)),
                                       model.state_dict()).to(torch_device)
    t_opt = torch.optim.SGD(net.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x).to(torch_device), torch.from_numpy(y).to(torch_device)

    def xpnn_run():
        for start in range(0, n, batch):
            train_step(model, LOSS, optimizer, xd[start:start + batch], yd[start:start + batch])

    def torch_run():
        for start in range(0, n, batch):
            t_opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(xt[start:start + batch]), yt[start:start + batch]).backward()
            t_opt.step()

    times = alternate({"xpnn": _timed(xpnn_run, backend, torch_device),
                       "torch": _timed(torch_run, backend, torch_device)},
                      repeats=ctx.reps(5, 3), warmup=ctx.warmup, pause=ctx.pause)
    return [Result(f"MLP 784-128-10 SGD epoch, batch {batch}", "s", 60_000 / n,
                   times["xpnn"], times["torch"],
                   "" if n == 60_000 else f"{n:,} samples timed, scaled to 60,000")]


def cnn_steps(ctx: Context, backend, torch_device, batch: int = 256) -> list[Result]:
    import torch
    import torch.nn.functional as F

    from benchmarks import torch_models
    from benchmarks.mlp import LOSS
    from xpnn import backends
    from xpnn.models.mnist import mnist_cnn
    from xpnn.optim import SGD
    from xpnn.training import train_step

    steps = ctx.size(20, 5, 1)
    rng = np.random.default_rng(0)
    x = rng.random((steps * batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, steps * batch, dtype=np.int64)
    with backends.use(backend):
        model = mnist_cnn(seed=0)
        optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9)
        xd, yd = backend.asarray(x), backend.asarray(y, "int64")
    net = torch_models.load_xpnn_state(torch_models.mnist_cnn(32),
                                       model.state_dict()).to(torch_device).train()
    t_opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    xt, yt = torch.from_numpy(x).to(torch_device), torch.from_numpy(y).to(torch_device)

    def xpnn_run():
        for b in range(steps):
            train_step(model, LOSS, optimizer, xd[b * batch:(b + 1) * batch],
                       yd[b * batch:(b + 1) * batch])

    def torch_run():
        for b in range(steps):
            t_opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(xt[b * batch:(b + 1) * batch]),
                            yt[b * batch:(b + 1) * batch]).backward()
            t_opt.step()

    times = alternate({"xpnn": _timed(xpnn_run, backend, torch_device),
                       "torch": _timed(torch_run, backend, torch_device)},
                      repeats=ctx.reps(3, 2), warmup=ctx.warmup, pause=ctx.pause)
    return [Result(f"MNIST CNN training step, batch {batch}", "ms/step", 1e3 / steps,
                   times["xpnn"], times["torch"], f"{steps} steps per run")]


def darknet(ctx: Context, backend, torch_device) -> list[Result]:
    import torch

    from benchmarks import torch_models
    from xpnn import backends
    from xpnn.models import Darknet53

    with backends.use(backend):
        model = Darknet53(seed=0)
    net = torch_models.load_xpnn_state(torch_models.Darknet53(),
                                       model.state_dict()).to(torch_device).eval()
    results = []
    batches = (1,) if ctx.smoke else (1, 8) if ctx.quick else (1, 8, 64)
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, 3, 256, 256), dtype=np.float32)
        xd, xt = backend.asarray(x), torch.from_numpy(x).to(torch_device)

        def xpnn_run(xd=xd):
            model(xd)

        def torch_run(xt=xt):
            with torch.inference_mode():
                net(xt)

        if batch == 1:
            with torch.inference_mode():
                theirs = net(xt).cpu().numpy()
            ours = np.asarray(backend.to_numpy(model(xd)))
            ctx.notes.append(f"Darknet53 on {backend.name}: max |xpnn - PyTorch| logit "
                             f"difference {float(np.max(np.abs(ours - theirs))):.2e}")
        times = alternate({"xpnn": _timed(xpnn_run, backend, torch_device),
                           "torch": _timed(torch_run, backend, torch_device)},
                          repeats=ctx.reps(5, 3) if batch < 64 else ctx.reps(3, 2),
                          warmup=ctx.warmup, pause=ctx.pause)
        results.append(Result(f"Darknet53 256x256 inference, float32, batch {batch}",
                              "s/image", 1.0 / batch, times["xpnn"], times["torch"]))
        results.append(_darknet_mixed(ctx, model, net, backend, torch_device, xd, xt))
    if torch_device.type == "cuda":
        results.append(_peak_memory(model, net, backend, torch_device, batches[-1]))
    return results


def _darknet_mixed(ctx: Context, model, net, backend, torch_device, xd, xt) -> Result:
    """Darknet53 inference in mixed float16 on both sides, and (batch 1) the largest
    |Δlogit| of each framework's float16 run against its own float32 run."""
    import torch

    from xpnn.mixed_precision import MixedPrecision

    mixed, batch = MixedPrecision("mixed_float16"), int(xd.shape[0])

    def xpnn_run():
        mixed.predict(model, xd)

    def torch_run():
        with torch.inference_mode(), torch.autocast(torch_device.type, dtype=torch.float16):
            net(xt)

    if batch == 1:
        ours = np.asarray(backend.to_numpy(mixed.predict(model, xd)), dtype=np.float64)
        full = np.asarray(backend.to_numpy(model(xd)), dtype=np.float64)
        with torch.inference_mode():
            theirs_full = net(xt).double().cpu().numpy()
            with torch.autocast(torch_device.type, dtype=torch.float16):
                theirs = net(xt).double().cpu().numpy()
        ctx.notes.append(
            f"Darknet53 mixed float16 on {backend.name}: max |Δlogit| against float32 "
            f"xpnn {np.max(np.abs(ours - full)):.2e}, PyTorch "
            f"{np.max(np.abs(theirs - theirs_full)):.2e} (largest logit "
            f"{np.max(np.abs(full)):.2e})")
    times = alternate({"xpnn": _timed(xpnn_run, backend, torch_device),
                       "torch": _timed(torch_run, backend, torch_device)},
                      repeats=ctx.reps(5, 3) if batch < 64 else ctx.reps(3, 2),
                      warmup=ctx.warmup, pause=ctx.pause)
    return Result(f"Darknet53 256x256 inference, mixed float16, batch {batch}", "s/image",
                  1.0 / batch, times["xpnn"], times["torch"])


def _peak_memory(model, net, backend, torch_device, batch: int) -> Result:
    """Peak device memory of one Darknet53 inference at ``batch``: the memory each
    library's allocator reserved (CuPy's pool high-water mark against
    ``torch.cuda.max_memory_reserved``), each after emptying its cache and without the
    weights."""
    import cupy
    import torch

    x = np.random.default_rng(0).standard_normal((batch, 3, 256, 256), dtype=np.float32)
    backend.free_memory()
    pool = cupy.get_default_memory_pool()
    before = pool.used_bytes()
    peak = {"bytes": 0}
    xd = backend.asarray(x)
    out = model(xd)
    backend.synchronize()
    peak["bytes"] = pool.total_bytes() - before
    del out, xd
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(torch_device)
    start = torch.cuda.memory_reserved(torch_device)
    with torch.inference_mode():
        net(torch.from_numpy(x).to(torch_device))
    torch.cuda.synchronize(torch_device)
    theirs = torch.cuda.max_memory_reserved(torch_device) - start
    return Result(f"Darknet53 peak device memory, batch {batch}", "MiB", 1 / 2**20,
                  [float(peak["bytes"])], [float(theirs)],
                  "memory reserved by each allocator during the run")


def run(ctx: Context, name: str) -> list[Result]:
    """Every workload with xpnn on backend ``name`` against PyTorch on the same device."""
    from xpnn import backends

    backend = backends.make_backend(name, "device1" if name == "array_api_strict" else None)
    torch_device = _torch_device(backend)
    ctx.notes.append(f"xpnn on {backend!r}; PyTorch on {torch_device}")
    results = []
    for workload in (mlp_epoch, cnn_steps, darknet):
        results.extend(workload(ctx, backend, torch_device))
    return results
