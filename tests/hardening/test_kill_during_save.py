"""Nothing lost: SIGKILL at random points while saving never leaves a broken file.

A child process (forked from the test, so it starts in milliseconds) saves in a loop and
is killed with SIGKILL at a random moment. Afterwards the destination must be exactly one
of the complete files the child was writing, and it must load; temporary files left by
the kill are removed by the next save (``xpnn.io`` deletes ``.{name}.xpnn-{pid}-*.tmp``
files whose process is gone), so at most one is ever present and none after a final save.

* ``xpnn.io.save``: the child alternates two different contents A and B; the destination
  must hold exactly A or B (same header entries, byte-identical data).
* ``fit`` checkpoints: the child repeatedly resumes from its own checkpoint and trains one
  more epoch. The destination must hold, bit for bit, the weights and optimizer state of
  an uninterrupted run after the number of epochs it records (so this also checks that
  resuming is exact), and ``fit(resume=...)`` must accept it.

``XPNN_KILL_TRIALS`` sets the number of kills per saver (default in ``conftest.py``).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import struct
import sys
import time

import numpy as np
import pytest

import xpnn
from xpnn import backends, optim
from xpnn.layers import Dense, ReLU, Sequential
from xpnn.training import fit

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin",
                                reason="forks a child process and SIGKILLs it (Linux)")

TEMP = re.compile(r"\.dest\.safetensors\.xpnn-\d+-\w+\.tmp\Z")
FIT_EPOCHS = 40  # the child stops training after this many epochs and waits to be killed


def canonical(data: bytes):
    """The parsed JSON header and the data bytes: equal for two complete files of the same
    content. (safetensors writes the metadata keys in a per-process random order, so bytes
    written by another process differ in the header's key order only.)"""
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + size]), data[8 + size:]


def temp_files(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if TEMP.match(name))


def run_child(body, ready_fd: int) -> int:
    """Fork a child that runs ``body(signal_ready)`` forever; return its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            with backends.use("numpy"):
                body(lambda: os.write(ready_fd, b"r"))
            code = 0
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def kill_at_random(pid: int, ready_read: int, rng: random.Random, window: float) -> None:
    """Wait until the child has completed one save, then SIGKILL it within ``window`` s."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if os.read(ready_read, 1):
                break
        except BlockingIOError:
            pass
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            raise AssertionError(f"the saving child died on its own (status {status})")
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the saving child never completed its first save")
        time.sleep(0.001)
    time.sleep(rng.uniform(0.0, window))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


@pytest.fixture
def ready_pipe():
    read, write = os.pipe()
    os.set_blocking(read, False)
    yield read, write
    os.close(read)
    os.close(write)


def drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


# -- xpnn.io.save ---------------------------------------------------------------------------------


def test_sigkill_during_save_leaves_old_or_new_file(tmp_path, kill_trials, hardening_report,
                                                    ready_pipe):
    rng_np = np.random.default_rng(0)
    contents = [{f"layer{i}.weight": rng_np.standard_normal((256, 256)).astype(np.float32)
                 for i in range(8)} for _ in range(2)]  # 2 MiB each
    expected = []
    for index, content in enumerate(contents):
        xpnn.io.save(content, tmp_path / f"ref{index}.safetensors", metadata={"v": str(index)})
        expected.append(canonical((tmp_path / f"ref{index}.safetensors").read_bytes()))
    assert expected[0] != expected[1]
    folder = tmp_path / "target"
    folder.mkdir()
    dest = folder / "dest.safetensors"
    read, write = ready_pipe

    def saver(ready):
        for step in range(10**9):
            index = step % 2
            xpnn.io.save(contents[index], dest, metadata={"v": str(index)})
            if step == 0:
                ready()

    rng = random.Random(0)
    seen = {0: 0, 1: 0}
    mid_save = max_temps = 0
    for _ in range(kill_trials):
        drain(read)
        pid = run_child(saver, write)
        kill_at_random(pid, read, rng, window=0.05)
        data = canonical(dest.read_bytes())
        assert data in expected, "the destination is neither complete file"
        seen[expected.index(data)] += 1
        with backends.use("numpy"):
            loaded = xpnn.io.load(dest)
        np.testing.assert_array_equal(loaded["layer0.weight"],
                                      contents[expected.index(data)]["layer0.weight"])
        temps = temp_files(folder)
        mid_save += bool(temps)
        max_temps = max(max_temps, len(temps))
        assert len(temps) <= 1, f"stale temporary files accumulate: {temps}"
    xpnn.io.save(contents[0], dest)  # the next save removes what the last kill left
    assert os.listdir(folder) == ["dest.safetensors"]
    hardening_report["kill xpnn.io.save"] = {
        "kills": kill_trials, "dest_old_or_new_complete": sum(seen.values()),
        "dest_is_A": seen[0], "dest_is_B": seen[1], "killed_mid_save_temp_left": mid_save,
        "max_temp_files": max_temps, "broken": 0}
    assert sum(seen.values()) == kill_trials


