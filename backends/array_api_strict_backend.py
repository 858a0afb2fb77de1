"""The array-api-strict backend: the standard's reference namespace, which refuses
everything the standard does not define. On its non-default device ``"device1"`` it also
refuses arrays of two devices in one operation, so a forgotten ``device=`` fails here as
it would on a GPU (the tests run it there).

It overrides no kernel: it runs the portable code, which is what it is for.
"""

from __future__ import annotations

import importlib
import sys

import numpy as np

from xpnn.backends.backend import probe_import

NAME = "array_api_strict"
INSTALL = "pip install array-api-strict"
MUTABLE = True


def probe() -> tuple[bool, str, str]:
    return probe_import("array_api_strict", INSTALL)[1]


def namespace():
    return importlib.import_module("array_api_strict")


def device(spec, xp):
    if spec is None:
        return xp.Device("CPU_DEVICE")
    return xp.Device(spec) if isinstance(spec, str) else spec


def array_type(xp) -> type:
    return type(xp.asarray(0.0))


def is_array(x) -> bool:
    # The array class is not exported; its module is imported with the library, and an
    # array of a library nobody imported cannot exist.
    module = sys.modules.get("array_api_strict._array_object")
    return module is not None and isinstance(x, module.Array)


def device_of(array):
    return array.device


def from_numpy(host: np.ndarray, device):
    import array_api_strict

    return array_api_strict.asarray(host, device=device)


def to_numpy(array) -> np.ndarray:
    import array_api_strict

    cpu = array_api_strict.Device("CPU_DEVICE")
    if array.device != cpu:
        array = array_api_strict.asarray(array, device=cpu, copy=True)
    return np.asarray(array)


KERNELS: dict = {}
