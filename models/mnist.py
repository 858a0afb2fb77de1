"""Networks for 28x28 digit images (MNIST, Fashion-MNIST)."""

from __future__ import annotations

import json

from xpnn.errors import ConfigError
from xpnn.layers import Dense, Flatten, ReLU, Sequential

MNIST_MLP_FILE = "mnist_mlp.safetensors"

# What the shipped weights expect: pixels scaled from 0-255 to 0-1, nothing else.
PREPROCESSING = {"scale": "1/255", "mean": None, "std": None}


def mnist_mlp(hidden=(128,), *, pretrained: bool = False, weights=None, seed: int | None = 0,
              dtype="float32") -> Sequential:
    """A ReLU multilayer perceptron ``784 -> hidden... -> 10`` (input (N, 28, 28) or (N, 784)).

    ``pretrained=True`` loads the weights this project trained on full MNIST (shipped with
    the package; their metadata records architecture, data, epochs and test accuracy);
    ``weights=PATH`` loads another file. The hidden sizes then come from the file.

    Examples
    --------
    >>> model = mnist_mlp(hidden=(64,))
    >>> model.num_parameters()
    50890
    """
    path = weights
    if pretrained and path is None:
        from xpnn.weights import path as shipped

        path = shipped(MNIST_MLP_FILE)
    if path is not None:
        from xpnn.io import load, load_metadata

        metadata = load_metadata(path)
        if "hidden" in metadata:
            hidden = tuple(json.loads(metadata["hidden"]))
        model = _build(hidden, seed, dtype)
        load(path, into=model)
        return model
    return _build(hidden, seed, dtype)


def _build(hidden, seed, dtype) -> Sequential:
    sizes = [784, *[int(size) for size in hidden], 10]
    if any(size < 1 for size in sizes):
        raise ConfigError(f"mnist_mlp expected positive hidden sizes. Received: hidden={hidden!r}")
    layers = [Flatten()]
    for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(Dense(n_in, n_out))
        if index < len(sizes) - 2:
            layers.append(ReLU())
    return Sequential(layers, seed=seed, dtype=dtype)


MNIST_CNN_FILE = "mnist_cnn.safetensors"


def mnist_cnn(*, pretrained: bool = False, weights=None, width: int = 32, seed: int | None = 0,
              dtype="float32") -> Sequential:
    """A small Darknet-style CNN for (N, 1, 28, 28) images, built from the same pieces as
    Darknet53: ConvBNAct units, stride-2 downsampling and residual [1x1 -> 3x3] blocks.

    ``28x28x1 -> conv 3x3 (w/2) -> conv 3x3 s2 (w) -> residual -> conv 3x3 s2 (2w)
    -> residual -> global average pool -> dense 10`` with ``w = width``.

    ``pretrained=True`` loads the weights this project trained on full MNIST (shipped
    with the package); ``weights=PATH`` loads another file.
    """
    from xpnn.layers import ConvBNAct, GlobalAvgPool, Residual

    path = weights
    if pretrained and path is None:
        from xpnn.weights import path as shipped

        path = shipped(MNIST_CNN_FILE)
    if path is not None:
        from xpnn.io import load, load_metadata

        width = int(load_metadata(path).get("width", width))

    def residual(channels: int) -> Residual:
        half = channels // 2
        return Residual(Sequential([ConvBNAct(channels, half, 1), ConvBNAct(half, channels, 3)]))

    model = Sequential([
        ConvBNAct(1, width // 2, 3),
        ConvBNAct(width // 2, width, 3, stride=2),   # 14x14
        residual(width),
        ConvBNAct(width, 2 * width, 3, stride=2),    # 7x7
        residual(2 * width),
        GlobalAvgPool(),
        Dense(2 * width, 10),
    ], seed=seed, dtype=dtype)
    if path is not None:
        load(path, into=model)
    return model
