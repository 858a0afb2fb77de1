"""Assertions for tests of xpnn code on any backend, and float64 NumPy references written
from the definitions (convolution, max pooling) to test kernels against."""

from __future__ import annotations

import numpy as np

from xpnn import backends


def assert_close(actual, expected, *, rtol: float = 1e-6, atol: float = 0.0,
                 backend: backends.Backend | None = None) -> None:
    """Assert that ``actual`` (an array of any backend) equals ``expected`` (host values)
    within tolerance, and, when ``backend`` is given, that ``actual`` belongs to it and
    lives on its device."""
    if backend is not None:
        assert isinstance(actual, backend.array_type), (
            f"expected an array of the {backend.name} backend, got {type(actual)}"
        )
        assert backend.owns(actual), (
            f"expected device {backend.device!r}, got {backend.library.device_of(actual)!r}"
        )
    np.testing.assert_allclose(
        backends.to_numpy(actual), backends.to_numpy(expected), rtol=rtol, atol=atol
    )


def check_layer(make_layer, x_host, reference=None, *, backend: backends.Backend,
                rtol: float = 1e-5, atol: float = 1e-6, grad_tol: float = 1e-6,
                train: bool = True) -> dict[str, float]:
    """The checks every layer must pass, on one backend.

    ``make_layer(dtype)`` builds the layer (same seed every call) with parameters of
    ``dtype``; ``reference(x_host, layer)`` computes the expected output in float64 NumPy
    from the input and the layer's parameters (as host arrays). Checks: the float32
    forward matches the reference; the output keeps the input's dtype, backend and device;
    the output equals the NumPy backend's for the same seed; the backward passes a
    float64 finite-difference check; ``backprop(dy, need_input_grad=False)`` keeps
    the contract of :mod:`xpnn.module` (returns None, accumulates the same parameter
    gradients as ``backprop(dy)``); and a ``dy`` of the wrong shape raises a ShapeError
    naming the expected shape before any gradient changes. Returns the gradient errors.
    """
    x_host = np.asarray(x_host)
    layer = make_layer("float32")
    y = layer(backend.asarray(x_host, dtype="float32"))
    assert isinstance(y, backend.array_type), f"output is a {type(y)}, not a {backend.name} array"
    assert backend.owns(y), (
        f"output on {backend.library.device_of(y)!r}, model on {backend.device!r}")
    assert backends.dtype_name(y.dtype) == "float32", f"output dtype {y.dtype}, input float32"
    if reference is not None:
        params = {name: backends.to_numpy(value).astype(np.float64)
                  for name, value in layer.state_dict().items()}
        expected = reference(x_host.astype(np.float64), params)
        assert_close(y, expected, rtol=rtol, atol=atol)
    with backends.use("numpy"):
        on_numpy = make_layer("float32")(x_host.astype(np.float32))
    assert_close(y, on_numpy, rtol=rtol, atol=atol)

    check_backprop_contract(make_layer("float64"), x_host.astype(np.float64), backend, train)

    from xpnn.gradcheck import gradcheck

    errors = gradcheck(make_layer("float64"), x_host.astype(np.float64), train=train)
    worst = max(errors.values())
    assert worst < grad_tol, f"backward differs from finite differences: {errors}"
    return errors


def check_backprop_contract(layer, x_host, backend, train: bool = True) -> None:
    """Assert ``backprop(dy, need_input_grad=False)`` returns None and accumulates exactly
    the parameter gradients that ``backprop(dy)`` does (same forward pass, same ``dy``),
    and that a ``dy`` of the wrong shape raises a ShapeError naming the expected shape
    before any parameter gradient is touched (see :func:`check_wrong_dy`)."""
    y, backprop = layer.forward(backend.asarray(x_host), train=train)
    dy_host = np.random.default_rng(1).standard_normal(tuple(y.shape))
    dy = backend.asarray(dy_host, dtype=y.dtype)
    layer.zero_grad()
    check_wrong_dy(layer, backprop, y, backend)
    dx = backprop(dy)
    assert dx is not None and tuple(dx.shape) == tuple(x_host.shape), "backprop(dy) must return dx"
    full = {name: backends.to_numpy(p.grad) for name, p in layer.named_parameters()}
    layer.zero_grad()
    assert backprop(dy, need_input_grad=False) is None, (
        "backprop(dy, need_input_grad=False) must return None")
    for name, parameter in layer.named_parameters():
        np.testing.assert_allclose(backends.to_numpy(parameter.grad), full[name], rtol=1e-12,
                                   atol=1e-12, err_msg=f"gradient of {name}")
    layer.zero_grad()


