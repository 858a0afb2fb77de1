"""MLP workloads: training epochs at three batch sizes, single-sample SGD steps, and the
time a 784-256-10 network needs to reach 96% test accuracy on MNIST.

Both frameworks start from the same initial values (xpnn's, copied into PyTorch), see the
same batches in the same order (``xpnn.datasets.epoch_order``), and run plain SGD with
the mean softmax cross-entropy. The xpnn loop calls :func:`xpnn.training.train_step`, the
function :func:`xpnn.fit` runs per batch (forward, loss, backprop, ``step``,
``zero_grad``), without fit's logging; the PyTorch loop is the idiomatic eager one. Like
PyTorch, which computes no gradient for a data tensor, ``train_step`` asks the model not
to compute the gradient of its input, and like ``fit`` (which checks host labels once) the
loss skips its per-batch label check (:data:`LOSS`).
"""

from __future__ import annotations

import functools

import numpy as np

import xpnn
from benchmarks.context import Context
from benchmarks.timing import Result, alternate
from xpnn.datasets.batches import BatchLoader
from xpnn.layers import Dense, Flatten, ReLU, Sequential
from xpnn.losses import softmax_cross_entropy
from xpnn.optim import SGD
from xpnn.training import train_step

SAMPLES = 60_000
# The synthetic labels are in range by construction, so the loss skips its per-batch range
# check (a host synchronization), as fit does after checking host labels once.
LOSS = functools.partial(softmax_cross_entropy, check_labels=False)


def synthetic_mnist(n: int, seed: int = 0):
    """``n`` MNIST-shaped samples: float32 pixels in [0, 1) (N, 784) and int64 labels."""
    rng = np.random.default_rng(seed)
    return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n, dtype=np.int64)


def build_pair(sizes, *, weight_init="torch", bias_init="torch", seed=0, with_torch=True):
    """An xpnn MLP and the same network in PyTorch holding the same values."""
    layers = [Flatten()]
    for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(Dense(n_in, n_out, weight_init=weight_init, bias_init=bias_init))
        if index < len(sizes) - 2:
            layers.append(ReLU())
    model = Sequential(layers, seed=seed)
    net = None
    if with_torch:
        from benchmarks import torch_models

        net = torch_models.load_xpnn_state(torch_models.mlp(sizes), model.state_dict())
    return model, net


def readme_step(model, x, labels, opt):
    """One training step written exactly as the README's code block writes it
    (tests/test_readme.py checks that the README holds these four lines)."""
    logits, backprop = model.forward(x, train=True)       # backprop is a closure
    loss, dlogits = xpnn.losses.softmax_cross_entropy(logits, labels)
    backprop(dlogits, need_input_grad=False)              # fills .grad of every parameter
    opt.step(); opt.zero_grad()  # noqa: E702 (as the README writes it)


def readme_epoch_runner(model, loader: BatchLoader, lr: float):
    """The README's step (with the loss's own label check, as users call it) per batch."""
    opt = SGD(model.parameters(), lr=lr)

    def run():
        loader.set_epoch(0)
        for xb, yb in loader:
            readme_step(model, xb, yb, opt)

    return run


def xpnn_epoch_runner(model, loader: BatchLoader, lr: float):
    optimizer = SGD(model.parameters(), lr=lr)

    def run():
        loader.set_epoch(0)
        for xb, yb in loader:
            train_step(model, LOSS, optimizer, xb, yb)

    return run


def torch_epoch_runner(net, x, y, order, batch_size: int, lr: float):
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    xt, yt, order_t = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(order)
    n = len(x)

    def run():
        for start in range(0, n, batch_size):
            index = order_t[start:start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(xt[index]), yt[index])
            loss.backward()
            optimizer.step()

    return run


def epochs(ctx: Context) -> list[Result]:
    """784-128-10, SGD lr 0.01, one epoch of synthetic MNIST at batch 32, 128 and 512."""
    n = 15_000 if ctx.quick else SAMPLES
    x, y = synthetic_mnist(n)
    results = []
    for batch_size in (32, 128, 512):
        model, net = build_pair((784, 128, 10), with_torch=ctx.torch)
        loader = BatchLoader(x, y, batch_size, shuffle=True, seed=0)
        contenders = {"xpnn": xpnn_epoch_runner(model, loader, 0.01)}
        if net is not None:
            contenders["torch"] = torch_epoch_runner(net, x, y, loader.order(0), batch_size, 0.01)
        times = alternate(contenders, repeats=ctx.reps(5, 3), warmup=ctx.warmup,
                          pause=ctx.pause)
        note = "" if n == SAMPLES else f"{n:,} samples timed, scaled to 60,000"
        results.append(Result(f"MLP 784-128-10 SGD epoch, batch {batch_size}", "s",
                              SAMPLES / n, times["xpnn"], times.get("torch"), note))
    # the same epoch at batch 128 written as the README's code block
    model, net = build_pair((784, 128, 10), with_torch=ctx.torch)
    loader = BatchLoader(x, y, 128, shuffle=True, seed=0)
    contenders = {"xpnn": readme_epoch_runner(model, loader, 0.01)}
    if net is not None:
        contenders["torch"] = torch_epoch_runner(net, x, y, loader.order(0), 128, 0.01)
    times = alternate(contenders, repeats=ctx.reps(5, 3), warmup=ctx.warmup, pause=ctx.pause)
    note = "the README's step per batch (label check included)" + (
        "" if n == SAMPLES else f"; {n:,} samples timed, scaled to 60,000")
    results.append(Result("MLP 784-128-10 SGD epoch, batch 128, the README's loop", "s",
                          SAMPLES / n, times["xpnn"], times.get("torch"), note))
    return results


