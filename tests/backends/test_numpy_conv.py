"""The NumPy convolution strategies (xpnn.backends.numpy_conv): every strategy on every shape
it supports equals the float64 reference of xpnn.testing, forward (with the fused
epilogue), training forward and backward; plan() is a pure function of the shapes.

Gradients are checked through the adjoint identities of the bilinear map ``(x, w) ->
conv(x, w)``: for every ``u`` and ``v``,

    <dx, u> = <dy, conv(u, w)>,        <dw, v> = <dy, conv(x, v)>,

on random probes ``u``, ``v`` with the reference convolution, and the strategies must also
agree with each other entry by entry.
"""

import dataclasses

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from xpnn import backends
from xpnn.backends import numpy_conv, portable
from xpnn.backends.numpy_conv import Chunked, Grouped, Pointwise, Stacked, Strategy, plan
from xpnn.backends.numpy_conv.epilogue import epilogue_
from xpnn.backends.numpy_conv.windows import Windows, output_hw
from xpnn.errors import BackendError
from xpnn.testing import conv2d_reference

STRATEGIES = [
    Chunked(),
    Chunked(chunk_bytes=1),  # one image per chunk
    Stacked(),
    Stacked(stack_columns=1, keep_bytes=0),  # one image per product, nothing kept
    Pointwise(),
    Grouped(),
    Grouped(chunk_bytes=1),  # one image per chunk
]

SHAPES = [  # (x shape, w shape, stride, padding)
    ((1, 3, 9, 8), (4, 3, 3, 3), (1, 1), (1, 1)),
    ((3, 2, 7, 6), (4, 2, 3, 3), (2, 2), (1, 1)),
    ((2, 3, 6, 7), (2, 3, 3, 3), (1, 1), (0, 0)),
    ((2, 4, 5, 6), (3, 4, 1, 1), (1, 1), (0, 0)),  # pointwise
    ((1, 4, 5, 5), (3, 4, 1, 1), (1, 1), (0, 0)),  # pointwise, one image
    ((2, 3, 7, 6), (2, 3, 1, 1), (2, 2), (0, 0)),  # strided 1x1
    ((2, 2, 5, 5), (3, 2, 1, 1), (1, 1), (1, 1)),  # padded 1x1
    ((2, 2, 40, 36), (3, 2, 3, 3), (1, 1), (1, 1)),  # OH OW above the stacking threshold
    ((1, 3, 34, 40), (4, 3, 3, 3), (2, 2), (1, 1)),
    ((2, 1, 4, 5), (2, 1, 2, 3), (1, 2), (2, 0)),  # kernel wider than the stride
    # (..., dilation, groups): only the grouped strategy computes these
    ((2, 3, 9, 8), (4, 3, 3, 3), (1, 1), (2, 2), (2, 2), 1),  # dilated
    ((3, 2, 9, 10), (4, 2, 3, 2), (2, 1), (1, 2), (1, 3), 1),
    ((2, 4, 7, 6), (6, 2, 3, 3), (1, 1), (1, 1), (1, 1), 2),  # two groups
    ((3, 4, 8, 7), (8, 1, 3, 3), (2, 2), (1, 1), (1, 1), 4),  # depthwise, multiplier 2
    ((2, 4, 9, 8), (6, 2, 3, 3), (2, 2), (2, 1), (2, 2), 2),  # all together
    ((2, 4, 5, 5), (6, 2, 1, 1), (1, 1), (0, 0), (1, 1), 2),  # grouped 1x1
    ((1, 2, 40, 36), (4, 1, 3, 3), (1, 1), (2, 2), (2, 2), 2),  # above the stacking threshold
]


def unpack(shape):
    """``(x_shape, w_shape, stride, padding, dilation, groups)`` of a SHAPES entry."""
    x_shape, w_shape, stride, padding, dilation, groups = (*shape, (1, 1), 1)[:6]
    return x_shape, w_shape, stride, padding, dilation, groups

EPILOGUES = [  # (scale?, bias?, slope)
    (False, False, None),
    (False, True, None),
    (True, True, 0.1),
    (True, False, 0.0),
    (False, True, 1.0),
    (True, True, None),
]


def ids(value):
    """A strategy's name and the fields it sets away from their defaults."""
    if not isinstance(value, Strategy):
        return str(value)
    changed = [f"{f.name}={getattr(value, f.name)}" for f in dataclasses.fields(value)
               if getattr(value, f.name) != getattr(type(value)(), f.name)]
    return value.name + (f"({', '.join(changed)})" if changed else "")


