"""The wheel ships every module and the package data a non-editable install needs
(pretrained weights, the embedded MNIST sample, ImageNet class names), and they load from the
installed location."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> where pyproject.toml's package-dir puts it in the wheel.
SOURCE_FOLDERS = {"xpnn": "xpnn", "backends": "xpnn/backends", "models": "xpnn/models",
                  "weights": "xpnn/weights"}
# Not copied for the build: version control, environments, caches, earlier build output.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                     "__pycache__", ".pytest_cache", ".hypothesis",
                                     ".ruff_cache", "runs", "plots", "*.tmp")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools")
    # Build from a copy: an in-tree build reuses ./build/lib, which keeps modules deleted or
    # renamed since the last build and would put them in the wheel.
    source = tmp_path_factory.mktemp("source") / "xpnn"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(source)], capture_output=True, text=True)
    # setuptools is here, so a failed build is pyproject.toml's fault: fail, do not skip.
    assert build.returncode == 0, f"pip wheel failed:\n{build.stderr[-2000:]}"
    return next(out.glob("xpnn-*.whl"))


def test_wheel_contains_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("xpnn/weights/mnist_mlp.safetensors", "xpnn/weights/imagenet_classes.txt",
                     "xpnn/datasets/data/mnist_sample.npz", "xpnn/backends/__main__.py",
                     "xpnn/models/darknet.py"):
        assert required in names
    assert not any(name.startswith(("backends/", "models/", "tests/")) for name in names)


def test_wheel_contains_every_module(wheel):
    """Every ``.py`` file of the package folders is in the wheel: a subpackage missing from
    pyproject.toml's explicit ``packages`` list imports in a checkout but not after
    ``pip install``."""
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = {checkout: target for target, checkout in _source_modules().items()
               if target not in names}
    assert not missing, (
        f"not in the wheel: {sorted(missing)}. Add their packages to [tool.setuptools] "
        f"packages in pyproject.toml (and give each folder an __init__.py).")


def _source_modules() -> dict[str, str]:
    """``{path in the wheel: path in the checkout}`` for every ``.py`` file of the package."""
    modules = {}
    for folder, target in SOURCE_FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT / folder)
            modules[f"{target}/{relative.as_posix()}"] = str(path.relative_to(ROOT))
    return modules


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
