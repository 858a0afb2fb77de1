"""Bad files and bad file arguments (issue 13): non-regular files, files rewritten while
they are read, forged architecture records of every size, reserved or unencodable names
and metadata, paths with NUL bytes or given as bytes, concurrent savers that cannot see
each other's PIDs, and out-of-range preprocessing.

Each must end in an :class:`~xpnn.errors.XpnnError` (or work), never block, never die
by a signal, never allocate what a forged header asks for, and never replace a good file
with an unreadable one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import numpy as np
import pytest

import xpnn
import xpnn.io.reading
import xpnn.io.writing
from xpnn.errors import ConfigError, DataError, DTypeError, WeightsError, XpnnError
from xpnn.io import load, load_metadata, load_model, read_arrays, save, stored_values
from xpnn.io.darknet import ConvLayer, read_weights
from xpnn.layers import Dense, ReLU, Sequential

posix_only = pytest.mark.skipif(os.name != "posix", reason="needs POSIX files and signals")


def small_model(seed=0):
    return Sequential([Dense(3, 4), ReLU(), Dense(4, 2)], seed=seed)


# -- non-regular files (item 16) ---------------------------------------------------------------


def _readers(path):
    """Every entry point that opens a file for reading, as ``name: call``."""
    from xpnn.models import darknet53
    from xpnn.models.convert_darknet import convert_darknet53

    target = os.path.join(os.path.dirname(path), "never.safetensors")
    return {
        "load": lambda: load(path),
        "load_metadata": lambda: load_metadata(path),
        "read_arrays": lambda: read_arrays(path),
        "stored_values": lambda: stored_values(path),
        "load_model": lambda: load_model(path),
        "darknet53": lambda: darknet53(path),
        "read_weights": lambda: read_weights(path, [ConvLayer("c", 1, 1, 1)]),
        "convert": lambda: convert_darknet53(path, target, depths=(1,), widths=(4,),
                                             stem_width=2, num_classes=5),
    }


def _call_with_timeout(call, seconds=10.0):
    """Run ``call`` in a daemon thread; return ``("done"|"raised"|"blocked", value)``."""
    outcome = {}

    def run():
        try:
            outcome["done"] = call()
        except BaseException as error:  # noqa: BLE001 - reported to the test
            outcome["raised"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return "blocked", None
    return next(iter(outcome.items()))


@posix_only
@pytest.mark.parametrize("reader", list(_readers("x")))
def test_a_fifo_is_refused_at_once_by_every_reader(tmp_path, reader):
    fifo = str(tmp_path / "pipe.safetensors")
    os.mkfifo(fifo)
    kind, value = _call_with_timeout(_readers(fifo)[reader])
    if kind == "blocked":  # unblock the reader (before the fix) so the thread can end
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    assert kind == "raised", f"{reader} {kind} on a FIFO"
    assert isinstance(value, DataError), repr(value)
    assert "regular file" in str(value) and "FIFO" in str(value)


@posix_only
def test_resuming_from_a_fifo_is_refused_at_once(tmp_path):
    from xpnn.optim import SGD
    from xpnn.training import fit

    fifo = str(tmp_path / "checkpoint.safetensors")
    os.mkfifo(fifo)
    x = np.zeros((8, 3), dtype="float32")
    y = np.zeros(8, dtype="int64")
    model = small_model()
    kind, value = _call_with_timeout(lambda: fit(
        model, (x, y), optimizer=SGD(model.parameters(), lr=0.1), epochs=1, batch_size=4,
        resume=fifo, progress=False, verbose=False))
    if kind == "blocked":
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert kind == "raised" and isinstance(value, DataError), (kind, value)


@posix_only
def test_a_character_device_is_refused_as_not_a_regular_file():
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null")
    for name, call in _readers("/dev/null").items():
        with pytest.raises(DataError, match="regular file"):
            call()
        assert name


def test_a_folder_is_still_a_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        load(tmp_path)
    with pytest.raises(DataError, match="is a folder"):
        read_weights(tmp_path, [ConvLayer("c", 1, 1, 1)])


# -- files rewritten or truncated while read (item 12) ------------------------------------------


def test_a_file_truncated_between_header_and_payload_is_a_weights_error(tmp_path,
                                                                         monkeypatch):
    path = tmp_path / "m.safetensors"
    save({"w": np.arange(1000, dtype="float32")}, path)
    real = xpnn.io.reading.read_exactly
    calls = []

    def truncate_then_read(handle, offset, count):
        calls.append(offset)
        if len(calls) == 3:  # prefix, header, then the payload: cut the file first
            os.truncate(path, offset + 10)
        return real(handle, offset, count)

    monkeypatch.setattr(xpnn.io.reading, "read_exactly", truncate_then_read)
    with pytest.raises(WeightsError, match="changed while it was read"):
        read_arrays(path)


def test_a_file_that_grows_while_read_is_a_weights_error(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save({"w": np.arange(1000, dtype="float32")}, path)
    real = xpnn.io.reading.read_exactly
    calls = []

    def grow_then_read(handle, offset, count):
        calls.append(offset)
        out = real(handle, offset, count)
        if len(calls) == 3:
            with open(path, "ab") as extra:
                extra.write(b"\0" * 64)
        return out

    monkeypatch.setattr(xpnn.io.reading, "read_exactly", grow_then_read)
    with pytest.raises(WeightsError, match="changed while it was read"):
        load(path)


_RACE = textwrap.dedent("""
    import os, sys, threading, time
    import numpy as np
    import xpnn
    from xpnn.errors import XpnnError
    path = sys.argv[1]
    xpnn.io.save({"w": np.ones((2048, 1024), dtype="float32")}, path)
    full = os.path.getsize(path)
    header_end = full - 2048 * 1024 * 4
    stop = threading.Event()

    def rewrite():
        while not stop.is_set():
            os.truncate(path, header_end + 4096)  # cut inside the data
            os.truncate(path, full)               # and back (zeros): valid again

    writer = threading.Thread(target=rewrite, daemon=True)
    writer.start()
    outcomes = {"loaded": 0, "refused": 0}
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        for call in (xpnn.io.read_arrays, xpnn.io.load_metadata):
            try:
                call(path)
                outcomes["loaded"] += 1
            except XpnnError:
                outcomes["refused"] += 1
    stop.set()
    writer.join()
    print(outcomes)
