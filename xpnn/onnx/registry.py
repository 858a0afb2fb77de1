"""Which function exports which layer: :data:`CONVERTERS` and :func:`register`.

A converter is ``convert(module, graph, x, path) -> y``: it adds the ONNX nodes computing
``module``'s inference output to ``graph`` (a :class:`xpnn.onnx.exporter.GraphBuilder`)
from the tensor named ``x`` and returns the name of the output tensor. ``path`` is the
module's dotted path in the model (``"stages.0.blocks.1"``), used to name nodes and
initializers. A container converts its children with ``graph.convert(child, x, path)``.

A converter registered for a class also exports its subclasses, unless a subclass defines
its own ``forward`` (it may compute something else): such a class needs a converter of its
own, and without one the export names it in a ConfigError.
"""

from __future__ import annotations

from collections.abc import Callable

from xpnn.errors import ConfigError
from xpnn.module import Module

__all__ = ["CONVERTERS", "converter_for", "register"]

#: layer class -> ``convert(module, graph, x, path) -> output tensor name``.
CONVERTERS: dict[type, Callable] = {}


def register(cls: type[Module], converter: Callable | None = None):
    """Export layers of class ``cls`` with ``converter``; usable as a decorator.

    Examples
    --------
    >>> from xpnn.layers import Identity
    >>> class Passthrough(Identity):
    ...     def forward(self, x, *, train=False):
    ...         return super().forward(x, train=train)
    >>> @register(Passthrough)
    ... def convert_passthrough(module, graph, x, path):
    ...     return graph.node("Identity", [x], path=path)
    >>> converter_for(Passthrough(), "0") is convert_passthrough
    True
    >>> del CONVERTERS[Passthrough]
    """
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise ConfigError(f"xpnn.onnx.register expected a Module subclass. Received: {cls!r}")

    def add(function: Callable) -> Callable:
        CONVERTERS[cls] = function
        return function

    return add if converter is None else add(converter)


def converter_for(module: Module, path: str) -> Callable:
    """The converter of ``module`` (found through its class's bases), or a ConfigError
    naming the layer's ``path`` in the model, its class and how to add one."""
    kind = type(module)
    where = f"{path} ({kind.__name__})" if path else f"the model ({kind.__name__})"
    for klass in kind.__mro__:
        if klass not in CONVERTERS:
            continue
        if klass is kind or kind.forward is klass.forward:
            return CONVERTERS[klass]
        raise ConfigError(
            f"xpnn.onnx.export cannot export {where}: {kind.__name__} defines its own "
            f"forward(), so the converter of its base {klass.__name__} does not apply. "
            f"Register one with @xpnn.onnx.register({kind.__name__})."
        )
    raise ConfigError(
        f"xpnn.onnx.export cannot export {where}: there is no ONNX converter for "
        f"{kind.__name__}. Replace the layer, or register a converter with "
        f"@xpnn.onnx.register({kind.__name__}) (see xpnn.onnx.registry)."
    )
