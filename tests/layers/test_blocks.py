import numpy as np
import pytest

from xpnn import backends
from xpnn.errors import ConfigError
from xpnn.gradcheck import gradcheck
from xpnn.layers.activations import LeakyReLU, ReLU
from xpnn.layers.blocks import ConvBNAct
from xpnn.layers.dense import Dense
from xpnn.testing import assert_close


def conv_reference(x, w, stride, padding):
    """Direct float64 cross-correlation, NCHW."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    n, _, h, wd = x.shape
    o, _, k, _ = w.shape
    oh, ow = (h - k) // stride + 1, (wd - k) // stride + 1
    y = np.zeros((n, o, oh, ow))
    for i in range(k):
        for j in range(k):
            patch = x[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return y


def block_reference(x, state, stride, k, slope, eps):
    z = conv_reference(x, state["conv.weight"], stride, k // 2)
    c = (1, -1, 1, 1)
    z = (z - state["bn.running_mean"].reshape(c)) / np.sqrt(state["bn.running_var"].reshape(c)
                                                           + eps)
    z = z * state["bn.weight"].reshape(c) + state["bn.bias"].reshape(c)
    return np.where(z > 0, z, slope * z)


def make_block(dtype="float32", *, fold=True, k=3, stride=1, cin=3, cout=4, seed=0):
    block = ConvBNAct(cin, cout, k, stride, negative_slope=0.1, eps=1e-3, fold=fold,
                      dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 100)
    state = {name: backends.to_numpy(value).astype(np.float64)
             for name, value in block.state_dict().items()}
    state["bn.weight"] = rng.uniform(0.5, 1.5, cout)
    state["bn.bias"] = rng.standard_normal(cout)
    state["bn.running_mean"] = rng.standard_normal(cout) * 0.3
    state["bn.running_var"] = rng.uniform(0.5, 2.0, cout)
    block.load_state_dict({name: value.astype(dtype) for name, value in state.items()})
    return block, state


def test_state_names_match_timm_conv_norm_act():
    block = ConvBNAct(3, 8, 3, seed=0)
    assert list(block.state_dict()) == [
        "conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]
    assert block.state_dict()["conv.weight"].shape == (8, 3, 3, 3)
    assert block.conv.bias is None
    assert block.num_parameters() == 8 * 3 * 9 + 2 * 8


@pytest.mark.parametrize(("k", "stride"), [(3, 1), (3, 2), (1, 1)])
def test_eval_forward_matches_float64_reference(backend, k, stride):
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 6))
    for fold in (True, False):
        block, state = make_block(fold=fold, k=k, stride=stride)
        y = block(backend.asarray(x, dtype="float32"))
        assert_close(y, block_reference(x, state, stride, k, 0.1, 1e-3), rtol=1e-4, atol=1e-5,
                     backend=backend)


def test_folded_equals_unfolded_forward_and_backward(backend):
    rng = np.random.default_rng(2)
    x = backend.asarray(rng.standard_normal((2, 3, 8, 8)), dtype="float32")
    dy = backend.asarray(rng.standard_normal((2, 4, 4, 4)), dtype="float32")
    results = []
    for fold in (True, False):
        block, _ = make_block(fold=fold, stride=2)
        y, backprop = block.forward(x, train=False)
        dx = backprop(dy)
        grads = {name: p.grad for name, p in block.named_parameters()}
        results.append((y, dx, grads))
    (y1, dx1, g1), (y2, dx2, g2) = results
    assert_close(y1, backends.to_numpy(y2), rtol=1e-5, atol=1e-5, backend=backend)
    assert_close(dx1, backends.to_numpy(dx2), rtol=1e-5, atol=1e-5, backend=backend)
    assert set(g1) == set(g2) == {"conv.weight", "bn.weight", "bn.bias"}
    for name in g1:
        assert_close(g1[name], backends.to_numpy(g2[name]), rtol=1e-4, atol=1e-4,
                     backend=backend)


@pytest.mark.parametrize(("train", "fold"), [(True, True), (False, True), (False, False)])
def test_backward_matches_finite_differences(backend, train, fold):
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 5))
    block, _ = make_block("float64", fold=fold, stride=2)
    errors = gradcheck(block, x, train=train, eps=1e-5)
    assert set(errors) == {"input", "conv.weight", "bn.weight", "bn.bias"}
    assert max(errors.values()) < 1e-6, errors


def test_folded_path_follows_loads_and_in_place_steps_with_frozen_batchnorm():
    block, state = make_block()
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 6)).astype("float32")
    block(x)

    # A load replaces the arrays: the folded path follows.
    state["bn.weight"] = state["bn.weight"] * 2.0
    block.load_state_dict({k: v.astype("float32") for k, v in state.items()})
    np.testing.assert_allclose(block(x), block_reference(x.astype(np.float64), state, 1, 3, 0.1,
                                                         1e-3), rtol=1e-4, atol=1e-5)

    # Fine-tuning with BatchNorm frozen: evaluation-mode forward and backward, then an
    # in-place optimizer step on every parameter, γ and β included.
    _, backprop = block.forward(x, train=False)
    backprop(np.ones((2, 4, 6, 6), dtype="float32"))
    for parameter in block.parameters():
        parameter.value -= 0.1 * parameter.grad
    unfolded = ConvBNAct(3, 4, 3, negative_slope=0.1, eps=1e-3, fold=False)
    unfolded.load_state_dict(block.state_dict())
    np.testing.assert_allclose(block(x), unfolded(x), rtol=1e-5, atol=1e-5)


def test_folded_path_follows_a_move_to_another_backend():
    block, _ = make_block()
    x = np.random.default_rng(5).standard_normal((1, 3, 5, 5)).astype("float32")
    expected = block(x)
    block.to("array_api_strict", device="device1")
    with backends.use(block.backend):
        y = block(x)
    assert_close(y, expected, rtol=1e-6, atol=1e-6, backend=block.backend)


def test_matches_torch_modules():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(6).standard_normal((2, 3, 9, 9))
    block, state = make_block("float64", stride=2)
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False).double()
    bn = torch.nn.BatchNorm2d(4, eps=1e-3).double().eval()
    net = torch.nn.Sequential(conv, bn, torch.nn.LeakyReLU(0.1))
    net.load_state_dict({k.replace("conv.", "0.").replace("bn.", "1."): torch.tensor(v)
                         for k, v in state.items()}, strict=False)
    with torch.no_grad():
        expected = net(torch.tensor(x)).numpy()
    np.testing.assert_allclose(block(x), expected, rtol=1e-10, atol=1e-12)


def test_activation_choices():
    assert type(ConvBNAct(2, 2, 1, activation="relu").act).__name__ == "ReLU"
    assert type(ConvBNAct(2, 2, 1, activation=None).act).__name__ == "Identity"
    assert ConvBNAct(2, 2, 1, activation=ReLU()).config()["activation"] == {
        "type": "ReLU", "config": {}}


def test_a_module_activation_survives_save_and_load_model(tmp_path):
    from xpnn.io import load_model, save

    block = ConvBNAct(2, 3, 3, activation=LeakyReLU(0.2), seed=0)
    save(block, tmp_path / "block.safetensors")
    rebuilt = load_model(tmp_path / "block.safetensors")
    assert rebuilt.act.negative_slope == 0.2
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype("float32")
    np.testing.assert_array_equal(rebuilt(x), block(x))
    with pytest.raises(ConfigError, match="activation"):
        ConvBNAct(2, 2, 1, activation="swish")
    with pytest.raises(ConfigError, match="without parameters"):
        ConvBNAct(2, 2, 1, activation=Dense(2, 2))


# -- BatchNorm's affine=False and track_running_stats=False ---------------------------------

OPTIONS = [pytest.param(affine, track, id=f"affine={affine}-track={track}")
           for affine in (True, False) for track in (True, False)]


def make_block_with(dtype, affine, track, *, fold=True, stride=2, seed=0):
    """A ConvBNAct with BatchNorm's options and non-trivial values in every array it has."""
    block = ConvBNAct(3, 4, 3, stride, negative_slope=0.1, eps=1e-3, momentum=0.2,
                      affine=affine, track_running_stats=track, fold=fold, dtype=dtype,
                      seed=seed)
    rng = np.random.default_rng(seed + 100)
    extra = {"bn.weight": rng.uniform(0.5, 1.5, 4), "bn.bias": rng.standard_normal(4),
             "bn.running_mean": rng.standard_normal(4) * 0.3,
             "bn.running_var": rng.uniform(0.5, 2.0, 4)}
    state = {name: backends.to_numpy(value).astype(np.float64)
             for name, value in block.state_dict().items()}
    state.update({name: value for name, value in extra.items() if name in state})
    block.load_state_dict({name: value.astype(dtype) for name, value in state.items()})
    return block, state


