"""One error hierarchy: every error xpnn raises on purpose is an XpnnError that is also
the built-in exception a user would catch."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import xpnn.errors as errors

ROOT = Path(__file__).resolve().parents[2]
BUILTIN_OF = {
    "BackendError": RuntimeError, "ShapeError": ValueError, "DTypeError": TypeError,
    "WeightsError": ValueError, "DataError": OSError, "ConfigError": ValueError,
    "MissingFileError": FileNotFoundError, "DataNotFoundError": FileNotFoundError,
    "TrainingStopped": RuntimeError,
}
# Raised on purpose but rightly built-in: Python protocols and abstract methods.
ALLOWED = {
    "NotImplementedError": "abstract methods (Module.forward, Optimizer._update, ...)",
    "AttributeError": "module __getattr__ protocol (xpnn.models)",
    "ImportError": "optional dependency missing (xpnn.plots needs matplotlib)",
    "SystemExit": "command-line entry points",
    "ArgumentTypeError": "argparse's protocol for a bad flag value (examples/_cli.py)",
    "KeyboardInterrupt": "re-raised Ctrl-C (training stops at a batch boundary)",
    "AssertionError": "never in the package",
}


def error_classes():
    return {name: value for name, value in vars(errors).items()
            if inspect.isclass(value) and issubclass(value, BaseException)}


def test_every_error_class_is_an_xpnn_error_and_its_builtin():
    classes = error_classes()
    assert set(classes) == {"XpnnError", *BUILTIN_OF}
    for name, builtin in BUILTIN_OF.items():
        assert issubclass(classes[name], errors.XpnnError), name
        assert issubclass(classes[name], builtin), name


def test_moved_and_re_exported_names_are_the_same_classes():
    import xpnn.datasets
    import xpnn.training

    assert xpnn.datasets.DataNotFoundError is errors.DataNotFoundError
    assert xpnn.training.TrainingStopped is errors.TrainingStopped
    assert xpnn.XpnnError is errors.XpnnError
    assert issubclass(errors.DataNotFoundError, errors.MissingFileError)


@pytest.mark.parametrize("cls", [errors.MissingFileError, errors.DataNotFoundError])
def test_file_not_found_errors_keep_their_message(cls):
    error = cls("No MNIST files in /data. Place them there.", "/data")
    assert str(error) == "No MNIST files in /data. Place them there."
    assert error.errno == 2 and error.filename == "/data"


def raised_names(path: Path) -> list[tuple[int, str]]:
    """``(line, class name)`` of every ``raise Name(...)`` / ``raise Name`` in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name) and target.id[:1].isupper():
                out.append((node.lineno, target.id))
            elif isinstance(target, ast.Attribute) and target.attr[:1].isupper():
                out.append((node.lineno, target.attr))
    return out


def test_the_package_raises_only_xpnn_errors_on_purpose():
    known = set(error_classes()) | set(ALLOWED) | {"ImageError"}  # models.preprocess
    problems = []
    for folder in ("xpnn", "backends", "models", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, name in raised_names(path):
                if name not in known:
                    problems.append(f"{path.relative_to(ROOT)}:{line}: raise {name}")
    assert not problems, "raise an xpnn.errors class instead:\n" + "\n".join(problems)


def test_the_image_error_is_a_data_error():
    from xpnn.models.preprocess import ImageError

    assert issubclass(ImageError, errors.DataError)
