"""Hostile files: seeded mutations of valid files must load correctly or be refused.

For each format (safetensors weights, darknet ``.weights``, IDX raw and gzipped, MNIST
folders, and fit checkpoints) a valid seed file is written, then corrupted by a seeded
mutation loop: truncations, flipped and overwritten bytes, inserted and deleted ranges,
huge or negative header lengths, wrong dtypes and shapes in the JSON header, data offsets
that do not match the data, malformed metadata records, forged architectures, and NaN/Inf
values. Every entry point that reads the format is called on every variant, and each call
must

* return normally ("loaded": the variant is still a valid file), or
* raise an :class:`~xpnn.errors.XpnnError` ("refused"),

never another exception ("other" must stay 0), never run longer than ``CASE_SECONDS``
(SIGALRM plus a wall-clock check), and never allocate more than ``PEAK_BYTES`` (tracemalloc
peak per case; the seed files are a few KB). Deterministic cases whose headers claim
100 GB must be refused within that memory bound.

NaN and infinite values are a valid file: plain loads return them (documented in
:mod:`xpnn.io`), ``check_finite=True`` refuses them, and so does ``fit(resume=...)``.

Counts per format are recorded in the hardening report (terminal summary and JSON, see
``conftest.py``). ``XPNN_FUZZ_TRIALS`` sets the mutations per seed file (default in
``conftest.py``).
"""

from __future__ import annotations

import gzip
import json
import random
import resource
import signal
import struct
import sys
import time
import traceback
import tracemalloc
from collections import Counter
from contextlib import contextmanager

import numpy as np
import pytest

import xpnn
from xpnn import backends, optim, schedules
from xpnn.datasets import load_mnist, read_idx, write_idx
from xpnn.errors import XpnnError
from xpnn.io.darknet import ConvLayer, read_weights, write_weights
from xpnn.layers import Dense, Flatten, ReLU, Sequential
from xpnn.models.convert_darknet import convert_darknet53, darknet53_layers
from xpnn.training import TrainingStopped, fit

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGALRM")

CASE_SECONDS = 10.0  # generous: CI machines are shared; real cases take milliseconds
PEAK_BYTES = 64 * 2**20
RSS_GROWTH_BYTES = 512 * 2**20
GB100 = 100 * 2**30
HOSTILE_VALUES = [-1, 0, 1, 7, 2**31, 2**32 + 1, 2**63, 10**30, -(10**30), 1.5, "x", "", None,
                  True, [], {}, [1, 2], {"a": 1}, float("nan"), float("inf")]


# -- running one case --------------------------------------------------------------------------


class Hang(BaseException):
    """Raised by SIGALRM inside a case that runs too long."""


