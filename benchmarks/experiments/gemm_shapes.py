"""The matrix products of the suite's workloads, in NumPy's BLAS and in PyTorch's, shape by
shape: how much of xpnn's gap to PyTorch is the BLAS library itself.

    python -m benchmarks.experiments.gemm_shapes [--only mlp,cnn,darknet] [--repeats 7]

For each workload it times the products the NumPy backend runs per step (MLP, MNIST CNN)
or per image (Darknet53 inference), with the same shapes and operand orders (a transposed
operand is a transposed view, as in xpnn's code), once through ``np.matmul`` and once
through ``torch.matmul`` on tensors sharing that memory, alternating, and prints the median
of each with their ratio, then the sums per workload. PyTorch's CPU wheels for x86 link
Intel's MKL (``torch.__config__.show()`` says so); NumPy's wheels link OpenBLAS. Neither
library's thread settings are changed: both use their defaults, as in the suite.

A ratio above 1 on a product that xpnn cannot avoid bounds that workload's ratio from
below as far as the products go; the sums say by how much.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

# (label, M, K, N, a_transposed, b_transposed): C (M, N) = A (M, K) @ B (K, N), where a
# transposed operand is the .T view of a C-contiguous array of the other shape.


def _mlp(batch: int) -> list[tuple]:
    """784-128-10, fit's step: both forward products, the two weight gradients (as
    ``dy.T @ x``) and the hidden layer's input gradient (the first layer computes none)."""
    return [
        (f"b{batch} x @ W1.T", batch, 784, 128, False, True),
        (f"b{batch} h @ W2.T", batch, 128, 10, False, True),
        (f"b{batch} dW2 = dy.T @ h", 10, batch, 128, True, False),
        (f"b{batch} dh = dy @ W2", batch, 10, 128, False, False),
        (f"b{batch} dW1 = dh.T @ x", 128, batch, 784, True, False),
    ]


def _pixel_layer(label: str, pixels: int, taps: int, out: int) -> list[tuple]:
    """A training convolution on pixel columns ``P (pixels, taps)``: ``Y = P Wp^T``,
    ``dWp = (P^T D)^T``, ``dP = D Wp`` (backends/numpy_conv/stacked.py)."""
    return [
        (f"{label} Y = P @ Wp.T", pixels, taps, out, False, True),
        (f"{label} dWp = P.T @ D", taps, pixels, out, True, False),
        (f"{label} dP = D @ Wp", pixels, out, taps, False, False),
    ]


def _pointwise_layer(label: str, pixels: int, channels: int, out: int) -> list[tuple]:
    """A 1x1 training convolution on channels-last pixel rows ``X (pixels, C)``: one
    product each way (backends/numpy_conv/pointwise.py)."""
    return [
        (f"{label} Y", pixels, channels, out, False, True),
        (f"{label} dW", channels, pixels, out, True, False),
        (f"{label} dX", pixels, out, channels, False, False),
    ]


def _cnn() -> list[tuple]:
    """The MNIST CNN (width 32) at batch 64: the four 3x3 layers on pixel columns, the 1x1
    layers as one product each way, the first layer on stacked rows (``S^T W2^T``, and its
    weight gradient only)."""
    shapes = [
        ("1->16 @28 Y = S.T @ W2.T", 50176, 9, 16, True, True),
        ("1->16 @28 dW = S @ D", 9, 50176, 16, False, False),
    ]
    shapes += _pixel_layer("16->32 s2 @28", 12544, 144, 32)
    shapes += _pointwise_layer("1x1 32->16 @14", 12544, 32, 16)
    shapes += _pixel_layer("16->32 @14", 12544, 144, 32)
    shapes += _pixel_layer("32->64 s2 @14", 3136, 288, 64)
    shapes += _pointwise_layer("1x1 64->32 @7", 3136, 64, 32)
    shapes += _pixel_layer("32->64 @7", 3136, 288, 64)
    return shapes


