"""Dropout: mask statistics and inverted scaling, identity at inference, seeded and
reproducible masks (the same on every backend), a backward that reuses the forward's
mask, gradient checks with a fixed mask, PyTorch's scaling rule, configs, errors and saved
models."""

import numpy as np
import pytest

import xpnn.backends.random as host_random
from xpnn import backends
from xpnn.errors import ConfigError, DTypeError, ShapeError
from xpnn.io import load_model, save
from xpnn.layers import Dense, Dropout, ReLU, Sequential
from xpnn.testing import assert_close, check_layer


class FixedMaskDropout(Dropout):
    """A Dropout that restarts its stream of masks at every forward, so repeated forward
    passes (finite differences) see one fixed mask."""

    def forward(self, x, *, train: bool = False):
        self.generator = np.random.default_rng(self.seed)
        return super().forward(x, train=train)


def keep_mask(seed, shape, p):
    """The mask Dropout(p, seed=seed) draws first: documented as host uniforms >= p."""
    return np.random.default_rng(seed).random(shape) >= p


def host(array):
    return backends.to_numpy(array)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_mask_statistics_and_inverted_scaling(backend, p):
    x = np.random.default_rng(0).uniform(1.0, 2.0, (400, 500))
    y, _ = Dropout(p, seed=1).forward(backend.asarray(x), train=True)
    ratio = host(y) / x
    kept = ratio != 0.0
    np.testing.assert_allclose(ratio[kept], 1.0 / (1.0 - p), rtol=1e-15)
    # 200 000 Bernoulli draws: the kept fraction is within 5 standard deviations of 1 - p.
    sigma = np.sqrt(p * (1 - p) / x.size)
    assert abs(kept.mean() - (1.0 - p)) < 5 * sigma
    assert abs(host(y).mean() / x.mean() - 1.0) < 0.02  # the expectation is kept


def test_identity_at_inference(backend):
    x = np.random.default_rng(2).standard_normal((3, 4, 5)).astype(np.float32)
    layer = Dropout(0.5, seed=0)
    assert_close(layer(backend.asarray(x)), x, rtol=0, backend=backend)
    y, backprop = layer.forward(backend.asarray(x), train=False)
    assert_close(y, x, rtol=0, backend=backend)
    dy = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    assert_close(backprop(backend.asarray(dy)), dy, rtol=0, backend=backend)
    # Inference draws no mask: the first training mask is still the seed's first.
    y, _ = layer.forward(backend.asarray(x), train=True)
    assert_close(y, np.where(keep_mask(0, x.shape, 0.5), x * 2.0, 0.0), rtol=0)


def test_p_zero_is_the_identity_in_training(backend):
    x = np.random.default_rng(4).standard_normal((6, 7))
    y, backprop = Dropout(0.0, seed=0).forward(backend.asarray(x), train=True)
    assert_close(y, x, rtol=0, backend=backend)
    assert_close(backprop(backend.asarray(2.0 * x)), 2.0 * x, rtol=0, backend=backend)


def test_same_seed_same_masks_on_every_backend_and_the_stream_advances(backend):
    x = np.ones((50, 40), dtype=np.float32)
    first, second = Dropout(0.3, seed=7), Dropout(0.3, seed=7)
    a1, _ = first.forward(backend.asarray(x), train=True)
    a2, _ = first.forward(backend.asarray(x), train=True)
    b1, _ = second.forward(backend.asarray(x), train=True)
    b2, _ = second.forward(backend.asarray(x), train=True)
    assert_close(a1, b1, rtol=0, backend=backend)
    assert_close(a2, b2, rtol=0, backend=backend)
    assert not np.array_equal(host(a1), host(a2)), "each forward must draw a new mask"
    rng = np.random.default_rng(7)
    for y in (a1, a2):  # the documented draw: host uniforms >= p, the same on every backend
        expected = (rng.random(x.shape) >= 0.3).astype(np.float32) * np.float32(1 / 0.7)
        assert_close(y, expected, rtol=0)
    other, _ = Dropout(0.3, seed=8).forward(backend.asarray(x), train=True)
    assert not np.array_equal(host(other), host(a1))


def test_without_seed_masks_come_from_the_global_generator(backend, monkeypatch):
    monkeypatch.setattr(host_random, "_global", host_random._global)  # restored afterwards
    x = np.ones((20, 30))
    layer = Dropout(0.4)  # built before seeding: it reads the global generator per forward
    backends.seed(11)
    y, _ = layer.forward(backend.asarray(x), train=True)
    backends.seed(11)
    again, _ = Dropout(0.4).forward(backend.asarray(x), train=True)
    assert_close(y, np.where(keep_mask(11, x.shape, 0.4), 1 / 0.6, 0.0), rtol=1e-15)
    assert_close(again, y, rtol=0)


def test_backward_multiplies_by_the_forward_mask(backend):
    x = np.random.default_rng(5).uniform(1.0, 2.0, (8, 9))
    layer = Dropout(0.25, seed=3)
    y, backprop = layer.forward(backend.asarray(x), train=True)
    layer.forward(backend.asarray(x), train=True)  # a later forward must not change it
    dy = np.random.default_rng(6).standard_normal(x.shape)
    mask = host(y) / x
    assert_close(backprop(backend.asarray(dy)), dy * mask, rtol=1e-14, backend=backend)
    assert_close(backprop(backend.asarray(dy)), dy * mask, rtol=1e-14, backend=backend)
    assert backprop(backend.asarray(dy), need_input_grad=False) is None