""")


@posix_only
def test_loading_while_another_thread_truncates_never_dies_by_a_signal(tmp_path):
    run = subprocess.run([sys.executable, "-c", _RACE, str(tmp_path / "m.safetensors"), "3"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (
        f"the loader died (status {run.returncode}: "
        f"{'signal ' + str(-run.returncode) if run.returncode < 0 else 'error'})\n"
        f"{run.stderr[-2000:]}")
    assert "refused" in run.stdout


@posix_only
def test_loading_while_another_process_truncates_never_dies_by_a_signal(tmp_path):
    path = tmp_path / "m.safetensors"
    save({"w": np.ones((2048, 1024), dtype="float32")}, path)
    full = os.path.getsize(path)
    cutter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, time
        end = time.monotonic() + 3
        while time.monotonic() < end:
            os.truncate({str(path)!r}, 4096)
            os.truncate({str(path)!r}, {full})
    """)])
    try:
        loader = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import time
            import xpnn
            from xpnn.errors import XpnnError
            end = time.monotonic() + 3
            while time.monotonic() < end:
                try:
                    xpnn.io.read_arrays({str(path)!r})
                except XpnnError:
                    pass
        """)], capture_output=True, text=True, timeout=120)
    finally:
        cutter.wait(timeout=60)
    assert loader.returncode == 0, f"status {loader.returncode}: {loader.stderr[-2000:]}"


def test_loaded_arrays_do_not_share_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save({"w": np.arange(6, dtype="float32").reshape(2, 3)}, path)
    arrays = read_arrays(path)
    os.truncate(path, 0)  # no memory map: the arrays stay readable
    assert arrays["w"].sum() == 15 and arrays["w"].flags.writeable


# -- forged architecture records (item 13) --------------------------------------------------------


def _forged_file(tmp_path, record, values=4):
    path = tmp_path / "forged.safetensors"
    save({"w": np.zeros(values, dtype="float32")}, path,
         metadata={"architecture": json.dumps(record)})
    return path


def _refused_cheaply(call, seconds=5.0, peak=64 * 2**20):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(WeightsError) as caught:
            call()
    finally:
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    elapsed = time.perf_counter() - start
    assert elapsed < seconds, f"took {elapsed:.1f} s"
    assert top < peak, f"allocated {top / 2**20:.0f} MiB"
    return caught.value


@pytest.mark.parametrize("config", [
    {"depths": 4, "widths": 4096},                      # integers, not lists
    {"depths": 1, "widths": 8192, "stem_width": 4096},
    {"depths": [4], "widths": 4096},
    {"depths": 100_000, "widths": 2, "stem_width": 1, "num_classes": 1},
    {"depths": [100_000], "widths": [2], "stem_width": 1, "num_classes": 1},
    {"depths": [1] * 5000, "widths": [2] * 5000, "stem_width": 1, "num_classes": 1},
    {"num_classes": 10**9},
    {"depths": "12345", "widths": "abcde"},
])
def test_forged_darknet53_records_are_refused_before_building(tmp_path, config):
    path = _forged_file(tmp_path, {"type": "Darknet53", "config": config})
    _refused_cheaply(lambda: load_model(path))


@pytest.mark.parametrize("size", [1, 2, 8, 64, 512, 4096, 2**15, 2**20, 2**40])
def test_integer_darknet53_sizes_are_counted_at_every_size(size):
    from xpnn.models import Darknet53

    as_int = Darknet53.values_from_config({"depths": 1, "widths": max(size, 2)})
    as_list = Darknet53.values_from_config({"depths": [1], "widths": [max(size, 2)]})
    assert as_int == as_list > 0


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_darknet53_counts_match_what_it_builds(depth):
    from xpnn.io.records import _counts
    from xpnn.models import Darknet53

    model = Darknet53(num_classes=3, depths=(depth, 1), widths=(4, 8), stem_width=2)
    record = {"type": "Darknet53", "config": model.config()}
    values, modules = _counts(record)
    assert values == sum(v.size for v in model.state_dict().values())
    assert modules == len(list(model.modules()))


def test_a_record_of_too_many_modules_is_refused_before_building(tmp_path):
    from xpnn.io.records import MAX_MODULES

    relus = [{"type": "ReLU", "config": {}}] * (MAX_MODULES + 1)
    path = _forged_file(tmp_path, {"type": "Sequential", "config": {"layers": relus}})
    error = _refused_cheaply(lambda: load_model(path), seconds=20.0)
    assert f"at most {MAX_MODULES:,} modules" in str(error)


def test_a_values_from_config_that_refuses_is_a_weights_error(tmp_path):
    path = _forged_file(tmp_path, {"type": "Darknet53", "config": {"depths": [1, 2],
                                                                   "widths": [4]}})
    with pytest.raises(WeightsError, match="as many stage depths as widths"):
        load_model(path)


def test_a_genuine_darknet53_record_still_loads(tmp_path):
    from xpnn.models import Darknet53

    model = Darknet53(num_classes=3, depths=(1,), widths=(4,), stem_width=2, seed=0)
    save(model, tmp_path / "d.safetensors")
    assert load_model(tmp_path / "d.safetensors").config() == model.config()


# -- reserved and unencodable names, oversized metadata (items 14, 21) ------------------------


def _good_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save(small_model(), path)
    return path, path.read_bytes()


@pytest.mark.parametrize(("state", "match"), [
    ({"__metadata__": np.zeros(2, dtype="float32")}, "__metadata__"),
    ({"ok": np.zeros(2, dtype="float32"), "__metadata__": np.zeros(1, dtype="int8")},
     "__metadata__"),
    ({"bad\ud800name": np.zeros(2, dtype="float32")}, "UTF-8"),
    ({b"bytes": np.zeros(2, dtype="float32")}, "str tensor names"),
])
def test_reserved_or_invalid_tensor_names_are_refused_and_keep_the_old_file(tmp_path, state,
                                                                            match):
    path, before = _good_file(tmp_path)
    with pytest.raises(ConfigError, match=match):
        save(state, path)
    assert path.read_bytes() == before and load_model(path) is not None
    assert os.listdir(tmp_path) == ["m.safetensors"]


@pytest.mark.parametrize("metadata", [
    {"note\ud800": "x"},
    {"note": "bad \udcff value"},
])
def test_unencodable_metadata_is_refused(tmp_path, metadata):
    path, before = _good_file(tmp_path)
    with pytest.raises(ConfigError, match="UTF-8"):
        save(small_model(), path, metadata=metadata)
    assert path.read_bytes() == before


def test_oversized_metadata_is_refused_before_writing(tmp_path):
    path, before = _good_file(tmp_path)
    huge = "x" * (xpnn.io.MAX_HEADER_BYTES // 2 + 1)
    with pytest.raises(ConfigError, match="metadata of at most"):
        save(small_model(), path, metadata={"blob": huge})
    assert path.read_bytes() == before


def test_a_save_that_would_not_read_back_is_refused(tmp_path, monkeypatch):
    path, before = _good_file(tmp_path)
    real = xpnn.io.writing.safetensors.numpy.save

    def broken(tensors, metadata=None):
        return real(tensors, metadata=metadata)[:-1]  # one byte short: unreadable

    monkeypatch.setattr(xpnn.io.writing.safetensors.numpy, "save", broken)
    with pytest.raises(ConfigError, match="could not read back"):
        save(small_model(), path)
    assert path.read_bytes() == before


def test_a_torch_bfloat16_tensor_is_a_dtype_error(tmp_path):
    torch = pytest.importorskip("torch")
    with pytest.raises(DTypeError, match="bfloat16|BFloat16"):
        save({"w": torch.zeros(3, dtype=torch.bfloat16)}, tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


def test_a_bfloat16_file_is_refused_naming_the_dtype(tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "bf16.safetensors"
    safetensors_torch.save_file({"w": torch.zeros(3, dtype=torch.bfloat16)}, str(path))
    assert stored_values(path) == 3
    with pytest.raises(WeightsError, match="BF16"):
        load(path)


# -- bad paths (item 21) ----------------------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda p: load(p), lambda p: load_metadata(p), lambda p: load_model(p),
    lambda p: read_arrays(p), lambda p: save(small_model(), p),
    lambda p: read_weights(p, [ConvLayer("c", 1, 1, 1)]),
])
def test_a_path_with_a_nul_byte_is_a_config_error(tmp_path, call):
    with pytest.raises(ConfigError, match="NUL"):
        call(str(tmp_path / "bad\0name.safetensors"))
    with pytest.raises(ConfigError, match="NUL"):
        call(os.fsencode(str(tmp_path / "bad\0name.safetensors")))


def test_bytes_paths_work_like_str_paths(tmp_path):
    path = os.fsencode(str(tmp_path / "m.safetensors"))
    save(small_model(), path)
    assert load_metadata(path)["format"] == "xpnn"
    assert sorted(load(path)) == sorted(small_model().state_dict())
    assert isinstance(load_model(path), Sequential)


def test_a_missing_file_is_still_a_missing_file_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "absent.safetensors")


# -- savers that cannot see each other's PIDs (item 15) ----------------------------------------


@posix_only
def test_savers_in_other_pid_namespaces_do_not_delete_each_others_files(tmp_path,
                                                                        monkeypatch):
    """Saver A is mid-write when saver B cleans up; B sees every PID as dead (another PID
    namespace). A's temporary file must survive, and A's save succeed."""
    path = tmp_path / "m.safetensors"
    monkeypatch.setattr(xpnn.io.writing, "_process_alive", lambda pid: False)
    real_write = xpnn.io.writing._write_all
    writing, release = threading.Event(), threading.Event()

    def slow_write(handle, data):
        if threading.current_thread().name == "saver-a":
            writing.set()
            release.wait(30)
        real_write(handle, data)

    monkeypatch.setattr(xpnn.io.writing, "_write_all", slow_write)
    errors = []

    def saver_a():
        try:
            save(small_model(seed=1), path)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    thread = threading.Thread(target=saver_a, name="saver-a")
    thread.start()
    assert writing.wait(30)
    temps = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert len(temps) == 1
    save(small_model(seed=2), path)  # saver B: cleans up, then saves
    assert temps[0] in os.listdir(tmp_path), "saver B deleted saver A's live temporary file"
    release.set()
    thread.join(30)
    assert not errors, errors
    assert os.listdir(tmp_path) == ["m.safetensors"]


@posix_only
def test_many_concurrent_savers_with_invisible_pids_all_succeed(tmp_path, monkeypatch):
    monkeypatch.setattr(xpnn.io.writing, "_process_alive", lambda pid: False)
    path = tmp_path / "m.safetensors"
    errors = []

    def saver(seed):
        for _ in range(10):
            try:
                save(small_model(seed=seed), path)
            except BaseException as error:  # noqa: BLE001
                errors.append(error)

    threads = [threading.Thread(target=saver, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]
    assert os.listdir(tmp_path) == ["m.safetensors"]
    assert isinstance(load_model(path), Sequential)


@posix_only
def test_a_killed_savers_file_is_removed_even_when_its_pid_is_reused(tmp_path):
    """A stale file whose PID now names a live process (ours) is kept, as before; one whose
    PID is dead and that nobody holds locked is removed."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    stale = tmp_path / f".m.safetensors.xpnn-{int(child.stdout)}-zz9.tmp"
    stale.write_bytes(b"half")
    save(small_model(), tmp_path / "m.safetensors")
    assert not stale.exists()


