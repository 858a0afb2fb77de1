"""xpnn.plots draws on its own Agg figures: it leaves matplotlib's global backend and pyplot
alone, and writes each PNG atomically."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from xpnn import plots  # noqa: E402 (after the skip: plots needs matplotlib)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HISTORY = {"epoch": [1, 2, 3], "train_loss": [0.9, 0.5, 0.3], "test_loss": [1.0, 0.6, 0.4],
           "train_accuracy": [0.7, 0.85, 0.9], "test_accuracy": [0.65, 0.8, 0.88]}


def test_plotting_leaves_the_matplotlib_backend_and_pyplot_alone(tmp_path):
    # A fresh interpreter whose user picked a backend other than Agg, as a notebook does.
    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "import numpy as np\n"
        "from xpnn import plots\n"
        f"plots.plot_history({HISTORY!r}, {str(tmp_path / 'history.png')!r})\n"
        "labels = np.arange(20) % 10\n"
        f"plots.plot_confusion_matrix(labels, labels[::-1], {str(tmp_path / 'cm.png')!r})\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["svg", "False"]
    for name in ("history.png", "cm.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_SIGNATURE)


def test_each_plot_writes_a_png_and_no_temporary_file(tmp_path):
    rng = np.random.default_rng(0)
    y_true = np.arange(50) % 10
    y_pred = np.where(rng.random(50) < 0.8, y_true, (y_true + 1) % 10)
    images = rng.random((50, 784), dtype=np.float32)
    written = [
        plots.plot_history(HISTORY, tmp_path / "out" / "history.png"),  # creates the folder
        plots.plot_confusion_matrix(y_true, y_pred, tmp_path / "out" / "cm.png"),
        plots.plot_predictions(images, y_true, y_pred, tmp_path / "out" / "grid.png", count=7),
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cm.png", "grid.png",
                                                                   "history.png"]
    for path in written:
        assert path.read_bytes().startswith(PNG_SIGNATURE) and path.stat().st_size > 5_000


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    target = tmp_path / "history.png"
    target.write_bytes(b"the previous plot")

    def write_half_then_fail(self, file, **kwargs):  # a full disk, half-way through
        if hasattr(file, "write"):
            file.write(PNG_SIGNATURE)
        else:
            Path(file).write_bytes(PNG_SIGNATURE)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        plots.plot_history(HISTORY, target)
    assert target.read_bytes() == b"the previous plot"
    assert os.listdir(tmp_path) == ["history.png"]


def test_a_new_png_gets_the_mode_open_would_give_it(tmp_path):
    # The temporary file must not keep a private 0600 mode through the rename.
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    path = plots.plot_history(HISTORY, tmp_path / "history.png")
    assert path.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777
