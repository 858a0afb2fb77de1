"""The layer table of :meth:`xpnn.Module.summary` with an input shape: output shapes,
parameters and FLOPs of every layer, as Keras' ``model.summary()`` shows them.

Shapes come from running the model once, in inference mode, on a batch of zeros of the
given shape (on the model's own backend; batch 1 where the batch axis is None, 2 for a
model with a BatchNorm that normalizes with the batch's statistics at inference too):
:func:`trace` records the input and output shape of every ``forward`` call in the tree.

FLOPs are counted as 2 per multiply-accumulate (MAC: one multiply, one add) of the layers
that multiply by a weight: a convolution producing ``O`` channels of ``OH x OW`` pixels from
a ``(O, C/groups, KH, KW)`` weight does ``N·O·OH·OW·(C/groups)·KH·KW`` MACs; a Dense layer
``N·in·out`` (times the leading axes of its input). Bias additions, BatchNorm (folded into
the convolution at inference), activations, pooling and residual additions count 0: they
are under 0.2 % of a convolutional network's total, and the figures quoted for networks
leave them out. With this convention Darknet53 at 256x256 is 2 x 9.285 GMAC = 18.57 GFLOP,
the figure quoted for it (one per MAC would give 9.29; adding one per activation and
residual addition, 18.59).

:func:`register_flops` adds a counter for a layer of your own (a function
``(module, input_shape, output_shape) -> int``).

Examples
--------
>>> from xpnn.layers import Dense, ReLU, Sequential
>>> model = Sequential([Dense(4, 8), ReLU(), Dense(8, 2)], seed=0)
>>> print(layer_table(model, (None, 4)))
Layer (type)    Output shape    Param #   FLOPs
===============================================
0 (Dense)       (None, 8)            40      64
1 (ReLU)        (None, 8)             0       0
2 (Dense)       (None, 2)            18      32
===============================================
Input shape: (None, 4)
Total params: 58
Total FLOPs: 96 (96 FLOP) for 1 sample (2 per multiply-accumulate of Conv2D and Dense)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from xpnn.errors import ConfigError
from xpnn.layers.batchnorm import BatchNorm
from xpnn.layers.blocks import ConvBNAct
from xpnn.layers.conv import Conv2D
from xpnn.layers.dense import Dense
from xpnn.module import Module
from xpnn.validation import is_int

__all__ = ["FLOP_COUNTERS", "Call", "format_flops", "layer_table", "register_flops", "trace"]


def _conv_flops(conv: Conv2D, output_shape) -> int:
    """2 x (weight values x output pixels x batch): each output value of channel ``o`` is
    the dot product of ``o``'s ``(C/groups) KH KW`` weights with one window."""
    n, _, oh, ow = output_shape
    return 2 * math.prod(conv.weight.shape) * n * oh * ow


def conv2d_flops(module: Conv2D, input_shape, output_shape) -> int:
    return _conv_flops(module, output_shape)


def dense_flops(module: Dense, input_shape, output_shape) -> int:
    rows = math.prod(output_shape[:-1])
    return 2 * module.in_features * module.out_features * rows


def conv_bn_act_flops(module: ConvBNAct, input_shape, output_shape) -> int:
    return _conv_flops(module.conv, output_shape)  # BatchNorm and activation: 0


#: layer class -> ``counter(module, input_shape, output_shape) -> FLOPs``. A layer with a
#: counter is counted as a whole (its children are not listed); a layer without one
#: counts the sum of its children (0 for a layer without children).
FLOP_COUNTERS: dict[type, Callable] = {
    Conv2D: conv2d_flops,
    Dense: dense_flops,
    ConvBNAct: conv_bn_act_flops,
}


def register_flops(cls: type[Module], counter: Callable | None = None):
    """Count the FLOPs of ``cls`` (and subclasses without a counter of their own) with
    ``counter(module, input_shape, output_shape) -> int``; usable as a decorator of the
    counter.

    Examples
    --------
    >>> from xpnn.layers import Identity
    >>> class Double(Identity):
    ...     pass
    >>> @register_flops(Double)
    ... def double_flops(module, input_shape, output_shape):
    ...     return math.prod(output_shape)
    >>> FLOP_COUNTERS.pop(Double) is double_flops
    True
    """
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise ConfigError(f"register_flops expected a Module subclass. Received: {cls!r}")

    def add(function: Callable) -> Callable:
        FLOP_COUNTERS[cls] = function
        return function

    return add if counter is None else add(counter)


def _counter(module: Module) -> Callable | None:
    for klass in type(module).__mro__:
        if klass in FLOP_COUNTERS:
            return FLOP_COUNTERS[klass]
    return None


@dataclass
class Call:
    """One ``forward`` call seen by :func:`trace`: the module, its dotted path in the model
    (``""`` for the model itself), its depth, input and output shapes, and its FLOPs."""

    path: str
    module: Module
    depth: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...] = ()
    flops: int = 0
    counted: bool = False  # FLOPs from a counter (its own children are not listed)
    hidden: bool = False  # inside a module counted as a whole
    children_flops: int = field(default=0, repr=False)


