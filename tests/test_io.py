"""safetensors I/O: round trips, metadata, atomic writes, corrupt files, rebuilding models."""

import json
import os
import struct

import numpy as np
import pytest
import safetensors
import safetensors.numpy

import xpnn
from xpnn import backends
from xpnn.errors import ConfigError, DataError, WeightsError, XpnnError
from xpnn.io import (
    MissingFileError,
    load,
    load_metadata,
    load_model,
    lookup,
    model_from_config,
    read_architecture,
    read_arrays,
    register,
    save,
)
from xpnn.layers import Dense, Flatten, ReLU, Residual, Sequential, Tanh
from xpnn.module import Module
from xpnn.testing import assert_close

# Explicit initializer names: see test_load_model_with_default_initializers.
INITS = {"weight_init": "he_uniform", "bias_init": "zeros"}


def mlp(seed):
    return Sequential([Flatten(), Dense(12, 8), ReLU(), Dense(8, 3)], seed=seed)


def host_params(model):
    return {name: backends.to_numpy(value).copy() for name, value in model.state_dict().items()}


def batch(shape=(5, 3, 4)):
    return np.random.default_rng(7).standard_normal(shape).astype(np.float32)


# -- round trips ------------------------------------------------------------------------------


def test_round_trip_into_fresh_model_gives_identical_outputs(backend, tmp_path):
    path = tmp_path / "mlp.safetensors"
    model = mlp(seed=0)
    save(model, path)
    other = mlp(seed=1)
    x = batch()
    assert not np.array_equal(backends.to_numpy(other(x)), backends.to_numpy(model(x)))
    assert load(path, into=other) is other
    assert_close(other(x), model(x), rtol=0, backend=backend)
    for name, value in other.state_dict().items():
        assert_close(value, host_params(model)[name], rtol=0, backend=backend)


def test_saved_file_is_plain_safetensors_with_metadata(tmp_path):
    path = tmp_path / "mlp.safetensors"
    model = mlp(seed=0)
    save(model, path, metadata={"dataset": "mnist", "preprocessing": "x / 255"})
    with safetensors.safe_open(str(path), framework="np") as handle:
        meta = handle.metadata()
        assert sorted(handle.keys()) == ["1.bias", "1.weight", "3.bias", "3.weight"]
        np.testing.assert_array_equal(handle.get_tensor("1.weight"),
                                      backends.to_numpy(model[1].weight.value))
    assert meta["format"] == "xpnn"
    assert meta["format_version"] == "1"
    assert meta["xpnn_version"] == xpnn.__version__
    assert meta["dataset"] == "mnist" and meta["preprocessing"] == "x / 255"
    architecture = json.loads(meta["architecture"])
    assert architecture["type"] == "Sequential"
    assert [layer["type"] for layer in architecture["config"]["layers"]] == [
        "Flatten", "Dense", "ReLU", "Dense"]
    assert architecture["config"]["layers"][1]["config"]["in_features"] == 12
    assert load_metadata(path) == meta


def test_load_metadata_of_a_foreign_file_without_metadata_is_empty(tmp_path):
    path = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file({"a": np.zeros(3, dtype=np.float32)}, str(path))
    assert load_metadata(path) == {}


@pytest.mark.parametrize("make", [
    pytest.param(lambda a: a.T, id="transposed-view"),
    pytest.param(lambda a: np.asfortranarray(a), id="fortran-order"),
    pytest.param(lambda a: a[::2, 1::2], id="strided-slice"),
])
def test_non_contiguous_arrays_round_trip_exactly(tmp_path, make):
    # safetensors 0.8 writes these in memory order under a C-order shape (garbage)
    # unless xpnn makes them contiguous first (huggingface/safetensors#825).
    base = np.arange(48, dtype=np.float32).reshape(6, 8)
    array = make(base)
    assert not array.flags.c_contiguous
    save({"w": array}, tmp_path / "w.safetensors")
    with backends.use("numpy"):
        loaded = load(tmp_path / "w.safetensors")["w"]
    np.testing.assert_array_equal(loaded, array)
    assert loaded.shape == array.shape


