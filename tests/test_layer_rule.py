"""DESIGN.md, 'The one rule of layers': layer, loss, optimizer and model code never imports
an array library; everything backend-specific lives in backends/."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARRAY_LIBRARY_IMPORT = re.compile(r"^\s*(import|from)\s+(numpy|cupy|torch|jax)\b", re.MULTILINE)
BACKEND_FREE = ["xpnn/layers", "xpnn/module.py", "xpnn/losses.py", "xpnn/optim.py",
                "xpnn/schedules.py", "models"]


def test_layers_losses_optimizers_and_models_import_no_array_library():
    offenders, scanned = [], 0
    for entry in BACKEND_FREE:
        path = ROOT / entry
        for file in sorted(path.rglob("*.py") if path.is_dir() else [path]):
            scanned += 1
            for match in ARRAY_LIBRARY_IMPORT.finditer(file.read_text()):
                line = file.read_text()[: match.start()].count("\n") + 1
                offenders.append(f"{file.relative_to(ROOT)}:{line}: {match.group(0).strip()}")
    assert scanned >= 15, f"expected to scan the layer and model sources, found {scanned} files"
    assert not offenders, "array library imported outside backends/:\n" + "\n".join(offenders)


# -- docs/architecture.md: which code may ask what ----------------------------------------------

LIBRARY_CODE = ["xpnn", "backends", "models"]
ARRAY_SNIFFING = re.compile(r"__module__|array_namespace\(|is_(numpy|torch|cupy|jax)_array")
BACKEND_NAME_TEST = re.compile(
    r"""(==|!=|\bin)\s*\(?\s*["'](numpy|torch|cupy|jax|array_api_strict)["']""")
# Only these files may ask an array which library it comes from, or test a backend's name.
SELECTOR_FILES = {"backends/selector.py", "backends/numpy_backend.py", "backends/torch_backend.py",
                  "backends/cupy_backend.py", "backends/jax_backend.py",
                  "backends/array_api_strict_backend.py"}


def _library_files():
    for entry in LIBRARY_CODE:
        yield from sorted((ROOT / entry).rglob("*.py"))


def _matches(pattern, allowed):
    found = []
    for file in _library_files():
        name = str(file.relative_to(ROOT))
        if name in allowed:
            continue
        text = file.read_text()
        for match in pattern.finditer(text):
            found.append(f"{name}:{text[: match.start()].count(chr(10)) + 1}: {match.group(0)}")
    return found


def test_only_backend_of_asks_which_library_an_array_comes_from():
    offenders = _matches(ARRAY_SNIFFING, SELECTOR_FILES)
    assert not offenders, "use xpnn.backends.backend_of(array):\n" + "\n".join(offenders)


def test_no_code_outside_the_backend_modules_branches_on_a_backend_name():
    offenders = _matches(BACKEND_NAME_TEST, SELECTOR_FILES | {"backends/backend.py"})
    assert not offenders, ("put library-specific behaviour in that library's backend module:\n"
                           + "\n".join(offenders))


def test_backends_import_nothing_above_them():
    """backends/ is the bottom layer: it may import xpnn.errors and itself, never layers,
    losses, training, I/O or models."""
    upward = re.compile(r"^\s*(?:from|import)\s+xpnn\.(?!backends\b|errors\b)(\w+)", re.MULTILINE)
    offenders = []
    for file in sorted((ROOT / "backends").rglob("*.py")):
        for match in upward.finditer(file.read_text()):
            offenders.append(f"{file.relative_to(ROOT)}: imports xpnn.{match.group(1)}")
    assert not offenders, "\n".join(offenders)
