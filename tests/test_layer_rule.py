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
