"""darknet's .weights files (xpnn.io.darknet) and their conversion to an xpnn file
(xpnn.models.convert_darknet, a command)."""

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from xpnn import backends
from xpnn.errors import WeightsError
from xpnn.io import load_metadata, load_model
from xpnn.io.darknet import read_weights
from xpnn.io.darknet import write_weights as write_with_xpnn
from xpnn.models import darknet53
from xpnn.models.convert_darknet import convert_darknet53, darknet53_layers, main

SMALL = {"depths": (1, 2), "widths": (8, 16), "stem_width": 4}


def write_weights(path, arrays, major, minor, seen=123456):
    """Write a darknet .weights file independently of the reader under test."""
    header = struct.pack("<iii", major, minor, 0)
    header += struct.pack("<q" if major * 10 + minor >= 2 else "<i", seen)
    with open(path, "wb") as handle:
        handle.write(header)
        for values in arrays:
            handle.write(np.asarray(values, dtype="<f4").tobytes())


def random_darknet_arrays(layers, seed=0):
    """Per layer, in darknet's order: biases, [scales, mean, variance], weights."""
    rng = np.random.default_rng(seed)
    arrays = []
    for layer in layers:
        n, c, k = layer.out_channels, layer.in_channels, layer.kernel_size
        arrays.append(rng.standard_normal(n))
        if layer.batch_normalize:
            arrays += [rng.uniform(0.5, 1.5, n), rng.standard_normal(n) * 0.1,
                       rng.uniform(0.5, 2.0, n)]
        arrays.append(rng.standard_normal((n, c, k, k)) * np.sqrt(2.0 / (c * k * k)))
    return arrays


TINY = darknet53_layers(num_classes=5, depths=(1,), widths=(4,), stem_width=2)


def test_tiny_layer_list_follows_darknet53_cfg_order():
    assert [(layer.name, layer.kernel_size, layer.out_channels) for layer in TINY] == [
        ("stem.conv1", 3, 2), ("stages.0.conv_down", 3, 4), ("stages.0.blocks.0.conv1", 1, 2),
        ("stages.0.blocks.0.conv2", 3, 4), ("head.fc", 1, 5)]
    assert not TINY[-1].batch_normalize


@pytest.mark.parametrize(("major", "minor"), [(0, 1), (0, 2)])
def test_reader_returns_the_values_written(tmp_path, major, minor):
    arrays = random_darknet_arrays(TINY)
    path = tmp_path / "tiny.weights"
    write_weights(path, arrays, major, minor)
    state, header = read_weights(path, TINY)
    assert (header.major, header.minor, header.seen) == (major, minor, 123456)
    assert header.size == (16 if minor == 1 else 20)
    it = iter(arrays)
    for layer in TINY:
        if layer.batch_normalize:
            expected = {"bn.bias": next(it), "bn.weight": next(it), "bn.running_mean": next(it),
                        "bn.running_var": next(it), "conv.weight": next(it)}
        else:
            expected = {"bias": next(it), "weight": next(it).reshape(layer.out_channels, -1)}
        for suffix, values in expected.items():
            got = state[f"{layer.name}.{suffix}"]
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, values.astype(np.float32))
    assert len(state) == 4 * 5 + 2


def test_both_header_versions_give_the_same_tensors(tmp_path):
    arrays = random_darknet_arrays(TINY, seed=1)
    write_weights(tmp_path / "v1.weights", arrays, 0, 1)
    write_weights(tmp_path / "v2.weights", arrays, 0, 2)
    a, _ = read_weights(tmp_path / "v1.weights", TINY)
    b, _ = read_weights(tmp_path / "v2.weights", TINY)
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize("delta", [-4, -1, 4])
def test_wrong_byte_count_is_refused_with_both_counts(tmp_path, delta):
    path = tmp_path / "bad.weights"
    write_weights(path, random_darknet_arrays(TINY), 0, 2)
    data = path.read_bytes()
    path.write_bytes(data[:delta] if delta < 0 else data + b"\0" * delta)
    expected = len(data)
    with pytest.raises(WeightsError, match=rf"expected {expected:,} bytes.*has "
                                           rf"{expected + delta:,} bytes"):
        read_weights(path, TINY)