def test_saves_arrays_of_any_backend(backend, tmp_path):
    values = np.arange(6, dtype=np.float64).reshape(2, 3)
    on_backend = backend.asarray(values)
    transposed = backend.xp.permute_dims(on_backend, (1, 0))
    save({"a": on_backend, "t": transposed}, tmp_path / "d.safetensors")
    with safetensors.safe_open(str(tmp_path / "d.safetensors"), framework="np") as handle:
        np.testing.assert_array_equal(handle.get_tensor("a"), values)
        np.testing.assert_array_equal(handle.get_tensor("t"), values.T)
    assert "architecture" not in load_metadata(tmp_path / "d.safetensors")


def test_load_without_into_returns_arrays_of_the_current_backend(backend, tmp_path):
    path = tmp_path / "d.safetensors"
    values = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
              "n": np.asarray(4, dtype=np.int64)}
    save(values, path)
    state = load(path)
    assert sorted(state) == ["a", "n"]
    for name, value in values.items():
        assert_close(state[name], value, rtol=0, backend=backend)
        assert backends.dtype_name(state[name].dtype) == str(value.dtype)
        assert tuple(state[name].shape) == value.shape  # 0-d stays 0-d


def test_loaded_parameters_are_writeable(tmp_path):
    path = tmp_path / "m.safetensors"
    save(mlp(seed=0), path)
    with backends.use("numpy"):
        model = load(path, into=mlp(seed=1))
        model[1].weight.value[...] = 0.0  # an in-place optimizer update must not fail


# -- mismatches -------------------------------------------------------------------------------


def test_all_mismatches_reported_at_once_and_model_unchanged(backend, tmp_path):
    path = tmp_path / "bad.safetensors"
    state = host_params(mlp(seed=0))
    del state["3.bias"]  # missing
    state["1.weight"] = np.zeros((8, 13), dtype=np.float32)  # wrong shape
    state["1.bias"] = state["1.bias"].astype(np.float64)  # wrong dtype
    state["9.weight"] = np.zeros(2, dtype=np.float32)  # unexpected
    save(state, path)
    model = mlp(seed=1)
    before = host_params(model)
    with pytest.raises(WeightsError) as caught:
        load(path, into=model)
    message = str(caught.value)
    for fragment in ("'3.bias'", "'9.weight'", "(8, 12)", "(8, 13)", "float64"):
        assert fragment in message
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(backends.to_numpy(value), before[name])


def test_non_strict_load_skips_missing_and_unexpected_names(tmp_path):
    path = tmp_path / "part.safetensors"
    source = mlp(seed=0)
    state = host_params(source)
    keep = {"1.weight": state["1.weight"], "extra": np.ones(2, dtype=np.float32)}
    save(keep, path)
    model = mlp(seed=1)
    untouched = host_params(model)["3.weight"]
    load(path, into=model, strict=False)
    np.testing.assert_array_equal(backends.to_numpy(model[1].weight.value), state["1.weight"])
    np.testing.assert_array_equal(backends.to_numpy(model[3].weight.value), untouched)


def test_int64_num_batches_tracked_scalars_are_accepted(backend, tmp_path):
    path = tmp_path / "torchlike.safetensors"
    state = host_params(mlp(seed=0))
    state["1.num_batches_tracked"] = np.asarray(1234, dtype=np.int64)
    save(state, path)
    with safetensors.safe_open(str(path), framework="np") as handle:
        assert handle.get_tensor("1.num_batches_tracked").shape == ()
    model = load(path, into=mlp(seed=1))
    assert "1.num_batches_tracked" not in model.state_dict()
    assert_close(model[1].weight.value, state["1.weight"], rtol=0, backend=backend)


# -- metadata rules ----------------------------------------------------------------------------


@pytest.mark.parametrize("metadata", [
    {"epochs": 5}, {"lr": 1e-3}, {"config": {"a": 1}}, {"flag": None}, {3: "three"},
])
def test_non_string_metadata_is_refused_and_nothing_written(tmp_path, metadata):
    path = tmp_path / "m.safetensors"
    with pytest.raises(ConfigError, match="str to str"):
        save(mlp(seed=0), path, metadata=metadata)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("key", ["format", "format_version", "xpnn_version", "architecture"])
