"""xpnn: neural networks written once against the Python Array API standard.

Layers run unchanged on NumPy, CuPy, PyTorch tensors, JAX or array-api-strict, chosen with
``XPNN_BACKEND`` or :func:`xpnn.backends.use`. Start with ``docs/architecture.md``.
"""

__version__ = "0.1.0"

from xpnn import (  # noqa: E402
    backends,
    init,
    io,
    layers,
    losses,
    models,
    optim,
    schedules,
    training,
)
from xpnn.backends import seed  # noqa: E402
from xpnn.errors import (  # noqa: E402
    BackendError,
    ConfigError,
    DataError,
    DataNotFoundError,
    DTypeError,
    MissingFileError,
    ShapeError,
    TrainingStopped,
    WeightsError,
    XpnnError,
)
from xpnn.io import load, load_metadata, load_model, save  # noqa: E402
from xpnn.module import Module, Parameter  # noqa: E402
from xpnn.training import History, evaluate, fit, predict, train_step  # noqa: E402

__all__ = [
    "BackendError",
    "ConfigError",
    "DTypeError",
    "DataError",
    "DataNotFoundError",
    "History",
    "MissingFileError",
    "Module",
    "Parameter",
    "ShapeError",
    "TrainingStopped",
    "WeightsError",
    "XpnnError",
    "backends",
    "evaluate",
    "fit",
    "init",
    "io",
    "layers",
    "load",
    "load_metadata",
    "load_model",
    "losses",
    "models",
    "optim",
    "predict",
    "save",
    "schedules",
    "seed",
    "train_step",
    "training",
]
