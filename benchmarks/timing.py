"""Alternating timing of contenders in one process, and a markdown table of the result."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable


def alternate(contenders: dict[str, Callable[[], None]], *, repeats: int = 7,
              warmup: int = 2, pause: float = 0.05) -> dict[str, list[float]]:
    """Run each contender ``warmup`` times, then ``repeats`` rounds in which every contender
    runs once, in turn; return the seconds of every timed run. The short ``pause`` lets
    spinning BLAS worker threads of one library go idle before the other starts."""
    for run in contenders.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            time.sleep(pause)
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def describe_environment() -> str:
    """What the run ran with: thread counts and BLAS variables (never changed here)."""
    import numpy as np

    keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
            "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "XPNN_BACKEND")
    env = ", ".join(f"{k}={os.environ[k]}" for k in keys if k in os.environ) or "no thread/BLAS variables set"
    line = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, NumPy {np.__version__}"
    try:
        import torch

        line += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        line += ", torch not installed"
    return f"{line}; {env}"


def row(workload: str, unit_scale: float, unit: str, xpnn_times: list[float],
        torch_times: list[float] | None) -> str:
    """A markdown table row: medians, min-max, and the xpnn/PyTorch ratio."""
    med = statistics.median(xpnn_times) * unit_scale
    spread = f"{min(xpnn_times) * unit_scale:.3g}-{max(xpnn_times) * unit_scale:.3g}"
    if not torch_times:
        return f"| {workload} | {med:.3g} {unit} ({spread}) | - | - |"
    tmed = statistics.median(torch_times) * unit_scale
    tspread = f"{min(torch_times) * unit_scale:.3g}-{max(torch_times) * unit_scale:.3g}"
    return (f"| {workload} | {med:.3g} {unit} ({spread}) | {tmed:.3g} {unit} ({tspread}) "
            f"| {med / tmed:.2f} |")


HEADER = ("| workload | xpnn median (min-max) | PyTorch median (min-max) | xpnn / PyTorch |\n"
          "| --- | --- | --- | --- |")
