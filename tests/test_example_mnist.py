"""End-to-end: the README's main command, shortened, on the embedded sample."""

import importlib.util
from pathlib import Path

import pytest

from xpnn.io import load_metadata

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist.py"


def load_example():
    spec = importlib.util.spec_from_file_location("mnist_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_trains_saves_plots_and_predicts(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.delenv("XPNN_DATA", raising=False)
    example = load_example()
    weights, plots = tmp_path / "mlp.safetensors", tmp_path / "plots"
    code = example.main(["--data-dir", str(tmp_path / "nothing-here"), "--epochs", "2",
                         "--quiet", "--save", str(weights), "--plot", str(plots)])
    out = capsys.readouterr().out
    assert code == 0
    assert "embedded 5,000-image MNIST sample" in out
    assert "test accuracy:" in out
    metadata = load_metadata(weights)
    accuracy = float(metadata["test_accuracy"])
    assert accuracy > 0.85  # two epochs on 4,000 images
    assert not {"hidden", "width", "model"} & set(metadata)  # nothing the library must read
    assert "architecture" in metadata and "preprocessing" in metadata  # written by xpnn.io
    for name in ("history.png", "confusion_matrix.png", "predictions.png"):
        assert (plots / name).stat().st_size > 10_000

    code = example.main(["--data-dir", str(tmp_path / "nothing-here"), "--predict", str(weights)])
    out = capsys.readouterr().out
    assert code == 0 and f"test accuracy: {accuracy:.2%}" in out
