"""Model definitions built from xpnn layers (``xpnn.models``).

- :func:`mnist_mlp`: the 784-128-10 ReLU network, with weights trained on full MNIST.
- :func:`mnist_cnn`: a small Darknet-style CNN for 28x28 digits.
- :func:`darknet53`: the ImageNet classifier of YOLOv3 with timm's parameter names.
"""

from xpnn.models.mnist import mnist_cnn, mnist_mlp


def __getattr__(name):
    # Darknet53 is imported on first use: `python -m xpnn.models.darknet53 convert ...`
    # must find the module not yet imported (runpy warns otherwise), and its module is
    # itself callable as the builder function (see models/darknet53.py).
    if name in ("darknet53", "Darknet53"):
        import importlib

        module = importlib.import_module("xpnn.models.darknet53")
        return module if name == "darknet53" else module.Darknet53
    raise AttributeError(f"module 'xpnn.models' has no attribute {name!r}")


__all__ = ["Darknet53", "darknet53", "mnist_cnn", "mnist_mlp"]