def single_steps(ctx: Context) -> list[Result]:
    """784-128-10, batch 1: forward, loss, backward and SGD update, per step."""
    steps = 500 if ctx.quick else 2000
    x, y = synthetic_mnist(steps, seed=1)
    model, net = build_pair((784, 128, 10), with_torch=ctx.torch)
    optimizer = SGD(model.parameters(), lr=0.01)

    def xpnn_steps():
        for i in range(steps):
            train_step(model, LOSS, optimizer, x[i:i + 1], y[i:i + 1])

    contenders = {"xpnn": xpnn_steps}
    if net is not None:
        import torch
        import torch.nn.functional as F

        t_opt = torch.optim.SGD(net.parameters(), lr=0.01)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def torch_steps():
            for i in range(steps):
                t_opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(xt[i:i + 1]), yt[i:i + 1]).backward()
                t_opt.step()

        contenders["torch"] = torch_steps
    times = alternate(contenders, repeats=ctx.reps(7, 3), warmup=ctx.warmup, pause=ctx.pause)
    return [Result("MLP 784-128-10 single-sample SGD step", "µs", 1e6 / steps,
                   times["xpnn"], times.get("torch"), f"{steps} steps per run")]


def time_to_accuracy(ctx: Context, target: float = 0.96, batch_size: int = 32,
                     lr: float = 0.1, max_epochs: int = 10) -> list[Result]:
    """784-256-10, He-normal weights and zero biases, plain SGD (lr 0.1, batch 32) on full
    MNIST (pixels / 255), test accuracy after every epoch, until ``target``: seconds of
    training plus evaluation."""
    from xpnn.datasets.mnist import load_mnist

    if ctx.data_dir is None:
        ctx.notes.append("Time to 96%: skipped, no MNIST folder (pass --data DIR or set "
                         "XPNN_DATA).")
        return []
    try:
        (x_train, y_train), (x_test, y_test) = load_mnist("digits", root=ctx.data_dir,
                                                          download=False)
    except Exception as error:  # a missing or corrupt folder: say so and go on
        ctx.notes.append(f"Time to 96%: skipped, MNIST not loaded from {ctx.data_dir} "
                         f"({type(error).__name__}: {error}).")
        return []
    x_train = (x_train.reshape(-1, 784) / np.float32(255)).astype(np.float32)
    x_test = (x_test.reshape(-1, 784) / np.float32(255)).astype(np.float32)
    y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
    sizes = (784, 256, 10)
    model, net = build_pair(sizes, weight_init="he_normal", bias_init="zeros",
                            with_torch=ctx.torch)
    initial = {name: np.array(value, copy=True) for name, value in model.state_dict().items()}
    loader = BatchLoader(x_train, y_train, batch_size, shuffle=True, seed=0)
    reached: dict[str, list] = {"xpnn": [], "torch": []}

    def xpnn_run():
        model.load_state_dict(initial)
        optimizer = SGD(model.parameters(), lr=lr)
        for epoch in range(max_epochs):
            loader.set_epoch(epoch)
            for xb, yb in loader:
                train_step(model, LOSS, optimizer, xb, yb)
            accuracy = float(np.mean(np.argmax(model(x_test), axis=1) == y_test))
            if accuracy >= target:
                break
        reached["xpnn"].append((epoch + 1, accuracy))

    contenders = {"xpnn": xpnn_run}
    if net is not None:
        import torch
        import torch.nn.functional as F

        from benchmarks import torch_models

        xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
        xt_test, yt_test = torch.from_numpy(x_test), torch.from_numpy(y_test)
        orders = [torch.from_numpy(loader.order(e)) for e in range(max_epochs)]

        def torch_run():
            torch_models.load_xpnn_state(net, initial)
            optimizer = torch.optim.SGD(net.parameters(), lr=lr)
            for epoch in range(max_epochs):
                order = orders[epoch]
                for start in range(0, len(order), batch_size):
                    index = order[start:start + batch_size]
                    optimizer.zero_grad(set_to_none=True)
                    F.cross_entropy(net(xt[index]), yt[index]).backward()
                    optimizer.step()
                with torch.no_grad():
                    accuracy = float((net(xt_test).argmax(1) == yt_test).float().mean())
                if accuracy >= target:
                    break
            reached["torch"].append((epoch + 1, accuracy))

        contenders["torch"] = torch_run
    times = alternate(contenders, repeats=ctx.reps(3, 1), warmup=0, pause=ctx.pause)
    parts = []
    for side, runs in reached.items():
        if runs:
            epochs_used, accuracy = runs[-1]
            flag = "" if accuracy >= target else f", NOT reached after {max_epochs} epochs"
            parts.append(f"{side}: {epochs_used} epoch(s), {100 * accuracy:.2f}%{flag}")
    return [Result(f"784-256-10 SGD to {100 * target:.0f}% on MNIST (batch {batch_size}, "
                   f"lr {lr})", "s", 1.0, times["xpnn"], times.get("torch"), "; ".join(parts))]
