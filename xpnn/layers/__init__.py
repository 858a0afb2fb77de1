"""Layers: each defines ``forward(x, *, train) -> (y, backprop)`` against the Array API."""

from xpnn.layers.activations import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from xpnn.layers.containers import Residual, Sequential
from xpnn.layers.dense import Dense
from xpnn.layers.shape import Flatten, Identity
from xpnn.module import Buffer, Module, Parameter

__all__ = [
    "Buffer",
    "Dense",
    "Flatten",
    "Identity",
    "LeakyReLU",
    "Module",
    "Parameter",
    "ReLU",
    "Residual",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Tanh",
]
