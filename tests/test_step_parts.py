"""The A/B helper benchmarks/experiments/step_parts.py runs (its numbers are not checked:
no timing assertions in tests)."""

from __future__ import annotations

import math

from benchmarks.experiments import step_parts


def test_the_step_parts_script_times_every_part():
    parts = step_parts.mlp_parts_us(batch=64, samples=256, epochs=1)
    assert list(parts) == ["loader", "forward", "loss", "backward", "step"]
    assert all(math.isfinite(value) and value > 0 for value in parts.values())
    assert math.isfinite(step_parts.cnn_step_ms(batch=4, warmup=1, steps=2))


def test_the_step_parts_command_line(capsys):
    step_parts.main(["cnn", "--batch", "2"])
    assert "MNIST CNN train_step, batch 2:" in capsys.readouterr().out
