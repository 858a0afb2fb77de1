import json
import struct

import numpy as np
import pytest

from xpnn import backends
from xpnn.errors import ShapeError, WeightsError
from xpnn.models.darknet53 import Darknet53, darknet53
from xpnn.models.darknet_weights import darknet53_layers, read_darknet_weights
from xpnn.testing import assert_close

SMALL = {"depths": (1, 2), "widths": (8, 16), "stem_width": 4}


def timm_names(depths=(1, 2, 8, 8, 4)):
    """timm's darknet53 state-dict keys (timm/models/cspnet.py: DarkStage with conv_down
    and blocks.N of DarkBlock conv1/conv2; ConvNormAct conv/bn; ClassifierHead fc),
    without the num_batches_tracked counters."""
    def conv_norm_act(prefix):
        return [f"{prefix}.conv.weight", f"{prefix}.bn.weight", f"{prefix}.bn.bias",
                f"{prefix}.bn.running_mean", f"{prefix}.bn.running_var"]

    names = conv_norm_act("stem.conv1")
    for s, depth in enumerate(depths):
        names += conv_norm_act(f"stages.{s}.conv_down")
        for b in range(depth):
            names += conv_norm_act(f"stages.{s}.blocks.{b}.conv1")
            names += conv_norm_act(f"stages.{s}.blocks.{b}.conv2")
    return names + ["head.fc.weight", "head.fc.bias"]


@pytest.fixture(scope="module")
def full_numpy_model():
    with backends.use("numpy"):
        return Darknet53(seed=0)


def test_state_names_match_timm(full_numpy_model):
    assert sorted(full_numpy_model.state_dict()) == sorted(timm_names())
    state = full_numpy_model.state_dict()
    assert state["stem.conv1.conv.weight"].shape == (32, 3, 3, 3)
    assert state["stages.0.conv_down.conv.weight"].shape == (64, 32, 3, 3)
    assert state["stages.0.blocks.0.conv1.bn.running_mean"].shape == (32,)
    assert state["stages.4.blocks.3.conv2.conv.weight"].shape == (1024, 512, 3, 3)
    assert state["head.fc.weight"].shape == (1000, 1024)


def test_parameter_count_is_darknet53s(full_numpy_model):
    # Conv weights plus BatchNorm γ and β of every ConvBNAct, plus the classifier.
    expected, channels = 3 * 32 * 9 + 2 * 32, 32
    for depth, width in zip((1, 2, 8, 8, 4), (64, 128, 256, 512, 1024), strict=True):
        expected += channels * width * 9 + 2 * width
        half = width // 2
        expected += depth * (width * half + 2 * half + half * width * 9 + 2 * width)
        channels = width
    expected += 1024 * 1000 + 1000
    assert expected == 41_609_928
    assert full_numpy_model.num_parameters() == expected


def test_full_model_forward_at_64px_agrees_across_backends(backend, full_numpy_model):
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype("float32")
    expected = full_numpy_model(x)
    assert expected.shape == (2, 1000) and np.isfinite(expected).all()
    if backend.name == "numpy":
        return
    model = Darknet53(seed=0)
    y = model(backend.asarray(x))
    assert_close(y, expected, rtol=2e-4, atol=2e-4, backend=backend)


def test_reduced_model_forward_agrees_across_backends(backend):
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 12)).astype("float32")
    model = Darknet53(num_classes=7, **SMALL, seed=3)
    y = model(backend.asarray(x))
    with backends.use("numpy"):
        expected = Darknet53(num_classes=7, **SMALL, seed=3)(x)
    assert tuple(y.shape) == (2, 7)
    assert_close(y, expected, rtol=1e-4, atol=1e-5, backend=backend)


def test_reduced_model_backward_matches_finite_differences():
    from xpnn.gradcheck import gradcheck

    model = Darknet53(num_classes=3, depths=(1,), widths=(4,), stem_width=2, dtype="float64",
                      seed=0)
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 4))
    errors = gradcheck(model, x, train=True, max_checks=8, eps=1e-5)
    assert max(errors.values()) < 1e-5, errors


# -- darknet .weights files ----------------------------------------------------------------


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
    state, header = read_darknet_weights(path, TINY)
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
            got = backends.to_numpy(state[f"{layer.name}.{suffix}"])
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, values.astype(np.float32))
    assert len(state) == 4 * 5 + 2


def test_both_header_versions_give_the_same_tensors(tmp_path):
    arrays = random_darknet_arrays(TINY, seed=1)
    write_weights(tmp_path / "v1.weights", arrays, 0, 1)
    write_weights(tmp_path / "v2.weights", arrays, 0, 2)
    a, _ = read_darknet_weights(tmp_path / "v1.weights", TINY)
    b, _ = read_darknet_weights(tmp_path / "v2.weights", TINY)
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(backends.to_numpy(a[name]), backends.to_numpy(b[name]))