@contextmanager
def time_bound(seconds: float):
    def alarm(signum, frame):
        raise Hang(f"the case ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Tally:
    """Runs cases of one format and counts their outcomes."""

    def __init__(self, name: str):
        self.name = name
        self.counts = Counter({"tried": 0, "loaded": 0, "refused": 0, "other": 0})
        self.mutations = Counter()
        self.problems: list[str] = []
        self.slowest = 0.0
        self.peak = 0

    def case(self, label: str, call, *, expect: str | None = None):
        tracemalloc.reset_peak()
        started = time.perf_counter()
        outcome, error = "loaded", None
        try:
            with time_bound(CASE_SECONDS):
                call()
        except XpnnError as caught:
            outcome, error = "refused", caught
        except BaseException as caught:  # noqa: BLE001 - every other type is a failure
            if isinstance(caught, KeyboardInterrupt):
                raise
            outcome, error = "other", caught
            text = "".join(traceback.format_exception(caught)[-4:])
            self.problems.append(f"{label}: {type(caught).__module__}."
                                 f"{type(caught).__name__}: {caught}\n{text}")
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        self.slowest, self.peak = max(self.slowest, elapsed), max(self.peak, peak)
        if elapsed > CASE_SECONDS:
            self.problems.append(f"{label}: took {elapsed:.1f} s (bound {CASE_SECONDS} s)")
        if peak > PEAK_BYTES:
            self.problems.append(f"{label}: allocated {peak / 2**20:.0f} MiB at peak")
        if expect is not None and outcome != expect:
            self.problems.append(f"{label}: expected {expect}, got {outcome} ({error!r})")
        self.counts["tried"] += 1
        self.counts[outcome] += 1
        return outcome, error

    def finish(self, report: dict, rss_before: int) -> None:
        growth = (_max_rss() - rss_before)
        if growth > RSS_GROWTH_BYTES:
            self.problems.append(f"max RSS grew by {growth / 2**20:.0f} MiB during the run")
        report[self.name] = {**self.counts, "mutations": sum(self.mutations.values()),
                             "slowest_case_s": round(self.slowest, 3),
                             "peak_traced_MiB": round(self.peak / 2**20, 1)}
        print(f"{self.name}: {report[self.name]} by kind {dict(self.mutations)}")
        assert self.counts["tried"] > 0
        assert not self.problems, f"{len(self.problems)} problems:\n\n" + "\n\n".join(
            self.problems[:15])
        assert self.counts["other"] == 0


def _max_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@pytest.fixture
def traced():
    """tracemalloc on for the test; yields the max RSS before it."""
    tracemalloc.start()
    try:
        with backends.use("numpy"):
            yield _max_rss()
    finally:
        tracemalloc.stop()


# -- generic byte mutations ------------------------------------------------------------------------


def mutate_bytes(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random byte-level corruption of ``data``."""
    b = bytearray(data)
    kind = rng.choice(["truncate", "flip", "overwrite", "insert", "delete", "append",
                       "zero-run"])
    i = rng.randrange(max(1, len(b)))
    if kind == "truncate":
        return kind, bytes(b[:i])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            j = rng.randrange(len(b))
            b[j] ^= 1 << rng.randrange(8)
        return kind, bytes(b)
    if kind == "overwrite":
        n = rng.randint(1, 16)
        b[i:i + n] = rng.randbytes(n)
        return kind, bytes(b)
    if kind == "insert":
        b[i:i] = rng.randbytes(rng.randint(1, 64))
        return kind, bytes(b)
    if kind == "delete":
        del b[i:i + rng.randint(1, 64)]
        return kind, bytes(b)
    if kind == "append":
        return kind, bytes(b) + rng.randbytes(rng.randint(1, 256))
    n = rng.randint(1, 64)
    b[i:i + n] = bytes(min(n, len(b) - i))
    return kind, bytes(b)


def hostile(rng: random.Random):
    return rng.choice(HOSTILE_VALUES)


def mutate_json(value, rng: random.Random):
    """A copy of a JSON-like value with one random leaf (or key) replaced or removed."""
    if isinstance(value, dict) and value and rng.random() < 0.85:
        value = dict(value)
        key = rng.choice(list(value))
        roll = rng.random()
        if roll < 0.15:
            del value[key]
        elif roll < 0.25:
            value[f"{key}_extra"] = hostile(rng)
        else:
            value[key] = mutate_json(value[key], rng)
        return value
    if isinstance(value, list) and value and rng.random() < 0.85:
        value = list(value)
        index = rng.randrange(len(value))
        value[index] = mutate_json(value[index], rng)
        return value
    return hostile(rng)


# -- safetensors --------------------------------------------------------------------------------


def st_split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def st_join(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def nan_inf_in_float32(data: bytes, rng: random.Random) -> bytes:
    """Write NaN or ±Inf over random float32 elements of a safetensors file."""
    header, body = st_split(data)
    floats = [v for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32"
              and v["data_offsets"][1] > v["data_offsets"][0]]
    start = len(data) - len(body)
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        begin, end = rng.choice(floats)["data_offsets"]
        element = rng.randrange((end - begin) // 4)
        value = rng.choice([float("nan"), float("inf"), float("-inf")])
        struct.pack_into("<f", b, start + begin + 4 * element, value)
    return bytes(b)


ARCHITECTURES = [
    {"type": "Dense", "config": {"in_features": 2**20, "out_features": 2**15}},  # 128 GiB
    {"type": "Sequential", "config": {"layers": [{"type": "Dense", "config": {
        "in_features": 10**6, "out_features": 10**6}}]}},
    {"type": "os.system", "config": {"command": "echo pwned"}},
    {"type": "Dense", "config": {"in_features": "12", "out_features": 8}},
    {"type": "Darknet53", "config": {"widths": [2**16] * 5}},
]


def deep_architecture(depth: int) -> str:
    """``Residual(Residual(...(Flatten())))`` nested ``depth`` deep, as JSON text."""
    opening = '{"type": "Residual", "config": {"block": ' * depth
    return opening + '{"type": "Flatten", "config": {}}' + "}}" * depth


def mutate_safetensors(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["bytes", "bytes", "header-length", "tensor-entry", "tensor-entry",
                       "metadata", "architecture", "extra-tensor", "nan-inf"])
    if kind == "bytes":
        return mutate_bytes(data, rng)
    header, body = st_split(data)
    names = [k for k in header if k != "__metadata__"]
    if kind == "header-length":
        value = rng.choice([0, 1, 7, len(data), len(data) - 7, 2**63 - 1, 2**64 - 1,
                            2**64 - 8, GB100, rng.randrange(2**64)])
        return kind, struct.pack("<Q", value) + data[8:]
    if kind == "tensor-entry":
        name = rng.choice(names)
        entry = dict(header[name])
        field = rng.choice(["dtype", "shape", "data_offsets"])
        entry[field] = rng.choice({
            "dtype": ["F32", "F64", "F16", "BF16", "I64", "I32", "I8", "U8", "U64", "BOOL",
                      "C64", "F8_E4M3", "F8_E5M2", "XYZ", "", 7, None],
            "shape": [[], [0], [-1], [2**40], [2**31, 2**31], [2**64], ["a"], None,
                      [rng.randint(0, 20), rng.randint(0, 20)], [1] * 40],
            "data_offsets": [[0, len(body)], [0, len(body) + 1], [0, 2**63], [-1, 4],
                             [8, 4], [0, 0], [len(body), len(body) + 4], None, [1],
                             [0, GB100]],
        }[field])
        header[name] = entry
        return f"{kind}:{field}", st_join(header, body)
    if kind == "metadata":
        return kind, st_join(mutate_json(header, rng) if rng.random() < 0.3 else
                             {**header, "__metadata__": mutate_json(
                                 header.get("__metadata__", {}), rng)}, body)
    if kind == "architecture":
        choice = rng.randrange(len(ARCHITECTURES) + 3)
        if choice < len(ARCHITECTURES):
            text = json.dumps(ARCHITECTURES[choice])
        elif choice == len(ARCHITECTURES):
            text = deep_architecture(rng.choice([70, 400, 3000]))
        elif choice == len(ARCHITECTURES) + 1:
            text = "[" * 100_000 + "]" * 100_000
        else:
            text = json.dumps(mutate_json(json.loads(
                header.get("__metadata__", {}).get("architecture", "{}")), rng))
        header["__metadata__"] = {**header.get("__metadata__", {}), "architecture": text}
        return kind, st_join(header, body)
    if kind == "extra-tensor":
        name = rng.choice(names)
        header[f"{name}.copy"] = dict(header[name])  # overlapping offsets
        return kind, st_join(header, body)
    if not any(header[n]["dtype"] == "F32" for n in names):
        return mutate_bytes(data, rng)
    return kind, nan_inf_in_float32(data, rng)


def mlp(seed: int = 0):
    return Sequential([Flatten(), Dense(12, 8), ReLU(), Dense(8, 3)], seed=seed)


def safetensors_seeds(folder) -> list[bytes]:
    xpnn.io.save(mlp(), folder / "a.safetensors", metadata={"note": "seed"})
    rng = np.random.default_rng(0)
    xpnn.io.save({"w16": rng.standard_normal((3, 4)).astype(np.float16),
                  "count": np.array(3, dtype=np.int64),
                  "mask": rng.integers(0, 2, 5).astype(bool),
                  "pixels": rng.integers(0, 255, (2, 3), dtype=np.uint8),
                  "w64": rng.standard_normal(6), "w32": rng.standard_normal(4).astype("f4"),
                  "empty": np.zeros((0, 3), dtype=np.float32)},
                 folder / "b.safetensors")
    return [(folder / name).read_bytes() for name in ("a.safetensors", "b.safetensors")]


def safetensors_calls(path):
    return {
        "load": lambda: xpnn.io.load(path),
        "load-finite": lambda: xpnn.io.load(path, check_finite=True),
        "load-into": lambda: xpnn.io.load(path, into=mlp(1)),
        "load_metadata": lambda: xpnn.io.load_metadata(path),
        "load_model": lambda: xpnn.io.load_model(path),
    }


def test_fuzz_safetensors(tmp_path, fuzz_trials, hardening_report, traced):
    tally = Tally("fuzz safetensors")
    seeds = safetensors_seeds(tmp_path)
    path = tmp_path / "fuzzed.safetensors"
    for seed_index, seed in enumerate(seeds):
        path.write_bytes(seed)
        for name, call in safetensors_calls(path).items():  # the seeds themselves
            if not (seed_index == 1 and name in ("load-into", "load_model")):
                tally.case(f"seed{seed_index}/{name}", call, expect="loaded")
        for trial in range(fuzz_trials):
            rng = random.Random(f"safetensors-{seed_index}-{trial}")
            kind, variant = mutate_safetensors(seed, rng)
            tally.mutations[kind] += 1
            path.write_bytes(variant)
            outcomes = {name: tally.case(f"seed{seed_index}/trial{trial}/{kind}/{name}", call)
                        for name, call in safetensors_calls(path).items()}
            if kind == "nan-inf":  # a valid file: loads as is, refused when checked
                assert outcomes["load"][0] == "loaded", outcomes["load"]
                assert outcomes["load-finite"][0] == "refused"
                assert "NaN or infinite" in str(outcomes["load-finite"][1])
    tally.finish(hardening_report, traced)


def test_safetensors_claiming_100_gb_is_refused_before_allocating(tmp_path, hardening_report,
                                                                  traced):
    tally = Tally("fuzz safetensors 100 GB claims")
    good = safetensors_seeds(tmp_path)[0]
    header, body = st_split(good)
    name = next(k for k in header if k != "__metadata__")
    claims = {
        "header-length": struct.pack("<Q", GB100) + good[8:],
        "tensor-offsets": st_join({**header, name: {"dtype": "F32", "shape": [GB100 // 4],
                                                    "data_offsets": [0, GB100]}}, body),
        "tensor-shape": st_join({**header, name: {"dtype": "F32", "shape": [GB100 // 4],
                                                  "data_offsets": [0, 32]}}, body),
        "architecture": st_join({**header, "__metadata__": {
            **header["__metadata__"], "architecture": json.dumps(ARCHITECTURES[0])}}, body),
    }
    path = tmp_path / "claims.safetensors"
    for label, data in claims.items():
        path.write_bytes(data)
        for call_name, call in safetensors_calls(path).items():
            if label == "architecture" and call_name != "load_model":
                continue  # the weights themselves are fine
            tally.case(f"{label}/{call_name}", call, expect="refused")
    tally.finish(hardening_report, traced)


# -- darknet .weights -----------------------------------------------------------------------------

TINY = {"num_classes": 3, "depths": (1,), "widths": (8,), "stem_width": 4}


def darknet_seeds(folder) -> list[bytes]:
    count = sum(layer.num_values for layer in darknet53_layers(**TINY))
    values = np.random.default_rng(1).uniform(0.5, 1.5, count)  # positive: valid variances
    out = []
    for minor in (2, 1):  # 20-byte and 16-byte headers
        path = folder / f"seed{minor}.weights"
        write_weights(path, [values], major=0, minor=minor, seen=12345)
        out.append(path.read_bytes())
    return out


def mutate_darknet(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["bytes", "bytes", "header-field", "nan-inf", "size"])
    if kind == "bytes":
        return mutate_bytes(data, rng)
    b = bytearray(data)
    if kind == "header-field":
        offset = rng.choice([0, 4, 8, 12])
        struct.pack_into("<i", b, offset, rng.choice([-1, 0, 1, 2, 999, 1000, 2**31 - 1,
                                                      -(2**31), rng.randrange(-2**31, 2**31)]))
        return kind, bytes(b)
    if kind == "nan-inf":
        for _ in range(rng.randint(1, 4)):
            element = rng.randrange(20, len(b) - 3) // 4 * 4
            struct.pack_into("<f", b, element, rng.choice([float("nan"), float("inf")]))
        return kind, bytes(b)
    delta = rng.choice([-8, -4, -1, 1, 3, 4, 8, 4096])
    return kind, bytes(b[:delta]) if delta < 0 else bytes(b) + bytes(delta)


def darknet_calls(path, target):
    layers = darknet53_layers(**TINY)
    return {
        "read": lambda: read_weights(path, layers),
        "read-finite": lambda: read_weights(path, layers, check_finite=True),
        "convert": lambda: convert_darknet53(path, target, **TINY, force=True),
    }


def test_fuzz_darknet_weights(tmp_path, fuzz_trials, hardening_report, traced):
    tally = Tally("fuzz darknet .weights")
    path, target = tmp_path / "fuzzed.weights", tmp_path / "out.safetensors"
    for seed_index, seed in enumerate(darknet_seeds(tmp_path)):
        path.write_bytes(seed)
        for name, call in darknet_calls(path, target).items():
            tally.case(f"seed{seed_index}/{name}", call, expect="loaded")
        for trial in range(fuzz_trials):
            rng = random.Random(f"darknet-{seed_index}-{trial}")
            kind, variant = mutate_darknet(seed, rng)
            tally.mutations[kind] += 1
            path.write_bytes(variant)
            for name, call in darknet_calls(path, target).items():
                tally.case(f"seed{seed_index}/trial{trial}/{kind}/{name}", call)
    huge = [ConvLayer("huge", 2**15, 2**15, 5, batch_normalize=False)]  # 100 GiB of floats
    path.write_bytes(darknet_seeds(tmp_path)[0])
    tally.case("layers-claim-100GB", lambda: read_weights(path, huge), expect="refused")
    tally.finish(hardening_report, traced)


# -- IDX ------------------------------------------------------------------------------------------


def idx_arrays():
    rng = np.random.default_rng(2)
    return [rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, 6, dtype=np.uint8),
            rng.standard_normal((3, 4)).astype(np.float32),
            rng.integers(-300, 300, 5).astype(np.int16),
            rng.standard_normal((2, 2, 2))]


def idx_bytes(array) -> bytes:
    import io

    stream = io.BytesIO()
    code = {"uint8": 8, "int8": 9, "int16": 11, "int32": 12, "float32": 13, "float64": 14}
    stream.write(bytes([0, 0, code[array.dtype.name], array.ndim]))
    for n in array.shape:
        stream.write(int(n).to_bytes(4, "big"))
    stream.write(array.astype(array.dtype.newbyteorder(">")).tobytes())
    return stream.getvalue()


def mutate_idx_header(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    b = bytearray(data)
    field = rng.choice(["type", "ndim", "dim", "dim"])
    if field == "type":
        b[2] = rng.randrange(256)
    elif field == "ndim":
        b[3] = rng.choice([0, 1, 2, 4, 255, rng.randrange(256)])
    else:
        ndim = b[3]
        i = 4 + 4 * rng.randrange(max(1, ndim))
        size = rng.choice([0, 1, 2**32 - 1, 2**31, 28, rng.randrange(2**32)])
        b[i:i + 4] = size.to_bytes(4, "big")
    return f"header-{field}", bytes(b)


def mutate_idx(raw: bytes, rng: random.Random, compress: bool) -> tuple[str, bytes]:
    if rng.random() < 0.5:
        kind, raw = mutate_bytes(raw, rng) if rng.random() < 0.5 else mutate_idx_header(raw, rng)
        return kind, gzip.compress(raw, mtime=0) if compress else raw
    if compress:
        return mutate_bytes(gzip.compress(raw, mtime=0), rng)
    return mutate_idx_header(raw, rng) if rng.random() < 0.5 else mutate_bytes(raw, rng)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_fuzz_idx(tmp_path, compress, fuzz_trials, hardening_report, traced):
    tally = Tally(f"fuzz IDX {'gzip' if compress else 'raw'}")
    path = tmp_path / "fuzzed-idx"
    for seed_index, array in enumerate(idx_arrays()):
        raw = idx_bytes(array)
        write_idx(tmp_path / "seed", array, gzip=compress)
        path.write_bytes((tmp_path / "seed").read_bytes())
        tally.case(f"seed{seed_index}",
                   lambda array=array: np.testing.assert_array_equal(read_idx(path), array),
                   expect="loaded")
        for trial in range(fuzz_trials // 2):  # five seeds: half the trials each
            rng = random.Random(f"idx-{compress}-{seed_index}-{trial}")
            kind, variant = mutate_idx(raw, rng, compress)
            tally.mutations[kind] += 1
            path.write_bytes(variant)

            def call():
                out = read_idx(path)  # when it loads, the array matches its header
                assert out.dtype.isnative and out.flags.writeable

            tally.case(f"seed{seed_index}/trial{trial}/{kind}", call)
    claim = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (2**20, 2**20, 100))
    path.write_bytes(gzip.compress(claim + bytes(1000), mtime=0) if compress
                     else claim + bytes(1000))
    tally.case("header-claims-100GB", lambda: read_idx(path), expect="refused")
    path.write_bytes(gzip.compress(claim, mtime=0) if compress else claim)
    tally.case("header-claims-100GB-no-cap", lambda: read_idx(path, max_bytes=None),
               expect="refused")
    tally.finish(hardening_report, traced)


def test_fuzz_mnist_folder(tmp_path, fuzz_trials, hardening_report, traced, monkeypatch):
    """load_mnist with one of its four files corrupted."""
    monkeypatch.delenv("XPNN_DATA", raising=False)
    tally = Tally("fuzz MNIST folder (load_mnist)")
    rng_np = np.random.default_rng(3)
    files = {"train-images-idx3-ubyte": rng_np.integers(0, 256, (8, 28, 28), dtype=np.uint8),
             "train-labels-idx1-ubyte": rng_np.integers(0, 10, 8, dtype=np.uint8),
             "t10k-images-idx3-ubyte": rng_np.integers(0, 256, (4, 28, 28), dtype=np.uint8),
             "t10k-labels-idx1-ubyte": rng_np.integers(0, 10, 4, dtype=np.uint8)}
    folder = tmp_path / "mnist"
    folder.mkdir()

    def write_all():
        for stem, array in files.items():
            write_idx(folder / f"{stem}.gz", array, gzip=True)

    write_all()
    tally.case("seed", lambda: load_mnist(root=folder, download=False), expect="loaded")
    stems = list(files)
    for trial in range(fuzz_trials):
        rng = random.Random(f"mnist-{trial}")
        stem = rng.choice(stems)
        kind, variant = mutate_idx(idx_bytes(files[stem]), rng, compress=True)
        tally.mutations[kind] += 1
        write_all()
        (folder / f"{stem}.gz").write_bytes(variant)
        tally.case(f"trial{trial}/{stem}/{kind}",
                   lambda: load_mnist(root=folder, download=False))
    tally.finish(hardening_report, traced)


# -- checkpoints ----------------------------------------------------------------------------------


def blobs(n=32):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, n)
    x = (np.array([[-2.0, -2.0], [2.0, 2.0]])[y] + 0.5 * rng.standard_normal((n, 2)))
    return x.astype("float32"), y


def small_run():
    model = Sequential([Dense(2, 4), ReLU(), Dense(4, 2)], seed=0)
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer, schedules.StepLR(optimizer, step_size=1, gamma=0.5)


def checkpoint_seeds(folder) -> list[bytes]:
    x, y = blobs()
    model, optimizer, schedule = small_run()
    fit(model, (x, y), optimizer=optimizer, schedule=schedule, epochs=1, batch_size=8,
        seed=3, checkpoint=folder / "epoch.safetensors", progress=False, verbose=False)
    model, optimizer, schedule = small_run()
    calls = {"n": 0}

    def interrupting_loss(logits, labels):
        calls["n"] += 1
        if calls["n"] == 7:  # epoch 2, batch 3
            raise KeyboardInterrupt
        return xpnn.losses.softmax_cross_entropy(logits, labels)

    with pytest.raises(KeyboardInterrupt):
        fit(model, (x, y), optimizer=optimizer, schedule=schedule, loss=interrupting_loss,
            epochs=2, batch_size=8, seed=3, checkpoint=folder / "mid.safetensors",
            progress=False, verbose=False)
    return [(folder / name).read_bytes() for name in ("epoch.safetensors", "mid.safetensors")]


def mutate_checkpoint(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    if rng.random() < 0.6:
        return mutate_safetensors(data, rng)
    header, body = st_split(data)
    meta = dict(header["__metadata__"])
    key = rng.choice(["position", "position", "history", "schedule", "optimizer_type", "kind",
                      "architecture"])
    roll = rng.random()
    if roll < 0.1:
        meta.pop(key, None)
    elif roll < 0.2:
        meta[key] = rng.choice(["", "{", "null", "[" * 5000, "NaN", "garbage"])
    else:
        try:
            meta[key] = json.dumps(mutate_json(json.loads(meta[key]), rng))
        except ValueError:  # optimizer_type and kind are plain strings
            meta[key] = rng.choice(["Adam", "SGD", "xpnn-checkpoint", "", "x" * 1000])
    header["__metadata__"] = meta
    return f"record-{key}", st_join(header, body)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # forged learning rates overflow
def test_fuzz_checkpoints(tmp_path, fuzz_trials, hardening_report, traced):
    tally = Tally("fuzz checkpoints (fit resume)")
    x, y = blobs()
    path = tmp_path / "fuzzed.safetensors"

    def resume():
        model, optimizer, schedule = small_run()
        before = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
        lr = optimizer.lr
        try:
            fit(model, (x, y), optimizer=optimizer, schedule=schedule, epochs=2, batch_size=8,
                seed=3, resume=path, progress=False, verbose=False)
        except TrainingStopped:
            raise  # restored, then diverged (e.g. a forged learning rate of 1e30)
        except XpnnError:
            # all or nothing: a refused checkpoint leaves the run as it was
            for name, value in model.state_dict().items():
                np.testing.assert_array_equal(value, before[name], err_msg=name)
            assert optimizer.lr == lr and optimizer.step_count == 0
            raise

    for seed_index, seed in enumerate(checkpoint_seeds(tmp_path)):
        path.write_bytes(seed)
        tally.case(f"seed{seed_index}", resume, expect="loaded")
        for trial in range(fuzz_trials):
            rng = random.Random(f"checkpoint-{seed_index}-{trial}")
            kind, variant = mutate_checkpoint(seed, rng)
            tally.mutations[kind] += 1
            path.write_bytes(variant)
            outcome, _ = tally.case(f"seed{seed_index}/trial{trial}/{kind}", resume)
            if kind == "nan-inf":
                assert outcome == "refused", "a checkpoint with NaN weights was resumed"
    # Cases found by long runs (XPNN_FUZZ_TRIALS=2000), kept as regressions.
    header, body = st_split(checkpoint_seeds(tmp_path)[0])
    position = json.loads(header["__metadata__"]["position"])
    del position["partial"]
    meta = {**header["__metadata__"], "position": json.dumps(position)}
    path.write_bytes(st_join({**header, "__metadata__": meta}, body))
    tally.case("position-without-partial", resume, expect="loaded")
    lr = header["optimizer.lr"]
    path.write_bytes(st_join({**header, "optimizer.lr": {**lr, "dtype": "C64", "shape": []}},
                             body))
    tally.case("complex-learning-rate", resume, expect="refused")
    name = next(k for k in header if k.startswith("model."))
    path.write_bytes(st_join({**header, name: {"dtype": "F32", "shape": [GB100 // 4],
                                               "data_offsets": [0, GB100]}}, body))
    tally.case("tensor-claims-100GB", resume, expect="refused")
    tally.finish(hardening_report, traced)
