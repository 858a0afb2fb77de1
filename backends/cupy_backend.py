"""The CuPy backend: arrays on an NVIDIA GPU, computed with array-api-compat's CuPy
namespace. ``XPNN_DEVICE`` picks the GPU (default 0).

Kernels (:mod:`xpnn.backends.cupy_kernels`): the convolution (inference, training forward
and backward: an im2col CUDA kernel, cuBLAS products, a fused epilogue and a deterministic
col2im), max pooling (forward and backward) and training BatchNorm with its activation
(float64 sums, one fused elementwise kernel each way) run hand-written CuPy kernels; dilated
or grouped convolutions, dtypes other than float32/float64 and SyncBatchNorm run the portable
code of :mod:`xpnn.backends.portable`, as does the outer product. Importing this module
imports no CuPy, and the kernels are compiled on first use. None of these kernels has run on
a GPU yet; ``tests/backends/test_cupy_kernels.py`` compares each with its portable twin
wherever CuPy runs.
"""

from __future__ import annotations

import os

import numpy as np
from array_api_compat import is_cupy_array

from xpnn.backends import cupy_kernels
from xpnn.backends.backend import probe_import

NAME = "cupy"
INSTALL = "pip install 'xpnn[cupy]'  (needs an NVIDIA GPU with a CUDA 12 driver)"
MUTABLE = True


def probe() -> tuple[bool, str, str]:
    cupy, (ok, version, reason) = probe_import("cupy", INSTALL)
    if not ok:
        return ok, version, reason
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        cupy.zeros(1)  # the first allocation is where a missing driver fails
    except Exception as error:
        return False, version, f"no usable CUDA device ({type(error).__name__}: {error})"
    if count < 1:
        return False, version, "no CUDA device is visible (cupy.is_available() is False)"
    return True, version, ""


def namespace():
    import array_api_compat.cupy

    return array_api_compat.cupy


def device(spec, xp):
    import cupy

    if spec is None:
        spec = int(os.environ.get("XPNN_DEVICE", "0"))
    return spec if isinstance(spec, cupy.cuda.Device) else cupy.cuda.Device(int(spec))


def array_type(xp) -> type:
    import cupy

    return cupy.ndarray


is_array = is_cupy_array


def device_of(array):
    return array.device


def from_numpy(host: np.ndarray, device):
    import cupy

    with device:
        return cupy.asarray(host)


def astype_hint(dtype: str, name: str = "x") -> str:
    """How a user converts the array ``name`` to ``dtype`` (for error messages)."""
    return f"{name}.astype({dtype!r})"


def to_numpy(array) -> np.ndarray:
    return array.get()


def synchronize(device) -> None:
    """Wait for every kernel queued on ``device``."""
    device.synchronize()


def free_memory(device) -> str:
    """Empty CuPy's memory pools on ``device``: the freed blocks CuPy keeps for reuse,
    which ``nvidia-smi`` shows as used and another library (PyTorch) cannot allocate."""
    import cupy

    with device:
        pool = cupy.get_default_memory_pool()
        held = pool.total_bytes() - pool.used_bytes()
        pool.free_all_blocks()
        cupy.get_default_pinned_memory_pool().free_all_blocks()
    return (f"released {held / 2**20:,.0f} MiB of CuPy's device memory pool on GPU "
            f"{device.id} ({pool.used_bytes() / 2**20:,.0f} MiB still in use by arrays)")


def local_rank_device(local_rank: int):
    """One GPU per rank on a machine: ``local_rank % device count``; None (keep the
    default) when ``XPNN_DEVICE`` chooses the GPU or CuPy sees none."""
    if os.environ.get("XPNN_DEVICE"):
        return None
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 (no usable CUDA: the probe reports why)
        return None
    return local_rank % count if count > 0 else None


def device_collectives(mpi_comm, device):
    """NCCL collectives between the ranks of ``mpi_comm`` on ``device``, or None when this
    CuPy has no NCCL (xpnn.distributed then stages arrays through the host)."""
    from xpnn.backends.cupy_nccl import NcclCollectives

    return NcclCollectives.create(mpi_comm, device)


KERNELS = {
    "conv2d": cupy_kernels.conv2d,
    "conv2d_train": cupy_kernels.conv2d_train,
    "conv2d_backward": cupy_kernels.conv2d_backward,
    "max_pool2d": cupy_kernels.max_pool2d,
    "max_pool2d_backward": cupy_kernels.max_pool2d_backward,
    "batchnorm_train": cupy_kernels.batchnorm_train,
    "batchnorm_backward": cupy_kernels.batchnorm_backward,
}