# -- preprocessing ranges (item 19) -------------------------------------------------------------


@pytest.mark.parametrize(("arguments", "match"), [
    ({"crop_pct": 1e-300}, r"crop_pct to be a number in \[0\.05, 1\.0\]"),
    ({"crop_pct": float("nan")}, "crop_pct"),
    ({"std": (1e-30, 1.0, 1.0)}, r"std\[0\] to be a number in \[0\.001, 1000\.0\]"),
    ({"std": (1.0, 1.0, 1e300)}, r"std\[2\]"),
    ({"mean": (1e300, 0.0, 0.0)}, r"mean\[0\]"),
    ({"mean": (float("nan"), 0.0, 0.0)}, r"mean\[0\]"),
    ({"input_size": 8192}, r"input_size to be an integer in \[1, 2048\]"),
    ({"input_size": 10**12}, "input_size"),
    ({"input_size": 256.0}, "input_size"),
])
def test_out_of_range_preprocessing_is_refused(arguments, match):
    from xpnn.models import Darknet53

    with pytest.raises(ConfigError, match=match):
        Darknet53(depths=(1,), widths=(4,), stem_width=2, **arguments)


@pytest.mark.parametrize("change", [
    {"crop_pct": 1e-300}, {"std": [0.0, 1.0, 1.0]}, {"std": [float("inf"), 1.0, 1.0]},
    {"input_size": 8192}, {"mean": [1.0, 2.0]}, {"interpolation": 3},
])
def test_preprocess_checks_the_dict_it_is_given(change):
    pytest.importorskip("PIL")
    from PIL import Image

    from xpnn.models.preprocess import preprocess

    pre = {"input_size": 8, "crop_pct": 0.875, "interpolation": "bicubic",
           "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    with pytest.raises(ConfigError):
        preprocess(Image.new("RGB", (10, 10)), {**pre, **change})


def test_a_forged_preprocessing_record_is_refused_on_load(tmp_path):
    from xpnn.models import Darknet53

    model = Darknet53(num_classes=3, depths=(1,), widths=(4,), stem_width=2, seed=0)
    config = {**model.config(), "crop_pct": 1e-300, "std": [1e-30, 1.0, 1.0]}
    path = tmp_path / "d.safetensors"
    save(model.state_dict(), path, metadata={
        "architecture": json.dumps({"type": "Darknet53", "config": config})})
    with pytest.raises(WeightsError, match="crop_pct"):
        load_model(path)


def test_every_error_here_is_an_xpnn_error():
    assert all(issubclass(kind, XpnnError)
               for kind in (ConfigError, DataError, DTypeError, WeightsError))