def test_reserved_metadata_keys_are_refused_for_a_module(tmp_path, key):
    with pytest.raises(ConfigError, match=key):
        save(mlp(seed=0), tmp_path / "m.safetensors", metadata={key: "mine"})


def test_a_dict_may_carry_its_own_architecture(tmp_path):
    model = Sequential([Dense(3, 2, **INITS), Tanh()], seed=0)
    architecture = json.dumps({"type": "Sequential", "config": model.config()})
    path = tmp_path / "converted.safetensors"
    save(host_params(model), path, metadata={"architecture": architecture})
    x = batch((4, 3))
    np.testing.assert_array_equal(backends.to_numpy(load_model(path)(x)),
                                  backends.to_numpy(model(x)))


# -- preprocessing ----------------------------------------------------------------------------


def test_a_models_preprocessing_is_recorded_and_given_back(tmp_path):
    model = mlp(seed=0)
    model.preprocessing = {"scale": "1/255", "mean": [0.5], "std": None}
    path = tmp_path / "pre.safetensors"
    save(model, path)
    assert json.loads(load_metadata(path)["preprocessing"]) == model.preprocessing
    assert load_model(path).preprocessing == model.preprocessing
    with pytest.raises(ConfigError, match="preprocessing"):
        save(model, path, metadata={"preprocessing": "mine"})  # reserved: the model has one