@pytest.mark.parametrize("p", [0.2, 0.5])
@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 4, 5)])
def test_dropout_with_a_fixed_mask_passes_the_layer_harness(backend, p, shape):
    x = np.random.default_rng(9).standard_normal(shape)
    check_layer(lambda dtype: FixedMaskDropout(p, seed=4), x, lambda x, params: x,
                backend=backend)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_scaling_rule_equals_torch(p):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(10).uniform(1.0, 2.0, (300, 200))
    dy = np.random.default_rng(11).standard_normal(x.shape)
    torch.manual_seed(0)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.dropout(xt, p=p, training=True)
    yt.backward(torch.from_numpy(dy))
    torch_ratio = yt.detach().numpy() / x
    torch_kept = torch_ratio != 0.0
    y, backprop = Dropout(p, seed=0).forward(x, train=True)
    ratio = y / x
    kept = ratio != 0.0
    # Both keep values scaled by 1 / (1 - p) and zero the others, forward and backward.
    np.testing.assert_allclose(torch_ratio[torch_kept], 1.0 / (1.0 - p), rtol=1e-15)
    np.testing.assert_allclose(ratio[kept], 1.0 / (1.0 - p), rtol=1e-15)
    np.testing.assert_array_equal(yt.detach().numpy()[torch_kept], x[torch_kept] * (1 / (1 - p)))
    np.testing.assert_array_equal(y[kept], x[kept] * (1 / (1 - p)))
    np.testing.assert_allclose(xt.grad.numpy(), np.where(torch_kept, dy / (1 - p), 0.0),
                               rtol=1e-15)
    np.testing.assert_allclose(backprop(dy), np.where(kept, dy / (1 - p), 0.0), rtol=1e-15)
    # And both keep about 1 - p of the values.
    assert abs(torch_kept.mean() - kept.mean()) < 0.02
    # At inference both are the identity.
    torch_eval = torch.nn.Dropout(p).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(Dropout(p)(x), torch_eval)


def test_dropout_in_a_network_keeps_the_parameter_gradients_contract(backend):
    model = Sequential([Dense(5, 8), ReLU(), Dropout(0.5, seed=0), Dense(8, 2)], seed=0)
    x = backend.asarray(np.random.default_rng(12).standard_normal((4, 5)), "float32")
    y, backprop = model.forward(x, train=True)
    dy = backend.asarray(np.ones(tuple(y.shape)), "float32")
    assert tuple(backprop(dy).shape) == (4, 5)
    full = {name: host(p.grad) for name, p in model.named_parameters()}
    model.zero_grad()
    assert backprop(dy, need_input_grad=False) is None
    for name, parameter in model.named_parameters():
        np.testing.assert_array_equal(host(parameter.grad), full[name])


def test_dropout_config_and_repr():
    assert repr(Dropout()) == "Dropout(p=0.5)"
    assert repr(Dropout(0.25, seed=3)) == "Dropout(p=0.25)"
    assert Dropout(0.25, seed=3).config() == {"p": 0.25, "seed": 3}
    assert Dropout(**Dropout(0.1).config()).config() == {"p": 0.1, "seed": None}
    assert Dropout().state_dict() == {}


@pytest.mark.parametrize("kwargs, match", [
    ({"p": 1.0}, r"Dropout expected p to be a number in \[0.0, 1.0\)\. Received: p=1.0"),
    ({"p": -0.1}, r"Dropout expected p .* Received: p=-0.1"),
    ({"p": "0.5"}, r"Dropout expected p .* Received: p='0.5'"),
    ({"p": float("nan")}, r"Dropout expected p"),
    ({"p": True}, r"Dropout expected p"),
    ({"seed": -1}, r"Dropout expected seed to be an integer >= 0\. Received: seed=-1"),
    ({"seed": 1.5}, r"Dropout expected seed"),
])
def test_bad_dropout_arguments_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Dropout(**kwargs)


@pytest.mark.parametrize("train", [True, False])
def test_dropout_refuses_integer_input(train):
    with pytest.raises(DTypeError, match=r"Dropout\(p=0.5\) expected a floating-point.*int64"):
        Dropout().forward(np.zeros((2, 3), dtype="int64"), train=train)


@pytest.mark.parametrize("train", [True, False])
def test_dropout_refuses_a_wrong_dy(train):
    _, backprop = Dropout(seed=0).forward(np.zeros((2, 3), dtype="float32"), train=train)
    with pytest.raises(ShapeError, match=r"dy of shape \(2, 3\).*Received: dy.shape=\(3, 3\)"):
        backprop(np.zeros((3, 3), dtype="float32"))


def test_saved_model_with_dropout_round_trips(backend, tmp_path):
    model = Sequential([Dense(6, 8), ReLU(), Dropout(0.3, seed=5), Dense(8, 3)], seed=0)
    path = tmp_path / "dropout.safetensors"
    save(model, path)
    copy = load_model(path)
    assert repr(copy) == repr(model)
    assert copy[2].config() == {"p": 0.3, "seed": 5}
    x = np.random.default_rng(13).standard_normal((4, 6)).astype(np.float32)
    assert_close(copy(x), model(x), rtol=0, backend=backend)
    # The rebuilt layer starts the same stream of masks as a fresh Dropout(0.3, seed=5).
    y, _ = copy.forward(x, train=True)
    fresh = Sequential([model[0], model[1], Dropout(0.3, seed=5), model[3]])
    expected, _ = fresh.forward(x, train=True)
    assert_close(y, expected, rtol=0, backend=backend)
