"""The JAX backend: ``jax.Array`` on JAX's default device, computed with ``jax.numpy``.

JAX arrays are immutable (``MUTABLE = False``): kernels build new arrays instead of
updating in place, and optimizers rebind ``parameter.value``. Building this backend turns
on JAX's 64-bit mode (``jax_enable_x64``), without which every float64 array silently
becomes float32: xpnn's float64 models and gradient checks need it. It is a process-wide
JAX setting; xpnn passes a dtype to every array it creates, so its float32 models stay
float32.

It overrides no kernel yet: convolution and pooling run the portable code.
"""

from __future__ import annotations

import importlib

import numpy as np
from array_api_compat import is_jax_array

from xpnn.backends.backend import probe_import

NAME = "jax"
INSTALL = "pip install 'xpnn[jax]'  (or: pip install jax)"
MUTABLE = False


def probe() -> tuple[bool, str, str]:
    return probe_import("jax", INSTALL)[1]


def namespace():
    import jax

    jax.config.update("jax_enable_x64", True)
    return importlib.import_module("jax.numpy")


def device(spec, xp):
    import jax

    if spec is None:
        return jax.devices()[0]
    if isinstance(spec, str):
        return jax.devices(spec)[0]
    return spec


def array_type(xp) -> type:
    import jax

    return jax.Array


is_array = is_jax_array


def device_of(array):
    return array.device


def from_numpy(host: np.ndarray, device):
    import jax

    return jax.device_put(host, device)


def to_numpy(array) -> np.ndarray:
    return np.asarray(array)


KERNELS: dict = {}