def _darknet() -> list[tuple]:
    """Darknet53 inference at 256x256, batch 1: ``W2 (O, C KH KW) @ cols (C KH KW, OH OW)``
    per convolution (chunked and pointwise strategies), each distinct layer once with its
    repeat count in the label (the sums weight it)."""
    # (C, O, K, stride, output side, repeats)
    layers = [(3, 32, 3, 1, 256, 1), (32, 64, 3, 2, 128, 1)]
    for width, side, blocks in ((64, 128, 1), (128, 64, 2), (256, 32, 8), (512, 16, 8),
                                (1024, 8, 4)):
        layers += [(width, width // 2, 1, 1, side, blocks),
                   (width // 2, width, 3, 1, side, blocks)]
        if width < 1024:  # the next stage's stride-2 convolution
            layers.append((width, 2 * width, 3, 2, side // 2, 1))
    return [(f"{c}->{o} {k}x{k}{' s2' if s == 2 else ''} @{side} (x{r})", o, c * k * k,
             side * side, False, False, r) for c, o, k, s, side, r in layers]


WORKLOADS = {
    "mlp": lambda: _mlp(32) + _mlp(128) + _mlp(512),
    "cnn": _cnn,
    "darknet": _darknet,
}


def _operands(m, k, n, a_t, b_t, rng):
    a = rng.standard_normal((k, m) if a_t else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if b_t else (k, n), dtype=np.float32)
    return (a.T if a_t else a), (b.T if b_t else b)


def _seconds_per_call(run, budget: float) -> float:
    """Seconds per call of ``run`` over a block of calls filling about ``budget``
    seconds, after a warm-up block of a third of that."""
    deadline = time.perf_counter() + budget / 3
    while time.perf_counter() < deadline:
        run()
    calls, start = 0, time.perf_counter()
    while True:
        run()
        calls += 1
        spent = time.perf_counter() - start
        if spent >= budget:
            return spent / calls


def time_shapes(shapes, repeats: int, budget: float = 0.03, pause: float = 0.1):
    """``[(label, weight, numpy_seconds, torch_seconds)]`` per shape: medians over
    ``repeats`` alternating blocks of NumPy and PyTorch calls (see
    :func:`_seconds_per_call`), with a ``pause`` before each block. The pause matters
    (the suite's ``alternate`` has one too): after a block, one library's worker threads
    keep spinning on this machine's two cores for a while before they sleep, and the
    other library's calls wait for them. Without it a 10 µs product measured 800 µs
    right after PyTorch's calls, and PyTorch's products 6-8 ms right after NumPy's."""
    import torch

    rng = np.random.default_rng(0)
    rows = []
    for shape in shapes:
        label, m, k, n, a_t, b_t = shape[:6]
        weight = shape[6] if len(shape) > 6 else 1
        a, b = _operands(m, k, n, a_t, b_t, rng)
        at = torch.from_numpy(a.T).T if a_t else torch.from_numpy(a)
        bt = torch.from_numpy(b.T).T if b_t else torch.from_numpy(b)
        np.testing.assert_allclose(np.matmul(a, b), torch.matmul(at, bt).numpy(),
                                   rtol=1e-3, atol=1e-3 * np.sqrt(k))
        contenders = {"numpy": lambda a=a, b=b: np.matmul(a, b),
                      "torch": lambda at=at, bt=bt: torch.matmul(at, bt)}
        spent = {name: [] for name in contenders}
        for _ in range(repeats):
            for name, run in contenders.items():
                time.sleep(pause)
                spent[name].append(_seconds_per_call(run, budget))
        rows.append((label, weight, float(np.median(spent["numpy"])),
                     float(np.median(spent["torch"]))))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="mlp,cnn,darknet",
                        help="comma-separated workloads: " + ", ".join(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.03,
                        help="seconds per timed block of one shape (default 0.03)")
    parser.add_argument("--pause", type=float, default=0.1,
                        help="seconds of sleep before each block (default 0.1)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; expected some of "
                     f"{', '.join(WORKLOADS)}")
    try:
        import torch
    except ImportError:
        parser.error("this experiment compares with PyTorch: pip install torch")
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    print(f"NumPy {np.__version__} ({blas.get('name')} {blas.get('version')}), torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads); float32, µs per call")
    for name in names:
        rows = time_shapes(WORKLOADS[name](), args.repeats, args.budget, args.pause)
        print(f"\n| {name} product | NumPy µs | PyTorch µs | NumPy / PyTorch |\n"
              f"| --- | --- | --- | --- |")
        for label, _, mine, theirs in rows:
            print(f"| {label} | {mine * 1e6:.1f} | {theirs * 1e6:.1f} | {mine / theirs:.2f} |")
        mine = sum(weight * t for _, weight, t, _ in rows)
        theirs = sum(weight * t for _, weight, _, t in rows)
        print(f"| **sum** (repeats weighted) | {mine * 1e6:.0f} | {theirs * 1e6:.0f} | "
              f"{mine / theirs:.2f} |")


if __name__ == "__main__":
    main()
