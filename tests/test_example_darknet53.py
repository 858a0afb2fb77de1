"""examples/darknet53.py run as a user runs it (the image pipeline it uses is tested in
tests/models/test_preprocess.py, the model in tests/models/test_darknet.py)."""

import os
import shutil
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


def test_default_weights_path_is_relative_to_where_the_user_runs(tmp_path):
    """Not inside the installed package: the commands the message prints write
    weights/darknet53.safetensors in the current folder, and the script looks there."""
    env = {key: value for key, value in os.environ.items()
           if key != "XPNN_DARKNET53_WEIGHTS"}
    run = subprocess.run([sys.executable, str(EXAMPLE), "x.jpg"], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 2, run.stderr
    expected = tmp_path / "weights" / "darknet53.safetensors"
    assert f"No Darknet53 weights at {expected}." in run.stderr
    assert "mkdir -p weights" in run.stderr and "Traceback" not in run.stderr


def test_converted_darknet53_weights_are_git_ignored():
    root = EXAMPLE.parents[1]
    patterns = [line.strip() for line in (root / ".gitignore").read_text().splitlines()]
    assert "weights/darknet53*.safetensors" in patterns
    if shutil.which("git") and (root / ".git").exists():  # read-only question to git
        for name in ("weights/darknet53.safetensors", "weights/darknet53_timm.safetensors"):
            check = subprocess.run(["git", "check-ignore", "-q", name], cwd=root,
                                   timeout=60)
            assert check.returncode == 0, name
        kept = subprocess.run(["git", "check-ignore", "-q", "weights/mnist_mlp.safetensors"],
                              cwd=root, timeout=60)
        assert kept.returncode == 1  # the shipped weights stay tracked


def test_bad_number_is_refused_in_the_flags_own_name(tmp_path):
    run = subprocess.run([sys.executable, str(EXAMPLE), "x.jpg", "--batch-size", "0"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "argument --batch-size: expected a whole number from 1 to 4,096. Received: 0" \
        in run.stderr
