"""numba's disk cache under several processes: saves and loads hold a lock
(backends/numba_support.py, serialize_cache_io), so processes compiling the same kernel at
once (MPI ranks on a first run, test workers) never leave an index that points a type
signature at another signature's machine code."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("numba")
fcntl = pytest.importorskip("fcntl")

KERNEL = textwrap.dedent('''
    def scaled_sum(x, factor):
        total = x[0] - x[0]
        for i in range(x.shape[0]):
            total += x[i] * factor
        return total
''')

# Compiles (or loads) scaled_sum for the dtypes given on the command line, in that order,
# checks each result and prints "ok <cache folder>". With XPNN_TEST_BARRIER set, it first
# writes <folder>/ready-<pid> and waits for <folder>/go, so that several start compiling
# at the same moment.
RUN = textwrap.dedent('''
    import os, sys, time
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from xpnn.backends import numba_support
    import kernel_module
    if os.environ.get("XPNN_TEST_BARRIER"):
        # widen numba's window between reading the cache index and writing it back, so
        # that saves of processes started together overlap
        from numba.core import caching
        read_index = caching.IndexDataCacheFile._load_index
        def slow_read_index(self):
            overloads = read_index(self)
            time.sleep(0.5)
            return overloads
        caching.IndexDataCacheFile._load_index = slow_read_index
        # and let the processes that compile float32 first write their data later
        write_data = caching.IndexDataCacheFile._save_data
        def late_write_data(self, name, data):
            time.sleep(0.7 if sys.argv[2] == "float32" else 0.0)
            return write_data(self, name, data)
        caching.IndexDataCacheFile._save_data = late_write_data
    kernel = numba_support.jit()(kernel_module.scaled_sum)
    if os.environ.get("XPNN_TEST_BARRIER"):
        open(os.path.join(sys.argv[1], f"ready-{os.getpid()}"), "w").close()
        while not os.path.exists(os.path.join(sys.argv[1], "go")):
            time.sleep(0.005)
    for name in sys.argv[2:]:
        x = np.arange(1, 11, dtype=name)
        got = kernel(x, x.dtype.type(2))
        assert got == 110, (name, got)
    print("ok", kernel._cache.cache_path)
''')


@pytest.fixture
def workspace(tmp_path):
    """A folder with the kernel's module, and an environment whose numba cache is a fresh
    folder inside it."""
    (tmp_path / "kernel_module.py").write_text(KERNEL)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("XPNN_NUMBA", None)
    return tmp_path, env


def start(workspace, *dtypes, barrier=False):
    folder, env = workspace
    if barrier:
        env = {**env, "XPNN_TEST_BARRIER": "1"}
    return subprocess.Popen([sys.executable, "-c", RUN, str(folder), *dtypes], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, timeout=240):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out.split()[1]


def test_a_save_waits_for_the_cache_lock(workspace):
    """While another process holds the lock, a process that must compile the kernel cannot
    look it up in the cache or save it there: it finishes only after the lock is released
    (compiling takes a few seconds at most; it is still running after 8)."""
    cache_folder = finish(start(workspace, "float64"))  # where this kernel's cache lives
    for entry in os.listdir(cache_folder):  # forget the compiled version: the next run saves
        if entry.endswith((".nbi", ".nbc")):
            os.remove(os.path.join(cache_folder, entry))
    with open(os.path.join(cache_folder, "xpnn-numba-cache.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        process = start(workspace, "float32")
        time.sleep(8.0)  # compiling takes well under this; the save then waits
        assert process.poll() is None, process.communicate()
        fcntl.flock(lock, fcntl.LOCK_UN)
        finish(process)


def test_processes_compiling_at_once_leave_a_consistent_cache(workspace):
    """Four processes start compiling float32 and float64 versions at the same moment,
    half of them in each order, with numba's index read slowed down so that their saves
    overlap, and the data written late by half of them; a fifth then loads every version
    from the cache and gets the right results. (Without the lock, saves take the same data
    file, the index keeps one process's signature and the file the other's code, and the
    fifth process failed with "can't unbox array from PyObject" in 1 of 2 runs.)"""
    folder = workspace[0]
    processes = [start(workspace, *order, barrier=True) for order in
                 (("float32", "float64"), ("float64", "float32")) * 2]
    deadline = time.monotonic() + 120
    while len(list(folder.glob("ready-*"))) < len(processes):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), \
            [p.communicate() for p in processes if p.poll() is not None]
        time.sleep(0.01)
    (folder / "go").touch()
    for process in processes:
        finish(process)
    folder = finish(start(workspace, "float64", "float32"))
    assert sorted(name for name in os.listdir(folder) if name.endswith(".nbc")), folder


def test_a_cache_folder_without_locks_or_write_access_still_works(monkeypatch, tmp_path):
    """When the lock file cannot be opened, or the file system refuses the lock, the save
    or load runs unlocked (as numba alone would), instead of failing the kernel call."""
    from xpnn.backends import numba_support

    calls = []

    def save(*args):
        calls.append(args)
        return "saved"

    unopenable = numba_support._holding_lock(save, str(tmp_path / "missing" / "x" / "lock"))
    monkeypatch.setattr(os, "makedirs", lambda *a, **k: (_ for _ in ()).throw(OSError(30, "ro")))
    assert unopenable("key") == "saved"
    monkeypatch.undo()

    def refuse(handle, operation):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    unlockable = numba_support._holding_lock(save, str(tmp_path / "lock"))
    assert unlockable("other") == "saved"
    assert calls == [("key",), ("other",)]
