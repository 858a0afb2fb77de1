"""The ONNX form of each xpnn layer, in inference mode (one converter per layer class).

=====================  ==============================================================
xpnn                   ONNX (opset 17)
=====================  ==============================================================
Dense                  ``Gemm`` (``transB=1``) for (N, in) inputs, else ``MatMul`` + ``Add``
Conv2D                 ``Conv`` (strides, symmetric pads; ``dilations`` and ``group``
                       from the layer's ``dilation`` / ``groups`` where it has them)
BatchNorm              ``BatchNormalization`` with the running statistics (without
                       them, ``track_running_stats=False``: the batch's own statistics,
                       with ``ReduceMean``); ``affine=False``: constants γ = 1, β = 0
ConvBNAct              one ``Conv`` with BatchNorm folded in (w·s, β - s·μ, computed in
                       float64), then the activation; without running statistics the
                       convolution, BatchNorm and activation in turn
ReLU, LeakyReLU,       ``Relu``, ``LeakyRelu`` (alpha), ``Sigmoid``, ``Tanh``,
Sigmoid, Tanh, Softmax ``Softmax`` (axis)
MaxPool2D              ``MaxPool`` (floor mode, -inf padding)
GlobalAvgPool          ``GlobalAveragePool`` then ``Flatten``: (N, C, H, W) -> (N, C)
Flatten, Identity      ``Flatten`` (axis 1), ``Identity``
Sequential, Chain      the children's nodes in turn (any Chain subclass that keeps
                       Chain's forward: Darknet53's stem, stages, head)
Residual, DarkBlock    the block's nodes, then ``Add`` with the input
Darknet53              its stem, stages and head in turn
Dropout                ``Identity`` (inference), when xpnn.layers has it
LayerNorm              ``LayerNormalization`` over the trailing normalized axes
AvgPool2D              ``AveragePool`` (``count_include_pad`` from the layer)
AdaptiveAvgPool2D      ``GlobalAveragePool`` for a 1x1 output, ``AveragePool`` when the
                       input divides into equal windows, else PyTorch's uneven bins as
                       two ``MatMul`` with constant 0/1 matrices and a ``Div``
=====================  ==============================================================

ConvBNAct folds BatchNorm into the convolution's weight (xpnn applies the same scale to
the convolution's output instead), so the two agree to float32 rounding.
"""

from __future__ import annotations

import numpy as np

from xpnn import backends, layers
from xpnn.errors import ConfigError
from xpnn.layers.activations import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from xpnn.layers.batchnorm import BatchNorm
from xpnn.layers.blocks import ConvBNAct
from xpnn.layers.containers import Chain, Residual, Sequential
from xpnn.layers.conv import Conv2D
from xpnn.layers.dense import Dense
from xpnn.layers.pooling import GlobalAvgPool, MaxPool2D
from xpnn.layers.shape import Flatten, Identity
from xpnn.models.darknet import DarkBlock, Darknet53
from xpnn.onnx.registry import register

__all__: list[str] = []


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _host(array, dtype="float64") -> np.ndarray:
    return np.asarray(backends.to_numpy(array), dtype=dtype)


def _pair(value) -> list[int]:
    if isinstance(value, int | np.integer):
        return [int(value), int(value)]
    return [int(item) for item in value]


def _pads(padding) -> list[int]:
    """ONNX ``pads`` (begin H, begin W, end H, end W) from a symmetric (ph, pw) or an
    explicit (top, bottom, left, right) padding."""
    values = _pair(padding)
    if len(values) == 2:
        return [values[0], values[1], values[0], values[1]]
    top, bottom, left, right = values
    return [top, left, bottom, right]


# -- weights -------------------------------------------------------------------------------

@register(Dense)
def convert_dense(module: Dense, graph, x: str, path: str) -> str:
    bias = None if module.bias is None else graph.weight(_join(path, "bias"),
                                                         module.bias.value)
    shape = graph.input_shape(module)
    if shape is not None and len(shape) == 2:
        inputs = [x, graph.weight(_join(path, "weight"), module.weight.value)]
        return graph.node("Gemm", inputs + ([bias] if bias else []), path=path, transB=1)
    # (..., in) inputs: MatMul broadcasts over the leading axes, Gemm does not.
    transposed = graph.weight(_join(path, "weight_t"), _host(module.weight.value).T)
    y = graph.node("MatMul", [x, transposed], path=path)
    return y if bias is None else graph.node("Add", [y, bias], path=path)


def _conv_attributes(conv: Conv2D) -> dict:
    kh, kw = conv.kernel_size
    return {"kernel_shape": [kh, kw], "strides": _pair(conv.stride),
            "pads": _pads(conv.padding),
            "dilations": _pair(getattr(conv, "dilation", 1)),
            "group": int(getattr(conv, "groups", 1))}


@register(Conv2D)
def convert_conv2d(module: Conv2D, graph, x: str, path: str) -> str:
    inputs = [x, graph.weight(_join(path, "weight"), module.weight.value)]
    if module.bias is not None:
        inputs.append(graph.weight(_join(path, "bias"), module.bias.value))
    return graph.node("Conv", inputs, path=path, **_conv_attributes(module))


