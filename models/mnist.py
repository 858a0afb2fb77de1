"""Networks for 28x28 digit images (MNIST, Fashion-MNIST), and the weights trained here.

Both builders return a :class:`~xpnn.layers.Sequential` whose ``preprocessing`` states the
input its weights expect (:data:`PREPROCESSING`); :func:`xpnn.io.save` records it in the
file and :func:`xpnn.io.load_model` gives it back. A weights file, shipped or yours, is
rebuilt from its architecture record, so its sizes come from the file.

Examples
--------
>>> import os, tempfile
>>> import xpnn
>>> model = mnist_mlp(hidden=(32,))
>>> path = os.path.join(tempfile.mkdtemp(), "mlp.safetensors")
>>> xpnn.io.save(model, path)
>>> again = mnist_mlp(weights=path)
>>> again[1].weight.shape, again.preprocessing == PREPROCESSING
((32, 784), True)
"""

from __future__ import annotations

from xpnn.io import load_model
from xpnn.layers import ConvBNAct, Dense, Flatten, GlobalAvgPool, ReLU, Residual, Sequential
from xpnn.validation import integer, positive_int

__all__ = ["MNIST_CNN_FILE", "MNIST_MLP_FILE", "PREPROCESSING", "mnist_cnn", "mnist_mlp"]

#: What the models expect: pixels 0-255 divided by 255, no mean or std
#: (``xpnn.datasets.normalize(images)``), as ``(N, 1, 28, 28)`` (the MLP also takes
#: ``(N, 28, 28)`` or ``(N, 784)``: it flattens its input).
PREPROCESSING = {"scale": "1/255", "mean": None, "std": None}
MNIST_MLP_FILE = "mnist_mlp.safetensors"
MNIST_CNN_FILE = "mnist_cnn.safetensors"


def mnist_mlp(hidden=(128,), *, pretrained: bool = False, weights=None,
              weight_init="torch", seed: int | None = 0, dtype="float32") -> Sequential:
    """A ReLU multilayer perceptron ``784 -> hidden... -> 10`` (input (N, 28, 28) or (N, 784)).

    ``pretrained=True`` loads the weights this project trained on full MNIST (shipped with
    the package; their metadata records data, epochs and test accuracy); ``weights=PATH``
    loads another file saved by :func:`xpnn.io.save`. The architecture then comes from the
    file, and the other arguments are not used.

    Examples
    --------
    >>> model = mnist_mlp(hidden=(64,))
    >>> model.num_parameters()
    50890
    """
    path = _weights_path(pretrained, weights, MNIST_MLP_FILE)
    if path is not None:
        return _with_preprocessing(load_model(path))
    sizes = [784, *[positive_int("mnist_mlp", f"hidden[{index}]", size)
                    for index, size in enumerate(hidden)], 10]
    layers = [Flatten()]
    for index, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(Dense(n_in, n_out, weight_init=weight_init))
        if index < len(sizes) - 2:
            layers.append(ReLU())
    return _with_preprocessing(Sequential(layers, seed=seed, dtype=dtype))


def mnist_cnn(*, pretrained: bool = False, weights=None, width: int = 32, seed: int | None = 0,
              dtype="float32") -> Sequential:
    """A small Darknet-style CNN for (N, 1, 28, 28) images, built from the same pieces as
    Darknet53: ConvBNAct units, stride-2 downsampling and residual [1x1 -> 3x3] blocks.

    ``28x28x1 -> conv 3x3 (w/2) -> conv 3x3 s2 (w) -> residual -> conv 3x3 s2 (2w)
    -> residual -> global average pool -> dense 10`` with ``w = width``.

    ``pretrained=True`` loads the weights this project trained on full MNIST (shipped
    with the package); ``weights=PATH`` loads another file saved by :func:`xpnn.io.save`.
    The architecture then comes from the file, and the other arguments are not used.
    """
    path = _weights_path(pretrained, weights, MNIST_CNN_FILE)
    if path is not None:
        return _with_preprocessing(load_model(path))
    width = integer("mnist_cnn", "width", width, low=2)

    def residual(channels: int) -> Residual:
        half = channels // 2
        return Residual(Sequential([ConvBNAct(channels, half, 1), ConvBNAct(half, channels, 3)]))

    return _with_preprocessing(Sequential([
        ConvBNAct(1, width // 2, 3),
        ConvBNAct(width // 2, width, 3, stride=2),   # 14x14
        residual(width),
        ConvBNAct(width, 2 * width, 3, stride=2),    # 7x7
        residual(2 * width),
        GlobalAvgPool(),
        Dense(2 * width, 10),
    ], seed=seed, dtype=dtype))


def _weights_path(pretrained: bool, weights, filename: str):
    """The file to load: ``weights``, else the shipped ``filename`` when ``pretrained``."""
    if weights is not None or not pretrained:
        return weights
    from xpnn.weights import path as shipped

    return shipped(filename)


def _with_preprocessing(model: Sequential) -> Sequential:
    """``model``, stating :data:`PREPROCESSING` unless its file recorded one."""
    if getattr(model, "preprocessing", None) is None:
        model.preprocessing = dict(PREPROCESSING)
    return model