def unfused_chain(dtype, affine, track, state, stride=2):
    from xpnn.layers import BatchNorm, Conv2D, Sequential

    chain = Sequential([Conv2D(3, 4, 3, stride=stride, padding=1, bias=False, dtype=dtype),
                        BatchNorm(4, eps=1e-3, momentum=0.2, affine=affine,
                                  track_running_stats=track, dtype=dtype),
                        LeakyReLU(0.1)])
    chain.load_state_dict({name.replace("conv.", "0.").replace("bn.", "1."): value.astype(dtype)
                           for name, value in state.items()})
    return chain


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize(("affine", "track"), OPTIONS)
def test_options_match_the_unfused_chain_over_training_and_evaluation(backend, affine, track,
                                                                      fold):
    """Two training steps then two evaluation steps (folded when there are running
    statistics and ``fold``): outputs, input and parameter gradients and the state agree
    with Conv2D → BatchNorm → LeakyReLU built with the same options."""
    block, state = make_block_with("float64", affine, track, fold=fold)
    chain = unfused_chain("float64", affine, track, state)
    rng = np.random.default_rng(12)
    for train in (True, True, False, False):
        x = backend.asarray(rng.standard_normal((3, 3, 7, 7)) + rng.uniform(-0.5, 0.5))
        dy = backend.asarray(rng.standard_normal((3, 4, 4, 4)))
        outputs = []
        for model in (block, chain):
            model.zero_grad()
            y, backprop = model.forward(x, train=train)
            outputs.append((y, backprop(dy), [p.grad for p in model.parameters()],
                            list(model.state_dict().values())))
        (y1, dx1, g1, s1), (y2, dx2, g2, s2) = outputs
        assert_close(y1, backends.to_numpy(y2), rtol=1e-10, atol=1e-12, backend=backend)
        assert_close(dx1, backends.to_numpy(dx2), rtol=1e-9, atol=1e-11, backend=backend)
        assert len(g1) == len(g2) == (3 if affine else 1)
        for a, b in zip(g1 + s1, g2 + s2, strict=True):
            assert_close(a, backends.to_numpy(b), rtol=1e-9, atol=1e-11, backend=backend)


