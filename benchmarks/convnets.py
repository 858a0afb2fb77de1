"""Convolution workloads: Conv2D forward + backward at Darknet53 shapes, and training
batches of the small MNIST CNN (``xpnn.models.mnist.mnist_cnn``, one
:func:`xpnn.training.train_step` per batch) against the same network in PyTorch with the
same initial values, batches and optimizer."""

from __future__ import annotations

import numpy as np

from benchmarks.context import Context
from benchmarks.timing import Result, alternate, gflops
from xpnn.layers import Conv2D

# (label, batch, in channels, size, out channels, kernel, stride): Darknet53 at 256x256.
CONV_SHAPES = (
    ("3x3 32->64 @128 (stage 1 block)", 2, 32, 128, 64, 3, 1),
    ("3x3 s2 64->128 @128 (stage 2 down)", 2, 64, 128, 128, 3, 2),
    ("3x3 128->256 @32 (stage 3 block)", 2, 128, 32, 256, 3, 1),
    ("3x3 512->1024 @8 (stage 5 block)", 2, 512, 8, 1024, 3, 1),
    ("1x1 128->64 @64 (stage 2 block)", 2, 128, 64, 64, 1, 1),
    ("1x1 1024->512 @8 (stage 5 block)", 2, 1024, 8, 512, 1, 1),
)


def conv_layers(ctx: Context) -> list[Result]:
    """Conv2D (no bias) forward + backward (dx and dw) at Darknet53 shapes."""
    rng = np.random.default_rng(0)
    results = []
    for label, n, c, size, o, k, stride in CONV_SHAPES:
        layer = Conv2D(c, o, k, stride=stride, padding=k // 2, bias=False, seed=0)
        x = rng.standard_normal((n, c, size, size), dtype=np.float32)
        out = (size + 2 * (k // 2) - k) // stride + 1
        dy = rng.standard_normal((n, o, out, out), dtype=np.float32)

        def xpnn_run(layer=layer, x=x, dy=dy):
            _, backprop = layer.forward(x, train=True)
            backprop(dy)
            layer.weight.grad = None

        contenders = {"xpnn": xpnn_run}
        if ctx.torch:
            import torch
            import torch.nn.functional as F

            w = torch.from_numpy(np.array(layer.weight.value)).requires_grad_(True)
            xt = torch.from_numpy(x).requires_grad_(True)
            dyt = torch.from_numpy(dy)

            def torch_run(w=w, xt=xt, dyt=dyt, stride=stride, pad=k // 2):
                F.conv2d(xt, w, None, stride, pad).backward(dyt)
                w.grad = xt.grad = None

            contenders["torch"] = torch_run
        times = alternate(contenders, repeats=ctx.reps(5, 3), warmup=ctx.warmup,
                          pause=ctx.pause)
        flops = 3 * 2 * n * o * c * k * k * out * out  # forward, dx and dw
        best = float(np.median(times["xpnn"]))
        results.append(Result(f"Conv2D fwd+bwd {label}, batch {n}", "ms", 1e3, times["xpnn"],
                              times.get("torch"),
                              f"xpnn {ctx.of_ceiling(gflops(flops, best))}"))
    return results


def mnist_cnn_training(ctx: Context, batch_size: int = 64) -> list[Result]:
    """Training batches of ``mnist_cnn`` (width 32): forward in training mode (batch
    statistics), softmax cross-entropy, backward, SGD with momentum 0.9."""
    from xpnn.models.mnist import mnist_cnn
    from xpnn.optim import SGD

    batches = 30 if ctx.quick else 150
    rng = np.random.default_rng(0)
    x = rng.random((batches * batch_size, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batches * batch_size, dtype=np.int64)
    from benchmarks.mlp import LOSS
    from xpnn.training import train_step

    model = mnist_cnn(seed=0)
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9)

    def xpnn_run():
        for b in range(batches):
            sl = slice(b * batch_size, (b + 1) * batch_size)
            train_step(model, LOSS, optimizer, x[sl], y[sl])

    contenders = {"xpnn": xpnn_run}
    if ctx.torch:
        import torch
        import torch.nn.functional as F

        from benchmarks import torch_models

        net = torch_models.load_xpnn_state(torch_models.mnist_cnn(32), model.state_dict())
        net.train()
        t_opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def torch_run():
            for b in range(batches):
                sl = slice(b * batch_size, (b + 1) * batch_size)
                t_opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(xt[sl]), yt[sl]).backward()
                t_opt.step()

        contenders["torch"] = torch_run
    times = alternate(contenders, repeats=ctx.reps(3, 2), warmup=ctx.warmup, pause=ctx.pause)
    per_epoch = 60_000 / (batches * batch_size)
    median = float(np.median(times["xpnn"])) * per_epoch
    return [Result(f"MNIST CNN (mnist_cnn, width 32) training, batch {batch_size}", "ms/batch",
                   1e3 / batches, times["xpnn"], times.get("torch"),
                   f"{batches} batches per run; xpnn ≈ {median:.0f} s per 60k epoch")]
