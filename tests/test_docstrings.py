"""Every example in a docstring runs and prints what it shows."""

import doctest
import importlib
import pkgutil

import pytest

import xpnn
import xpnn.models
import xpnn.weights
from xpnn import backends

SKIP = {"xpnn.backends.__main__"}
PACKAGES = [xpnn, xpnn.backends, xpnn.models, xpnn.weights]  # the last three map other folders
MODULES = sorted(
    {package.__name__ for package in PACKAGES}
    | {info.name for package in PACKAGES
       for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")}
    - SKIP
)


def test_every_package_module_is_found():
    assert {"xpnn.layers.dense", "xpnn.backends.portable", "xpnn.models.darknet",
            "xpnn.datasets.batches"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    with backends.use("numpy"):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
