"""The MNIST networks (xpnn.models.mnist): shapes, gradients, the shipped weights, and the
one persistence route (xpnn.io.save, then xpnn.io.load_model or the builders' weights=)."""

import json

import numpy as np
import pytest

import xpnn.io
from xpnn import backends
from xpnn.datasets import load_mnist_sample
from xpnn.errors import ConfigError
from xpnn.gradcheck import gradcheck
from xpnn.io import load_metadata
from xpnn.layers import Sequential
from xpnn.models import mnist_mlp
from xpnn.models.mnist import PREPROCESSING, mnist_cnn
from xpnn.testing import assert_close
from xpnn.weights import path as shipped


def test_mlp_shapes_and_parameter_count(backend):
    model = mnist_mlp(hidden=(32, 16), seed=0)
    assert model(np.zeros((3, 28, 28), dtype="float32")).shape == (3, 10)
    assert model.num_parameters() == 784 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10


def test_mlp_refuses_non_positive_hidden_sizes():
    with pytest.raises(ConfigError, match="hidden"):
        mnist_mlp(hidden=(0,))


def test_shipped_mlp_weights_record_how_they_were_trained():
    metadata = load_metadata(shipped("mnist_mlp.safetensors"))
    assert metadata["dataset"] == "mnist" and "60,000 training" in metadata["data"]
    assert float(metadata["test_accuracy"]) >= 0.98
    assert int(metadata["epochs"]) <= 10
    model = mnist_mlp(pretrained=True)
    assert model[1].weight.shape == (128, 784)


def test_cnn_output_shape_on_every_backend(backend):
    model = mnist_cnn(width=8, seed=0)
    y = model(np.zeros((2, 1, 28, 28), dtype="float32"))
    assert y.shape == (2, 10) and isinstance(y, backend.array_type)


def test_cnn_backward_matches_finite_differences():
    with backends.use("numpy"):
        model = mnist_cnn(width=4, seed=0, dtype="float64")
        x = np.random.default_rng(0).random((2, 1, 12, 12))
        errors = gradcheck(model, x, max_checks=6)
    assert max(errors.values()) < 1e-5, errors


def test_shipped_cnn_weights_reach_the_recorded_accuracy_claim():
    metadata = load_metadata(shipped("mnist_cnn.safetensors"))
    assert json.loads(metadata["architecture"])["config"]["layers"][0]["type"] == "ConvBNAct"
    assert "60,000 training" in metadata["data"]
    assert float(metadata["test_accuracy"]) >= 0.992
    model = mnist_cnn(pretrained=True)
    (_, _), (x, y) = load_mnist_sample()
    x = (x.astype("float32") / 255.0).reshape(len(x), 1, 28, 28)
    predicted = np.argmax(backends.to_numpy(model(x[:200])), axis=1)
    assert np.mean(predicted == y[:200]) > 0.97  # seen in training: proves the load only


@pytest.mark.parametrize("build", [
    pytest.param(lambda: mnist_mlp(hidden=(32, 16), seed=3), id="mlp"),
    pytest.param(lambda: mnist_cnn(width=8, seed=3), id="cnn"),
])
def test_saved_model_is_rebuilt_with_identical_outputs(backend, tmp_path, build):
    model = build()
    path = tmp_path / "model.safetensors"
    xpnn.io.save(model, path, metadata={"dataset": "none"})
    metadata = load_metadata(path)
    assert json.loads(metadata["preprocessing"]) == PREPROCESSING  # written by xpnn.io.save
    assert not {"hidden", "width", "model"} & set(metadata)
    x = np.random.default_rng(0).random((3, 1, 28, 28)).astype("float32")
    for again in (xpnn.io.load_model(path), mnist_mlp(weights=path)):
        assert type(again) is Sequential and again.preprocessing == PREPROCESSING
        assert_close(again(x), model(x), rtol=0, backend=backend)


def test_shipped_weights_load_through_the_record():
    for build, name in ((mnist_mlp, "mnist_mlp.safetensors"), (mnist_cnn, "mnist_cnn.safetensors")):
        model = build(pretrained=True)
        again = xpnn.io.load_model(shipped(name))
        assert model.preprocessing == again.preprocessing == PREPROCESSING
        assert sorted(model.state_dict()) == sorted(again.state_dict())


def test_cnn_refuses_a_width_below_two():
    with pytest.raises(ConfigError, match="width to be an integer >= 2"):
        mnist_cnn(width=1)
