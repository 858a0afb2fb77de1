import math

import numpy as np
import pytest

from xpnn import init
from xpnn.errors import ConfigError
from xpnn.layers import Dense

FAN_IN, FAN_OUT = 400, 300
SHAPE = (FAN_OUT, FAN_IN)

# name -> (expected standard deviation, uniform bound or None for a normal law)
EXPECTED = {
    "torch": (1 / math.sqrt(FAN_IN) / math.sqrt(3), 1 / math.sqrt(FAN_IN)),
    "he_normal": (math.sqrt(2 / FAN_IN), None),
    "he_uniform": (math.sqrt(2 / FAN_IN), math.sqrt(6 / FAN_IN)),
    "glorot_normal": (math.sqrt(2 / (FAN_IN + FAN_OUT)), None),
    "glorot_uniform": (math.sqrt(2 / (FAN_IN + FAN_OUT)), math.sqrt(6 / (FAN_IN + FAN_OUT))),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_initializer_has_the_published_variance_and_support(name):
    values = init.get(name)(np.random.default_rng(0), SHAPE, FAN_IN, FAN_OUT)
    std, bound = EXPECTED[name]
    assert values.shape == SHAPE
    assert abs(values.mean()) < 0.05 * std
    assert values.std() == pytest.approx(std, rel=0.02)
    if bound is not None:
        assert np.abs(values).max() <= bound and np.abs(values).max() > 0.99 * bound


def test_zeros_and_ones():
    rng = np.random.default_rng(0)
    assert not init.get("zeros")(rng, (3, 2), 2, 3).any()
    assert (init.get("ones")(rng, (3,), 2, 3) == 1).all()


def test_dense_uses_named_initializers_and_records_them():
    layer = Dense(FAN_IN, FAN_OUT, weight_init="he_normal", bias_init="zeros", seed=0)
    assert np.std(layer.weight.value) == pytest.approx(math.sqrt(2 / FAN_IN), rel=0.02)
    assert not layer.bias.value.any()
    assert layer.config()["weight_init"] == "he_normal"
    assert Dense(3, 2).config()["weight_init"] == "torch"


def test_custom_callable_initializer():
    layer = Dense(3, 2, weight_init=lambda rng, shape, fan_in, fan_out: np.full(shape, 0.5))
    assert (layer.weight.value == 0.5).all()


def test_unknown_initializer_lists_the_valid_names():
    with pytest.raises(ConfigError, match="he_normal"):
        Dense(3, 2, weight_init="lecun")
