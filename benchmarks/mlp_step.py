"""Training steps of a 784-128-10 Dense stack: xpnn (current backend) vs PyTorch CPU.

    python -m benchmarks.mlp_step [--batch 128] [--steps 200] [--repeats 7]

One step is forward, mean softmax cross-entropy, backward and a plain SGD update: on the
xpnn side :func:`xpnn.training.train_step` (what ``fit`` runs per batch), on the PyTorch
side the idiomatic eager step. Both frameworks get the same weights, the same data and
labels and the same float32 dtype; their runs alternate in one process. Prints a markdown
table with the ratio.
"""

from __future__ import annotations

import argparse
import functools

import numpy as np

import xpnn
from benchmarks.timing import HEADER, alternate, describe_environment, row
from xpnn.backends import allocator
from xpnn.layers import Dense, ReLU, Sequential
from xpnn.losses import softmax_cross_entropy
from xpnn.optim import SGD
from xpnn.training import train_step

LR = 0.01


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    allocator.keep_freed_memory()  # as fit does when training starts

    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 784), dtype=np.float32)
    y = rng.integers(0, 10, args.batch, dtype=np.int64)
    model = Sequential([Dense(784, 128), ReLU(), Dense(128, 10)], seed=0)
    backend = xpnn.backends.current()
    x_b, y_b = backend.asarray(x), backend.asarray(y)
    optimizer = SGD(model.parameters(), lr=LR)
    loss = functools.partial(softmax_cross_entropy, check_labels=False)  # labels in range

    def xpnn_steps():
        for _ in range(args.steps):
            train_step(model, loss, optimizer, x_b, y_b)

    contenders = {"xpnn": xpnn_steps}
    try:
        import torch
    except ImportError:
        torch = None
        print("PyTorch is not installed: xpnn-only numbers.")
    if torch is not None:
        nn = torch.nn
        net = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
        with torch.no_grad():
            for index, layer in ((0, net[0]), (2, net[2])):
                for name in ("weight", "bias"):
                    value = getattr(model[index], name).value
                    getattr(layer, name).copy_(torch.from_numpy(xpnn.backends.to_numpy(value)))
        torch_optimizer = torch.optim.SGD(net.parameters(), lr=LR)
        x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)

        def torch_steps():
            for _ in range(args.steps):
                torch_optimizer.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(net(x_t), y_t).backward()
                torch_optimizer.step()

        contenders["torch"] = torch_steps

    times = alternate(contenders, repeats=args.repeats)
    print(describe_environment())
    print(f"backend: {backend.name}; {args.steps} training steps per run; host memory: "
          f"{allocator.status()}\n")
    print(HEADER)
    per_step = 1e6 / args.steps
    print(row(f"784-128-10 training step (SGD), batch {args.batch}", per_step, "µs/step",
              times["xpnn"], times.get("torch")))


if __name__ == "__main__":
    main()