def problem(shape, seed=0):
    x_shape, w_shape, stride, padding, dilation, _ = unpack(shape)
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    y_shape = (x_shape[0], w_shape[0], *output_hw(x_shape, w_shape, stride, padding,
                                                  dilation))
    return x, w, rng.standard_normal(w_shape[0]), rng.uniform(0.5, 2.0, w_shape[0]), \
        rng.standard_normal(y_shape), rng


def expected_forward(x, w, scale, bias, stride, padding, slope, **geometry):
    y = conv2d_reference(x, w, None, stride, padding, **geometry)
    if scale is not None:
        y = y * scale[None, :, None, None]
    if bias is not None:
        y = y + bias[None, :, None, None]
    return y if slope is None else np.maximum(y, slope * y)


def check_gradients(dx, dw, dy, x, w, stride, padding, rng, rtol=1e-10, **geometry):
    """The adjoint identities on three random probes each."""
    for _ in range(3):
        u, v = rng.standard_normal(x.shape), rng.standard_normal(w.shape)
        if dx is not None:
            expected = np.sum(dy * conv2d_reference(u, w, None, stride, padding, **geometry))
            np.testing.assert_allclose(np.sum(dx * u), expected, rtol=rtol, atol=rtol)
        expected = np.sum(dy * conv2d_reference(x, v, None, stride, padding, **geometry))
        np.testing.assert_allclose(np.sum(dw * v), expected, rtol=rtol, atol=rtol)


def unsupported(strategy, shape) -> bool:
    """Whether ``strategy`` declines ``shape``; then every kernel must refuse it clearly."""
    x_shape, w_shape, stride, padding, dilation, groups = unpack(shape)
    if strategy.supports(x_shape, w_shape, stride, padding, dilation, groups):
        return False
    x, w = np.zeros(x_shape), np.zeros(w_shape)
    for kernel in (numpy_conv.conv2d, numpy_conv.conv2d_train):
        with pytest.raises(BackendError, match=f"{strategy.name!r} convolution strategy"):
            kernel(None, x, w, None, stride, padding, dilation=dilation, groups=groups,
                   strategy=strategy)
    return True


def geometry_of(shape) -> dict:
    """A SHAPES entry's dilation and groups as keyword arguments."""
    return dict(zip(("dilation", "groups"), unpack(shape)[4:], strict=True))


