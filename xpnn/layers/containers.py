"""Combinators: Sequential (a chain) and Residual (``x + block(x)``).

Their backward passes compose the children's closures: Sequential calls them in reverse
order (the chain rule), Residual adds the skip path's gradient to the block's:
d/dx (x + f(x)) = I + f'(x), so dx = dy + f'(x)^T dy.

``backprop(dy, need_input_grad=False)`` returns None and skips the work whose only use
is the gradient of the input: a training loop passes it, because nobody needs the
gradient of the data. Sequential then stops at its first layer with parameters and asks
that layer not to compute its dx (every backprop accepts the flag); for a first Dense
layer this saves a third of its backward pass, for a first convolution its whole
transposed convolution.
"""

from __future__ import annotations

from collections.abc import Iterable

from xpnn.errors import ConfigError, ShapeError
from xpnn.module import Module
from xpnn.validation import grad_shape


class Chain(Module):
    """Base of modules that apply their child layers one after another, as listed by
    :meth:`steps`. :class:`Sequential` is one; Darknet53's stem, stages and head are
    others (their children are attributes, so their state names match timm's)."""

    def steps(self) -> list[Module]:
        """The layers, in the order they are applied."""
        raise NotImplementedError(f"{type(self).__name__} does not define steps()")

    def __call__(self, x):
        """Inference: ``layer(x)`` for each layer in turn. Unlike ``forward`` no backward
        closures are kept, so each intermediate result is freed as soon as the next layer
        has used it (peak memory: about two activations, not all of them)."""
        x, _ = self.prepare(x)
        for layer in self.steps():
            x = layer(x)
        return x

    def forward(self, x, *, train: bool = False):
        x, _ = self.prepare(x)
        layers = tuple(self.steps())
        backprops = []
        for layer in layers:
            x, backprop = layer.forward(x, train=train)
            backprops.append(backprop)
        out_shape = tuple(x.shape)

        def backprop(dy, *, need_input_grad: bool = True):
            grad_shape(self, dy, out_shape)  # a wrong dy never reaches a child
            if need_input_grad:
                for step in reversed(backprops):
                    dy = step(dy)
                return dy
            first = self._first_trainable(layers)
            if first == len(layers):  # no parameters anywhere: nothing to compute
                return None
            for index in range(len(layers) - 1, first, -1):
                dy = backprops[index](dy)
            backprops[first](dy, need_input_grad=False)
            return None

        return x, backprop

    def _first_trainable(self, layers) -> int:
        """:func:`_first_trainable`, remembered for this exact sequence of layer objects
        (walking every parameter costs as much as a small layer's backward)."""
        cached = getattr(self, "_first_trainable_cache", None)
        if cached is None or len(cached[0]) != len(layers) or any(
            old is not new for old, new in zip(cached[0], layers, strict=True)
        ):
            cached = self._first_trainable_cache = (layers, _first_trainable(layers))
        return cached[1]


class Sequential(Chain):
    """Apply layers one after another. Children are named ``"0"``, ``"1"``, ...

    Parameters
    ----------
    layers : iterable of Module
    seed : int, optional
        Re-draw every parameter of every layer, in order, from one generator seeded with
        ``seed``: the same seed gives the same model on every backend.
    dtype : str, optional
        Parameter dtype for every layer (``"float32"`` or ``"float64"``).

    Examples
    --------
    >>> import numpy as np
    >>> from xpnn.layers import Dense, ReLU
    >>> model = Sequential([Dense(4, 8), ReLU(), Dense(8, 2)], seed=0)
    >>> model(np.zeros((3, 4), dtype="float32")).shape
    (3, 2)
    >>> sorted(model.state_dict())
    ['0.bias', '0.weight', '2.bias', '2.weight']
    """

    def __init__(self, layers: Iterable[Module] = (), *, seed=None, dtype=None):
        super().__init__()
        self.layers = list(layers)
        for index, layer in enumerate(self.layers):
            if not isinstance(layer, Module):
                raise ConfigError(
                    f"Sequential expected layers (xpnn Modules). "
                    f"Received at position {index}: {layer!r}"
                )
        if seed is not None or dtype is not None:
            self.initialize(seed, dtype)

    def named_children(self):
        for index, layer in enumerate(self.layers):
            yield str(index), layer

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(self.layers[index])
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def append(self, layer: Module) -> Sequential:
        self.layers.append(layer)
        return self

    def steps(self) -> list[Module]:
        return self.layers

    def config(self) -> dict:
        return {"layers": [_layer_config(layer) for layer in self.layers]}


class Residual(Module):
    """``x + block(x)``: the skip connection of ResNets and Darknet53.

    The block must return an output of the same shape as its input.
    """

    def __init__(self, block: Module):
        super().__init__()
        if not isinstance(block, Module):
            raise ConfigError(f"Residual expected a Module as block. Received: {block!r}")
        self.block = block

    def __call__(self, x):
        """Inference without keeping the block's backward closures."""
        x, _ = self.prepare(x)
        return x + self._checked(x, self.block(x))

    def forward(self, x, *, train: bool = False):
        x, _ = self.prepare(x)
        fx, block_backprop = self.block.forward(x, train=train)
        return x + self._checked(x, fx), skip_connection(block_backprop, self,
                                                         tuple(x.shape))

    @staticmethod
    def _checked(x, fx):
        if fx.shape != x.shape:
            raise ShapeError(
                f"Residual expected its block to keep the shape of the input. "
                f"Received: input {tuple(x.shape)}, block output {tuple(fx.shape)}"
            )
        return fx

    def config(self) -> dict:
        return {"block": _layer_config(self.block)}


def skip_connection(branch_backprop, module=None, shape=None):
    """The backward pass of ``y = x + branch(x)``: ``dx = dy + branch_backprop(dy)``.
    With ``module`` and ``shape`` (of ``y``) given, ``dy`` is checked first."""

    def backprop(dy, *, need_input_grad: bool = True):
        if shape is not None:
            grad_shape(module, dy, shape)
        if need_input_grad:
            return dy + branch_backprop(dy)
        branch_backprop(dy, need_input_grad=False)
        return None

    return backprop


def _first_trainable(layers) -> int:
    """Index of the first layer that has parameters (``len(layers)`` when none has)."""
    for index, layer in enumerate(layers):
        for _ in layer.named_parameters():
            return index
    return len(layers)


def _layer_config(layer: Module) -> dict:
    return {"type": type(layer).__name__, "config": layer.config()}
