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
import sys
import traceback
from typing import Any

import numpy as np

from xpnn import backends
from xpnn.errors import ConfigError

__all__ = ["Communicator", "MPICommunicator", "SingleProcess", "init", "launched_size"]

# dtypes MPI reduces natively from a NumPy buffer; others are staged through float64
_MPI_DTYPES = ("float32", "float64", "int32", "int64")
_OPS = ("sum", "mean")
INSTALL = 'pip install "xpnn[distributed]"  (mpi4py and the MPICH wheel)'

# Environment variables the common launchers set to the number of ranks: MPICH's and Intel
# MPI's Hydra, Open MPI's mpirun (Slurm's srun: SLURM_STEP_NUM_TASKS, read below).
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


def launched_size() -> int:
    """How many ranks the launcher started (1 when this process was not started by
    ``mpiexec``/``mpirun``/``srun``), read from the launcher's environment variables without
    importing MPI."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    # srun sets SLURM_NTASKS for the whole allocation; SLURM_STEP_NUM_TASKS for this step
    value = os.environ.get("SLURM_STEP_NUM_TASKS", "") if "SLURM_PROCID" in os.environ else ""
    return int(value) if value.isdigit() and int(value) > 0 else 1


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


_hook_installed = False


def _abort_on_uncaught_exception(communicator: Communicator) -> None:
    """Make an uncaught exception on any rank print its traceback (prefixed with the rank)
    and end the whole job with ``MPI_Abort``, so that no other rank waits for ever in a
    collective this rank will never join."""
    global _hook_installed
    if _hook_installed or communicator.size == 1:
        return

    def hook(kind, value, tb):
        try:
            text = "".join(traceback.format_exception(kind, value, tb))
            prefix = f"[rank {communicator.rank}] "
            sys.stderr.write("".join(prefix + line + "\n" for line in text.splitlines()))
            sys.stderr.write(f"[rank {communicator.rank}] ending all {communicator.size} "
                             f"ranks (MPI_Abort)\n")
            sys.stderr.flush()
            sys.stdout.flush()
        finally:
            communicator.abort(1)

    sys.excepthook = hook
    _hook_installed = True


def init(backend=None, *, comm=None, device_collectives: bool = True,
         abort_on_error: bool = True) -> Communicator:
    """The communicator of this job: MPI between the ranks ``mpiexec``/``srun`` started.

    Parameters
    ----------
    backend : Backend or str, optional
        The backend the model runs on. Default: the current one, moved to this rank's
        device where the library has one per rank (CuPy: GPU ``local rank % GPUs``, unless
        ``XPNN_DEVICE`` is set), and made current, so build the model after ``init()``.
        On CuPy with NCCL the collectives run on the GPU (host buffers when NCCL is
        missing or two ranks share a GPU); elsewhere through host buffers.
    comm : mpi4py.MPI.Comm, optional
        Default ``MPI.COMM_WORLD``.
    device_collectives : bool
        ``False`` stages CuPy arrays through the host even when NCCL is there.
    abort_on_error : bool
        Install a ``sys.excepthook`` that prints an uncaught exception with its rank and
        ends every rank (``MPI_Abort``): no rank hangs in a collective when another died.

    Raises
    ------
    ConfigError
        mpi4py is not installed (the message says how to install it).

    Examples
    --------
    ``mpiexec -n 2 python train.py`` with, in ``train.py``::

        comm = xpnn.distributed.init()
        fit(model, train, test, optimizer=opt, batch_size=64, communicator=comm)
    """
    communicator = MPICommunicator(comm, backend=backend, device_collectives=False)
    if abort_on_error:  # first: a rank that fails while setting up the rest ends the job
        _abort_on_uncaught_exception(communicator)
    if backend is None:  # one device per rank on a machine (CuPy: a GPU each)
        chosen = backends.current().for_local_rank(communicator.local_rank)
        if chosen is not backends.current():
            backends.use(chosen)
        communicator.backend = chosen
    if device_collectives:
        communicator.device = communicator.backend.collectives(communicator.comm)
    _warn_if_oversubscribed(communicator)
    return communicator


def _warn_if_oversubscribed(communicator: MPICommunicator) -> None:
    """Several ranks on one machine whose BLAS each start a thread per core make every
    step many times slower (measured: 3-14x with 2 ranks on 2 cores): say so, once, on
    rank 0, unless the thread count is set. Nothing is changed."""
    shared = communicator.comm.Split_type(communicator._MPI.COMM_TYPE_SHARED)
    local_ranks = int(shared.Get_size())
    chosen = [name for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
              if os.environ.get(name)]
    if communicator.rank == 0 and local_ranks > 1 and not chosen:
        share = max(1, (os.cpu_count() or 1) // local_ranks)
        print(f"xpnn.distributed: {local_ranks} ranks share this machine's "
              f"{os.cpu_count()} cores and OMP_NUM_THREADS is not set, so each rank's BLAS "
              f"may start a thread per core (many times slower). Start the job with "
              f"OMP_NUM_THREADS={share}.", file=sys.stderr)
