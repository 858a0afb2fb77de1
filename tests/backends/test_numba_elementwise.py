"""The compiled elementwise kernels of the NumPy backend
(:mod:`xpnn.backends.numba_elementwise`) against their NumPy twins, bit for bit:
``sgd_update`` against :func:`xpnn.backends.portable.sgd_update` (every SGD setting,
dtype and shape class, infinities and NaN), ``outer`` against ``np.einsum``; and the twins
wherever the compiled kernels do not apply (layouts, dtypes, NumPy scalars, overlapping
arrays, ``XPNN_NUMBA=0``)."""

import numpy as np
import pytest

from xpnn import backends, optim
from xpnn.backends import numba_elementwise, portable
from xpnn.module import Parameter

pytest.importorskip("numba")

NUMPY = backends.make_backend("numpy")
SHAPES = [(1,), (7,), (128, 784), (16, 8, 3, 3)]
SETTINGS = [(0.0, False), (0.9, False), (0.9, True)]  # (momentum, nesterov)
PORTABLE_SGD = portable.sgd_update
PORTABLE_LOSS = portable.softmax_cross_entropy_mean


@pytest.fixture(autouse=True)
def _compiled_on(monkeypatch):
    """numba on, and the compiled step for arrays of every size (by default small arrays
    take the NumPy twin, which is faster for them: see the last test of this section)."""
    monkeypatch.delenv("XPNN_NUMBA", raising=False)
    monkeypatch.setattr(numba_elementwise, "SGD_COMPILED_FROM", 0)


