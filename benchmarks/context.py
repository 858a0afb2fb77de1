"""Settings shared by every workload of one benchmark run."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Context:
    """What a workload needs to know: mode, repetitions, whether PyTorch is there, the
    MNIST folder, the machine's matmul ceiling (GFLOP/s) once measured, and notes that end
    up under the table."""

    quick: bool = False
    repeats: int = 5
    warmup: int = 1
    pause: float = 0.2
    torch: bool = True
    data_dir: str | None = None
    ceiling: float | None = None
    notes: list[str] = field(default_factory=list)
    smoke: bool = False  # --smoke: the smallest sizes, one repetition (tests run the code)

    def reps(self, full: int, quick: int) -> int:
        """Repetitions of a workload: ``quick`` in --quick mode, else ``full`` (at most the
        user's --repeats); one with --smoke."""
        if self.smoke:
            return 1
        return quick if self.quick else min(full, self.repeats)

    def size(self, full: int, quick: int, smoke: int) -> int:
        """A workload's size (samples, steps) in this mode."""
        return smoke if self.smoke else quick if self.quick else full

    def of_ceiling(self, gflop_per_s: float) -> str:
        if not self.ceiling:
            return f"{gflop_per_s:.0f} GFLOP/s"
        return f"{gflop_per_s:.0f} GFLOP/s ({100 * gflop_per_s / self.ceiling:.0f}% of matmul)"
