import numpy as np
import pytest

from xpnn import backends
from xpnn.errors import BackendError, WeightsError
from xpnn.layers import Dense, ReLU, Sequential


def model():
    return Sequential([Dense(4, 3), ReLU(), Dense(3, 2)], seed=0)


def test_load_state_dict_reports_every_mismatch_at_once_and_changes_nothing():
    target = model()
    before = {k: v.copy() for k, v in target.state_dict().items()}
    bad = dict(model().state_dict())
    bad["0.weight"] = np.zeros((5, 4), dtype="float32")  # wrong shape
    bad["2.bias"] = np.zeros(2, dtype="float64")  # wrong dtype
    del bad["0.bias"]  # missing
    bad["9.weight"] = np.zeros(1, dtype="float32")  # unexpected
    with pytest.raises(WeightsError) as caught:
        target.load_state_dict(bad)
    message = str(caught.value)
    for fragment in ["missing keys (1): '0.bias'", "unexpected keys (1): '9.weight'",
                     "'0.weight': expected (3, 4), got (5, 4)",
                     "'2.bias': expected float32, got float64"]:
        assert fragment in message
    for name, value in target.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_load_state_dict_copies_and_ignores_num_batches_tracked():
    source, target = model(), model().initialize(seed=1)
    state = dict(source.state_dict())
    state["0.num_batches_tracked"] = np.array(7, dtype="int64")
    target.load_state_dict(state)
    np.testing.assert_array_equal(target[0].weight.value, source[0].weight.value)
    assert target[0].weight.value is not source[0].weight.value


def test_non_strict_load_skips_missing_names():
    target = model()
    target.load_state_dict({"0.bias": np.ones(3, dtype="float32")}, strict=False)
    np.testing.assert_array_equal(target[0].bias.value, np.ones(3))


def test_array_of_another_backend_is_refused_with_names_of_both_sides():
    torch = pytest.importorskip("torch")
    with backends.use("numpy"):
        numpy_model = model()
    with pytest.raises(BackendError, match=r"numpy backend.*torch.*model.to\('torch'\)"):
        numpy_model(torch.zeros(2, 4))


def test_array_on_another_device_is_refused():
    pytest.importorskip("array_api_strict")
    with backends.use("array_api_strict", device="device1") as backend:
        strict_model = model()
        cpu = backend.xp.Device("CPU_DEVICE")
        x = backend.xp.zeros((2, 4), dtype=backend.xp.float32, device=cpu)
        with pytest.raises(BackendError, match="device"):
            strict_model(x)


def test_python_lists_are_refused_with_a_fix():
    with pytest.raises(BackendError, match="numpy.asarray"):
        model()([[0.0, 1.0, 2.0, 3.0]])