@pytest.fixture
def portable_calls(monkeypatch):
    """The number of calls of the portable ``sgd_update`` (the compiled kernel's fallback)
    since the test began, as a one-element list."""
    calls = [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        return PORTABLE_SGD(*args, **kwargs)

    monkeypatch.setattr(portable, "sgd_update", counted)
    return calls


def assert_same_bits(got, want):
    """The same dtype, shape and bits (NaN at the same places; NaN payloads may differ)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    bits = np.dtype(f"uint{8 * want.dtype.itemsize}")
    np.testing.assert_array_equal(got.view(bits)[~nan], want.view(bits)[~nan])


def _arrays(shape, dtype, seed=0):
    """``(param, grads of three steps, momentum buffer)``."""
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(shape).astype(dtype)
    grads = [(rng.standard_normal(shape) * 0.1).astype(dtype) for _ in range(3)]
    return param, grads, np.zeros(shape, dtype=dtype)


def _steps(update, param, grads, buf, momentum, nesterov, weight_decay, lr=0.01):
    """``param`` and ``buf`` after one ``update`` per gradient (on copies in their
    memory order)."""
    param, buf = param.copy(order="K"), buf.copy(order="K") if momentum else None
    for grad in grads:
        param, buf = update(NUMPY, param, grad, buf, lr, momentum, nesterov, weight_decay)
    return param, buf


# -- sgd_update ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("momentum, nesterov", SETTINGS)
@pytest.mark.parametrize("weight_decay", [0.0, 1e-4])
def test_compiled_sgd_step_equals_the_portable_kernel_bit_for_bit(
        shape, dtype, momentum, nesterov, weight_decay, portable_calls):
    param, grads, buf = _arrays(shape, dtype)
    settings = (momentum, nesterov, weight_decay)
    want_param, want_buf = _steps(PORTABLE_SGD, param, grads, buf, *settings)
    got_param, got_buf = _steps(numba_elementwise.sgd_update, param, grads, buf, *settings)
    assert portable_calls[0] == 0  # the compiled loop ran
    assert_same_bits(got_param, want_param)
    if momentum:
        assert_same_bits(got_buf, want_buf)
    else:
        assert got_buf is None


def test_compiled_sgd_step_updates_in_place_and_returns_the_same_arrays():
    param, grads, buf = _arrays((3, 4), "float32")
    new_param, new_buf = NUMPY.ops.sgd_update(param, grads[0], buf, 0.1, 0.9, False, 0.0)
    assert new_param is param and new_buf is buf
    assert np.any(buf != 0)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("momentum, nesterov", SETTINGS)
@pytest.mark.parametrize("weight_decay", [0.0, 1e-4])
def test_compiled_sgd_step_treats_infinities_nan_and_signed_zeros_as_numpy(
        dtype, momentum, nesterov, weight_decay, portable_calls):
    """Without weight decay an infinite parameter with a finite gradient stays infinite
    (``0 * inf`` would make it NaN: the step is skipped, not multiplied by 0)."""
    special = [np.inf, -np.inf, np.nan, 0.0, -0.0, 1.0]
    values = np.array([(p, g) for p in special for g in special], dtype=dtype)
    param, grad = values[:, 0].copy(), values[:, 1].copy()
    buf = np.zeros_like(param)
    settings = (momentum, nesterov, weight_decay)
    want_param, want_buf = _steps(PORTABLE_SGD, param, [grad, grad], buf, *settings)
    got_param, got_buf = _steps(numba_elementwise.sgd_update, param, [grad, grad], buf,
                                *settings)
    assert portable_calls[0] == 0
    assert_same_bits(got_param, want_param)
    if momentum:
        assert_same_bits(got_buf, want_buf)


def test_fortran_ordered_arrays_are_walked_compiled_in_their_own_order(portable_calls):
    param, grads, buf = _arrays((784, 128), "float32")
    want = _steps(PORTABLE_SGD, param.T, [g.T for g in grads], buf.T, 0.9, True, 1e-4)
    got = _steps(numba_elementwise.sgd_update, np.asfortranarray(param.T),
                 [g.T for g in grads], np.asfortranarray(buf.T), 0.9, True, 1e-4)
    assert portable_calls[0] == 0
    assert_same_bits(got[0], want[0])
    assert_same_bits(got[1], want[1])


def _fallback_cases():
    """``(name, param, grad, buf, lr)`` the compiled step must leave to the portable one."""
    param, grads, buf = _arrays((128, 64), "float32")
    grad = grads[0]
    return [
        ("transposed param, C-ordered gradient", param.T, np.ascontiguousarray(grad.T),
         np.ascontiguousarray(buf.T), 0.1),
        ("strided", param[:, ::2], grad[:, ::2], buf[:, ::2], 0.1),
        ("broadcast gradient", param, np.broadcast_to(grad[0], param.shape), buf, 0.1),
        ("float16 gradient", param, grad.astype("float16"), buf, 0.1),
        ("float64 buffer", param, grad, buf.astype("float64"), 0.1),
        ("float16 everything", param.astype("float16"), grad.astype("float16"),
         buf.astype("float16"), 0.1),
        ("NumPy float64 lr", param, grad, buf, np.float64(0.1)),
    ]


@pytest.mark.parametrize("case", _fallback_cases(), ids=lambda case: case[0])
def test_arrays_the_compiled_step_does_not_take_run_the_portable_kernel(case,
                                                                       portable_calls):
    """Each gives the portable kernel's bits (NumPy promotes a float64 lr, buffer or
    gradient: the compiled loop would round differently)."""
    _, param, grad, buf, lr = case
    want = PORTABLE_SGD(NUMPY, param.copy(), grad, buf.copy(), lr, 0.9, True, 1e-4)
    got = NUMPY.ops.sgd_update(param, grad, buf, lr, 0.9, True, 1e-4)
    assert portable_calls[0] == 1
    assert_same_bits(got[0], want[0])
    assert_same_bits(got[1], want[1])


@pytest.mark.parametrize("overlap", ["same array", "shifted views"])
def test_a_gradient_that_overlaps_the_parameter_runs_the_portable_kernel(overlap,
                                                                        portable_calls):
    """NumPy's temporaries read the parameter's old values; a flat loop could read
    values it has already written."""
    def problem():
        base = np.arange(10, dtype="float64")
        if overlap == "same array":
            return base, base, base
        return base, base[1:], base[:-1]

    expected, param, grad = problem()
    PORTABLE_SGD(NUMPY, param, grad, None, 0.5, 0.0, False, 1e-4)
    assert portable_calls[0] == 0
    got, param, grad = problem()
    NUMPY.ops.sgd_update(param, grad, None, 0.5, 0.0, False, 1e-4)
    assert portable_calls[0] == 1
    assert_same_bits(got, expected)


def test_a_read_only_parameter_raises_numpy_s_error():
    param, grads, _ = _arrays((4,), "float32")
    param.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        NUMPY.ops.sgd_update(param, grads[0], None, 0.1, 0.0, False, 0.0)


def test_xpnn_numba_0_runs_the_portable_sgd_step(monkeypatch, portable_calls):
    param, grads, buf = _arrays((7,), "float32")
    want = _steps(numba_elementwise.sgd_update, param, grads, buf, 0.9, False, 1e-4)
    assert portable_calls[0] == 0
    monkeypatch.setenv("XPNN_NUMBA", "0")
    got = _steps(numba_elementwise.sgd_update, param, grads, buf, 0.9, False, 1e-4)
    assert portable_calls[0] == len(grads)
    assert_same_bits(got[0], want[0])
    assert_same_bits(got[1], want[1])


@pytest.mark.parametrize("config", [{"lr": 0.1}, {"lr": 0.05, "momentum": 0.9},
                                    {"lr": 0.1, "momentum": 0.8, "nesterov": True,
                                     "weight_decay": 1e-3}], ids=str)
def test_the_sgd_optimizer_gives_the_same_bits_with_and_without_numba(monkeypatch, config,
                                                                       portable_calls):
    """``optim.SGD`` on float32 parameters runs the compiled step (the Dense weight's shape
    included), and gives the bits it gives with ``XPNN_NUMBA=0``."""
    rng = np.random.default_rng(1)
    shapes = [(784, 128), (128,), (16, 8, 3, 3)]
    initial = [rng.standard_normal(shape).astype("float32") for shape in shapes]
    grads = [[rng.standard_normal(shape).astype("float32") for shape in shapes]
             for _ in range(4)]

    def train():
        params = [Parameter(value.copy()) for value in initial]
        optimizer = optim.SGD(params, **config)
        for step_grads in grads:
            for parameter, grad in zip(params, step_grads, strict=True):
                parameter.grad = grad
            optimizer.step()
        return [p.value for p in params]

    compiled = train()
    assert portable_calls[0] == 0
    monkeypatch.setenv("XPNN_NUMBA", "0")
    reference = train()
    assert portable_calls[0] == len(grads) * len(shapes)
    for got, want in zip(compiled, reference, strict=True):
        assert_same_bits(got, want)


def test_small_arrays_take_the_numpy_step_by_default(monkeypatch, portable_calls):
    """Below SGD_COMPILED_FROM elements the compiled call's fixed cost exceeds NumPy's
    whole update: those arrays run the portable kernel, larger ones the compiled loop."""
    monkeypatch.setattr(numba_elementwise, "SGD_COMPILED_FROM", 1000)
    for size, calls in ((999, 1), (1000, 1), (5000, 1)):
        param, grads, _ = _arrays((size,), "float32")
        want = param - np.float32(0.1) * grads[0]
        numba_elementwise.sgd_update(None, param, grads[0], None, 0.1, 0.0, False, 0.0)
        assert_same_bits(param, want)
        assert portable_calls[0] == calls, size


# -- outer --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes", [(128, 784), (1, 1), (3, 0), (10, 1)], ids=str)
def test_compiled_outer_equals_einsum_bit_for_bit(dtype, sizes):
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(size).astype(dtype) for size in sizes)
    assert numba_elementwise.outer_applies(a, b)
    got = NUMPY.ops.outer(a, b)
    assert got.flags.c_contiguous
    assert_same_bits(got, np.einsum("i,j->ij", a, b))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compiled_outer_treats_infinities_nan_and_signed_zeros_as_einsum(dtype):
    """einsum adds each product into a zeroed output: ``-0.0`` products come out ``+0.0``
    there, and in the compiled loop."""
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 2.0, -3.0], dtype=dtype)
    got = numba_elementwise.outer(special, special[::-1])  # a strided b as well
    assert_same_bits(got, np.einsum("i,j->ij", special, special[::-1]))


@pytest.mark.parametrize("a_dtype, b_dtype", [("float32", "float64"), ("float16", "float16"),
                                              ("int64", "int64")])
def test_outer_of_other_dtypes_runs_einsum(a_dtype, b_dtype):
    a = np.arange(1, 4).astype(a_dtype)
    b = np.arange(2, 6).astype(b_dtype)
    assert not numba_elementwise.outer_applies(a, b)
    got = NUMPY.ops.outer(a, b)
    want = np.einsum("i,j->ij", a, b)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_xpnn_numba_0_runs_einsum_for_outer(monkeypatch):
    a, b = np.ones(3, "float32"), np.ones(4, "float32")
    assert numba_elementwise.outer_applies(a, b)
    monkeypatch.setenv("XPNN_NUMBA", "0")
    assert not numba_elementwise.outer_applies(a, b)
    np.testing.assert_array_equal(NUMPY.ops.outer(a, b), np.ones((3, 4), "float32"))


# -- softmax_cross_entropy_mean -----------------------------------------------------------------


def test_the_loss_runs_compiled_only_where_it_applies(monkeypatch):
    """float32/float64 C-contiguous logits with int64 labels run the compiled kernel (its
    values are checked on every backend in test_kernels.py); other inputs and
    ``XPNN_NUMBA=0`` run the portable one, with the same results to rounding."""
    calls = [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        return PORTABLE_LOSS(*args, **kwargs)

    monkeypatch.setattr(portable, "softmax_cross_entropy_mean", counted)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 4)).astype("float32")
    labels = np.array([0, 3, 1, 2, 2, 0])
    want = PORTABLE_LOSS(NUMPY, logits, labels)
    cases = [(logits, labels, 0), (logits.astype("float64"), labels, 0),
             (np.asfortranarray(logits), labels, 1), (logits.astype("float16"), labels, 1),
             (logits, labels.astype("int32"), 1)]
    for case_logits, case_labels, portable_calls in cases:
        calls[0] = 0
        loss, dlogits = numba_elementwise.softmax_cross_entropy_mean(NUMPY, case_logits,
                                                                     case_labels)
        assert calls[0] == portable_calls
        tolerance = 2e-3 if case_logits.dtype == np.float16 else 1e-6
        np.testing.assert_allclose(loss, want[0], rtol=tolerance)
        np.testing.assert_allclose(dlogits, want[1], rtol=tolerance, atol=tolerance)
    monkeypatch.setenv("XPNN_NUMBA", "0")
    calls[0] = 0
    numba_elementwise.softmax_cross_entropy_mean(NUMPY, logits, labels)
    assert calls[0] == 1