# -- every strategy x every shape ----------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
@pytest.mark.parametrize("strategy", STRATEGIES, ids=ids)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_inference_forward_with_every_epilogue(strategy, shape, dtype):
    if unsupported(strategy, shape):
        return
    x, w, bias, scale, _, _ = problem(shape)
    _, _, stride, padding, _, _ = unpack(shape)
    options = geometry_of(shape)
    tol = 1e-12 if dtype == "float64" else 1e-4
    for with_scale, with_bias, slope in EPILOGUES:
        s, b = (scale if with_scale else None), (bias if with_bias else None)
        y = numpy_conv.conv2d(None, x.astype(dtype), w.astype(dtype),
                              None if b is None else b.astype(dtype), stride, padding,
                              scale=None if s is None else s.astype(dtype),
                              negative_slope=slope, strategy=strategy, **options)
        assert y.dtype == dtype
        np.testing.assert_allclose(
            y, expected_forward(x, w, s, b, stride, padding, slope, **options),
            rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
@pytest.mark.parametrize("strategy", STRATEGIES, ids=ids)
@pytest.mark.parametrize("need_dx", [True, False])
def test_training_forward_and_backward(strategy, shape, need_dx):
    if unsupported(strategy, shape):
        return
    x, w, bias, _, dy, rng = problem(shape, seed=1)
    _, _, stride, padding, _, _ = unpack(shape)
    options = geometry_of(shape)
    y, saved = numpy_conv.conv2d_train(None, x, w, bias, stride, padding, strategy=strategy,
                                       **options)
    np.testing.assert_allclose(y, conv2d_reference(x, w, bias, stride, padding, **options),
                               rtol=1e-12, atol=1e-12)
    dx, dw = numpy_conv.conv2d_backward(None, dy, x, w, stride, padding, saved,
                                        need_dx=need_dx, strategy=strategy, **options)
    assert dw.shape == w.shape and (dx is None) == (not need_dx)
    check_gradients(dx, dw, dy, x, w, stride, padding, rng, **options)
    # entry by entry, every strategy agrees with the general one (the portable kernel for
    # dilated or grouped convolutions, which the chunked strategy does not compute)
    if options == {"dilation": (1, 1), "groups": 1}:
        general = Chunked().backward(dy, x, w, stride, padding, None, need_dx)
    else:
        general = portable.conv2d_backward(backends.make_backend("numpy"), dy, x, w, stride,
                                           padding, None, need_dx=need_dx, **options)
    np.testing.assert_allclose(dw, general[1], rtol=1e-12, atol=1e-12)
    if need_dx:
        np.testing.assert_allclose(dx, general[0], rtol=1e-12, atol=1e-12)
    # a backward after an inference forward (nothing saved) gives the same gradients
    recomputed = numpy_conv.conv2d_backward(None, dy, x, w, stride, padding, None,
                                            need_dx=need_dx, strategy=strategy, **options)
    np.testing.assert_allclose(recomputed[1], dw, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_float32_gradients_keep_their_dtype(shape):
    x, w, bias, _, dy, rng = problem(shape, seed=2)
    _, _, stride, padding, _, _ = unpack(shape)
    options = geometry_of(shape)
    args = [a.astype("float32") for a in (x, w, bias, dy)]
    _, saved = numpy_conv.conv2d_train(None, *args[:3], stride, padding, **options)
    dx, dw = numpy_conv.conv2d_backward(None, args[3], *args[:2], stride, padding, saved,
                                        **options)
    assert dx.dtype == dw.dtype == np.float32
    check_gradients(dx.astype(np.float64), dw.astype(np.float64), args[3].astype(np.float64),
                    args[0].astype(np.float64), args[1].astype(np.float64), stride, padding,
                    rng, rtol=1e-4, **options)


# -- random shapes, strides up to 3 ---------------------------------------------------------


@st.composite
def problems(draw):
    """A SHAPES entry (with dilation and groups) and a seed; half of them plain."""
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    plain = draw(st.booleans())
    dilation = (1, 1) if plain else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    groups = 1 if plain else draw(st.integers(1, 3))
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    c, o = (c, o) if groups == 1 else (groups * min(c, 2), groups * min(o, 2))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    assume(h + 2 * padding[0] >= dilation[0] * (kh - 1) + 1
           and w + 2 * padding[1] >= dilation[1] * (kw - 1) + 1)
    shape = ((n, c, h, w), (o, c // groups, kh, kw), stride, padding, dilation, groups)
    return shape, draw(st.integers(0, 2**16))


@settings(max_examples=60, deadline=None)
@given(case=problems())
def test_every_strategy_on_random_shapes(case):
    """Every strategy that supports the shape, forward (with the epilogue), training forward
    and backward; strides up to 3 and kernels smaller than the stride exercise the stacked
    backward's stride phases (one of which may receive no tap)."""
    shape, seed = case
    x_shape, w_shape, stride, padding, dilation, groups = shape
    options = geometry_of(shape)
    x, w, bias, scale, dy, rng = problem(shape, seed)
    expected = expected_forward(x, w, scale, bias, stride, padding, 0.1, **options)
    ran = []
    for strategy in STRATEGIES:
        if not strategy.supports(x_shape, w_shape, stride, padding, dilation, groups):
            continue
        ran.append(strategy)
        y = numpy_conv.conv2d(None, x, w, bias, stride, padding, scale=scale,
                              negative_slope=0.1, strategy=strategy, **options)
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
        _, saved = numpy_conv.conv2d_train(None, x, w, bias, stride, padding,
                                           strategy=strategy, **options)
        if type(strategy) is Stacked and strategy.keep_bytes:
            pointwise = w_shape[2:] == (1, 1) and stride == (1, 1) and padding == (0, 0)
            assert (saved is None) == pointwise
        dx, dw = numpy_conv.conv2d_backward(None, dy, x, w, stride, padding, saved,
                                            strategy=strategy, **options)
        check_gradients(dx, dw, dy, x, w, stride, padding, rng, **options)
    assert any(type(strategy) is Grouped for strategy in ran)


@st.composite
def strided_windows(draw):
    """Geometry of a strided, undilated convolution (a stride above 1 on at least one
    axis, kernels smaller or larger than the stride, paddings up to 3, images down to one
    pixel), a batch and a chunk at least as large."""
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    assume(stride != (1, 1))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    assume(h + 2 * padding[0] >= kh and w + 2 * padding[1] >= kw)
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return n, c, h, w, (kh, kw), stride, padding, n + draw(st.integers(0, 2))


@settings(max_examples=80, deadline=None)
@given(geometry=strided_windows(), seed=st.integers(0, 2**16))
def test_strided_columns_by_stride_phases_equal_the_strided_slices(geometry, seed):
    """The NumPy twins' stride-phase im2col gives exactly the columns of the plain strided
    slices, twice in a row on the same buffers (the phases' zero border stays zero), and
    so do the stacked columns (which read the taps the same way)."""
    n, c, h, w, kernel, stride, padding, chunk = geometry
    out_hw = output_hw((n, c, h, w), (1, c, *kernel), stride, padding)
    rng = np.random.default_rng(seed)
    by_phases = Windows(chunk, c, h, w, np.float64, kernel, stride, padding, out_hw)
    by_slices = Windows(chunk, c, h, w, np.float64, kernel, stride, padding, out_hw)
    for _ in range(2):
        x = rng.standard_normal((n, c, h, w))
        want = by_slices.im2col_by_slices(x).copy()  # (n, C KH KW, OH OW)
        np.testing.assert_array_equal(by_phases.im2col_by_phases(x), want)
        stacked = want.transpose(1, 0, 2).reshape(want.shape[1], -1)  # (C KH KW, n OH OW)
        np.testing.assert_array_equal(by_phases.stacked_columns_numpy(x), stacked)


# -- what each strategy keeps --------------------------------------------------------------


def test_stacked_keeps_the_columns_only_within_its_budget():
    x, w = np.ones((2, 3, 5, 5)), np.ones((4, 3, 3, 3))
    columns_bytes = 27 * 2 * 25 * 8
    _, kept = Stacked().forward_train(x, w, None, (1, 1), (1, 1))
    assert kept.shape == (27, 2 * 25)
    assert Stacked(keep_bytes=columns_bytes).forward_train(x, w, None, (1, 1), (1, 1))[1] \
        is not None
    assert Stacked(keep_bytes=columns_bytes - 1).forward_train(x, w, None, (1, 1), (1, 1))[1] \
        is None
    pointwise = np.ones((4, 3, 1, 1))  # its columns would be x itself
    assert Stacked().forward_train(x, pointwise, None, (1, 1), (0, 0))[1] is None


@pytest.mark.parametrize("strategy", [Chunked(), Pointwise()], ids=ids)
def test_other_strategies_save_nothing(strategy):
    x, w = np.ones((2, 3, 5, 5)), np.ones((4, 3, 1, 1))
    assert strategy.forward_train(x, w, None, (1, 1), (0, 0))[1] is None


def test_planned_training_keeps_columns_for_small_outputs_of_several_images():
    x, w = np.ones((2, 3, 5, 5)), np.ones((4, 3, 3, 3))
    assert numpy_conv.conv2d_train(None, x, w, None, (1, 1), (1, 1))[1] is not None
    assert numpy_conv.conv2d_train(None, x[:1], w, None, (1, 1), (1, 1))[1] is None


# -- plan ------------------------------------------------------------------------------------

PLANS = [  # (x shape, w shape, stride, padding, itemsize, expected)
    ((8, 256, 16, 16), (512, 256, 3, 3), (2, 2), (1, 1), 4, "stacked"),  # 8x8 outputs
    ((8, 512, 8, 8), (256, 512, 1, 1), (1, 1), (0, 0), 4, "stacked"),  # 1x1, small
    ((64, 1, 28, 28), (16, 1, 3, 3), (1, 1), (1, 1), 4, "stacked"),  # MNIST CNN: 784 < 1024
    ((1, 256, 16, 16), (512, 256, 3, 3), (2, 2), (1, 1), 4, "chunked"),  # one image
    ((8, 128, 32, 32), (256, 128, 3, 3), (1, 1), (1, 1), 4, "chunked"),  # 1024: not below
    ((1, 64, 128, 128), (32, 64, 1, 1), (1, 1), (0, 0), 4, "pointwise"),
    ((8, 512, 8, 8), (256, 512, 1, 1), (2, 2), (0, 0), 4, "stacked"),
    ((1, 64, 128, 128), (128, 64, 3, 3), (2, 2), (1, 1), 4, "chunked"),  # C KH KW = 576
    ((1, 3, 256, 256), (32, 3, 3, 3), (1, 1), (1, 1), 4, "chunked"),  # Darknet53 layer 1
    ((8, 32, 256, 256), (64, 32, 3, 3), (2, 2), (1, 1), 8, "chunked"),
]


@pytest.mark.parametrize("case", PLANS, ids=str)
def test_plan_chooses_by_shape(case):
    *shapes, itemsize, expected = case
    for train in (False, True):
        chosen = plan(*shapes, itemsize, train)
        assert chosen.name == expected
        assert chosen.supports(*shapes)
        assert plan(*shapes, itemsize, train) is chosen  # shared instances, no state


@pytest.mark.parametrize("dilation, groups", [((2, 2), 1), ((1, 2), 1), ((1, 1), 2),
                                             ((1, 1), 8), ((2, 1), 4)])
def test_plan_sends_dilated_and_grouped_convolutions_to_the_grouped_strategy(dilation,
                                                                              groups):
    for x_shape in ((8, 8, 16, 16), (1, 8, 64, 64)):  # stacked and chunked shapes if plain
        for train in (False, True):
            chosen = plan(x_shape, (8, 8 // groups, 3, 3), (1, 1), (1, 1), 4, train,
                          dilation=dilation, groups=groups)
            assert chosen is plan(x_shape, (8, 8 // groups, 3, 3), (1, 1), (1, 1), 4, train,
                                  dilation=dilation, groups=groups)
            assert chosen.name == "grouped"


def test_a_dilation_along_a_kernel_of_size_one_keeps_the_fast_strategies():
    """A 1x1 kernel reads one pixel however far apart its (single) taps are."""
    x, w = np.ones((2, 3, 5, 5)), np.ones((4, 3, 1, 1))
    assert numpy_conv.geometry(w.shape, (3, 2), 1) == {}
    assert numpy_conv.geometry((4, 3, 1, 3), (3, 2), 1) == {"dilation": (1, 2), "groups": 1}
    y = numpy_conv.conv2d(None, x, w, None, (1, 1), (0, 0), dilation=(3, 2),
                          strategy="pointwise")
    np.testing.assert_allclose(y, conv2d_reference(x, w), rtol=1e-12)


@settings(max_examples=200, deadline=None)
@given(case=problems(), itemsize=st.sampled_from([4, 8]), train=st.booleans())
def test_plan_only_chooses_strategies_that_support_the_shape(case, itemsize, train):
    (x_shape, w_shape, stride, padding, dilation, groups), _ = case
    options = {"dilation": dilation, "groups": groups}
    chosen = plan(x_shape, w_shape, stride, padding, itemsize, train, **options)
    assert chosen.supports(x_shape, w_shape, stride, padding, dilation, groups)
    assert (chosen.name == "grouped") == (dilation != (1, 1) or groups != 1)


# -- the kernel interface --------------------------------------------------------------------


def test_strategies_are_chosen_by_name_or_instance():
    x, w = np.ones((2, 3, 5, 5)), np.ones((4, 3, 3, 3))
    for name, cls in numpy_conv.STRATEGIES.items():
        assert cls.name == name
        if cls is Pointwise:
            continue
        by_name = numpy_conv.conv2d(None, x, w, None, (1, 1), (1, 1), strategy=name)
        np.testing.assert_allclose(by_name, conv2d_reference(x, w, None, (1, 1), (1, 1)),
                                   rtol=1e-12)
    with pytest.raises(BackendError, match="Unknown NumPy convolution strategy 'fast'"):
        numpy_conv.conv2d(None, x, w, None, (1, 1), (1, 1), strategy="fast")


def test_a_wrapping_strategy_sees_every_call():
    """What benchmarks do: wrap the planned strategy instead of patching the package."""

    class Counting(Strategy):
        name = "counting"

        def __init__(self, inner):
            self.inner, self.calls = inner, []

        def forward(self, *args, **kwargs):
            self.calls.append("forward")
            return self.inner.forward(*args, **kwargs)

        def forward_train(self, *args):
            self.calls.append("forward_train")
            return self.inner.forward_train(*args)

        def backward(self, *args, **kwargs):
            self.calls.append("backward")
            return self.inner.backward(*args, **kwargs)

    x, w = np.ones((2, 3, 5, 5)), np.ones((4, 3, 3, 3))
    counting = Counting(plan(x.shape, w.shape, (1, 1), (1, 1), x.itemsize, True))
    y, saved = numpy_conv.conv2d_train(None, x, w, None, (1, 1), (1, 1), strategy=counting)
    numpy_conv.conv2d_backward(None, np.ones_like(y), x, w, (1, 1), (1, 1), saved,
                               strategy=counting)
    numpy_conv.conv2d(None, x, w, None, (1, 1), (1, 1), strategy=counting)
    assert counting.calls == ["forward_train", "backward", "forward"]


def test_slopes_outside_zero_one_are_refused():
    x, w = np.ones((1, 1, 3, 3), "float32"), np.ones((1, 1, 1, 1), "float32")
    with pytest.raises(BackendError, match="negative_slope"):
        numpy_conv.conv2d(None, x, w, None, (1, 1), (0, 0), negative_slope=1.5)


def test_epilogue_over_many_blocks():
    """Blocks of 2 channel rows of 30 values (a partial last block of 1 row)."""
    rng = np.random.default_rng(3)
    y = rng.standard_normal((2, 5, 30)).astype("float32")
    scale = rng.uniform(0.5, 2.0, 5).astype("float32")
    bias = rng.standard_normal(5).astype("float32")
    expected = y * scale[:, None] + bias[:, None]
    expected = np.maximum(expected, 0.1 * expected)
    epilogue_(y, scale, bias, 0.1, block_bytes=2 * 30 * 4)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def channel_major(a):
    """``a (N, C, H, W)`` as the NCHW view of a ``(C, N, H, W)`` array."""
    return np.ascontiguousarray(a.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)


def channels_last(a):
    """``a (N, C, H, W)`` as the NCHW view of an ``(N, H, W, C)`` array."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("channels", [2, 8], ids=["stacked-rows", "pixel-columns"])
@pytest.mark.parametrize("numba", ["0", "1"], ids=["numba-off", "numba-on"])
def test_stacked_training_output_layout_and_its_backward_takes_any_layout(monkeypatch, numba,
                                                                          channels):
    """With kept columns the stacked strategy returns its product's layout as an (N, O, OH,
    OW) view, no copy to NCHW: channel-major without numba, channels-last with it (from
    8 input channels with one row of columns per output pixel). The backward gives the
    same gradients for a dy in any layout, and they equal the NCHW strategies'."""
    if numba == "1":
        pytest.importorskip("numba")
    monkeypatch.setenv("XPNN_NUMBA", numba)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, channels, 6, 6))
    w = rng.standard_normal((4, channels, 3, 3))
    strategy = Stacked()
    y, saved = strategy.forward_train(x, w, None, (1, 1), (1, 1))
    assert saved is not None and not y.flags.c_contiguous
    layout = channels_last if numba == "1" else channel_major
    np.testing.assert_array_equal(layout(y), y)  # already in that layout: same strides
    assert layout(y).strides == y.strides
    np.testing.assert_allclose(y, Chunked().forward(x, w, None, (1, 1), (1, 1)),
                               rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    want = Chunked().backward(dy, x, w, (1, 1), (1, 1), None)
    for any_layout in (dy, channel_major(dy), channels_last(dy)):
        got = strategy.backward(any_layout, x, w, (1, 1), (1, 1), saved)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", [channel_major, channels_last])
@pytest.mark.parametrize("need_dx", [True, False])
def test_pointwise_on_channel_major_or_channels_last_arrays_is_one_product_and_keeps_the_layout(
        need_dx, layout):
    """A channel-major or channels-last x (and dy) take the single-product path, in the
    pointwise strategy and in the stacked one's 1x1 case; the results equal the per-image
    products and keep the layout when dy has it (dy in another layout is read too)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3, 4, 6))
    w = rng.standard_normal((7, 3, 1, 1))
    dy = rng.standard_normal((5, 7, 4, 6))

    strategy, geometry = Pointwise(), ((1, 1), (0, 0))
    for forward in (strategy.forward, lambda *a: Stacked().forward_train(*a)[0]):
        y = forward(layout(x), w, None, *geometry)
        np.testing.assert_allclose(y, strategy.forward(x, w, None, *geometry), rtol=1e-12)
        assert layout(y).strides == y.strides
    want = strategy.backward(dy, x, w, *geometry, need_dx=need_dx)
    for dy_layout in (layout, np.ascontiguousarray):
        got = strategy.backward(dy_layout(dy), layout(x), w, *geometry, need_dx=need_dx)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-12)
        if need_dx:
            np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
            if dy_layout is layout:
                assert layout(got[0]).strides == got[0].strides
        else:
            assert got[0] is None and want[0] is None
