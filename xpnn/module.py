"""The base every layer and model is built on: :class:`Module` and :class:`Parameter`.

A module computes ``forward(x, *, train) -> (y, backprop)``. The backward contract, the
same for every layer, model and combinator:

    backprop(dy, *, need_input_grad=True) -> dx or None

``backprop`` is a closure holding what the backward pass needs; calling it adds the
gradient of every parameter the forward used into ``parameter.grad`` and returns
``dx = dL/dx``. With ``need_input_grad=False`` it still accumulates every parameter
gradient but may skip the work whose only use is ``dx`` and returns None (a training step
passes it, since nobody needs the gradient of the data); a layer without parameters then
does nothing at all. Every ``backprop`` first checks that ``dy`` has the shape of ``y``
(a :class:`~xpnn.errors.ShapeError` naming it otherwise), before any gradient is touched,
so a wrong ``dy`` never leaves partial gradients behind; combinators check at the top, so
a wrong ``dy`` never reaches a child. ``xpnn.testing.check_layer`` asserts this contract
for every layer.
Calling a ``backprop`` twice adds the parameter gradients twice (they
accumulate, as gradients of two forward passes do); call ``zero_grad()`` between steps.
A ``backprop`` uses the parameter values of its own forward pass even if the parameters
were replaced afterwards (by ``load_state_dict`` or an optimizer on JAX): it is the exact
vector-Jacobian product of the computation that produced ``y``.

``module(x)`` is inference: it runs ``forward(x, train=False)`` and keeps nothing.

Parameters and buffers are found through the module's attributes, in the order they were
assigned, so attribute paths are the names in ``state_dict()`` (``"1.weight"``,
``"stages.0.blocks.0.conv1.bn.running_mean"``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from xpnn import backends
from xpnn.backends import dtype_name
from xpnn.errors import WeightsError
from xpnn.validation import grad_shape, half_precision_allowed, listing


class Parameter:
    """A trainable array ``value`` and its accumulated gradient ``grad`` (``None`` until
    the first backward pass, and again after ``zero_grad``)."""

    __slots__ = ("value", "grad")

    def __init__(self, value=None):
        self.value = value
        self.grad = None

    def add_grad(self, gradient) -> None:
        """Accumulate ``gradient`` into ``grad``. The first gradient is taken as is, so
        layers must pass a freshly computed array they do not keep."""
        if self.grad is None:
            self.grad = gradient
        else:
            self.grad += gradient  # in place where possible; JAX rebinds the attribute

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def dtype(self):
        return self.value.dtype

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={dtype_name(self.dtype)})"


class Buffer:
    """A non-trainable array that is part of the state (e.g. BatchNorm running statistics)."""

    __slots__ = ("value",)

    def __init__(self, value=None):
        self.value = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    def __repr__(self) -> str:
        return f"Buffer(shape={self.shape}, dtype={dtype_name(self.value.dtype)})"


class Module:
    """Base class of layers and models.

    Subclasses set their parameters, buffers and child modules as attributes and define
    ``forward(x, *, train=False) -> (y, backprop)`` with
    ``backprop(dy, *, need_input_grad=True) -> dx or None`` (see the module docstring).
    Layers with parameters also define
    ``reset_parameters(rng, dtype)``, which draws initial values on the host.
    """

    def __init__(self) -> None:
        self.backend = backends.current()

    # -- computing -----------------------------------------------------------------------
    def forward(self, x, *, train: bool = False):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, x):
        """Inference: ``forward(x, train=False)`` without keeping anything for backward."""
        y, _ = self.forward(x, train=False)
        return y

    def prepare(self, x):
        """Return ``(x, xp)``: the input as an array of this module's backend (a host NumPy
        batch is moved there; a torch tensor that requires grad is detached) and the Array
        API namespace to compute with."""
        backend = self.backend
        if type(x) is not backend.array_type or not backend.owns(x):
            x = backends.adopt(x, backend, who=self.describe())
        if getattr(x, "requires_grad", False):
            # A torch tensor tracked by autograd: xpnn computes its own gradients, and a
            # tracked input would drag an autograd graph into every output and into the
            # BatchNorm running statistics (kept across steps). Use its values only.
            x = x.detach()
        return x, backend.xp

    # -- walking the tree ------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        """Direct sub-modules: attributes that are modules, and lists/tuples of modules
        (named ``attribute.index``)."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, list | tuple) and value and all(
                isinstance(item, Module) for item in value
            ):
                for index, item in enumerate(value):
                    yield f"{name}.{index}", item

    def children(self) -> list[Module]:
        return [child for _, child in self.named_children()]

    def modules(self) -> Iterator[Module]:
        """This module and every module below it, parents first."""
        yield self
        for child in self.children():
            yield from child.modules()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """``(path, module)`` for this module (``prefix``, "" for the root) and every module
        below it, parents first, with dotted paths as PyTorch's ``named_modules``."""
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def _named_slots(self, kind: type, prefix: str = "") -> Iterator[tuple[str, Any]]:
        for name, value in vars(self).items():
            if isinstance(value, kind) and value.value is not None:
                yield prefix + name, value
        for child_name, child in self.named_children():
            yield from child._named_slots(kind, f"{prefix}{child_name}.")

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """``(dotted name, Parameter)`` for every trainable array."""
        return self._named_slots(Parameter)

    def parameters(self) -> list[Parameter]:
        return [parameter for _, parameter in self.named_parameters()]

    def named_buffers(self) -> Iterator[tuple[str, Buffer]]:
        """``(dotted name, Buffer)`` for every non-trainable state array."""
        return self._named_slots(Buffer)

    def num_parameters(self) -> int:
        """The number of trainable scalars."""
        return sum(_numel(parameter.shape) for parameter in self.parameters())

    def zero_grad(self) -> None:
        """Forget accumulated gradients (``grad`` becomes ``None``)."""
        for parameter in self.parameters():
            parameter.grad = None

    # -- initializing and moving ---------------------------------------------------------
    def reset_parameters(self, rng, dtype=None) -> None:
        """Draw this module's own initial values from ``rng`` (layers with parameters)."""

    def initialize(self, seed=None, dtype=None) -> Module:
        """Re-draw every parameter of the tree from one generator (``seed``), in order,
        optionally in another dtype; return ``self``."""
        rng = backends.host_rng(seed)
        for module in self.modules():
            module.reset_parameters(rng, dtype)
        return self

    def to(self, backend, device=None) -> Module:
        """Move every parameter and buffer to another backend (a name or a Backend)."""
        target = backend if isinstance(backend, backends.Backend) else (
            backends.make_backend(backend, device)
        )
        for slot_kind in (Parameter, Buffer):
            for _, slot in self._named_slots(slot_kind):
                slot.value = target.asarray(backends.to_numpy(slot.value))
                if slot_kind is Parameter:
                    slot.grad = None
        for module in self.modules():
            module.backend = target
        return self

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{dotted name: array}`` of every parameter and buffer (the live arrays)."""
        state = {name: parameter.value for name, parameter in self.named_parameters()}
        state.update({name: buffer.value for name, buffer in self.named_buffers()})
        return state

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> Module:
        """Replace parameters and buffers by the arrays in ``state`` (host NumPy arrays or
        arrays of this backend). Every name, shape and dtype is checked first, and all
        mismatches are reported in one :class:`WeightsError`; on error nothing changes.
        ``strict=False`` skips missing and unexpected names but still checks shapes.
        PyTorch's ``*.num_batches_tracked`` counters are accepted and ignored."""
        if not isinstance(state, Mapping):
            raise WeightsError(
                f"{self.describe()}.load_state_dict expected a dict name -> array. "
                f"Received: {type(state).__name__}"
            )
        slots = dict(self.named_parameters())
        slots.update(self.named_buffers())
        problems = []
        if strict:
            missing = [name for name in slots if name not in state]
            unexpected = [
                name for name in state
                if name not in slots and not name.endswith("num_batches_tracked")
            ]
            if missing:
                problems.append(f"missing keys ({len(missing)}): {listing(missing)}")
            if unexpected:
                problems.append(f"unexpected keys ({len(unexpected)}): {listing(unexpected)}")
        for name, slot in slots.items():
            if name not in state:
                continue
            given = state[name]
            if not (hasattr(given, "shape") and hasattr(given, "dtype")):
                problems.append(f"{name!r} is not an array (got {type(given).__name__})")
            elif tuple(given.shape) != slot.shape:
                problems.append(
                    f"shape mismatch for {name!r}: expected {slot.shape}, got {tuple(given.shape)}"
                )
            elif dtype_name(given.dtype) != dtype_name(slot.value.dtype):
                problems.append(
                    f"dtype mismatch for {name!r}: expected {dtype_name(slot.value.dtype)}, "
                    f"got {dtype_name(given.dtype)}"
                )
        if problems:
            raise WeightsError(
                f"Cannot load the state into {self.describe()}: "
                + "; ".join(problems)
                + ". Check that the weights were saved from the same architecture and dtype."
            )
        moved = {name: self.backend.asarray(state[name]) for name in slots if name in state}
        for name, value in moved.items():
            slots[name].value = value
            if isinstance(slots[name], Parameter):
                slots[name].grad = None
        return self

    # -- mixed precision ------------------------------------------------------------------
    #: Layers that compute in float32 even under a mixed-precision policy (normalization:
    #: their sums of squares need float32's range and precision). See xpnn.mixed_precision.
    keeps_float32: bool = False

    def half_input(self, x) -> bool:
        """Whether ``x`` is the float16/bfloat16 batch of a mixed-precision step given to
        this float32 layer, which :meth:`forward_in_float32` then handles (outside such a
        step a half-precision input stays an error)."""
        name = dtype_name(x.dtype)
        return half_precision_allowed(name) and name != getattr(self, "dtype", name)

    def forward_in_float32(self, x, *, train: bool = False):
        """``forward`` of a half-precision ``x`` computed in float32: the input and the
        incoming gradient are cast up, the output and the input gradient back down."""
        xp = self.backend.xp
        half = x.dtype
        y, backprop = self.forward(xp.astype(x, self.backend.dtype(self.dtype)), train=train)
        out_shape = tuple(y.shape)

        def backprop_half(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, out_shape)
            dx = backprop(xp.astype(dy, y.dtype), need_input_grad=need_input_grad)
            return None if dx is None else xp.astype(dx, half)

        return xp.astype(y, half), backprop_half

    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this module (recorded in saved files)."""
        return {}

    # -- describing ---------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def describe(self) -> str:
        """One line: the class name and its key arguments, e.g. ``Dense(784, 128)``."""
        return f"{type(self).__name__}({self.extra_repr()})"

    def __repr__(self) -> str:
        children = list(self.named_children())
        if not children:
            return self.describe()
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in children:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"

    def summary(self, input_shape=None, *, depth: int | None = None) -> str:
        """A table of the model, as a string to print.

        Without ``input_shape``: every parameter with its shape and count, and the total.

        With ``input_shape`` (the batch size first; None for any): Keras' layer table. The
        model runs once in inference mode on zeros of that shape (batch 1 for None, or 2
        for a BatchNorm without running statistics: see :func:`xpnn.summary.trace`), and
        each layer (its path in the model and its type, indented by depth) is listed with
        its output shape, parameter count and FLOPs, then the totals. FLOPs count 2 per
        multiply-accumulate of the convolutions and Dense layers; bias additions,
        BatchNorm, activations, pooling and residual additions count 0 (the convention of
        published figures: Darknet53 at 256x256 is 18.57 GFLOP). A container's row holds
        the sums of its layers; ``depth`` limits how deep rows are listed (1: the direct
        children). See :mod:`xpnn.summary`, where :func:`xpnn.summary.register_flops`
        adds counts for layers of your own.

        Examples
        --------
        >>> from xpnn.layers import Dense, ReLU, Sequential
        >>> model = Sequential([Dense(4, 8), ReLU(), Dense(8, 2)], seed=0)
        >>> print(model.summary())
        parameter  shape          count
        0.weight   (8, 4)            32
        0.bias     (8,)               8
        2.weight   (2, 8)            16
        2.bias     (2,)               2
        total                        58
        >>> print(model.summary((None, 4)).splitlines()[-1])
        Total FLOPs: 96 (96 FLOP) for 1 sample (2 per multiply-accumulate of Conv2D and Dense)
        """
        if input_shape is not None or depth is not None:
            # The layer table knows the layers' FLOP counts, so it lives above them
            # (xpnn.summary); imported when asked for, like the records of xpnn.io.
            from xpnn.summary import layer_table

            return layer_table(self, input_shape, depth=depth)
        rows = [(name, str(p.shape), _numel(p.shape)) for name, p in self.named_parameters()]
        width = max([len(name) for name, _, _ in rows] + [len("parameter")])
        shape_width = max([len(shape) for _, shape, _ in rows] + [len("shape")])
        lines = [f"{'parameter':<{width}}  {'shape':<{shape_width}}  {'count':>12}"]
        lines += [f"{name:<{width}}  {shape:<{shape_width}}  {count:>12,}"
                  for name, shape, count in rows]
        lines.append(f"{'total':<{width}}  {'':<{shape_width}}  {self.num_parameters():>12,}")
        return "\n".join(lines)


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count