@pytest.mark.parametrize("delta", [-4, -1, 4])
def test_wrong_byte_count_is_refused_with_both_counts(tmp_path, delta):
    path = tmp_path / "bad.weights"
    write_weights(path, random_darknet_arrays(TINY), 0, 2)
    data = path.read_bytes()
    path.write_bytes(data[:delta] if delta < 0 else data + b"\0" * delta)
    expected = len(data)
    with pytest.raises(WeightsError, match=rf"expected {expected:,} bytes.*has "
                                           rf"{expected + delta:,} bytes"):
        read_darknet_weights(path, TINY)


def test_truncated_header_is_refused(tmp_path):
    path = tmp_path / "short.weights"
    path.write_bytes(b"\0" * 10)
    with pytest.raises(WeightsError, match="16-byte header"):
        read_darknet_weights(path, TINY)


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
    from xpnn.io import load_metadata
    from xpnn.models.darknet_weights import convert_darknet53

    layers = darknet53_layers(num_classes=5, **SMALL)
    arrays = random_darknet_arrays(layers, seed=2)
    source, target = tmp_path / "small.weights", tmp_path / "small.safetensors"
    write_weights(source, arrays, major, minor)
    info = convert_darknet53(source, target, num_classes=5, **SMALL)
    assert info["version"] == f"{major}.{minor}.0"

    meta = load_metadata(target)
    assert json.loads(meta["negative_slope"]) == 0.1
    assert json.loads(meta["mean"]) == [0.0, 0.0, 0.0]
    assert "sqrt(running_var + eps)" in meta["bn_eps_convention"]

    model = darknet53(target)  # slope, eps, sizes and preprocessing from the metadata
    assert model.negative_slope == 0.1 and model.num_classes == 5
    assert model.preprocessing["crop_pct"] == 1.0
    x = np.random.default_rng(3).uniform(0, 1, (2, 3, 12, 12))
    expected = numpy_darknet_forward(x, arrays, layers, 0.1, 1e-5)
    np.testing.assert_allclose(model(x.astype("float32")), expected, rtol=1e-4, atol=1e-4)


def test_cli_reports_a_truncated_file_without_traceback(tmp_path, capsys):
    from xpnn.models.darknet53 import main

    path = tmp_path / "darknet53.weights"
    write_weights(path, [np.zeros(100)], 0, 2)
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "expected 166,582,580 bytes" in err and "has 420 bytes" in err
    assert not (tmp_path / "out.safetensors").exists()


# -- safetensors files -------------------------------------------------------------------------


def test_file_without_metadata_uses_timm_defaults_and_accepts_counters(tmp_path):
    import safetensors.numpy

    model = Darknet53(num_classes=4, **SMALL, seed=5)
    state = {k: backends.to_numpy(v) for k, v in model.state_dict().items()}
    for name in list(state):
        if name.endswith("running_var"):
            state[name.replace("running_var", "num_batches_tracked")] = np.array(7, "int64")
    conv_like = dict(state)
    conv_like["head.fc.weight"] = state["head.fc.weight"].reshape(4, 16, 1, 1)
    for name, tensors in (("plain", state), ("conv_head", conv_like)):
        path = tmp_path / f"{name}.safetensors"
        safetensors.numpy.save_file(tensors, str(path), metadata={"format": "pt"})
        loaded = Darknet53(num_classes=4, **SMALL, seed=6)
        from xpnn.models.darknet53 import load_weights

        load_weights(loaded, path)
        assert loaded.negative_slope == 0.01 and loaded.preprocessing["crop_pct"] == 0.887
        x = np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype("float32")
        np.testing.assert_array_equal(loaded(x), model(x))


def test_weights_of_another_architecture_list_the_mismatches(tmp_path):
    import xpnn.io

    other = Darknet53(num_classes=4, depths=(1,), widths=(8,), stem_width=4, seed=0)
    path = tmp_path / "other.safetensors"
    xpnn.io.save(other.state_dict(), path)
    with pytest.raises(WeightsError, match=r"missing keys.*stages\.1"):
        darknet53(path, num_classes=4)


def test_saved_model_round_trips_with_its_config(tmp_path):
    import xpnn.io

    model = Darknet53(num_classes=3, negative_slope=0.2, **SMALL, input_size=64, seed=1)
    path = tmp_path / "m.safetensors"
    xpnn.io.save(model, path, metadata=model.metadata())
    again = darknet53(path)
    assert again.config() == model.config()
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype("float32")
    np.testing.assert_array_equal(again(x), model(x))


