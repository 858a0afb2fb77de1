"""Alternating timing of contenders in one process, thread bookkeeping, and table rows.

Nothing here changes a thread setting or a BLAS variable on its own: the suite reports
what it ran with. The one deliberate exception is :func:`match_torch_threads`, which gives
PyTorch the same number of threads NumPy's BLAS has (read with threadpoolctl), so both
frameworks compete with equal resources; it says what it did.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

ENV_KEYS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
            "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "XPNN_BACKEND", "XPNN_MALLOC_TUNING",
            "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
            "GLIBC_TUNABLES")


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


# -- threads ------------------------------------------------------------------------------------


def blas_threads() -> tuple[int | None, str]:
    """``(threads, source)`` of NumPy's BLAS: threadpoolctl's report when installed, else
    ``None`` and why."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None, "threadpoolctl not installed"
    import numpy  # noqa: F401  (loads the BLAS threadpoolctl looks for)

    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            return int(pool["num_threads"]), (
                f"{pool.get('internal_api')} {pool.get('version')} "
                f"({pool.get('architecture', '?')} kernels)"
            )
    return None, "no BLAS found by threadpoolctl"


def match_torch_threads() -> str:
    """Give PyTorch as many intra-op threads as NumPy's BLAS has; return a sentence saying
    what was done. Without threadpoolctl PyTorch keeps ``torch.get_num_threads()``."""
    try:
        import torch
    except ImportError:
        return "PyTorch not installed"
    threads, source = blas_threads()
    before = torch.get_num_threads()
    if threads is None:
        return f"PyTorch keeps its {before} threads ({source}; NumPy's BLAS count unknown)"
    if threads != before:
        torch.set_num_threads(threads)
        return (f"PyTorch set to {threads} threads to match NumPy's BLAS "
                f"(it defaulted to {before})")
    return f"PyTorch uses {threads} threads, as NumPy's BLAS"


def load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def describe_environment() -> str:
    """What the run ran with: thread counts and BLAS variables (never changed here)."""
    import numpy as np

    env = ", ".join(f"{k}={os.environ[k]}" for k in ENV_KEYS if k in os.environ) \
        or "no thread/BLAS variables set"
    threads, source = blas_threads()
    line = (f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, NumPy {np.__version__} "
            f"(BLAS: {source}, {threads if threads is not None else '?'} threads)")
    try:
        import torch

        line += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        line += ", torch not installed"
    return f"{line}; {env}"


# -- results ------------------------------------------------------------------------------------


@dataclass
class Result:
    """One workload: the timed seconds of each contender, scaled to ``unit`` by ``scale``
    (e.g. 1e6 for µs, or seconds-per-image), and a free-form note (GFLOP/s, memory)."""

    workload: str
    unit: str
    scale: float
    xpnn: list[float]
    torch: list[float] | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    def median(self, side: str = "xpnn") -> float | None:
        times = getattr(self, side)
        return statistics.median(times) * self.scale if times else None

    @property
    def ratio(self) -> float | None:
        mine, theirs = self.median("xpnn"), self.median("torch")
        return None if mine is None or not theirs else mine / theirs

    def cell(self, side: str) -> str:
        times = getattr(self, side)
        if not times:
            return "-"
        low, high = min(times) * self.scale, max(times) * self.scale
        spread = f" ({low:.3g}-{high:.3g})" if len(times) > 1 else ""
        return f"{statistics.median(times) * self.scale:.3g} {self.unit}{spread}"

    def markdown(self) -> str:
        ratio = "-" if self.ratio is None else f"{self.ratio:.2f}"
        return (f"| {self.workload} | {self.cell('xpnn')} | {self.cell('torch')} | {ratio} "
                f"| {self.note} |")


HEADER = ("| workload | xpnn median (min-max) | PyTorch median (min-max) | xpnn / PyTorch "
          "| notes |\n| --- | --- | --- | --- | --- |")


def row(workload: str, unit_scale: float, unit: str, xpnn_times: list[float],
        torch_times: list[float] | None, note: str = "") -> str:
    """A markdown table row: medians, min-max, and the xpnn/PyTorch ratio."""
    return Result(workload, unit, unit_scale, xpnn_times, torch_times, note).markdown()


def gflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e9
