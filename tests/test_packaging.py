"""The wheel ships the package data a non-editable install needs (pretrained weights, the
embedded MNIST sample, ImageNet class names) and they load from the installed location."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {build.stderr[-500:]}")
    return next(out.glob("xpnn-*.whl"))


def test_wheel_contains_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("xpnn/weights/mnist_mlp.safetensors", "xpnn/weights/imagenet_classes.txt",
                     "xpnn/datasets/data/mnist_sample.npz", "xpnn/backends/conv.py",
                     "xpnn/models/darknet53.py"):
        assert required in names
    assert not any(name.startswith(("backends/", "models/", "tests/")) for name in names)


def test_pretrained_weights_load_from_the_installed_package(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    site = str(tmp_path / "site")
    code = (
        "import xpnn, xpnn.models, xpnn.datasets, xpnn.models.imagenet as imagenet\n"
        "from xpnn.training import evaluate\n"
        f"assert xpnn.__file__.startswith({site!r}), xpnn.__file__\n"
        "model = xpnn.models.mnist_mlp(pretrained=True)\n"
        "(_, _), (x, y) = xpnn.datasets.load_mnist_sample()\n"
        "print(round(evaluate(model, xpnn.datasets.normalize(x).reshape(len(x), 784), y)[1], 3))\n"
        "print(len(imagenet.class_names()))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": ""})
    assert run.returncode == 0, run.stderr
    accuracy, classes = run.stdout.split()
    # The sample's images are part of MNIST's training set, so this only proves the
    # weights loaded (a random network scores ~0.1), not generalisation.
    assert float(accuracy) > 0.95 and classes == "1000"
