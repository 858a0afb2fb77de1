"""Layers: each defines ``forward(x, *, train) -> (y, backprop)`` against the Array API."""

from xpnn.layers.activations import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from xpnn.layers.batchnorm import BatchNorm
from xpnn.layers.blocks import ConvBNAct
from xpnn.layers.containers import Residual, Sequential
from xpnn.layers.conv import Conv2D
from xpnn.layers.dense import Dense
from xpnn.layers.dropout import Dropout
from xpnn.layers.normalization import LayerNorm
from xpnn.layers.pooling import AdaptiveAvgPool2D, AvgPool2D, GlobalAvgPool, MaxPool2D
from xpnn.layers.shape import Flatten, Identity
from xpnn.module import Buffer, Module, Parameter

__all__ = [
    "AdaptiveAvgPool2D",
    "AvgPool2D",
    "BatchNorm",
    "Buffer",
    "Conv2D",
    "ConvBNAct",
    "Dense",
    "Dropout",
    "Flatten",
    "GlobalAvgPool",
    "Identity",
    "LayerNorm",
    "LeakyReLU",
    "MaxPool2D",
    "Module",
    "Parameter",
    "ReLU",
    "Residual",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Tanh",
]
