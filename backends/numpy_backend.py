"""The NumPy backend: host arrays, computed with array-api-compat's NumPy namespace.

Kernels: the convolution runs through :mod:`xpnn.backends.numpy_conv` (im2col strategies
into reused buffers, with a fused epilogue), and the outer product through ``einsum``
(see :func:`outer`). When numba is installed (``xpnn[fast]``) these run numba-compiled:
training BatchNorm with ConvBNAct's activation (:mod:`xpnn.backends.numba_batchnorm`, equal
to the portable code up to the rounding of its sums), the SGD step and the outer product
(:mod:`xpnn.backends.numba_elementwise`, bit for bit the portable ``sgd_update`` and
``einsum``) and the plain softmax cross-entropy (to rounding); without numba the NumPy
twins run. Pooling uses the portable code, which is already vectorized NumPy.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import is_numpy_array

from xpnn.backends import numba_batchnorm, numba_elementwise, numpy_conv
from xpnn.errors import BackendError

NAME = "numpy"
INSTALL = "pip install numpy"
MUTABLE = True


def probe() -> tuple[bool, str, str]:
    return True, np.__version__, ""


def namespace():
    import array_api_compat.numpy

    return array_api_compat.numpy


def device(spec, xp):
    if spec not in (None, "cpu"):
        raise BackendError(
            f"The numpy backend expected device 'cpu' (NumPy arrays live on the host). "
            f"Received: device={spec!r}"
        )
    return "cpu"


def array_type(xp) -> type:
    return np.ndarray


is_array = is_numpy_array


def device_of(array):
    return "cpu"


def from_numpy(host: np.ndarray, device):
    return host


def astype_hint(dtype: str, name: str = "x") -> str:
    """How a user converts the array ``name`` to ``dtype`` (for error messages)."""
    return f"{name}.astype({dtype!r})"


def to_numpy(array) -> np.ndarray:
    return np.asarray(array)


def outer(backend, a, b):
    """``a[i] * b[j]``: the weight gradient of a dense layer for one sample. As a GEMM
    with an inner dimension of 1 OpenBLAS runs it 5-8x slower than ``einsum`` does
    (measured on the 784x128 MNIST weight: matmul 353 µs, broadcast 80-94 µs, einsum
    46 µs). With numba on, a compiled loop gives einsum's bits about 5x faster
    (:func:`xpnn.backends.numba_elementwise.outer`)."""
    if numba_elementwise.outer_applies(a, b):
        return numba_elementwise.outer(a, b)
    return np.einsum("i,j->ij", a, b)


def value_range(backend, array) -> tuple[int, int]:
    """``(min, max)`` of a non-empty integer array with NumPy's own methods: the portable
    kernel's ``stack`` of the two 0-D results costs more than both reductions (the losses'
    label check took 8 µs per call that way, 2-3 µs this way, for 1 or 128 labels)."""
    return int(array.min()), int(array.max())


def free_memory(device) -> str:
    """Host arrays: ask glibc to return the freed memory it keeps (xpnn's training asks it
    to keep up to 512 MB, see :mod:`xpnn.backends.allocator`)."""
    from xpnn.backends.allocator import release_freed_memory

    if release_freed_memory():
        return "freed host memory returned to the system (malloc_trim)"
    return "no freed host memory to return"


KERNELS = {
    "conv2d": numpy_conv.conv2d,
    "conv2d_train": numpy_conv.conv2d_train,
    "conv2d_backward": numpy_conv.conv2d_backward,
    "outer": outer,
    "value_range": value_range,
    "batchnorm_train": numba_batchnorm.batchnorm_train,
    "batchnorm_backward": numba_batchnorm.batchnorm_backward,
    "sgd_update": numba_elementwise.sgd_update,
    "softmax_cross_entropy_mean": numba_elementwise.softmax_cross_entropy_mean,
}
