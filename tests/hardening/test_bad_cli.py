"""Bad command-line values are refused up front, in the flags' own names, with exit code 2
and no traceback: every class of bad value (zero, negative, huge, not a number, NaN), bad
paths (before any data is loaded or any batch trained) and a bogus XPNN_BACKEND."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "examples" / "mnist.py"
DARKNET = ROOT / "examples" / "darknet53.py"


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mnist():
    return load(MNIST, "mnist_example_bad_cli")


@pytest.fixture(scope="module")
def darknet():
    return load(DARKNET, "darknet_example_bad_cli")


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    monkeypatch.delenv("XPNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def refused(main, argv, capsys) -> str:
    """Run ``main(argv)``; it must exit 2 through argparse. Returns stderr."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


# -- numbers -----------------------------------------------------------------------------------

MNIST_BAD_VALUES = [
    ("--epochs", "0"), ("--epochs", "-1"), ("--epochs", "10000000"), ("--epochs", "two"),
    ("--epochs", "2.5"),
    ("--batch-size", "0"), ("--batch-size", "-32"), ("--batch-size", "100000000"),
    ("--batch-size", "x"),
    ("--seed", "-1"), ("--seed", str(2**64)), ("--seed", "zero"),
    ("--lr", "0"), ("--lr", "-0.1"), ("--lr", "nan"), ("--lr", "inf"), ("--lr", "1e9"),
    ("--lr", "fast"),
    ("--momentum", "1"), ("--momentum", "-0.5"), ("--momentum", "nan"),
    ("--target-accuracy", "0"), ("--target-accuracy", "1.5"), ("--target-accuracy", "96"),
    ("--patience", "0"), ("--patience", "-3"),
    ("--hidden", "0"), ("--hidden", "-128"), ("--hidden", "1000000000"), ("--hidden", "wide"),
    ("--init", "bogus"), ("--model", "resnet"), ("--optimizer", "lbfgs"),
]


@pytest.mark.parametrize(("flag", "value"), MNIST_BAD_VALUES)
def test_mnist_refuses_bad_value_in_the_flags_own_name(mnist, capsys, flag, value):
    err = refused(mnist.main, [flag, value], capsys)
    assert f"argument {flag}:" in err
    assert value in err or f"{int(value):,}" in err  # what was received
    assert "T_max" not in err and "Traceback" not in err


@pytest.mark.parametrize(("flag", "value"), [
    ("--top", "0"), ("--top", "-5"), ("--top", "5000"), ("--top", "five"),
    ("--batch-size", "0"), ("--batch-size", "-1"), ("--batch-size", "10000000"),
    ("--iterations", "0"), ("--iterations", "abc"),
])
def test_darknet_refuses_bad_value_in_the_flags_own_name(darknet, capsys, flag, value):
    err = refused(darknet.main, ["cat.jpg", flag, value], capsys)
    assert f"argument {flag}:" in err and "expected a whole number" in err


def test_messages_say_expected_and_received(mnist, capsys):
    err = refused(mnist.main, ["--epochs", "0"], capsys)
    assert "argument --epochs: expected a whole number from 1 to 10,000. Received: 0" in err


