"""Datasets: MNIST and Fashion-MNIST from IDX files, an embedded MNIST sample, and the
preprocessing and batching that turn host arrays into training batches.

This package prepares data on the host with NumPy; batches are moved to the current
backend as they are produced. (It is outside the layer rule: it may import NumPy.)

Examples
--------
>>> from xpnn.datasets import load_dataset, normalize, flatten, BatchLoader
>>> data = load_dataset("mnist-sample")
>>> x_train = flatten(normalize(data.x_train))
>>> loader = BatchLoader(x_train, data.y_train, batch_size=128, seed=0)
>>> xb, yb = next(iter(loader))
>>> xb.shape, str(yb.dtype)
((128, 784), 'int64')
"""

from xpnn.datasets.batches import (
    BatchLoader,
    batches,
    epoch_order,
    flatten,
    normalize,
    one_hot,
)
from xpnn.datasets.dataset import Dataset, load_dataset
from xpnn.datasets.idx import read_idx, write_idx
from xpnn.datasets.mnist import DATASETS, DataNotFoundError, default_cache_dir, load_mnist
from xpnn.datasets.sample import load_mnist_sample

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DataNotFoundError",
    "Dataset",
    "batches",
    "default_cache_dir",
    "epoch_order",
    "flatten",
    "load_dataset",
    "load_mnist",
    "load_mnist_sample",
    "normalize",
    "one_hot",
    "read_idx",
    "write_idx",
]
