"""The hardware ceiling: float32 GFLOP/s of one large square matrix product."""

from __future__ import annotations

import time

import numpy as np


def matmul_gflops(n: int, library: str = "numpy", repeats: int = 3) -> float:
    """Best GFLOP/s of an ``(n, n) @ (n, n)`` float32 product (2 n^3 FLOP)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    if library == "torch":
        import torch

        a, b = torch.from_numpy(a), torch.from_numpy(b)
        product = torch.matmul
    else:
        product = np.matmul
    product(a, b)  # warm-up: threads started, pages touched
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9
