"""Where a training step's time goes, for A/B runs of a change (xpnn only, no PyTorch).

    python -m benchmarks.experiments.step_parts cnn [--batch 64]
        the MNIST CNN (width 32, SGD with momentum 0.9): median ms per train_step
    python -m benchmarks.experiments.step_parts mlp [--batch 32]
        the 784-128-10 MLP on synthetic MNIST-shaped data: µs per batch in the loader, the
        forward, the loss, the backward and the optimizer step

Both apply fit's allocator setting (:func:`xpnn.backends.allocator.keep_freed_memory`),
warm up first, and skip the loss's label check, as the suite does. Pair runs of two
versions by alternating them (e.g. checking out the two commits' ``backends/`` and
``xpnn/`` in turn); a run's absolute numbers drift with the machine's load.
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np

from xpnn.backends import allocator
from xpnn.losses import softmax_cross_entropy

LOSS = functools.partial(softmax_cross_entropy, check_labels=False)


def cnn_step_ms(batch: int, warmup: int = 5, steps: int = 30) -> float:
    """Median ms of one MNIST CNN train_step on a fixed random batch."""
    from xpnn.models import mnist_cnn
    from xpnn.optim import SGD
    from xpnn.training import train_step

    rng = np.random.default_rng(0)
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    model = mnist_cnn()
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(warmup):
        train_step(model, LOSS, optimizer, x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        train_step(model, LOSS, optimizer, x, y)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def mlp_parts_us(batch: int, samples: int = 15_000, epochs: int = 3) -> dict[str, float]:
    """µs per batch spent in each part of the README's step, over ``epochs`` epochs after
    one warm-up epoch."""
    from benchmarks.mlp import build_pair, synthetic_mnist
    from xpnn.datasets.batches import BatchLoader
    from xpnn.optim import SGD

    x, y = synthetic_mnist(samples)
    model, _ = build_pair((784, 128, 10), with_torch=False)
    loader = BatchLoader(x, y, batch, shuffle=True, seed=0)
    optimizer = SGD(model.parameters(), lr=0.01)
    names = ("loader", "forward", "loss", "backward", "step")
    totals = np.zeros(len(names))
    clock = time.perf_counter
    batches = 0
    for epoch in range(epochs + 1):
        loader.set_epoch(0)
        batch_iterator = iter(loader)
        while True:
            t0 = clock()
            try:
                xb, yb = next(batch_iterator)
            except StopIteration:
                break
            t1 = clock()
            logits, backprop = model.forward(xb, train=True)
            t2 = clock()
            _, dlogits = LOSS(logits, yb)
            t3 = clock()
            backprop(dlogits, need_input_grad=False)
            t4 = clock()
            optimizer.step()
            optimizer.zero_grad()
            t5 = clock()
            if epoch:  # the first epoch warms up
                totals += np.diff([t0, t1, t2, t3, t4, t5])
                batches += 1
    return {name: float(total) / batches * 1e6 for name, total in zip(names, totals,
                                                                        strict=True)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=("cnn", "mlp"))
    parser.add_argument("--batch", type=int, default=None)
    args = parser.parse_args(argv)
    allocator.keep_freed_memory()
    if args.model == "cnn":
        batch = args.batch or 64
        print(f"MNIST CNN train_step, batch {batch}: {cnn_step_ms(batch):.2f} ms (median)")
    else:
        batch = args.batch or 32
        parts = mlp_parts_us(batch)
        print(f"MLP 784-128-10, batch {batch}, µs per batch: "
              + ", ".join(f"{name} {value:.1f}" for name, value in parts.items())
              + f"; total {sum(parts.values()):.1f}")


if __name__ == "__main__":
    main()
