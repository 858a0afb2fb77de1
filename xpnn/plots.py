"""Plots of a training run, written as PNG files (needs matplotlib: ``pip install
'xpnn[examples]'``).

Each plot is drawn on its own :class:`matplotlib.figure.Figure` with an Agg canvas, never
through ``pyplot``: plotting leaves matplotlib's global backend (a notebook's, say) and its
list of open figures alone. Files are written atomically: a temporary file in the same folder,
renamed over the target once complete.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np


def _figure(**figure_kwargs):
    """A new figure on its own Agg canvas (files only; no window, no global state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "Plots need matplotlib. Install it with: pip install 'xpnn[examples]'"
        ) from error
    figure = Figure(**figure_kwargs)
    FigureCanvasAgg(figure)
    return figure


def plot_history(history, path: str | Path) -> Path:
    """Loss and accuracy per epoch, train and test, side by side."""
    epochs = history["epoch"]
    figure = _figure(figsize=(10, 4))
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    for axis, metric in ((loss_axis, "loss"), (accuracy_axis, "accuracy")):
        axis.plot(epochs, history[f"train_{metric}"], marker="o", label="train")
        if any(value is not None for value in history[f"test_{metric}"]):
            axis.plot(epochs, history[f"test_{metric}"], marker="o", label="test")
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    loss_axis.set_title("loss")
    accuracy_axis.set_title("accuracy")
    return _save(figure, path)


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """``matrix[t, p]`` counts samples of true class ``t`` predicted as ``p``."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def plot_confusion_matrix(y_true, y_pred, path: str | Path, class_names=None) -> Path:
    """A confusion matrix with counts in every cell."""
    names = list(class_names) if class_names is not None else [str(i) for i in range(10)]
    matrix = confusion_matrix(y_true, y_pred, len(names))
    figure = _figure(figsize=(7, 6))
    axis = figure.subplots()
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis)
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for t in range(len(names)):
        for p in range(len(names)):
            axis.text(p, t, str(matrix[t, p]), ha="center", va="center", fontsize=7,
                      color="white" if matrix[t, p] > threshold else "black")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    axis.set_title(f"confusion matrix (accuracy {accuracy:.2%})")
    return _save(figure, path)


def plot_predictions(images, y_true, y_pred, path: str | Path, class_names=None,
                     count: int = 36, seed: int = 0) -> Path:
    """A grid of ``count`` test images, drawn at random (seeded) so that every class shows,
    with predicted and true labels; mistakes in red."""
    names = list(class_names) if class_names is not None else [str(i) for i in range(10)]
    count = min(count, len(images))
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), count, replace=False))
    images, y_true, y_pred = (np.asarray(a)[chosen] for a in (images, y_true, y_pred))
    columns = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    figure = _figure(figsize=(1.6 * columns, 1.8 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, axis in enumerate(np.ravel(axes)):
        axis.axis("off")
        if index >= count:
            continue
        axis.imshow(np.asarray(images[index]).reshape(28, 28), cmap="gray_r")
        right = int(y_true[index]) == int(y_pred[index])
        label = names[int(y_pred[index])]
        if not right:
            label += f" (true {names[int(y_true[index])]})"
        axis.set_title(label, fontsize=8, color="black" if right else "red")
    figure.suptitle("predictions (mistakes in red)")
    return _save(figure, path)


def _save(figure, path) -> Path:
    """Write ``figure`` as a PNG to ``path`` atomically: a reader (or a crash) sees the old
    file or the new one, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    # O_EXCL: never follow or reuse an existing file; 0o666 minus the umask, as open() gives.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            figure.savefig(handle, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    return path
