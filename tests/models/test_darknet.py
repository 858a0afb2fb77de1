"""Darknet53 (xpnn.models.darknet): timm's names, forward on every backend, gradients, and
the two ways its weights load: an xpnn record (xpnn.io.load_model) and timm's file (the
adapter)."""

import json

import numpy as np
import pytest
import safetensors.numpy

import xpnn.io
from xpnn import backends
from xpnn.errors import ConfigError, ShapeError, WeightsError
from xpnn.layers import Dense
from xpnn.models import Darknet53, darknet53
from xpnn.models.darknet import load_timm_weights
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


# -- the xpnn record: save, then xpnn.io.load_model ------------------------------------------


def test_saved_model_is_rebuilt_by_load_model_with_identical_outputs(backend, tmp_path):
    model = Darknet53(num_classes=3, negative_slope=0.2, **SMALL, input_size=64, crop_pct=0.9,
                      interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.2, 0.3, 0.4),
                      seed=1)
    path = tmp_path / "m.safetensors"
    xpnn.io.save(model, path)
    record = json.loads(xpnn.io.load_metadata(path)["architecture"])
    assert record == {"type": "Darknet53", "config": model.config()}
    assert json.loads(xpnn.io.load_metadata(path)["preprocessing"]) == model.preprocessing
    again = xpnn.io.load_model(path)
    assert type(again) is Darknet53 and again.config() == model.config()
    assert again.backend.name == backend.name
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype("float32")
    assert_close(again(x), model(x), rtol=0, atol=0, backend=backend)
    assert_close(darknet53(path)(x), model(x), rtol=0, atol=0, backend=backend)


def test_a_forged_record_is_refused_before_building(tmp_path):
    small = Darknet53(num_classes=2, **SMALL, seed=0)
    path = tmp_path / "forged.safetensors"
    forged = {"type": "Darknet53", "config": {**small.config(), "widths": [4096, 8192]}}
    xpnn.io.save(small.state_dict(), path, metadata={"architecture": json.dumps(forged)})
    with pytest.raises(WeightsError, match="corrupt or forged"):
        xpnn.io.load_model(path)
    with pytest.raises(WeightsError, match="corrupt or forged"):
        darknet53(path)


def test_arguments_may_not_contradict_the_record(tmp_path):
    model = Darknet53(num_classes=3, negative_slope=0.1, **SMALL, seed=0)
    path = tmp_path / "m.safetensors"
    xpnn.io.save(model, path)
    assert darknet53(path, num_classes=3, negative_slope=0.1).num_classes == 3  # agrees
    with pytest.raises(ConfigError, match=r"contradict.*'negative_slope': 0.01"):
        darknet53(path, negative_slope=0.01)


def test_a_record_of_another_model_is_not_taken_for_darknet53(tmp_path):
    path = tmp_path / "dense.safetensors"
    xpnn.io.save(Dense(3, 2, seed=0), path)
    with pytest.raises(WeightsError, match=r"records a 'Dense' model"):
        darknet53(path)


# -- timm's file: no record, the adapter -------------------------------------------------------


def test_file_without_record_uses_timm_defaults_and_accepts_counters(tmp_path):
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
        assert xpnn.io.read_architecture(path) is None
        loaded = load_timm_weights(Darknet53(num_classes=4, **SMALL, seed=6), path)
        assert loaded.negative_slope == 0.01 and loaded.preprocessing["crop_pct"] == 0.887
        x = np.random.default_rng(4).standard_normal((1, 3, 8, 8)).astype("float32")
        np.testing.assert_array_equal(loaded(x), model(x))


def test_adapter_casts_a_float32_file_to_a_float64_model(tmp_path):
    model = Darknet53(num_classes=4, **SMALL, seed=5)
    path = tmp_path / "timm.safetensors"
    safetensors.numpy.save_file(
        {k: backends.to_numpy(v) for k, v in model.state_dict().items()}, str(path))
    wide = load_timm_weights(Darknet53(num_classes=4, **SMALL, dtype="float64", seed=0), path)
    x = np.random.default_rng(4).standard_normal((1, 3, 8, 8))
    np.testing.assert_allclose(wide(x), model(x.astype("float32")), rtol=1e-4, atol=1e-5)


def test_weights_of_another_architecture_list_the_mismatches(tmp_path):
    other = Darknet53(num_classes=4, depths=(1,), widths=(8,), stem_width=4, seed=0)
    path = tmp_path / "other.safetensors"
    xpnn.io.save(other.state_dict(), path)  # a dict: no record, so the adapter loads it
    with pytest.raises(WeightsError, match=r"missing keys.*stages\.1"):
        darknet53(path, num_classes=4)


def test_adapter_only_takes_darknet53():
    with pytest.raises(ConfigError, match="expected a Darknet53"):
        load_timm_weights(Dense(2, 2), "unused.safetensors")


# -- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("arguments", "match"), [
    ({"negative_slope": "0.1"}, "negative_slope to be a finite number"),
    ({"eps": 0.0}, r"eps to be a number > 0.0"),
    ({"input_size": 0}, r"input_size to be an integer in \[1, 2048\]"),
    ({"interpolation": "cubic"}, "interpolation to be one of bicubic"),
    ({"std": (1.0, 0.0, 1.0)}, r"std\[1\] to be a number > 0.0"),
    ({"mean": (0.5, 0.5)}, "mean to be three numbers"),
    ({"dtype": "int32"}, "dtype float32 or float64"),
])
def test_bad_arguments_are_named(arguments, match):
    with pytest.raises(ConfigError, match=match):
        Darknet53(**SMALL, **arguments)


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
