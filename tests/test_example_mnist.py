"""End-to-end: the README's main command, shortened, on the embedded sample; and what the
command line says when a run is interrupted, resumed, or given a checkpoint to predict with."""

import importlib.util
import shlex
import sys
from pathlib import Path

import pytest

from xpnn.io import load_metadata

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist.py"


def load_example():
    spec = importlib.util.spec_from_file_location("mnist_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """No MNIST anywhere: no XPNN_DATA, an empty cache folder."""
    monkeypatch.delenv("XPNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def image_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.lstrip().startswith("image ")]


def test_example_trains_saves_plots_and_predicts(tmp_path, capsys, no_data):
    pytest.importorskip("matplotlib")
    example = load_example()
    weights, plots = tmp_path / "mlp.safetensors", tmp_path / "plots"
    code = example.main(["--epochs", "2", "--quiet", "--save", str(weights),
                         "--plot", str(plots)])
    out = capsys.readouterr().out
    assert code == 0
    assert "embedded 5,000-image MNIST sample" in out  # the no-argument default says so
    assert "test accuracy:" in out
    metadata = load_metadata(weights)
    accuracy = float(metadata["test_accuracy"])
    assert accuracy > 0.85  # two epochs on 4,000 images
    assert not {"hidden", "width", "model"} & set(metadata)  # nothing the library must read
    assert "architecture" in metadata and "preprocessing" in metadata  # written by xpnn.io
    for name in ("history.png", "confusion_matrix.png", "predictions.png"):
        assert (plots / name).stat().st_size > 10_000

    code = example.main(["--predict", str(weights)])
    out = capsys.readouterr().out
    assert code == 0 and f"test accuracy: {accuracy:.2%}" in out


def test_explicit_data_dir_without_the_files_is_an_error_naming_them(tmp_path, capsys,
                                                                     no_data):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes(b"")
    code = load_example().main(["--data-dir", str(folder), "--epochs", "1", "--quiet"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("error: ")
    assert "t10k-images-idx3-ubyte" in captured.err  # the files that are missing
    assert "--data-dir" in captured.err and "--download" in captured.err  # the flags
    assert "embedded" not in captured.out and "test accuracy" not in captured.out


def test_xpnn_data_naming_a_missing_folder_is_an_error(tmp_path, capsys, no_data,
                                                       monkeypatch):
    monkeypatch.setenv("XPNN_DATA", str(tmp_path / "not-there"))
    code = load_example().main(["--epochs", "1", "--quiet"])
    captured = capsys.readouterr()
    assert code == 2 and "XPNN_DATA" in captured.err and "Traceback" not in captured.err
    assert "train-images-idx3-ubyte" in captured.err
    assert "test accuracy" not in captured.out


def test_ctrl_c_prints_the_command_that_continues_and_it_does(tmp_path, capsys, no_data,
                                                             monkeypatch):
    example = load_example()
    real_fit = example.fit
    checkpoint = tmp_path / "run.ckpt"

    def fit_then_ctrl_c(*args, **kwargs):  # one epoch (checkpointed), then Ctrl-C
        real_fit(*args, **{**kwargs, "epochs": 1})
        raise KeyboardInterrupt

    monkeypatch.setattr(example, "fit", fit_then_ctrl_c)
    argv = ["--epochs", "2", "--quiet", "--seed", "3", "--checkpoint", str(checkpoint)]
    assert example.main(argv) == 130
    err = capsys.readouterr().err
    command = err.strip().splitlines()[-1].strip()
    words = shlex.split(command)
    assert words[0] == "python" and Path(words[1]).resolve() == EXAMPLE
    assert words[2:] == [*argv, "--resume", str(checkpoint)]

    monkeypatch.setattr(example, "fit", real_fit)
    assert example.main(words[2:]) == 0  # the printed command continues the run
    out = capsys.readouterr().out
    assert out.count("resumed at epoch 2, batch 0") == 1  # said once (by fit or the script)
    assert "after 2 epochs" in out


def test_ctrl_c_replaces_an_earlier_resume_flag():
    example = load_example()
    argv = ["--epochs", "5", "--resume=old.ckpt", "--checkpoint", "new.ckpt"]
    assert example._cli.replace_flag(argv, "--resume", "new.ckpt") == [
        "--epochs", "5", "--checkpoint", "new.ckpt", "--resume", "new.ckpt"]
    argv = ["--resume", "old.ckpt", "--epochs", "5"]
    assert example._cli.replace_flag(argv, "--resume", "n w.ckpt") == [
        "--epochs", "5", "--resume", "n w.ckpt"]
    assert "'n w.ckpt'" in example._cli.command_line(EXAMPLE, ["--resume", "n w.ckpt"])


def test_ctrl_c_without_checkpoint_says_how_to_get_one(capsys, no_data, monkeypatch):
    example = load_example()

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(example, "fit", ctrl_c)
    assert example.main(["--epochs", "1", "--quiet"]) == 130
    assert "--checkpoint PATH" in capsys.readouterr().err


def test_predict_shows_every_class_says_sample_and_reads_checkpoints(tmp_path, capsys,
                                                                      no_data):
    example = load_example()
    weights, checkpoint = tmp_path / "mlp.safetensors", tmp_path / "run.ckpt"
    assert example.main(["--epochs", "1", "--quiet", "--save", str(weights),
                         "--checkpoint", str(checkpoint)]) == 0
    capsys.readouterr()

    assert example.main(["--predict", str(weights)]) == 0
    out = capsys.readouterr().out
    shown = image_lines(out)
    assert len(shown) == 10
    true_labels = {line.split("true ")[1].split()[0] for line in shown}
    assert len(true_labels) == 10  # one image per digit, not ten images of digit 0
    assert "embedded sample" in out and "training split" in out

    assert example.main(["--predict", str(checkpoint)]) == 0  # not a key mismatch
    out = capsys.readouterr().out
    assert f"{checkpoint} is a training checkpoint" in out
    assert f"--resume {checkpoint}" in out
    assert len(image_lines(out)) == 10 and "test accuracy:" in out


def test_resume_refuses_a_weights_file_before_loading_data(tmp_path, capsys, no_data):
    example = load_example()
    weights = tmp_path / "mlp.safetensors"
    import xpnn

    xpnn.io.save(xpnn.models.mnist_mlp(), weights)
    assert example.main(["--resume", str(weights), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "--resume expected a checkpoint" in captured.err
    assert f"--predict {weights}" in captured.err and "data:" not in captured.out


def test_target_accuracy_not_reached_is_reported(capsys, no_data):
    code = load_example().main(["--epochs", "1", "--quiet", "--target-accuracy", "0.9999"])
    out = capsys.readouterr().out
    # fit reports it (once), with the best accuracy reached
    assert code == 0 and out.count("target accuracy 0.9999 not reached in 1 epochs (best") == 1


@pytest.mark.parametrize("supported", [True, False])
def test_restore_best_reaches_fit_when_fit_has_it(capsys, no_data, monkeypatch, supported):
    example = load_example()
    seen = {}
    real_fit = example.fit

    if supported:
        def fake_fit(*args, restore_best=False, **kwargs):
            seen["restore_best"] = restore_best
            return real_fit(*args, **kwargs)
    else:
        def fake_fit(*args, **kwargs):
            seen.update(kwargs)
            return real_fit(*args, **kwargs)

    monkeypatch.setattr(example, "fit", fake_fit)
    assert example.main(["--epochs", "1", "--quiet", "--restore-best"]) == 0
    err = capsys.readouterr().err
    if supported:
        assert seen["restore_best"] is True and "ignored" not in err
    else:
        assert "restore_best" not in seen and "--restore-best is ignored" in err


def test_the_script_runs_as_a_command_without_a_traceback(tmp_path):
    import subprocess

    run = subprocess.run([sys.executable, str(EXAMPLE), "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "error:" in run.stderr and "--data-dir" in run.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_real_ctrl_c_prints_the_resume_command(tmp_path):
    import os
    import signal
    import subprocess
    import time

    env = {key: value for key, value in os.environ.items() if key != "XPNN_DATA"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    checkpoint = tmp_path / "run.ckpt"
    child = subprocess.Popen(  # SIGINT back to its default, as in a terminal
        [sys.executable, str(EXAMPLE), "--quiet", "--epochs", "10000", "--checkpoint",
         str(checkpoint)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:  # after epoch 1
        time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "Traceback" not in err
    command = shlex.split(err.strip().splitlines()[-1])
    assert command[0] == "python" and Path(command[1]).resolve() == EXAMPLE
    assert command[-2:] == ["--resume", str(checkpoint)]