def test_truncated_header_is_refused(tmp_path):
    path = tmp_path / "short.weights"
    path.write_bytes(b"\0" * 10)
    with pytest.raises(WeightsError, match="16-byte header"):
        read_weights(path, TINY)


def numpy_darknet_forward(x, arrays, layers, slope, eps):
    """Float64 reference of a (reduced) darknet53 straight from the darknet arrays."""
    def conv(x, w, stride):
        k = w.shape[2]
        pad = k // 2
        xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        oh = (x.shape[2] + 2 * pad - k) // stride + 1
        ow = (x.shape[3] + 2 * pad - k) // stride + 1
        y = np.zeros((x.shape[0], w.shape[0], oh, ow))
        for i in range(k):
            for j in range(k):
                patch = xp_[:, :, i:i + stride * (oh - 1) + 1:stride,
                            j:j + stride * (ow - 1) + 1:stride]
                y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
        return y

    it = iter(arrays)
    params = []
    for layer in layers:
        if layer.batch_normalize:
            params.append([next(it) for _ in range(5)])
        else:
            params.append([next(it), next(it)])

    def conv_bn_act(x, p, stride):
        beta, gamma, mean, var, w = p
        c = (1, -1, 1, 1)
        z = conv(x, w, stride)
        z = (z - mean.reshape(c)) / np.sqrt(var.reshape(c) + eps) * gamma.reshape(c)
        z = z + beta.reshape(c)
        return np.where(z > 0, z, slope * z)

    index = 0
    for layer_index, layer in enumerate(layers):
        if layer_index != index:
            continue
        p = params[layer_index]
        if layer.name == "stem.conv1":
            x = conv_bn_act(x, p, 1)
            index += 1
        elif layer.name.endswith("conv_down"):
            x = conv_bn_act(x, p, 2)
            index += 1
        elif layer.name.endswith("conv1"):
            x = x + conv_bn_act(conv_bn_act(x, p, 1), params[layer_index + 1], 1)
            index += 2
        else:  # head: average pool, then the 1x1 conv with bias
            bias, w = p
            x = x.mean(axis=(2, 3)) @ w.reshape(w.shape[0], -1).T + bias
            index += 1
    return x


@pytest.mark.parametrize(("major", "minor"), [(0, 1), (0, 2)])
def test_convert_then_load_gives_darknet_outputs(tmp_path, major, minor):
    layers = darknet53_layers(num_classes=5, **SMALL)
    arrays = random_darknet_arrays(layers, seed=2)
    source, target = tmp_path / "small.weights", tmp_path / "small.safetensors"
    write_weights(source, arrays, major, minor)
    info = convert_darknet53(source, target, num_classes=5, **SMALL)
    assert info["version"] == f"{major}.{minor}.0"

    meta = load_metadata(target)
    record = json.loads(meta["architecture"])
    assert record["type"] == "Darknet53"
    assert record["config"]["negative_slope"] == 0.1
    assert record["config"]["mean"] == [0.0, 0.0, 0.0]
    assert "sqrt(running_var + eps)" in meta["bn_eps_convention"]

    x = np.random.default_rng(3).uniform(0, 1, (2, 3, 12, 12))
    expected = numpy_darknet_forward(x, arrays, layers, 0.1, 1e-5)
    for model in (load_model(target), darknet53(target)):  # both read the record
        assert model.negative_slope == 0.1 and model.num_classes == 5
        assert model.preprocessing["crop_pct"] == 1.0
        np.testing.assert_allclose(backends.to_numpy(model(x.astype("float32"))), expected,
                                   rtol=1e-4, atol=1e-4)


