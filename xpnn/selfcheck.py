"""``python -m xpnn.backends --check NAME``: does xpnn compute the right numbers on NAME?

The first thing to run on a new machine or GPU. Every check builds the same thing twice
from one seed, on NAME (float32) and on NumPy in float64 (the reference), feeds both the
same input and the same output gradient, and compares:

- every layer's forward output, input gradient and parameter gradients (training mode,
  and inference mode where it differs: BatchNorm's running statistics, ConvBNAct's folded
  convolution);
- one SGD-with-momentum training step of the MNIST MLP and CNN (the parameters after it);
- Darknet53's logits for one 256×256 image (random weights, seed 0).

The error of a tensor is ``max |a - b| / max(max |b|, 1e-6)`` (relative to the reference's
largest value, so an error near a zero element does not blow up); float32 passes at
``TOLERANCE`` (1e-4; Darknet53's 53 layers at 5e-4). The training steps compare each
parameter's *update* (after minus before, relative to that update's size, so a missing or
wrong update shows as an error near 1) at 5e-2: a BatchNorm bias's update is a float32 sum
of ~10^4 nearly cancelling values, which NumPy's pairwise and torch's cascaded sums keep to
6e-5 and JAX's sequential sums on the CPU to 1.2e-2 (measured). It prints one table row per check
with the time both runs took, and exits 0 when every check passes, 1 when one fails, and 2
(with the reason) when NAME cannot run here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np

from xpnn import backends
from xpnn.layers import (
    AdaptiveAvgPool2D,
    AvgPool2D,
    BatchNorm,
    Conv2D,
    ConvBNAct,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    LayerNorm,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Residual,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)

__all__ = ["CASES", "TOLERANCE", "check", "main"]

TOLERANCE = 1e-4
DARKNET_TOLERANCE = 5e-4
TRAINING_TOLERANCE = 5e-2
IMAGE = (2, 4, 9, 9)  # a small NCHW batch
FEATURES = (6, 5)

# name -> (build(dtype) -> module, input shape, modes: "train" and/or "eval")
CASES: dict[str, tuple[Callable, tuple[int, ...], tuple[str, ...]]] = {
    "Dense": (lambda d: Dense(5, 4, dtype=d, seed=0), FEATURES, ("train",)),
    "Conv2D 3x3": (lambda d: Conv2D(4, 6, 3, padding=1, dtype=d, seed=0), IMAGE, ("train",)),
    "Conv2D 3x3 stride 2": (lambda d: Conv2D(4, 6, 3, stride=2, padding=1, dtype=d, seed=0),
                            IMAGE, ("train",)),
    "Conv2D 1x1": (lambda d: Conv2D(4, 6, 1, dtype=d, seed=0), IMAGE, ("train",)),
    "Conv2D dilation 2, groups 2": (
        lambda d: Conv2D(4, 6, 3, padding=2, dilation=2, groups=2, dtype=d, seed=0), IMAGE,
        ("train",)),
    "Conv2D depthwise, stride 2": (
        lambda d: Conv2D(4, 8, 3, stride=2, padding=1, groups=4, dtype=d, seed=0), IMAGE,
        ("train",)),
    "BatchNorm (N, C, H, W)": (lambda d: BatchNorm(4, dtype=d), IMAGE, ("train", "eval")),
    "BatchNorm (N, C)": (lambda d: BatchNorm(5, dtype=d), FEATURES, ("train", "eval")),
    "BatchNorm, no affine, batch statistics": (
        lambda d: BatchNorm(4, affine=False, track_running_stats=False, dtype=d), IMAGE,
        ("train", "eval")),
    "LayerNorm": (lambda d: LayerNorm(5, dtype=d), FEATURES, ("train",)),
    "ReLU": (lambda d: ReLU(), IMAGE, ("train",)),
    "LeakyReLU": (lambda d: LeakyReLU(0.1), IMAGE, ("train",)),
    "Sigmoid": (lambda d: Sigmoid(), FEATURES, ("train",)),
    "Tanh": (lambda d: Tanh(), FEATURES, ("train",)),
    "Softmax": (lambda d: Softmax(), FEATURES, ("train",)),
    "MaxPool2D": (lambda d: MaxPool2D(3, 2, 1), IMAGE, ("train",)),
    "AvgPool2D": (lambda d: AvgPool2D(3, 2, 1), IMAGE, ("train",)),
    "AdaptiveAvgPool2D": (lambda d: AdaptiveAvgPool2D(4), IMAGE, ("train",)),
    "GlobalAvgPool": (lambda d: GlobalAvgPool(), IMAGE, ("train",)),
    "Flatten": (lambda d: Flatten(), IMAGE, ("train",)),
    "Dropout": (lambda d: Dropout(0.5, seed=0), FEATURES, ("train", "eval")),
    "ConvBNAct": (lambda d: ConvBNAct(4, 6, 3, dtype=d, seed=0), IMAGE, ("train", "eval")),
    "Residual": (lambda d: Residual(Sequential([ConvBNAct(4, 2, 1, dtype=d, seed=0),
                                                ConvBNAct(2, 4, 3, dtype=d, seed=1)])),
                 IMAGE, ("train",)),
}


def error(actual, expected) -> float:
    """``max |a - b| / max(max |b|, 1e-6)`` of two arrays (any backend)."""
    a = np.asarray(backends.to_numpy(actual), dtype=np.float64)
    b = np.asarray(backends.to_numpy(expected), dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    if not a.size:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-6))


def _run_layer(build, shape, mode, backend, dtype, rng_seed=0):
    """Forward and backward of ``build(dtype)`` on ``backend``: the output, the input
    gradient and the parameter gradients, as host arrays."""
    rng = np.random.default_rng(rng_seed)
    x = rng.standard_normal(shape)
    with backends.use(backend):
        layer = build(dtype)
        if mode == "eval":  # move BatchNorm's running statistics away from 0 and 1
            for _ in range(2):
                layer.forward(backend.asarray(rng.standard_normal(shape), dtype), train=True)
        y, backprop = layer.forward(backend.asarray(x, dtype), train=mode == "train")
        dy = np.random.default_rng(rng_seed + 1).standard_normal(tuple(y.shape))
        layer.zero_grad()
        dx = backprop(backend.asarray(dy, dtype))
        grads = {name: p.grad for name, p in layer.named_parameters() if p.grad is not None}
        return y, dx, grads


def _compare_layer(build, shape, mode, backend, reference):
    y, dx, grads = _run_layer(build, shape, mode, backend, "float32")
    ry, rdx, rgrads = _run_layer(build, shape, mode, reference, "float64")
    errors = [error(y, ry), error(dx, rdx)]
    errors += [error(grads.get(key), value) if key in grads else float("inf")
               for key, value in rgrads.items()]
    return max(errors)


def _train_step(build, shape, backend):
    """Two SGD-with-momentum steps of ``build()`` on ``backend``: what they changed in each
    parameter (after - before, as host float64 arrays)."""
    from xpnn.losses import softmax_cross_entropy
    from xpnn.optim import SGD
    from xpnn.training import train_step

    rng = np.random.default_rng(0)
    x, y = rng.random((16, *shape)), rng.integers(0, 10, 16)
    with backends.use(backend):
        model = build()
        before = {name: np.array(backends.to_numpy(p.value), dtype=np.float64)  # a copy:
                  for name, p in model.named_parameters()}  # the step updates in place
        optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            train_step(model, softmax_cross_entropy, optimizer,
                       backend.asarray(x, model.parameters()[0].dtype), y)
        return {name: np.asarray(backends.to_numpy(p.value), dtype=np.float64) - before[name]
                for name, p in model.named_parameters()}


def _compare_training(build32, build64, shape, backend, reference):
    """The largest error of the parameter updates (relative to each update's size: a
    missing or wrong update of any parameter shows as an error near 1)."""
    mine = _train_step(build32, shape, backend)
    theirs = _train_step(build64, shape, reference)
    return max(error(mine[key], theirs[key]) for key in theirs)


def _darknet(backend, dtype):
    from xpnn.models import Darknet53

    x = np.random.default_rng(0).standard_normal((1, 3, 256, 256))
    with backends.use(backend):
        model = Darknet53(seed=0, dtype=dtype)
        return model(backend.asarray(x, dtype))


def check(name: str, device=None, *, darknet: bool = True):
    """Run every check on backend ``name``; returns the table rows ``(check, error,
    tolerance, passed, seconds)``."""
    from xpnn.models import mnist_cnn, mnist_mlp

    backend = backends.make_backend(name, device)
    reference = backends.make_backend("numpy")
    rows = []

    def row(label, compute, tolerance=TOLERANCE):
        started = time.perf_counter()
        try:
            value = compute()
        except Exception as failure:  # noqa: BLE001 (reported in the table)
            rows.append((f"{label}: {type(failure).__name__}: {failure}", float("nan"),
                         tolerance, False, time.perf_counter() - started))
            return
        rows.append((label, value, tolerance, value <= tolerance,
                     time.perf_counter() - started))

    for label, (build, shape, modes) in CASES.items():
        for mode in modes:
            row(f"{label} ({'training' if mode == 'train' else 'inference'})",
                lambda build=build, shape=shape, mode=mode:
                _compare_layer(build, shape, mode, backend, reference))
    row("MNIST MLP: 2 training steps",
        lambda: _compare_training(lambda: mnist_mlp(), lambda: mnist_mlp(dtype="float64"),
                                  (784,), backend, reference), TRAINING_TOLERANCE)
    row("MNIST CNN: 2 training steps",
        lambda: _compare_training(lambda: mnist_cnn(seed=0),
                                  lambda: mnist_cnn(seed=0, dtype="float64"),
                                  (1, 28, 28), backend, reference), TRAINING_TOLERANCE)
    if darknet:
        row("Darknet53 inference, 256x256",
            lambda: error(_darknet(backend, "float32"), _darknet(reference, "float64")),
            DARKNET_TOLERANCE)
    return rows


def format_rows(name: str, rows) -> str:
    width = max(len(label) for label, *_ in rows)
    lines = [f"xpnn self-check on {name} (float32) against NumPy float64",
             "(seconds: both runs, NAME's and the reference's, first calls included)",
             "", f"| {'check':<{width}} | max error | tolerance | result | seconds |",
             f"| {'-' * width} | --------- | --------- | ------ | ------- |"]
    for label, value, tolerance, passed, seconds in rows:
        lines.append(f"| {label:<{width}} | {value:9.2e} | {tolerance:9.0e} | "
                     f"{'pass' if passed else 'FAIL':<6} | {seconds:7.2f} |")
    failed = sum(not passed for *_, passed, _ in rows)
    lines.append("")
    lines.append(f"{len(rows) - failed} of {len(rows)} checks passed" +
                 (f"; {failed} FAILED" if failed else ""))
    return "\n".join(lines)


def main(name: str, device=None, *, darknet: bool = True) -> int:
    """Print the table for backend ``name``; 0: all pass, 1: a check failed, 2: ``name``
    cannot run here (the reason is printed)."""
    key = name.strip().lower().replace("-", "_")
    if key not in backends.NAMES:
        print(f"error: --check expected one of {', '.join(backends.NAMES)}. Received: "
              f"{name!r}", file=sys.stderr)
        return 2
    ok, _, reason = backends.probe(key)
    if not ok:
        print(f"error: the {key} backend cannot run here: {reason}", file=sys.stderr)
        return 2
    try:  # the device too, before the table
        backends.make_backend(key, device).asarray(np.zeros(1, dtype=np.float32))
    except Exception as error:  # noqa: BLE001 (any library's error for a bad device)
        print(f"error: the {key} backend cannot use device {device!r}: {error}",
              file=sys.stderr)
        return 2
    rows = check(key, device, darknet=darknet)
    print(format_rows(key if device is None else f"{key} ({device})", rows))
    return 0 if all(passed for *_, passed, _ in rows) else 1
