"""Weights shipped with xpnn (``xpnn.weights``), installed as package data."""

from importlib import resources
from pathlib import Path


def path(filename: str) -> Path:
    """The installed path of a shipped file, e.g. ``path("mnist_mlp.safetensors")``."""
    return Path(str(resources.files(__name__).joinpath(filename)))