def wrong_shapes(shape) -> list[tuple[int, ...]]:
    """Shapes a mistaken ``dy`` for an output of ``shape`` may have: one more element on
    the last axis, one more sample, a dropped axis and an added one."""
    shape = tuple(shape)
    shapes = [(*shape, 1)]
    if shape:
        shapes += [(*shape[:-1], shape[-1] + 1), (shape[0] + 1, *shape[1:]), shape[1:]]
    return shapes


def check_wrong_dy(layer, backprop, y, backend) -> None:
    """Assert that ``backprop`` refuses every ``dy`` of :func:`wrong_shapes` with a
    ShapeError naming ``y``'s shape, with and without ``need_input_grad``, and leaves every
    parameter gradient of ``layer`` as it was (no partial accumulation)."""
    from xpnn.errors import ShapeError

    before = {name: None if p.grad is None else backends.to_numpy(p.grad).copy()
              for name, p in layer.named_parameters()}
    expected = str(tuple(y.shape))
    for shape in wrong_shapes(y.shape):
        bad = backend.asarray(np.ones(shape), dtype=y.dtype)
        for need_input_grad in (True, False):
            try:
                backprop(bad, need_input_grad=need_input_grad)
            except ShapeError as error:
                assert expected in str(error), (
                    f"the ShapeError for dy.shape={shape} must name the expected shape "
                    f"{expected}: {error}")
            else:
                raise AssertionError(f"backprop accepted dy.shape={shape} for an output of "
                                     f"shape {expected}")
            for name, parameter in layer.named_parameters():
                old, new = before[name], parameter.grad
                assert (old is None and new is None) or (
                    old is not None and new is not None
                    and np.array_equal(backends.to_numpy(new), old)), (
                    f"a refused dy.shape={shape} changed the gradient of {name}")


def conv2d_reference(x, w, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                     groups=1):
    """2-D cross-correlation of ``x (N, C, H, W)`` with ``w (O, C / groups, KH, KW)`` from
    the definition, in float64:

        y[n, o, a, b] = bias[o] + sum_{c, i, j} w[o, c, i, j]
                                  x_pad[n, g C / G + c, sh a + dh i, sw b + dw j]

    with ``g = o // (O / G)`` the group of output channel ``o`` and ``x_pad`` the input
    zero-padded by ``padding``. One pixel and one group at a time: slow, for tests."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    x = np.pad(np.asarray(x, dtype=np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    w = np.asarray(w, dtype=np.float64)
    o, cg, kh, kw = w.shape
    og = o // groups
    reach_h, reach_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # the dilated kernel's extent
    oh, ow = (x.shape[2] - reach_h) // sh + 1, (x.shape[3] - reach_w) // sw + 1
    y = np.zeros((x.shape[0], o, oh, ow))
    for g in range(groups):
        channels, outputs = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
        for a in range(oh):
            for b in range(ow):
                patch = x[:, channels, a * sh : a * sh + reach_h : dh,
                          b * sw : b * sw + reach_w : dw]
                y[:, outputs, a, b] = np.einsum("nckl,ockl->no", patch, w[outputs])
    return y if bias is None else y + np.asarray(bias, dtype=np.float64)[None, :, None, None]


def max_pool2d_reference(x, kernel, stride, padding):
    """2-D max pooling from the definition, in float64: the maximum of each window of the
    input padded with -inf."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    x = np.pad(np.asarray(x, dtype=np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)),
               constant_values=-np.inf)
    oh, ow = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    y = np.empty(x.shape[:2] + (oh, ow))
    for a in range(oh):
        for b in range(ow):
            y[:, :, a, b] = x[:, :, a * sh : a * sh + kh, b * sw : b * sw + kw].max(axis=(2, 3))
    return y
