import numpy as np
import pytest

from xpnn import backends
from xpnn.errors import ConfigError, DTypeError, ShapeError
from xpnn.gradcheck import gradcheck
from xpnn.layers.batchnorm import BatchNorm
from xpnn.testing import assert_close, check_layer

SHAPES = [(4, 3, 5, 6), (7, 3)]


def axes_of(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def channel(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def reference_train(x, gamma, beta, eps):
    axes = axes_of(x)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return channel(gamma, x.ndim) * (x - mean) / np.sqrt(var + eps) + channel(beta, x.ndim)


def reference_eval(x, gamma, beta, mean, var, eps):
    n = x.ndim
    return channel(gamma, n) * (x - channel(mean, n)) / np.sqrt(channel(var, n) + eps) + (
        channel(beta, n)
    )


def make_bn(dtype, seed=0, c=3):
    """A BatchNorm with non-trivial γ, β and running statistics (same on every backend)."""
    bn = BatchNorm(c, eps=1e-3, momentum=0.2, dtype=dtype)
    rng = np.random.default_rng(seed)
    state = {
        "weight": rng.uniform(0.5, 1.5, c), "bias": rng.standard_normal(c),
        "running_mean": rng.standard_normal(c), "running_var": rng.uniform(0.5, 2.0, c),
    }
    bn.load_state_dict({k: v.astype(dtype) for k, v in state.items()})
    return bn, state


@pytest.mark.parametrize("shape", SHAPES)
def test_training_forward_and_running_stats_match_reference(backend, shape):
    x = np.random.default_rng(1).standard_normal(shape) * 2.0 + 0.5
    bn, s = make_bn("float32")
    y, _ = bn.forward(backend.asarray(x, dtype="float32"), train=True)
    assert_close(y, reference_train(x, s["weight"], s["bias"], 1e-3), rtol=1e-4, atol=1e-5,
                 backend=backend)
    axes = axes_of(x)
    m = x.size // x.shape[1]
    batch_mean, batch_var = x.mean(axis=axes), x.var(axis=axes) * m / (m - 1)
    assert_close(bn.running_mean.value, 0.8 * s["running_mean"] + 0.2 * batch_mean,
                 rtol=1e-5, atol=1e-6, backend=backend)
    assert_close(bn.running_var.value, 0.8 * s["running_var"] + 0.2 * batch_var,
                 rtol=1e-5, atol=1e-6, backend=backend)


@pytest.mark.parametrize("shape", SHAPES)
def test_eval_forward_uses_running_stats_and_changes_nothing(backend, shape):
    x = np.random.default_rng(2).standard_normal(shape)
    bn, s = make_bn("float32")
    before = backends.to_numpy(bn.running_mean.value).copy()
    y = bn(backend.asarray(x, dtype="float32"))
    expected = reference_eval(x, s["weight"], s["bias"], s["running_mean"], s["running_var"],
                              1e-3)
    assert_close(y, expected, rtol=1e-4, atol=1e-5, backend=backend)
    np.testing.assert_array_equal(backends.to_numpy(bn.running_mean.value), before)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_finite_differences(backend, shape, train):
    x = np.random.default_rng(3).standard_normal(shape)
    bn, _ = make_bn("float64")
    errors = gradcheck(bn, x, train=train, eps=1e-5)
    assert set(errors) == {"input", "weight", "bias"}
    assert max(errors.values()) < 1e-6, errors


def test_default_state_is_pytorch_initialisation(backend):
    bn = BatchNorm(4)
    state = {k: backends.to_numpy(v) for k, v in bn.state_dict().items()}
    assert list(state) == ["weight", "bias", "running_mean", "running_var"]
    np.testing.assert_array_equal(state["weight"], np.ones(4, dtype="float32"))
    np.testing.assert_array_equal(state["bias"], np.zeros(4, dtype="float32"))
    np.testing.assert_array_equal(state["running_mean"], np.zeros(4, dtype="float32"))
    np.testing.assert_array_equal(state["running_var"], np.ones(4, dtype="float32"))
    assert bn.num_parameters() == 8
    assert_close(bn.weight.value, np.ones(4), backend=backend)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("train", [True, False])
def test_matches_torch_batch_norm(shape, train):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    bn, s = make_bn("float64")
    y, backprop = bn.forward(x, train=train)
    dx = backprop(dy)

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(s["weight"], requires_grad=True)
    bt = torch.tensor(s["bias"], requires_grad=True)
    rm, rv = torch.tensor(s["running_mean"]), torch.tensor(s["running_var"])
    yt = torch.nn.functional.batch_norm(xt, rm, rv, wt, bt, training=train, momentum=0.2,
                                        eps=1e-3)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(bn.weight.grad, wt.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(bn.bias.grad, bt.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(bn.running_mean.value, rm.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bn.running_var.value, rv.numpy(), rtol=1e-12, atol=1e-14)


def test_float32_output_stays_float32_and_on_device(backend):
    bn = BatchNorm(3)
    for train in (True, False):
        y, backprop = bn.forward(np.ones((2, 3, 2, 2), dtype="float32"), train=train)
        assert backends.dtype_name(y.dtype) == "float32"
        assert_close(y, y, backend=backend)
        dx = backprop(y)
        assert backends.dtype_name(dx.dtype) == "float32"
    assert backends.dtype_name(bn.running_var.value.dtype) == "float32"


def test_wrong_channel_count_names_shapes():
    bn = BatchNorm(16)
    with pytest.raises(ShapeError, match=r"BatchNorm\(16.*\(N, 16, H, W\).*\(2, 8, 4, 4\)"):
        bn(np.zeros((2, 8, 4, 4), dtype="float32"))
    with pytest.raises(ShapeError, match="x.shape=\\(2, 16, 4\\)"):
        bn(np.zeros((2, 16, 4), dtype="float32"))


def test_single_value_per_channel_in_training_is_refused():
    bn = BatchNorm(3)
    with pytest.raises(ShapeError, match="more than one value per channel"):
        bn.forward(np.zeros((1, 3), dtype="float32"), train=True)
    bn(np.zeros((1, 3), dtype="float32"))  # inference with one sample is fine


def test_dtype_mismatch_is_refused():
    with pytest.raises(DTypeError, match="float64"):
        BatchNorm(3)(np.zeros((2, 3)))


@pytest.mark.parametrize("kwargs", [{"eps": 0.0}, {"eps": -1e-5}, {"momentum": 1.5},
                                    {"momentum": "0.1"}, {"num_features": 0}])
def test_bad_hyperparameters_raise_config_error(kwargs):
    args = {"num_features": 3, **kwargs}
    with pytest.raises(ConfigError):
        BatchNorm(**args)


# -- affine=False and track_running_stats=False (PyTorch's options) -------------------------

OPTIONS = [pytest.param(affine, track, id=f"affine={affine}-track={track}")
           for affine in (True, False) for track in (True, False)]


def make_bn_with(dtype, affine, track, seed=0, c=3):
    """A BatchNorm with the options, and non-trivial γ, β and running statistics where it
    has them (same values on every backend)."""
    bn = BatchNorm(c, eps=1e-3, momentum=0.2, affine=affine, track_running_stats=track,
                   dtype=dtype)
    rng = np.random.default_rng(seed)
    state = {"weight": rng.uniform(0.5, 1.5, c), "bias": rng.standard_normal(c),
             "running_mean": rng.standard_normal(c), "running_var": rng.uniform(0.5, 2.0, c)}
    state = {name: value for name, value in state.items()
             if (name in ("weight", "bias") and affine)
             or (name.startswith("running") and track)}
    bn.load_state_dict({k: v.astype(dtype) for k, v in state.items()})
    return bn, state


def reference_inference(x, state, eps):
    """What BatchNorm computes in evaluation mode, from its state (float64): the running
    statistics where kept, else the batch's; γ = 1 and β = 0 without them."""
    c = x.shape[1]
    gamma, beta = state.get("weight", np.ones(c)), state.get("bias", np.zeros(c))
    if "running_mean" in state:
        return reference_eval(x, gamma, beta, state["running_mean"], state["running_var"], eps)
    return reference_train(x, gamma, beta, eps)


@pytest.mark.parametrize(("affine", "track"), OPTIONS)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_options_pass_check_layer(backend, shape, train, affine, track):
    x = np.random.default_rng(5).standard_normal(shape) * 1.5 + 0.3
    check_layer(lambda dtype: make_bn_with(dtype, affine, track)[0], x,
                lambda x64, state: reference_inference(x64, state, 1e-3), backend=backend,
                rtol=1e-4, atol=1e-5, train=train)


@pytest.mark.parametrize(("affine", "track"), OPTIONS)
def test_options_shape_the_state_and_the_parameters_as_pytorch(backend, affine, track):
    torch = pytest.importorskip("torch")
    for shape, torch_class in (((2, 4, 3, 3), torch.nn.BatchNorm2d),
                               ((2, 4), torch.nn.BatchNorm1d)):
        bn = BatchNorm(4, affine=affine, track_running_stats=track)
        reference = torch_class(4, affine=affine, track_running_stats=track)
        expected = [name for name in reference.state_dict() if "num_batches" not in name]
        assert list(bn.state_dict()) == expected
        assert [name for name, _ in bn.named_parameters()] == [
            name for name, _ in reference.named_parameters()]
        assert bn.num_parameters() == sum(p.numel() for p in reference.parameters())
        assert (bn.weight is None) == (reference.weight is None)
        assert (bn.running_mean is None) == (reference.running_mean is None)
        for name, value in bn.state_dict().items():
            assert_close(value, reference.state_dict()[name].numpy(), backend=backend)
        y, backprop = bn.forward(np.ones(shape, dtype="float32"), train=True)
        assert backprop(y, need_input_grad=False) is None
        assert all(p.grad is not None for p in bn.parameters())


def torch_batch_norm(torch, x, affine, track, state):
    kind = torch.nn.BatchNorm2d if x.ndim == 4 else torch.nn.BatchNorm1d
    module = kind(x.shape[1], eps=1e-3, momentum=0.2, affine=affine,
                  track_running_stats=track, dtype=torch.float64)
    module.load_state_dict({name: torch.tensor(value) for name, value in state.items()},
                           strict=False)
    return module


@pytest.mark.parametrize(("affine", "track"), OPTIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_options_match_torch_over_several_steps(shape, affine, track):
    """Three training steps (running statistics move as torch's) then two evaluation
    steps: outputs, input gradients, γ and β gradients and the state agree in float64."""
    torch = pytest.importorskip("torch")
    bn, state = make_bn_with("float64", affine, track)
    reference = torch_batch_norm(torch, np.zeros(shape), affine, track, state)
    rng = np.random.default_rng(6)
    for train in (True, True, True, False, False):
        x = rng.standard_normal(shape) * rng.uniform(0.5, 2.0) + rng.uniform(-1.0, 1.0)
        dy = rng.standard_normal(shape)
        bn.zero_grad()
        y, backprop = bn.forward(x, train=train)
        dx = backprop(dy)

        reference.train(train)
        reference.zero_grad()
        xt = torch.tensor(x, requires_grad=True)
        yt = reference(xt)
        yt.backward(torch.tensor(dy))
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
        for name, parameter in bn.named_parameters():
            np.testing.assert_allclose(parameter.grad, getattr(reference, name).grad.numpy(),
                                       rtol=1e-9, atol=1e-11, err_msg=name)
        torch_state = {name: value.numpy() for name, value in reference.state_dict().items()
                       if "num_batches" not in name}
        assert list(bn.state_dict()) == list(torch_state)
        for name, value in bn.state_dict().items():
            np.testing.assert_allclose(value, torch_state[name], rtol=1e-12, atol=1e-14,
                                       err_msg=name)


@pytest.mark.parametrize("affine", [True, False])
def test_without_running_statistics_evaluation_uses_the_batch(backend, affine):
    x = np.random.default_rng(7).standard_normal((5, 3, 2, 2)).astype("float32")
    bn, _ = make_bn_with("float32", affine, False)
    trained, _ = bn.forward(x, train=True)
    assert_close(bn(x), backends.to_numpy(trained), rtol=1e-6, atol=1e-6, backend=backend)
    assert bn.running_mean is None and bn.running_var is None
    bn(x[:1])  # one image still has H W values per channel
    for train in (False, True):
        with pytest.raises(ShapeError, match="more than one value per channel.*"
                                             "track_running_stats=False"):
            bn.forward(x[:1, :, 0, 0], train=train)


def test_config_repr_and_validation_of_the_options():
    bn = BatchNorm(3, affine=False, track_running_stats=False)
    assert bn.config() == {"num_features": 3, "eps": 1e-5, "momentum": 0.1, "affine": False,
                           "track_running_stats": False, "dtype": "float32"}
    assert BatchNorm(3).config()["affine"] is True
    assert BatchNorm(3).config()["track_running_stats"] is True
    assert repr(BatchNorm(3)) == "BatchNorm(3, eps=1e-05, momentum=0.1)"
    assert repr(BatchNorm(3, affine=False)) == "BatchNorm(3, eps=1e-05, momentum=0.1, affine=False)"
    assert repr(BatchNorm(3, 1e-3, 0.2, True, False)) == (
        "BatchNorm(3, eps=0.001, momentum=0.2, track_running_stats=False)")
    for name in ("affine", "track_running_stats"):
        for value in (1, "False", None):
            with pytest.raises(ConfigError, match=f"{name} to be True or False"):
                BatchNorm(3, **{name: value})


@pytest.mark.parametrize(("affine", "track"), OPTIONS)
def test_options_survive_save_and_load_model(tmp_path, affine, track):
    from xpnn.io import load_model, save
    from xpnn.layers import Dense, Sequential

    model = Sequential([Dense(4, 3, seed=0),
                        BatchNorm(3, momentum=0.3, affine=affine, track_running_stats=track)])
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 4)).astype("float32")
    _, backprop = model.forward(x, train=True)  # moves the running statistics
    backprop(np.ones((6, 3), dtype="float32"))
    for parameter in model.parameters():
        parameter.value = parameter.value - 0.1 * parameter.grad
    save(model, tmp_path / "bn.safetensors")
    rebuilt = load_model(tmp_path / "bn.safetensors")
    assert rebuilt.config() == model.config()
    assert rebuilt[1].affine is affine and rebuilt[1].track_running_stats is track
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(rebuilt.state_dict()[name], value)
    np.testing.assert_array_equal(rebuilt(x), model(x))


def test_a_layer_without_arrays_saves_loads_moves_and_changes_dtype(tmp_path):
    from xpnn.io import load_model, save

    bn = BatchNorm(3, affine=False, track_running_stats=False)
    assert bn.state_dict() == {} and bn.num_parameters() == 0
    x = np.random.default_rng(9).standard_normal((4, 3)).astype("float32")
    save(bn, tmp_path / "bare.safetensors")
    np.testing.assert_array_equal(load_model(tmp_path / "bare.safetensors")(x), bn(x))
    with pytest.raises(DTypeError, match="float32"):
        bn(x.astype("float64"))
    bn.initialize(dtype="float64")
    assert backends.dtype_name(bn(x.astype("float64")).dtype) == "float64"
    bn.to("array_api_strict", device="device1")
    with backends.use(bn.backend):
        assert_close(bn(x.astype("float64")), reference_train(x.astype("float64"), np.ones(3),
                                                              np.zeros(3), 1e-5),
                     rtol=1e-12, atol=1e-12, backend=bn.backend)


def test_a_record_without_the_options_loads_with_the_defaults():
    from xpnn.io.records import model_from_config

    old = {"type": "BatchNorm",
           "config": {"num_features": 3, "eps": 1e-5, "momentum": 0.1, "dtype": "float32"}}
    bn = model_from_config(old, max_values=12)
    assert bn.affine and bn.track_running_stats
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    assert BatchNorm.values_from_config(old["config"]) == 12
    assert BatchNorm.values_from_config({"num_features": 3, "affine": False}) == 6
    assert BatchNorm.values_from_config(
        {"num_features": 3, "affine": False, "track_running_stats": False}) == 0


# -- synchronized statistics (xpnn.distributed.sync_batchnorm) with the options --------------

class Mirror:
    """Two ranks holding the same batch, seen from rank 0: every sum is twice this rank's.
    Records the collectives it was asked for."""

    rank, size = 0, 2

    def __init__(self):
        self.calls = 0

    def allreduce(self, arrays, op="sum"):
        self.calls += 1
        return [array * 2.0 for array in arrays]

    def allreduce_host(self, values):
        self.calls += 1
        return np.asarray(values, dtype=np.float64) * 2.0


@pytest.mark.parametrize(("affine", "track"), OPTIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_synchronized_statistics_are_those_of_the_global_batch(backend, shape, affine, track):
    """With two ranks holding the same x, rank 0 computes what one process computes on
    the global batch [x, x]: the same y and dx (first half), half of γ's and β's gradients
    (the gradient all-reduce adds the other half), the same running statistics."""
    rng = np.random.default_rng(10)
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    synced, _ = make_bn_with("float64", affine, track)
    whole, _ = make_bn_with("float64", affine, track)
    synced.communicator = Mirror()
    y, backprop = synced.forward(backend.asarray(x), train=True)
    dx = backprop(backend.asarray(dy))
    y2, backprop2 = whole.forward(backend.asarray(np.concatenate([x, x])), train=True)
    dx2 = backends.to_numpy(backprop2(backend.asarray(np.concatenate([dy, dy]))))
    n = shape[0]
    assert_close(y, backends.to_numpy(y2)[:n], rtol=1e-12, atol=1e-12, backend=backend)
    assert_close(dx, dx2[:n], rtol=1e-10, atol=1e-12, backend=backend)
    for name, parameter in synced.named_parameters():
        grad = backends.to_numpy(dict(whole.named_parameters())[name].grad)
        assert_close(parameter.grad, grad / 2.0, rtol=1e-10, atol=1e-12, backend=backend)
    for name, value in synced.state_dict().items():
        assert_close(value, backends.to_numpy(whole.state_dict()[name]), rtol=1e-12,
                     atol=1e-14, backend=backend)
    calls = synced.communicator.calls
    synced.zero_grad()
    assert backprop(backend.asarray(dy), need_input_grad=False) is None
    assert synced.communicator.calls == calls  # no dx: nothing to all-reduce
    synced(backend.asarray(x))  # evaluation never talks to the other ranks
    assert synced.communicator.calls == calls


@pytest.mark.parametrize(("affine", "track"), OPTIONS)
def test_a_one_rank_communicator_changes_nothing(backend, affine, track):
    from xpnn.distributed import SingleProcess, sync_batchnorm

    rng = np.random.default_rng(11)
    x, dy = rng.standard_normal((4, 3, 3, 2)), rng.standard_normal((4, 3, 3, 2))
    results = []
    for communicator in (None, SingleProcess()):
        bn, _ = make_bn_with("float64", affine, track)
        assert sync_batchnorm(bn, communicator) == 1
        outputs = []
        for train in (True, True, False):
            y, backprop = bn.forward(backend.asarray(x), train=train)
            outputs += [y, backprop(backend.asarray(dy))]
        outputs += [p.grad for p in bn.parameters()] + list(bn.state_dict().values())
        results.append([backends.to_numpy(value) for value in outputs])
    for plain, synced in zip(*results, strict=True):
        np.testing.assert_array_equal(synced, plain)