def test_command_reports_a_truncated_file_without_traceback(tmp_path, capsys):
    path = tmp_path / "darknet53.weights"
    write_weights(path, [np.zeros(100)], 0, 2)
    assert main([str(path), str(tmp_path / "out.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "expected 166,582,580 bytes" in err and "has 420 bytes" in err
    assert not (tmp_path / "out.safetensors").exists()


def test_command_help_runs_as_a_module():
    run = subprocess.run([sys.executable, "-m", "xpnn.models.convert_darknet", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "usage: python -m xpnn.models.convert_darknet" in run.stdout
    assert "darknet53.weights" in run.stdout and run.stderr == ""


def test_writer_and_reader_agree(tmp_path):
    arrays = random_darknet_arrays(TINY, seed=4)
    write_with_xpnn(tmp_path / "ours.weights", arrays, major=0, minor=2, seen=123456)
    write_weights(tmp_path / "test.weights", arrays, 0, 2)
    assert (tmp_path / "ours.weights").read_bytes() == (tmp_path / "test.weights").read_bytes()


def test_nan_values_are_refused_when_checked(tmp_path):
    arrays = random_darknet_arrays(TINY)
    arrays[3][0] = np.nan
    path = tmp_path / "nan.weights"
    write_weights(path, arrays, 0, 2)
    state, _ = read_weights(path, TINY)
    assert np.isnan(state["stem.conv1.bn.running_var"][0])
    with pytest.raises(WeightsError, match="NaN or infinite"):
        read_weights(path, TINY, check_finite=True)


# -- the target: never the source, never silently replaced (issue 13, item 20) -----------------

TINY_ARGS = {"num_classes": 5, "depths": (1,), "widths": (4,), "stem_width": 2}


def tiny_source(tmp_path, arrays=None):
    path = tmp_path / "tiny.weights"
    write_weights(path, random_darknet_arrays(TINY) if arrays is None else arrays, 0, 2)
    return path


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_converting_a_file_onto_itself_is_refused_and_keeps_it(tmp_path, link):
    from xpnn.errors import ConfigError

    source = tiny_source(tmp_path)
    before = source.read_bytes()
    target = source if link == "same" else tmp_path / "alias.safetensors"
    if link == "symlink":
        target.symlink_to(source)
    elif link == "hardlink":
        target.hardlink_to(source)
    for force in (False, True):
        with pytest.raises(ConfigError, match="target other than the source"):
            convert_darknet53(source, target, **TINY_ARGS, force=force)
    assert source.read_bytes() == before
    assert main([str(source), str(target), "--force"]) == 1
    assert source.read_bytes() == before


def test_an_existing_target_is_replaced_only_with_force(tmp_path, capsys):
    from xpnn.errors import ConfigError

    source = tiny_source(tmp_path)
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"precious")
    with pytest.raises(ConfigError, match="target that does not exist.*--force"):
        convert_darknet53(source, target, **TINY_ARGS)
    assert target.read_bytes() == b"precious"
    assert main([str(source), str(target)]) == 1
    assert "--force" in capsys.readouterr().err and target.read_bytes() == b"precious"
    convert_darknet53(source, target, **TINY_ARGS, force=True)
    assert load_model(target).num_classes == 5


@pytest.mark.parametrize("bad", [-1.0, -1e-30])
def test_negative_running_variances_are_refused_naming_the_layer(tmp_path, bad):
    arrays = random_darknet_arrays(TINY)
    arrays[13][1] = bad  # stages.0.blocks.0.conv1 is arrays[10:15]: bias, scale, mean, VAR, w
    source = tiny_source(tmp_path, arrays)
    target = tmp_path / "out.safetensors"
    with pytest.raises(WeightsError, match=r"stages\.0\.blocks\.0\.conv1 expected "
                                           r"non-negative BatchNorm running variances"):
        convert_darknet53(source, target, **TINY_ARGS)
    assert not target.exists()


def test_infinite_running_variances_are_refused(tmp_path):
    arrays = random_darknet_arrays(TINY)
    arrays[3][0] = np.inf  # stem.conv1's variance
    source = tiny_source(tmp_path, arrays)
    with pytest.raises(WeightsError, match="NaN or infinite"):
        convert_darknet53(source, tmp_path / "out.safetensors", **TINY_ARGS)