@pytest.mark.parametrize("value", [["not", "a", "dict"], {"f": object()}])
def test_preprocessing_must_be_a_dict_of_json_values(tmp_path, value):
    model = mlp(seed=0)
    model.preprocessing = value
    with pytest.raises(ConfigError, match="preprocessing to be a dict of JSON values"):
        save(model, tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


def test_a_users_own_preprocessing_text_is_left_as_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    save(mlp(seed=0), path, metadata={"preprocessing": "x / 255"})
    assert not hasattr(load_model(path), "preprocessing")


# -- reading helpers -----------------------------------------------------------------------------


def test_read_architecture_and_read_arrays(tmp_path):
    model = mlp(seed=0)
    save(model, tmp_path / "m.safetensors")
    save(host_params(model), tmp_path / "d.safetensors")
    assert read_architecture(tmp_path / "m.safetensors")["type"] == "Sequential"
    assert read_architecture(tmp_path / "d.safetensors") is None
    arrays = read_arrays(tmp_path / "d.safetensors")
    assert all(type(value) is np.ndarray for value in arrays.values())
    for name, value in host_params(model).items():
        np.testing.assert_array_equal(arrays[name], value)


# -- atomic writes -----------------------------------------------------------------------------


def _write_half_then_fail(handle, data):
    handle.write(b"\x00" * 100)
    raise OSError(28, "No space left on device (simulated)")


def test_failed_write_keeps_old_file_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    old = mlp(seed=0)
    save(old, path)
    before = path.read_bytes()
    monkeypatch.setattr(xpnn.io.writing, "_write_all", _write_half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        save(mlp(seed=1), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_failed_fsync_keeps_old_file_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save(mlp(seed=0), path)
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError(5, "Input/output error (simulated)")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="simulated"):
        save(mlp(seed=1), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_overwrite_replaces_content_and_keeps_permissions(tmp_path):
    path = tmp_path / "m.safetensors"
    save(mlp(seed=0), path)
    os.chmod(path, 0o640)
    save(mlp(seed=1), path)
    assert os.stat(path).st_mode & 0o777 == 0o640
    with backends.use("numpy"):
        loaded = load(path)
    np.testing.assert_array_equal(loaded["1.weight"], host_params(mlp(seed=1))["1.weight"])
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_new_file_gets_ordinary_permissions_not_mkstemp_0600(tmp_path):
    path = tmp_path / "m.safetensors"
    save(mlp(seed=0), path)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_saving_into_a_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        save(mlp(seed=0), tmp_path / "nope" / "m.safetensors")


# -- broken files -------------------------------------------------------------------------------


def test_missing_file_names_the_path_and_is_a_file_not_found_error(tmp_path):
    path = tmp_path / "absent.safetensors"
    for call in (lambda: load(path), lambda: load_metadata(path), lambda: load_model(path)):
        with pytest.raises(MissingFileError, match="absent.safetensors") as caught:
            call()
        assert isinstance(caught.value, FileNotFoundError)
        assert isinstance(caught.value, DataError)
        assert caught.value.filename == str(path)


def _good_file_bytes(tmp_path):
    path = tmp_path / "good.safetensors"
    save(mlp(seed=0), path)
    return path.read_bytes()


def _corrupt_variants(tmp_path):
    good = _good_file_bytes(tmp_path)
    (header_size,) = struct.unpack("<Q", good[:8])
    return {
        "empty": b"",
        "shorter-than-8-bytes": good[:5],
        "truncated-header": good[: 8 + header_size // 2],
        "truncated-data": good[:-10],
        "random-bytes": np.random.default_rng(0).bytes(4096),
        "header-claims-100GB": struct.pack("<Q", 100 * 2**30) + good[8:],
        "header-not-json": struct.pack("<Q", 16) + b"\xff" * 16 + good[8 + header_size:],
    }


@pytest.mark.parametrize("variant", [
    "empty", "shorter-than-8-bytes", "truncated-header", "truncated-data", "random-bytes",
    "header-claims-100GB", "header-not-json",
])
def test_corrupt_files_raise_weights_error_naming_the_file(tmp_path, variant):
    path = tmp_path / f"{variant}.safetensors"
    path.write_bytes(_corrupt_variants(tmp_path)[variant])
    for call in (lambda: load(path), lambda: load(path, into=mlp(seed=1)),
                 lambda: load_metadata(path), lambda: load_model(path)):
        with pytest.raises(WeightsError, match=f"{variant}.safetensors"):
            call()


def test_huge_header_is_refused_before_safetensors_reads_it(tmp_path, monkeypatch):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 100 * 2**30) + b"{}" + b"\x00" * 64)

    def must_not_open(*args, **kwargs):
        raise AssertionError("safe_open was called on a file with an impossible header")

    monkeypatch.setattr(safetensors, "safe_open", must_not_open)
    with pytest.raises(WeightsError, match=r"107,374,182,400 bytes"):
        load(path)


def test_every_error_is_an_xpnn_error(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"garbage!" * 3)
    with pytest.raises(XpnnError):
        load(path)
    with pytest.raises(XpnnError):
        load(tmp_path / "missing.safetensors")


# -- rebuilding models ----------------------------------------------------------------------------


def residual_model(seed):
    block = Sequential([Dense(6, 6, **INITS), Tanh(), Dense(6, 6, **INITS)])
    return Sequential(
        [Flatten(), Dense(12, 6, **INITS), ReLU(), Residual(block), Dense(6, 2, **INITS)],
        seed=seed,
    )


def test_load_model_rebuilds_sequential_with_residual(backend, tmp_path):
    path = tmp_path / "res.safetensors"
    model = residual_model(seed=3)
    save(model, path)
    rebuilt = load_model(path)
    assert type(rebuilt) is Sequential
    assert type(rebuilt[3]) is Residual and type(rebuilt[3].block) is Sequential
    assert rebuilt.backend.name == backend.name
    assert sorted(rebuilt.state_dict()) == sorted(model.state_dict())
    x = batch()
    assert_close(rebuilt(x), model(x), rtol=0, backend=backend)


def test_load_model_with_default_initializers(tmp_path):
    path = tmp_path / "m.safetensors"
    model = mlp(seed=0)
    save(model, path)
    x = batch()
    np.testing.assert_array_equal(load_model(path)(x), model(x))


def test_load_model_keeps_float64(tmp_path):
    path = tmp_path / "m64.safetensors"
    model = Sequential([Dense(4, 3, **INITS), ReLU()], seed=0, dtype="float64")
    save(model, path)
    rebuilt = load_model(path)
    assert backends.dtype_name(rebuilt[0].weight.value.dtype) == "float64"


def test_unknown_type_names_it_and_suggests_a_newer_xpnn(tmp_path):
    path = tmp_path / "future.safetensors"
    architecture = {"type": "Sequential", "config": {"layers": [
        {"type": "Dense", "config": {"in_features": 2, "out_features": 2, **INITS}},
        {"type": "QuantumAttention", "config": {"heads": 8}},
    ]}}
    save({"0.weight": np.zeros((2, 2), np.float32), "0.bias": np.zeros(2, np.float32)},
         path, metadata={"architecture": json.dumps(architecture)})
    with pytest.raises(WeightsError, match=r"'QuantumAttention'.*newer xpnn"):
        load_model(path)


def test_file_without_architecture_explains_how_to_load(tmp_path):
    path = tmp_path / "dict.safetensors"
    save({"a": np.zeros(2, np.float32)}, path)
    with pytest.raises(WeightsError, match="into=model"):
        load_model(path)


@pytest.mark.parametrize("cfg", [
    None, "Dense", {"type": "Dense"}, {"type": "Dense", "config": []},
    {"type": "Dense", "config": {"in_features": 2}},  # missing argument
    {"type": "Dense", "config": {"in_features": 2, "out_features": 2, "colour": "red"}},
    {"type": "Module", "config": {}},  # the abstract base is not buildable
    {"type": "__class__", "config": {}},
    {"type": "backends", "config": {}},  # an attribute of xpnn.layers that is no class
])
def test_malformed_configs_raise_weights_error(cfg):
    with pytest.raises(WeightsError):
        model_from_config(cfg)


def test_registered_custom_layer_is_rebuilt(tmp_path):
    class IoTestScale(Module):
        def __init__(self, factor: float = 1.0):
            super().__init__()
            self.factor = factor

        def forward(self, x, *, train=False):
            x, _ = self.prepare(x)
            return self.factor * x, lambda dy: self.factor * dy

        def config(self):
            return {"factor": self.factor}

    assert lookup("IoTestScale") is None
    register(IoTestScale)
    try:
        model = Sequential([Dense(3, 3, **INITS), IoTestScale(2.5)], seed=0)
        save(model, tmp_path / "s.safetensors")
        rebuilt = load_model(tmp_path / "s.safetensors")
        assert isinstance(rebuilt[1], IoTestScale) and rebuilt[1].factor == 2.5
        x = batch((2, 3))
        np.testing.assert_array_equal(rebuilt(x), model(x))
    finally:
        from xpnn.io import records

        records._REGISTERED.pop("IoTestScale", None)


def test_lookup_finds_layers_exported_from_xpnn_layers():
    assert lookup("Dense") is Dense
    assert lookup("Residual") is Residual
    assert lookup("Parameter") is None  # exported, but not a Module
    assert lookup("../etc/passwd") is None


# -- the writer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", sorted(xpnn.io.SAVABLE_DTYPES))
def test_every_savable_dtype_is_read_back_by_safetensors(tmp_path, dtype):
    rng = np.random.default_rng(0)
    arrays = {"matrix": (rng.standard_normal((3, 4)) * 50).astype(dtype),
              "scalar": np.asarray(7).astype(dtype), "empty": np.zeros((0, 2), dtype=dtype),
              "big_endian": np.arange(5).astype(np.dtype(dtype).newbyteorder(">"))}
    save(arrays, tmp_path / "d.safetensors")
    back = safetensors.numpy.load_file(str(tmp_path / "d.safetensors"))
    for name, value in arrays.items():
        assert back[name].shape == value.shape and back[name].dtype.name == dtype
        np.testing.assert_array_equal(back[name], value)


def test_stale_temp_files_of_dead_processes_are_removed_on_the_next_save(tmp_path):
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead = int(child.stdout)
    stale = tmp_path / f".m.safetensors.xpnn-{dead}-abc123.tmp"
    ours = tmp_path / f".m.safetensors.xpnn-{os.getpid()}-def456.tmp"  # a live saver's
    other = tmp_path / f".other.safetensors.xpnn-{dead}-abc123.tmp"  # another target's
    for path in (stale, ours, other):
        path.write_bytes(b"half a file")
    save(mlp(seed=0), tmp_path / "m.safetensors")
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["m.safetensors", ours.name, other.name])


def test_missing_file_error_reads_as_its_message(tmp_path):
    with pytest.raises(MissingFileError) as caught:
        load(tmp_path / "absent.safetensors")
    assert str(caught.value).startswith("No weights file at ")
    assert caught.value.errno == 2
