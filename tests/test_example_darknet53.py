"""examples/darknet53.py run as a user runs it (the image pipeline it uses is tested in
tests/models/test_preprocess.py, the model in tests/models/test_darknet.py)."""

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "darknet53.py"


def test_example_without_weights_says_how_to_get_them(tmp_path):
    run = subprocess.run([sys.executable, str(EXAMPLE), "x.jpg", "--weights",
                          str(tmp_path / "none.safetensors")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert "darknet53.weights" in run.stderr
    assert "python -m xpnn.models.convert_darknet" in run.stderr
    assert "darknet53.c2ns_in1k" in run.stderr