def _running_statistics(bn: BatchNorm):
    """``(mean, var)`` host arrays of a BatchNorm that keeps running statistics, else
    None (a BatchNorm built with ``track_running_stats=False`` normalizes with the
    statistics of the batch at inference too)."""
    if not getattr(bn, "track_running_stats", True):
        return None
    mean, var = getattr(bn, "running_mean", None), getattr(bn, "running_var", None)
    if mean is None or var is None or mean.value is None or var.value is None:
        return None
    return _host(mean.value), _host(var.value)


def _affine(bn: BatchNorm):
    """``(γ, β)`` as host arrays (ones and zeros for a BatchNorm without them)."""
    weight, bias = getattr(bn, "weight", None), getattr(bn, "bias", None)
    ones, zeros = np.ones(bn.num_features), np.zeros(bn.num_features)
    return (ones if weight is None or weight.value is None else _host(weight.value),
            zeros if bias is None or bias.value is None else _host(bias.value))


@register(BatchNorm)
def convert_batchnorm(module: BatchNorm, graph, x: str, path: str) -> str:
    gamma, beta = _affine(module)
    statistics = _running_statistics(module)
    if statistics is not None:
        inputs = [x] + [graph.weight(_join(path, name), value) for name, value in (
            ("weight", gamma), ("bias", beta), ("running_mean", statistics[0]),
            ("running_var", statistics[1]))]
        return graph.node("BatchNormalization", inputs, path=path, epsilon=float(module.eps))
    # The batch's own statistics, per channel over N (and H, W): biased variance.
    rank = len(graph.input_shape(module) or (0, 0, 0, 0))
    axes = [0] if rank == 2 else [0, 2, 3]
    channel = (1, module.num_features) + (1,) * (rank - 2)
    mean = graph.node("ReduceMean", [x], path=path, axes=axes, keepdims=1)
    centred = graph.node("Sub", [x, mean], path=path)
    squared = graph.node("Mul", [centred, centred], path=path)
    var = graph.node("ReduceMean", [squared], path=path, axes=axes, keepdims=1)
    eps = graph.weight(_join(path, "eps"), np.array(module.eps))
    std = graph.node("Sqrt", [graph.node("Add", [var, eps], path=path)], path=path)
    y = graph.node("Div", [centred, std], path=path)
    y = graph.node("Mul", [y, graph.weight(_join(path, "weight"), gamma.reshape(channel))],
                   path=path)
    return graph.node("Add", [y, graph.weight(_join(path, "bias"), beta.reshape(channel))],
                      path=path)


@register(ConvBNAct)
def convert_conv_bn_act(module: ConvBNAct, graph, x: str, path: str) -> str:
    conv, bn = module.conv, module.bn
    statistics = _running_statistics(bn)
    if statistics is None:  # nothing to fold: the three layers in turn
        for name in ("conv", "bn", "act"):
            x = graph.convert(getattr(module, name), x, _join(path, name))
        return x
    gamma, beta = _affine(bn)
    scale = gamma / np.sqrt(statistics[1] + bn.eps)
    shift = beta - statistics[0] * scale
    weight = _host(conv.weight.value) * scale.reshape(-1, 1, 1, 1)
    if conv.bias is not None:  # ConvBNAct's conv has none; a subclass's might
        shift = shift + _host(conv.bias.value) * scale
    inputs = [x, graph.weight(_join(path, "conv.weight"), weight),
              graph.weight(_join(path, "conv.bias"), shift)]
    z = graph.node("Conv", inputs, path=_join(path, "conv"), **_conv_attributes(conv))
    return graph.convert(module.act, z, _join(path, "act"))


# -- element-wise --------------------------------------------------------------------------

@register(ReLU)
def convert_relu(module, graph, x: str, path: str) -> str:
    return graph.node("Relu", [x], path=path)


@register(LeakyReLU)
def convert_leaky_relu(module: LeakyReLU, graph, x: str, path: str) -> str:
    return graph.node("LeakyRelu", [x], path=path, alpha=float(module.negative_slope))


@register(Sigmoid)
def convert_sigmoid(module, graph, x: str, path: str) -> str:
    return graph.node("Sigmoid", [x], path=path)


@register(Tanh)
def convert_tanh(module, graph, x: str, path: str) -> str:
    return graph.node("Tanh", [x], path=path)


@register(Softmax)
def convert_softmax(module: Softmax, graph, x: str, path: str) -> str:
    return graph.node("Softmax", [x], path=path, axis=int(module.axis))


@register(Identity)
def convert_identity(module, graph, x: str, path: str) -> str:
    return graph.node("Identity", [x], path=path)


# -- pooling and shapes --------------------------------------------------------------------

@register(MaxPool2D)
def convert_max_pool(module: MaxPool2D, graph, x: str, path: str) -> str:
    return graph.node("MaxPool", [x], path=path, kernel_shape=_pair(module.kernel_size),
                      strides=_pair(module.stride), pads=_pads(module.padding))