@pytest.mark.parametrize(("train", "fold"), [(True, True), (False, True), (False, False)])
@pytest.mark.parametrize(("affine", "track"), OPTIONS)
def test_options_backward_matches_finite_differences(backend, affine, track, train, fold):
    x = np.random.default_rng(13).standard_normal((2, 3, 5, 5))
    block, _ = make_block_with("float64", affine, track, fold=fold)
    errors = gradcheck(block, x, train=train, eps=1e-5)
    assert set(errors) == {"input", "conv.weight"} | (
        {"bn.weight", "bn.bias"} if affine else set())
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize(("affine", "track"), OPTIONS)
def test_options_state_config_and_load_model(tmp_path, affine, track):
    from xpnn.io import load_model, save

    block, _ = make_block_with("float32", affine, track, stride=1)
    expected = ["conv.weight"] + (["bn.weight", "bn.bias"] if affine else []) + (
        ["bn.running_mean", "bn.running_var"] if track else [])
    assert list(block.state_dict()) == expected
    assert block.num_parameters() == 4 * 3 * 9 + (8 if affine else 0)
    config = block.config()
    assert config["affine"] is affine and config["track_running_stats"] is track
    assert block.bn.affine is affine and block.bn.track_running_stats is track
    assert ("affine=False" in repr(block)) is not affine
    assert ("track_running_stats=False" in repr(block)) is not track
    save(block, tmp_path / "block.safetensors")
    rebuilt = load_model(tmp_path / "block.safetensors")
    assert rebuilt.config() == config
    x = np.random.default_rng(14).standard_normal((2, 3, 6, 6)).astype("float32")
    np.testing.assert_array_equal(rebuilt(x), block(x))


