"""Combinators: Sequential (a chain) and Residual (``x + block(x)``).

Their backward passes compose the children's closures: Sequential calls them in reverse
order (the chain rule), Residual adds the skip path's gradient to the block's:
d/dx (x + f(x)) = I + f'(x), so dx = dy + f'(x)^T dy.
"""

from __future__ import annotations

from collections.abc import Iterable

from xpnn.errors import ConfigError, ShapeError
from xpnn.module import Module


class Sequential(Module):
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

    def forward(self, x, *, train: bool = False):
        x, _ = self.prepare(x)
        backprops = []
        for layer in self.layers:
            x, backprop = layer.forward(x, train=train)
            backprops.append(backprop)

        def backprop(dy):
            for step in reversed(backprops):
                dy = step(dy)
            return dy

        return x, backprop

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

    def forward(self, x, *, train: bool = False):
        x, _ = self.prepare(x)
        fx, block_backprop = self.block.forward(x, train=train)
        if fx.shape != x.shape:
            raise ShapeError(
                f"Residual expected its block to keep the shape of the input. "
                f"Received: input {tuple(x.shape)}, block output {tuple(fx.shape)}"
            )
        y = x + fx

        def backprop(dy):
            return dy + block_backprop(dy)

        return y, backprop

    def config(self) -> dict:
        return {"block": _layer_config(self.block)}


def _layer_config(layer: Module) -> dict:
    return {"type": type(layer).__name__, "config": layer.config()}
