import numpy as np
import pytest

from xpnn import backends
from xpnn.errors import ConfigError, ShapeError
from xpnn.layers import Dense, Flatten, ReLU, Residual, Sequential, Tanh
from xpnn.testing import assert_close, check_layer


def mlp(dtype="float32", seed=0):
    return Sequential([Flatten(), Dense(12, 8), ReLU(), Dense(8, 3)], seed=seed, dtype=dtype)


def mlp_reference(x, p):
    h = np.maximum(x.reshape(len(x), -1) @ p["1.weight"].T + p["1.bias"], 0)
    return h @ p["3.weight"].T + p["3.bias"]


def test_sequential_matches_reference_and_gradients(backend):
    x = np.random.default_rng(0).standard_normal((4, 3, 4))
    errors = check_layer(lambda dtype: mlp(dtype), x, mlp_reference, backend=backend)
    assert set(errors) == {"input", "1.weight", "1.bias", "3.weight", "3.bias"}


def test_residual_adds_the_skip_path_and_its_gradient(backend):
    def make(dtype):
        return Residual(Sequential([Dense(6, 6), Tanh()], seed=4, dtype=dtype))

    def reference(x, p):
        return x + np.tanh(x @ p["block.0.weight"].T + p["block.0.bias"])

    x = np.random.default_rng(1).standard_normal((5, 6))
    check_layer(make, x, reference, backend=backend)


def test_residual_refuses_a_block_that_changes_shape():
    with pytest.raises(ShapeError, match=r"block output \(2, 3\)"):
        Residual(Dense(4, 3))(np.zeros((2, 4), dtype="float32"))


def test_hand_worked_two_layer_network():
    # x = [1, 2]; h = relu(W1 x + b1) = relu([-1.5, 2]) = [0, 2]; y = W2 h + b2 = 6.5.
    # With L = (y - 5)^2 / 2, dL/dy = 1.5, and by the chain rule (worked on paper):
    # dW2 = 1.5 h = [0, 3]; db2 = 1.5; dh = 1.5 W2 = [3, 4.5], masked by relu -> [0, 4.5];
    # dW1 = [0, 4.5]^T x = [[0, 0], [4.5, 9]]; db1 = [0, 4.5]; dx = [0, 4.5] W1 = [4.5, 4.5].
    model = Sequential([Dense(2, 2, dtype="float64"), ReLU(), Dense(2, 1, dtype="float64")])
    model.load_state_dict({
        "0.weight": np.array([[0.5, -1.0], [1.0, 1.0]]), "0.bias": np.array([0.0, -1.0]),
        "2.weight": np.array([[2.0, 3.0]]), "2.bias": np.array([0.5]),
    })
    y, backprop = model.forward(np.array([[1.0, 2.0]]), train=True)
    assert y.tolist() == [[6.5]]
    dx = backprop(y - 5.0)
    grads = {name: p.grad.tolist() for name, p in model.named_parameters()}
    assert grads == {"0.weight": [[0.0, 0.0], [4.5, 9.0]], "0.bias": [0.0, 4.5],
                     "2.weight": [[0.0, 3.0]], "2.bias": [1.5]}
    assert dx.tolist() == [[4.5, 4.5]]


def test_calling_backprop_twice_accumulates_gradients():
    model = mlp(dtype="float64")
    x = np.random.default_rng(0).standard_normal((2, 12))
    y, backprop = model.forward(x, train=True)
    backprop(np.ones_like(y))
    once = model[1].weight.grad.copy()
    backprop(np.ones_like(y))
    np.testing.assert_allclose(model[1].weight.grad, 2 * once)
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_backprop_after_load_uses_the_weights_of_its_forward_pass():
    model = Sequential([Dense(3, 2, dtype="float64", seed=0)])
    x = np.ones((1, 3))
    y, backprop = model.forward(x, train=True)
    old_weight = model[0].weight.value.copy()
    model.load_state_dict({k: v * 10 for k, v in model.state_dict().items()})
    dx = backprop(np.ones((1, 2)))
    np.testing.assert_allclose(dx, np.ones((1, 2)) @ old_weight)


def test_seed_gives_identical_models_and_different_seeds_differ():
    a, b, c = mlp(seed=5), mlp(seed=5), mlp(seed=6)
    for name, value in a.state_dict().items():
        np.testing.assert_array_equal(value, b.state_dict()[name])
    assert not np.array_equal(a.state_dict()["1.weight"], c.state_dict()["1.weight"])


def test_dtype_is_passed_down():
    model = mlp(dtype="float64")
    assert {str(v.dtype) for v in model.state_dict().values()} == {"float64"}


def test_indexing_names_repr_and_summary():
    model = mlp()
    assert isinstance(model[1], Dense) and len(model) == 4
    assert list(model.state_dict()) == ["1.weight", "1.bias", "3.weight", "3.bias"]
    assert "(1): Dense(12, 8)" in repr(model)
    assert model.num_parameters() == 12 * 8 + 8 + 8 * 3 + 3
    assert "total" in model.summary() and "131" in model.summary()
    assert isinstance(model[1:3], Sequential) and len(model[1:3]) == 2


def test_sequential_refuses_non_layers():
    with pytest.raises(ConfigError, match="position 1"):
        Sequential([Dense(2, 2), "relu"])


def test_host_batch_is_moved_to_the_model_backend(backend):
    model = mlp()
    y = model(np.zeros((2, 12), dtype="float32"))
    assert_close(y, y, backend=backend)


def test_model_moves_between_backends(backend):
    with backends.use("numpy"):
        model = mlp(seed=3)
        x = np.random.default_rng(0).standard_normal((2, 12)).astype("float32")
        expected = model(x)
    model.to(backend)
    assert_close(model(x), expected, rtol=1e-5, backend=backend)


def test_skipping_the_input_gradient_follows_layers_replaced_after_a_backward():
    """The index of the first layer with parameters is remembered per list of layers; a
    replaced layer is seen."""
    x = np.ones((2, 3), dtype="float32")
    model = Sequential([ReLU(), Dense(3, 2, seed=0)])
    _, backprop = model.forward(x, train=True)
    backprop(np.ones((2, 2), dtype="float32"), need_input_grad=False)
    assert model.layers[1].weight.grad is not None

    model.layers[0] = Dense(3, 3, seed=1)
    _, backprop = model.forward(x, train=True)
    backprop(np.ones((2, 2), dtype="float32"), need_input_grad=False)
    assert model.layers[0].weight.grad is not None  # the new first layer got its gradient