def test_a_record_without_the_options_loads_with_the_defaults():
    from xpnn.io.records import model_from_config

    config = ConvBNAct(3, 4, 3).config()
    del config["affine"], config["track_running_stats"]
    block = model_from_config({"type": "ConvBNAct", "config": config})
    assert block.bn.affine and block.bn.track_running_stats
    assert list(block.state_dict()) == [
        "conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]


def test_without_running_statistics_evaluation_uses_the_batch_and_folds_nothing(backend):
    from xpnn.errors import ShapeError

    block, _ = make_block_with("float32", True, False)
    x = backend.asarray(np.random.default_rng(15).standard_normal((3, 3, 8, 8)),
                        dtype="float32")
    trained, _ = block.forward(x, train=True)
    assert_close(block(x), backends.to_numpy(trained), rtol=1e-6, atol=1e-6, backend=backend)
    with pytest.raises(ConfigError, match="no running statistics to fold"):
        block.folded()
    one_pixel = ConvBNAct(3, 4, 1, track_running_stats=False)
    with pytest.raises(ShapeError, match="more than one value per channel"):
        one_pixel(np.zeros((1, 3, 1, 1), dtype="float32"))


def test_folded_without_affine_is_batchnorm_with_unit_scale(backend):
    """affine=False folds as γ = 1, β = 0: the same as an affine BatchNorm holding them."""
    block, state = make_block_with("float32", False, True)
    affine, _ = make_block_with("float32", True, True)
    affine.load_state_dict({**{k: v.astype("float32") for k, v in state.items()},
                            "bn.weight": np.ones(4, dtype="float32"),
                            "bn.bias": np.zeros(4, dtype="float32")})
    scale, shift = block.folded()
    expected_scale = 1.0 / np.sqrt(state["bn.running_var"] + 1e-3)
    assert_close(scale, expected_scale, rtol=1e-6, backend=backend)
    assert_close(shift, -state["bn.running_mean"] * expected_scale, rtol=1e-6, atol=1e-7,
                 backend=backend)
    x = backend.asarray(np.random.default_rng(16).standard_normal((2, 3, 9, 9)),
                        dtype="float32")
    assert_close(block(x), backends.to_numpy(affine(x)), rtol=1e-6, atol=1e-6, backend=backend)


@pytest.mark.parametrize(("affine", "track"), OPTIONS)
def test_options_match_torch_modules(affine, track):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(17)
    block, state = make_block_with("float64", affine, track)
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False).double()
    bn = torch.nn.BatchNorm2d(4, eps=1e-3, momentum=0.2, affine=affine,
                              track_running_stats=track).double()
    net = torch.nn.Sequential(conv, bn, torch.nn.LeakyReLU(0.1))
    net.load_state_dict({k.replace("conv.", "0.").replace("bn.", "1."): torch.tensor(v)
                         for k, v in state.items()}, strict=False)
    for train in (True, False):
        x, dy = rng.standard_normal((2, 3, 9, 9)), rng.standard_normal((2, 4, 5, 5))
        block.zero_grad()
        net.train(train)
        net.zero_grad()
        y, backprop = block.forward(x, train=train)
        dx = backprop(dy)
        xt = torch.tensor(x, requires_grad=True)
        yt = net(xt)
        yt.backward(torch.tensor(dy))
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
        for name, parameter in block.named_parameters():
            torch_name = name.replace("conv.", "0.").replace("bn.", "1.")
            np.testing.assert_allclose(parameter.grad,
                                       net.get_parameter(torch_name).grad.numpy(),
                                       rtol=1e-9, atol=1e-11, err_msg=name)
