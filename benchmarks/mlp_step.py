"""Forward + backward of a 784-128-10 Dense stack: xpnn (current backend) vs PyTorch CPU.

    python benchmarks/mlp_step.py [--batch 128] [--steps 200] [--repeats 7]

Both frameworks get the same weights, the same data and the same float32 dtype; their
runs alternate in one process. Prints a markdown table with the ratio.
"""

from __future__ import annotations

import argparse

import numpy as np

import xpnn
from benchmarks.timing import HEADER, alternate, describe_environment, row
from xpnn.layers import Dense, ReLU, Sequential


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 784), dtype=np.float32)
    dy = rng.standard_normal((args.batch, 10)).astype(np.float32)
    model = Sequential([Dense(784, 128), ReLU(), Dense(128, 10)], seed=0)
    backend = xpnn.backends.current()
    x_b, dy_b = backend.asarray(x), backend.asarray(dy)

    def xpnn_steps():
        for _ in range(args.steps):
            model.zero_grad()
            _, backprop = model.forward(x_b, train=True)
            backprop(dy_b)

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
                layer.weight.copy_(torch.from_numpy(xpnn.backends.to_numpy(model[index].weight.value)))
                layer.bias.copy_(torch.from_numpy(xpnn.backends.to_numpy(model[index].bias.value)))
        x_t, dy_t = torch.from_numpy(x), torch.from_numpy(dy)

        def torch_steps():
            for _ in range(args.steps):
                net.zero_grad(set_to_none=True)
                net(x_t).backward(dy_t)

        contenders["torch"] = torch_steps

    times = alternate(contenders, repeats=args.repeats)
    print(describe_environment())
    print(f"backend: {backend.name}; {args.steps} forward+backward steps per run\n")
    print(HEADER)
    per_step = 1e6 / args.steps
    print(row(f"784-128-10 fwd+bwd, batch {args.batch}", per_step, "µs/step",
              times["xpnn"], times.get("torch")))


if __name__ == "__main__":
    main()