def check_input_shape(who: str, input_shape) -> tuple:
    """``input_shape`` as a tuple of positive ints, whose first entry (the batch) may be
    None; a ConfigError otherwise."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if not shape or not all(is_int(size, 1) or (size is None and axis == 0)
                            for axis, size in enumerate(shape)):
        raise ConfigError(
            f"{who} expected input_shape to be a tuple of positive integers, with the batch "
            f"size first (None: any batch size), e.g. (None, 1, 28, 28). "
            f"Received: input_shape={input_shape!r}"
        )
    return tuple(None if size is None else int(size) for size in shape)


def trace(model: Module, input_shape) -> list[Call]:
    """Run ``model`` once in inference mode on zeros of ``input_shape`` (batch 1 where it
    is None; 2 when the model holds a BatchNorm built with ``track_running_stats=False``,
    which needs more than one value per channel at inference too) and return every
    ``forward`` call, parents before their children.

    The zeros have the dtype of the model's first parameter (float32 without parameters)
    and live on the model's backend. Each module's ``forward`` is wrapped for the run and
    restored afterwards. A module that calls no child's ``forward`` (ConvBNAct in its
    folded inference form) is one call.

    Examples
    --------
    >>> from xpnn.layers import Dense, Flatten, Sequential
    >>> calls = trace(Sequential([Flatten(), Dense(12, 3)]), (None, 3, 4))
    >>> [(call.path, call.output_shape) for call in calls]
    [('', (1, 3)), ('0', (1, 12)), ('1', (1, 3))]
    """
    shape = check_input_shape("trace", input_shape)
    if shape[0] is None:
        shape = (2 if _uses_batch_statistics(model) else 1, *shape[1:])
    backend = model.backend
    parameters = model.parameters()
    dtype = parameters[0].dtype if parameters else backend.dtype("float32")
    x = backend.xp.zeros(shape, dtype=dtype, device=backend.device)

    calls: list[Call] = []
    stack: list[Call] = []
    patched = []
    seen = set()
    for path, module in _named_modules(model):
        if id(module) in seen:
            continue
        seen.add(id(module))
        patched.append(module)
        module.forward = _recording(module, path, calls, stack)
    try:
        model.forward(x, train=False)
    finally:
        for module in patched:
            del module.forward  # the class's method again
    return calls


def _uses_batch_statistics(model: Module) -> bool:
    """Whether a BatchNorm in ``model`` keeps no running statistics (and so normalizes
    with the batch's own at inference: one sample of (N, C) features has no variance)."""
    return any(isinstance(module, BatchNorm) and module.running_mean is None
               for module in model.modules())


def _named_modules(model: Module, prefix: str = ""):
    yield prefix, model
    for name, child in model.named_children():
        yield from _named_modules(child, f"{prefix}.{name}" if prefix else name)


def _recording(module: Module, path: str, calls: list, stack: list):
    original = module.forward  # the bound method of the class
    counter = _counter(module)

    def forward(x, *, train: bool = False):
        parent = stack[-1] if stack else None
        call = Call(path, module, 0 if parent is None else parent.depth + 1, tuple(x.shape),
                    hidden=parent is not None and (parent.counted or parent.hidden),
                    counted=counter is not None)
        calls.append(call)
        stack.append(call)
        try:
            y, backprop = original(x, train=train)
        finally:
            stack.pop()
        call.output_shape = tuple(y.shape)
        call.flops = (int(counter(module, call.input_shape, call.output_shape))
                      if counter is not None else call.children_flops)
        if parent is not None:
            parent.children_flops += call.flops
        return y, backprop

    return forward


def format_flops(flops: float) -> str:
    """``18570231808`` -> ``'18.57 GFLOP'`` (decimal prefixes, two decimals).

    Examples
    --------
    >>> format_flops(18_570_231_808), format_flops(2_500_000), format_flops(96)
    ('18.57 GFLOP', '2.50 MFLOP', '96 FLOP')
    """
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(flops) >= factor:
            return f"{flops / factor:.2f} {prefix}FLOP"
    return f"{int(flops)} FLOP"


def layer_table(model: Module, input_shape, *, depth: int | None = None) -> str:
    """The table of :meth:`xpnn.Module.summary` with an input shape (see the module
    docstring): one row per layer (its path in the model and its type, indented by depth),
    its output shape, its parameters and FLOPs (a container's row holds the sums of its
    layers), then the totals. ``depth`` limits how deep rows are listed (1: the model's
    direct children only); the totals always cover the whole model.
    """
    shape = check_input_shape("summary", input_shape)
    if depth is not None and not is_int(depth, 1):
        raise ConfigError(f"summary expected depth to be a positive integer or None. "
                          f"Received: depth={depth!r}")
    calls = trace(model, shape)
    root, rows = calls[0], []
    dynamic = shape[0] is None

    def shown(dims) -> str:
        dims = list(dims)
        if dynamic and dims:
            dims[0] = None
        return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"

    listed = [call for call in calls[1:]
              if not call.hidden and (depth is None or call.depth <= depth)]
    for call in listed or calls[:1]:  # a single layer: its own row
        indent = "  " * max(call.depth - 1, 0)
        rows.append((f"{indent}{call.path or 'model'} ({type(call.module).__name__})",
                     shown(call.output_shape), f"{call.module.num_parameters():,}",
                     f"{call.flops:,}"))
    header = ("Layer (type)", "Output shape", "Param #", "FLOPs")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    widths[0] += 4
    widths[1] += 4

    def line(row) -> str:
        return (f"{row[0]:<{widths[0]}}{row[1]:<{widths[1]}}{row[2]:>{widths[2]}}"
                f"   {row[3]:>{widths[3]}}")

    rule = "=" * len(line(header))
    batch = root.input_shape[0]  # the batch the model ran on (see trace)
    samples = f"{batch} sample" + ("" if batch == 1 else "s")
    lines = [line(header), rule, *(line(row) for row in rows), rule,
             f"Input shape: {shown(shape)}",
             f"Total params: {model.num_parameters():,}",
             f"Total FLOPs: {root.flops:,} ({format_flops(root.flops)}) for {samples} "
             f"(2 per multiply-accumulate of Conv2D and Dense)"]
    return "\n".join(lines)