# -- fit checkpoints -------------------------------------------------------------------------------


def blobs(n=64):
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, n)
    x = (np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])[y] + rng.standard_normal((n, 2)))
    return x.astype(np.float32), y


def run(epochs: int, checkpoint, resume=None):
    model = Sequential([Dense(2, 64), ReLU(), Dense(64, 64), ReLU(), Dense(64, 3)], seed=0)
    optimizer = optim.Adam(model.parameters(), lr=0.01)
    fit(model, blobs(), optimizer=optimizer, epochs=epochs, batch_size=16, seed=7,
        checkpoint=checkpoint, resume=resume, progress=False, verbose=False)
    return model, optimizer


def test_sigkill_during_fit_checkpoint_leaves_a_complete_resumable_one(
        tmp_path, kill_trials, hardening_report, ready_pipe):
    # The uninterrupted run: the checkpoint after each epoch, as host arrays.
    reference = tmp_path / "reference.safetensors"
    expected = {}
    with backends.use("numpy"):
        for epoch in range(1, FIT_EPOCHS + 1):
            run(epoch, reference, resume=reference if epoch > 1 else None)
            expected[epoch] = xpnn.io.load(reference)
    folder = tmp_path / "target"
    folder.mkdir()
    dest = folder / "dest.safetensors"
    read, write = ready_pipe

    def trainer(ready):
        done = 0
        if dest.exists():
            done = len(xpnn.training.History.from_json(
                xpnn.io.load_metadata(dest)["history"]).epochs)
        for epoch in range(done + 1, FIT_EPOCHS + 1):
            run(epoch, dest, resume=dest if epoch > 1 else None)
            if epoch == done + 1:
                ready()
        while True:
            time.sleep(1)

    rng = random.Random(1)
    epochs_seen, mid_save, max_temps = [], 0, 0
    for _ in range(kill_trials):
        drain(read)
        if dest.exists() and epochs_seen and epochs_seen[-1] == FIT_EPOCHS:
            dest.unlink()  # start the chain again
        pid = run_child(trainer, write)
        kill_at_random(pid, read, rng, window=0.08)
        with backends.use("numpy"):
            metadata = xpnn.io.load_metadata(dest)
            epochs = len(xpnn.training.History.from_json(metadata["history"]).epochs)
            state = xpnn.io.load(dest)
            for name, value in expected[epochs].items():
                np.testing.assert_array_equal(state[name], value, err_msg=f"{name} @ {epochs}")
            model, _ = run(epochs, None, resume=dest)  # fit accepts it and resumes
        epochs_seen.append(epochs)
        temps = temp_files(folder)
        mid_save += bool(temps)
        max_temps = max(max_temps, len(temps))
        assert len(temps) <= 1, f"stale temporary files accumulate: {temps}"
    xpnn.io.save({"x": np.zeros(1)}, dest)
    assert os.listdir(folder) == ["dest.safetensors"]
    hardening_report["kill fit checkpoint"] = {
        "kills": kill_trials, "dest_complete_and_resumable": len(epochs_seen),
        "epochs_reached": f"{min(epochs_seen)}..{max(epochs_seen)}",
        "killed_mid_save_temp_left": mid_save, "max_temp_files": max_temps, "broken": 0}