def test_bad_values_are_refused_as_a_command_without_traceback():
    for argv in (["--seed", "-1"], ["--epochs", "0"], ["--batch-size", "0"]):
        run = subprocess.run([sys.executable, str(MNIST), *argv], capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 2, run.stderr
        assert "Traceback" not in run.stderr and f"argument {argv[0]}:" in run.stderr
        assert "data:" not in run.stdout  # refused before the data loaded


def test_help_shows_the_defaults(mnist, darknet, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per flag
    for main in (mnist.main, darknet.main):
        with pytest.raises(SystemExit) as stop:
            main(["--help"])
        assert stop.value.code == 0
        out = capsys.readouterr().out
        assert "(default: " in out
    parser = mnist.build_parser()
    parser.formatter_class = lambda prog: mnist._cli.HelpFormatter(
        prog, max_help_position=200, width=1000)  # each flag and its help on one line
    lines = parser.format_help().splitlines()
    for flag, default in (("--epochs", "10"), ("--batch-size", "32"), ("--seed", "0"),
                          ("--momentum", "0.9"), ("--schedule", "cosine"),
                          ("--model", "mlp"), ("--optimizer", "sgd")):
        line = next(line for line in lines if line.lstrip().startswith(flag + " "))
        assert f"(default: {default})" in line, line


# -- paths, all before the first batch (and before the data loads) ---------------------------


def path_refused(mnist, argv, capsys) -> str:
    code = mnist.main(argv)
    captured = capsys.readouterr()
    assert code == 2
    assert "data:" not in captured.out  # nothing loaded, nothing trained
    assert captured.err.startswith("error: ")
    return captured.err


def test_save_into_a_missing_folder(mnist, tmp_path, capsys, no_data):
    err = path_refused(mnist, ["--save", str(tmp_path / "no" / "m.safetensors")], capsys)
    assert "--save expected a file in an existing folder" in err and "does not exist" in err


def test_save_onto_a_folder(mnist, tmp_path, capsys, no_data):
    err = path_refused(mnist, ["--save", str(tmp_path)], capsys)
    assert "--save expected a file path" in err and "which is a folder" in err


def test_checkpoint_into_a_missing_folder_is_refused_before_epoch_one(mnist, tmp_path,
                                                                      capsys, no_data):
    err = path_refused(mnist, ["--checkpoint", str(tmp_path / "no" / "run.ckpt")], capsys)
    assert "--checkpoint expected a file in an existing folder" in err


def test_plot_onto_an_existing_file(mnist, tmp_path, capsys, no_data):
    existing = tmp_path / "plots.png"
    existing.write_bytes(b"x")
    err = path_refused(mnist, ["--plot", str(existing)], capsys)
    assert "--plot expected a folder" in err and "an existing file" in err


def test_plot_without_matplotlib(mnist, tmp_path, capsys, no_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    err = path_refused(mnist, ["--plot", str(tmp_path / "plots")], capsys)
    assert "--plot needs matplotlib" in err and "pip install" in err


def test_every_bad_path_is_reported_at_once(mnist, tmp_path, capsys, no_data):
    existing = tmp_path / "f"
    existing.write_bytes(b"x")
    err = path_refused(mnist, ["--save", str(tmp_path / "a" / "m"), "--checkpoint",
                               str(tmp_path / "b" / "c"), "--plot", str(existing)], capsys)
    assert "--save" in err and "--checkpoint" in err and "--plot" in err


def test_missing_resume_and_predict_files(mnist, tmp_path, capsys, no_data):
    err = path_refused(mnist, ["--resume", str(tmp_path / "none.ckpt")], capsys)
    assert "--resume expected an existing file" in err
    err = path_refused(mnist, ["--predict", str(tmp_path / "none.safetensors")], capsys)
    assert "--predict expected an existing file" in err


def test_data_dir_that_is_a_file(mnist, tmp_path, capsys, no_data):
    existing = tmp_path / "mnist.gz"
    existing.write_bytes(b"x")
    err = path_refused(mnist, ["--data-dir", str(existing)], capsys)
    assert "--data-dir expected a folder" in err


def test_predict_with_training_flags(mnist, tmp_path, capsys):
    err = refused(mnist.main, ["--predict", "w.safetensors", "--save", "x"], capsys)
    assert "--predict" in err and "--save" in err


def test_darknet_without_images(darknet, capsys):
    err = refused(darknet.main, [], capsys)
    assert "expected at least one image" in err


def test_darknet_weights_default_is_relative_to_the_current_folder(darknet, tmp_path,
                                                                   capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XPNN_DARKNET53_WEIGHTS", raising=False)
    assert darknet.main(["cat.jpg"]) == 2
    err = capsys.readouterr().err
    assert f"No Darknet53 weights at {tmp_path / 'weights' / 'darknet53.safetensors'}" in err


# -- python -m xpnn.backends ---------------------------------------------------------------------


def backends_doctor(env_value: str | None):
    import os

    env = {key: value for key, value in os.environ.items() if key != "XPNN_BACKEND"}
    if env_value is not None:
        env["XPNN_BACKEND"] = env_value
    return subprocess.run([sys.executable, "-m", "xpnn.backends"], capture_output=True,
                          text=True, timeout=300, env=env)


def test_backends_doctor_with_a_bogus_backend():
    run = backends_doctor("bogus")
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert "| numpy" in run.stdout  # the table is still printed
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    assert errors == ["error: XPNN_BACKEND expected one of numpy, torch, cupy, "
                      "array_api_strict, jax. Received: 'bogus'"]


def test_backends_doctor_unset_does_not_claim_a_value():
    run = backends_doctor(None)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("XPNN_BACKEND is not set (default: numpy)")
    assert "XPNN_BACKEND='numpy'" not in run.stdout


def test_backends_doctor_accepts_what_the_selector_accepts():
    run = backends_doctor("NumPy")
    assert run.returncode == 0, run.stderr
    assert "XPNN_BACKEND='NumPy'" in run.stdout