def test_bad_inputs_are_named():
    model = Darknet53(num_classes=2, **SMALL, seed=0)
    with pytest.raises(ShapeError, match=r"\(N, 3, H, W\).*\(1, 1, 8, 8\)"):
        model(np.zeros((1, 1, 8, 8), dtype="float32"))
    with pytest.raises(ShapeError, match="at least 4x4"):
        model(np.zeros((1, 3, 2, 8), dtype="float32"))


# -- the same network in PyTorch, named as timm names it --------------------------------------


def torch_darknet53(torch, num_classes=1000):
    nn = torch.nn

    class ConvNormAct(nn.Module):
        def __init__(self, cin, cout, k, stride=1):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(cout)
            self.act = nn.LeakyReLU(0.01)

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1 = ConvNormAct(c, c // 2, 1)
            self.conv2 = ConvNormAct(c // 2, c, 3)

        def forward(self, x):
            return x + self.conv2(self.conv1(x))

    class Stage(nn.Module):
        def __init__(self, cin, cout, depth):
            super().__init__()
            self.conv_down = ConvNormAct(cin, cout, 3, 2)
            self.blocks = nn.Sequential(*[Block(cout) for _ in range(depth)])

        def forward(self, x):
            return self.blocks(self.conv_down(x))

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(1024, num_classes)

        def forward(self, x):
            return self.fc(x.mean(dim=(2, 3)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential()
            self.stem.add_module("conv1", ConvNormAct(3, 32, 3))
            widths, cin = (64, 128, 256, 512, 1024), 32
            stages = []
            for depth, width in zip((1, 2, 8, 8, 4), widths, strict=True):
                stages.append(Stage(cin, width, depth))
                cin = width
            self.stages = nn.Sequential(*stages)
            self.head = Head()

        def forward(self, x):
            return self.head(self.stages(self.stem(x)))

    return Net()


def test_torch_state_dict_loads_and_gives_the_same_logits(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    torch.manual_seed(0)
    net = torch_darknet53(torch).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                assert module.running_var.shape == (c,)
    state = net.state_dict()
    assert [k for k in state if not k.endswith("num_batches_tracked")] == timm_names()
    assert sum(k.endswith("num_batches_tracked") for k in state) == 52
    path = tmp_path / "darknet53_torch.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path),
                                metadata={"format": "pt"})

    with backends.use("numpy"):
        model = darknet53(path)
    assert model.negative_slope == 0.01
    x = np.random.default_rng(7).standard_normal((2, 3, 64, 64)).astype("float32")
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x), expected, rtol=1e-3, atol=1e-4)


# -- examples/darknet53.py -------------------------------------------------------------------


@pytest.fixture(scope="module")
def example():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "darknet53.py"
    spec = importlib.util.spec_from_file_location("darknet53_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_converts_every_image_mode_to_rgb(tmp_path, example):
    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    arrays = {"gray.png": rng.integers(0, 255, (20, 30), dtype=np.uint8),
              "rgba.png": rng.integers(0, 255, (20, 30, 4), dtype=np.uint8),
              "deep.png": np.full((20, 30), 65535, dtype=np.uint16),
              "rgb.jpg": rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)}
    for name, values in arrays.items():
        image_module.fromarray(values).save(tmp_path / name)
        image = example.load_rgb(str(tmp_path / name))
        assert image.mode == "RGB" and image.size == (30, 20)
    assert np.asarray(example.load_rgb(str(tmp_path / "deep.png"))).min() == 255  # not clipped
    x = example.preprocess(example.load_rgb(str(tmp_path / "rgb.jpg")),
                           {"input_size": 16, "crop_pct": 0.8, "interpolation": "bicubic",
                            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    assert x.shape == (3, 16, 16) and x.dtype == np.float32
    assert -2.0 - 1e-6 <= x.min() and x.max() <= 2.0 + 1e-6


def test_example_names_unreadable_files(tmp_path, example):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(example.ImageError, match="notes.txt: not an image"):
        example.load_rgb(str(text))
    image_module = pytest.importorskip("PIL.Image")
    image_module.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(example.ImageError, match="cut.jpg: cannot decode"):
        example.load_rgb(str(tmp_path / "cut.jpg"))


def test_example_without_weights_says_how_to_get_them(tmp_path, example, capsys):
    code = example.main(["x.jpg", "--weights", str(tmp_path / "none.safetensors")])
    assert code == 2
    err = capsys.readouterr().err
    assert "darknet53.weights" in err and "convert" in err and "darknet53.c2ns_in1k" in err
