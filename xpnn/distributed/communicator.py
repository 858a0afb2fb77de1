"""Communicators: the collectives data-parallel training needs, over MPI (and NCCL on GPUs).

A communicator connects ``size`` processes (*ranks*, numbered ``0 .. size - 1``) started
together by ``mpiexec -n N`` or Slurm's ``srun``. xpnn needs five collectives from it:

=========================  =================================================================
``allreduce(arrays, op)``  every rank ends with the element-wise sum (or mean) of every
                           rank's arrays; the arrays are packed into one contiguous buffer
                           per dtype, so a step's gradients cost one collective
``broadcast(arrays)``      every rank ends with rank 0's arrays (one collective per dtype)
``allreduce_host(values)`` the sum of a small host float64 vector (metrics, stop flags)
``barrier()``              wait until every rank has arrived
``*_object``               broadcast / gather / allgather of picklable Python objects
=========================  =================================================================

Where the arrays live decides how they travel. Host arrays (NumPy, torch CPU, JAX CPU,
array-api-strict) are copied into a host buffer and reduced by MPI. CuPy arrays are reduced
on the GPU by NCCL when CuPy was built with it (:mod:`xpnn.backends.cupy_nccl`); without
NCCL they are staged through the host, because the MPI wheels on the package index are not
CUDA-aware and xpnn never assumes an MPI that is.

Arrays are reduced *in place* on backends whose arrays are mutable (NumPy, torch, CuPy,
array-api-strict); on JAX new arrays are made. Either way the call returns the list of
results, so ``arrays = comm.allreduce(arrays)`` is correct everywhere.

:class:`SingleProcess` is a communicator of one rank (every collective is the identity): a
program written for several ranks runs unchanged in one process.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from xpnn import backends
from xpnn.errors import ConfigError

__all__ = ["Communicator", "MPICommunicator", "SingleProcess"]

# dtypes MPI reduces natively from a NumPy buffer; others are staged through float64
_MPI_DTYPES = ("float32", "float64", "int32", "int64")
_OPS = ("sum", "mean")
INSTALL = 'pip install "xpnn[distributed]"  (mpi4py and the MPICH wheel)'

def _check_op(who: str, op: str) -> str:
    if op not in _OPS:
        raise ConfigError(f"{who} expected op 'sum' or 'mean'. Received: op={op!r}")
    return op


class Communicator:
    """The interface :func:`xpnn.training.fit`, SyncBatchNorm and sharded inference use.

    Subclasses implement the collectives; ``rank``, ``size`` and ``is_root`` are attributes.
    """

    rank: int = 0
    size: int = 1

    @property
    def is_root(self) -> bool:
        """Whether this is rank 0, the rank that prints, plots and writes files."""
        return self.rank == 0

    def allreduce(self, arrays, op: str = "sum") -> list:
        raise NotImplementedError

    def broadcast(self, arrays, root: int = 0) -> list:
        raise NotImplementedError

    def allreduce_host(self, values) -> np.ndarray:
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        raise NotImplementedError

    def gather_object(self, obj: Any, root: int = 0) -> list | None:
        raise NotImplementedError

    def allgather_object(self, obj: Any) -> list:
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class SingleProcess(Communicator):
    """A communicator of one rank: every collective returns its input.

    Examples
    --------
    >>> import numpy as np
    >>> comm = SingleProcess()
    >>> comm.rank, comm.size, comm.is_root
    (0, 1, True)
    >>> comm.allreduce([np.ones(2)], op="mean")[0].tolist()
    [1.0, 1.0]
    """

    def allreduce(self, arrays, op: str = "sum") -> list:
        _check_op("allreduce", op)
        return list(arrays)

    def broadcast(self, arrays, root: int = 0) -> list:
        return list(arrays)

    def allreduce_host(self, values) -> np.ndarray:
        return np.array(values, dtype=np.float64)

    def barrier(self) -> None:
        return None

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return obj

    def gather_object(self, obj: Any, root: int = 0) -> list | None:
        return [obj]

    def allgather_object(self, obj: Any) -> list:
        return [obj]

    def abort(self, code: int = 1) -> None:
        os._exit(code)


class MPICommunicator(Communicator):
    """The collectives of an mpi4py communicator (``MPI.COMM_WORLD`` by default).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The MPI communicator; default ``MPI.COMM_WORLD``.
    backend : Backend or str, optional
        The backend whose arrays will be reduced (default: the current one). A backend with
        device collectives (CuPy with NCCL) reduces on the device; ``device_collectives=
        False`` forces host staging.
    """

    def __init__(self, comm=None, *, backend=None, device_collectives: bool = True):
        MPI = _import_mpi()  # noqa: N806 (mpi4py's name)
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = int(self.comm.Get_rank()), int(self.comm.Get_size())
        # this rank's number among the ranks on its machine (which GPU it takes)
        self.local_rank = int(self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank())
        if backend is None:
            backend = backends.current()
        elif isinstance(backend, str):
            backend = backends.make_backend(backend)
        self.backend = backend
        self.device = backend.collectives(self.comm) if device_collectives else None
        self._buffers: dict[str, np.ndarray] = {}

    # -- arrays ------------------------------------------------------------------------------
    def allreduce(self, arrays, op: str = "sum") -> list:
        """Sum (``op="sum"``) or average (``"mean"``) each array over the ranks, packed into
        one buffer per dtype; in place where the backend's arrays are mutable.

        Examples
        --------
        Run under ``mpiexec -n 2``: rank ``r`` holds ``[r, r]``, and every rank ends with
        ``[1, 1]`` (the sum 0 + 1)::

            comm = xpnn.distributed.init()
            grads = comm.allreduce([np.full(2, float(comm.rank))])
        """
        _check_op("allreduce", op)
        arrays = list(arrays)
        if op == "mean":
            integral = [backends.dtype_name(a.dtype) for a in arrays
                        if not backends.dtype_name(a.dtype).startswith(("float", "bfloat"))]
            if integral:
                raise ConfigError(f"allreduce expected floating arrays for op='mean'. "
                                  f"Received: dtype {integral[0]} (sum them instead)")
        if not arrays or self.size == 1:
            return arrays
        return self._collective(arrays, op=op, root=None)

    def broadcast(self, arrays, root: int = 0) -> list:
        """Give every rank ``root``'s values of ``arrays`` (same shapes and dtypes on every
        rank); in place where the backend's arrays are mutable."""
        arrays = list(arrays)
        if not arrays or self.size == 1:
            return arrays
        return self._collective(arrays, op=None, root=root)

    def _collective(self, arrays, *, op, root):
        """One packed collective per (dtype, place) group: arrays on this communicator's
        device when it has device collectives, else host buffers. The arrays may mix
        backends and host NumPy arrays (an optimizer's state holds both)."""
        groups: dict[tuple[str, bool], list[int]] = {}
        for index, array in enumerate(arrays):
            dtype = backends.dtype_name(array.dtype)
            on_device = (self.device is not None and self.device.supports(dtype)
                         and self.backend.owns(array))
            groups.setdefault((dtype, on_device), []).append(index)
        out = list(arrays)
        for (dtype, on_device), indices in groups.items():
            members = [arrays[i] for i in indices]
            if on_device:
                results = self._on_device(members, self.backend, op, root)
            else:
                results = self._on_host(members, dtype, op, root)
            for i, result in zip(indices, results, strict=True):
                out[i] = result
        return out

    def _on_host(self, members, dtype, op, root):
        """Pack into a reused host buffer, reduce or broadcast it with MPI, unpack."""
        staging = dtype if dtype in _MPI_DTYPES else "float64"
        total = sum(math.prod(a.shape) for a in members)
        buffer = self._buffer(staging, total)
        offset = 0
        hosts = [backends.to_numpy(a) for a in members]
        for host in hosts:
            size = host.size
            buffer[offset:offset + size] = host.reshape(-1)
            offset += size
        if root is None:
            self.comm.Allreduce(self._MPI.IN_PLACE, buffer, op=self._MPI.SUM)
            if op == "mean":
                buffer /= self.size
        else:
            self.comm.Bcast(buffer, root=root)
        results, offset = [], 0
        for array, host in zip(members, hosts, strict=True):
            piece = buffer[offset:offset + host.size].reshape(host.shape)
            offset += host.size
            results.append(_write_back(array, piece))
        return results

    def _on_device(self, members, backend, op, root):
        """Pack into one device buffer, reduce or broadcast it with the device collectives
        (NCCL), unpack; no host copy."""
        xp = backend.xp
        flat = xp.concat([xp.reshape(a, (-1,)) for a in members])
        if root is None:
            self.device.allreduce_sum(flat)
            if op == "mean":
                flat = flat / self.size
        else:
            self.device.broadcast(flat, root)
        results, offset = [], 0
        for array in members:
            size = math.prod(array.shape)
            piece = xp.reshape(flat[offset:offset + size], array.shape)
            offset += size
            if backend.mutable:
                array[...] = piece
                results.append(array)
            else:
                results.append(piece)
        return results

    def _buffer(self, dtype: str, total: int) -> np.ndarray:
        buffer = self._buffers.get(dtype)
        if buffer is None or buffer.size < total:
            buffer = self._buffers[dtype] = np.empty(total, dtype=dtype)
        return buffer[:total]

    # -- host values and objects -------------------------------------------------------------
    def allreduce_host(self, values) -> np.ndarray:
        """The sum over the ranks of a host float64 vector (e.g. ``[loss_sum, correct,
        count]``): a new array, identical on every rank."""
        vector = np.array(values, dtype=np.float64).reshape(-1)
        if self.size > 1:
            self.comm.Allreduce(self._MPI.IN_PLACE, vector, op=self._MPI.SUM)
        return vector

    def barrier(self) -> None:
        self.comm.Barrier()

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def gather_object(self, obj: Any, root: int = 0) -> list | None:
        return self.comm.gather(obj, root=root)

    def allgather_object(self, obj: Any) -> list:
        return self.comm.allgather(obj)

    def abort(self, code: int = 1) -> None:
        """End every rank of the job at once (``MPI_Abort``)."""
        self.comm.Abort(code)


def _write_back(array, piece):
    """Put ``piece`` (a host view of the buffer) into ``array``: in place on mutable
    backends, a new array on JAX."""
    if isinstance(array, np.ndarray):
        np.copyto(array, piece)
        return array
    backend = backends.backend_of(array)
    value = backend.asarray(piece, backends.dtype_name(array.dtype))
    if backend.mutable:
        array[...] = value
        return array
    return value


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ConfigError(
            f"xpnn.distributed needs mpi4py and an MPI library. Received: {error}. "
            f"Install them with: {INSTALL}"
        ) from error
    return MPI