@register(GlobalAvgPool)
def convert_global_avg_pool(module, graph, x: str, path: str) -> str:
    pooled = graph.node("GlobalAveragePool", [x], path=path)
    return graph.node("Flatten", [pooled], path=path, axis=1)


@register(Flatten)
def convert_flatten(module, graph, x: str, path: str) -> str:
    return graph.node("Flatten", [x], path=path, axis=1)


# -- containers ----------------------------------------------------------------------------

def _children_in_order(module: Chain):
    """``(path suffix, child)`` for each step of a Chain, named as in ``named_children``."""
    names = {id(child): name for name, child in module.named_children()}
    for index, step in enumerate(module.steps()):
        yield names.get(id(step), str(index)), step


@register(Chain)
def convert_chain(module: Chain, graph, x: str, path: str) -> str:
    for name, step in _children_in_order(module):
        x = graph.convert(step, x, _join(path, name))
    return x


register(Sequential, convert_chain)
register(Darknet53, convert_chain)  # its forward only checks the input first


@register(Residual)
def convert_residual(module: Residual, graph, x: str, path: str) -> str:
    fx = graph.convert(module.block, x, _join(path, "block"))
    return graph.node("Add", [x, fx], path=path)


@register(DarkBlock)
def convert_dark_block(module: DarkBlock, graph, x: str, path: str) -> str:
    return graph.node("Add", [x, convert_chain(module, graph, x, path)], path=path)


# -- layers that are added as xpnn.layers gains them ----------------------------------------

def convert_dropout(module, graph, x: str, path: str) -> str:
    return graph.node("Identity", [x], path=path)  # inference: dropout does nothing


def convert_layer_norm(module, graph, x: str, path: str) -> str:
    normalized = getattr(module, "normalized_shape", None)
    normalized = (normalized,) if isinstance(normalized, int) else tuple(normalized)
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    ones = np.ones(normalized, dtype=graph.dtype)
    scale = graph.weight(_join(path, "weight"), ones if weight is None or weight.value is None
                         else weight.value)
    inputs = [x, scale]
    if bias is not None and bias.value is not None:
        inputs.append(graph.weight(_join(path, "bias"), bias.value))
    return graph.node("LayerNormalization", inputs, path=path, axis=-len(normalized),
                      epsilon=float(getattr(module, "eps", 1e-5)))


def convert_avg_pool(module, graph, x: str, path: str) -> str:
    kernel = _pair(module.kernel_size)
    stride = getattr(module, "stride", None)
    attributes = {"kernel_shape": kernel,
                  "strides": kernel if stride is None else _pair(stride),
                  "pads": _pads(getattr(module, "padding", 0)),
                  "count_include_pad": int(bool(getattr(module, "count_include_pad", True)))}
    if getattr(module, "ceil_mode", False):
        attributes["ceil_mode"] = 1
    return graph.node("AveragePool", [x], path=path, **attributes)


def convert_adaptive_avg_pool(module, graph, x: str, path: str) -> str:
    in_shape, out_shape = graph.input_shape(module), graph.output_shape(module)
    if in_shape is None or out_shape is None or len(in_shape) != 4:
        raise ConfigError(
            f"xpnn.onnx.export cannot export {path} ({type(module).__name__}): its input "
            f"shape is unknown (expected an NCHW input seen on the trace)."
        )
    (h, w), (oh, ow) = in_shape[2:], out_shape[2:]
    if (oh, ow) == (1, 1):
        return graph.node("GlobalAveragePool", [x], path=path)
    if h % oh == 0 and w % ow == 0:  # equal windows: an ordinary average pooling
        kernel = [h // oh, w // ow]
        return graph.node("AveragePool", [x], path=path, kernel_shape=kernel, strides=kernel)
    # PyTorch's uneven bins [floor(a H / OH), ceil((a + 1) H / OH)): the window sums are
    # R x C^T with 0/1 matrices (as xpnn computes them), then divided by the bin sizes.
    rows, columns = _adaptive_bins(h, oh), _adaptive_bins(w, ow)
    sizes = np.outer(rows.sum(axis=1), columns.sum(axis=1))
    summed = graph.node("MatMul", [x, graph.weight(_join(path, "columns"), columns.T)],
                        path=path)
    summed = graph.node("MatMul", [graph.weight(_join(path, "rows"), rows), summed], path=path)
    return graph.node("Div", [summed, graph.weight(_join(path, "sizes"), sizes)], path=path)


def _adaptive_bins(size: int, count: int) -> np.ndarray:
    """The (count, size) 0/1 matrix of PyTorch's adaptive pooling bins along one axis."""
    matrix = np.zeros((count, size))
    for a in range(count):
        matrix[a, a * size // count: -(-(a + 1) * size // count)] = 1.0
    return matrix


for _name, _converter in (("Dropout", convert_dropout), ("LayerNorm", convert_layer_norm),
                          ("AvgPool2D", convert_avg_pool),
                          ("AdaptiveAvgPool2D", convert_adaptive_avg_pool)):
    if isinstance(getattr(layers, _name, None), type):
        register(getattr(layers, _name), _converter)
