"""NCCL collectives for CuPy arrays, for :mod:`xpnn.distributed` (never run without a GPU).

One NCCL communicator per process and GPU: rank 0 draws NCCL's unique id, MPI broadcasts
it, and every rank joins with ``NcclCommunicator(size, unique_id, rank)`` (NCCL's
``ncclCommInitRank``). The collectives then run on the current CUDA stream, on device
buffers, so gradients never visit the host. Written against CuPy's documented
``cupy.cuda.nccl`` API; when CuPy was built without NCCL, :meth:`NcclCollectives.create`
returns None and xpnn stages arrays through host buffers and MPI instead.
"""

from __future__ import annotations

from xpnn.errors import DTypeError

__all__ = ["NcclCollectives"]

# NumPy dtype name -> the name of NCCL's datatype constant in cupy.cuda.nccl
_NCCL_TYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32",
               "float64": "NCCL_FLOAT64", "int32": "NCCL_INT32", "int64": "NCCL_INT64"}


class NcclCollectives:
    """In-place all-reduce (sum) and broadcast of one contiguous CuPy buffer over NCCL."""

    def __init__(self, communicator, nccl, device):
        self.communicator, self.nccl, self.device = communicator, nccl, device

    @classmethod
    def create(cls, mpi_comm, device) -> NcclCollectives | None:
        """Join the NCCL communicator of every rank of ``mpi_comm`` on ``device`` (a
        collective: every rank must call it), or None, on every rank, when NCCL is missing
        on any rank or two ranks on one machine share a GPU (NCCL refuses that)."""
        try:
            from cupy.cuda import nccl
            available = bool(getattr(nccl, "available", True))
        except ImportError:
            nccl, available = None, False
        import socket

        # every rank must decide alike, or the ones that go on would wait for ever
        where = (socket.gethostname(), int(device.id))
        reports = mpi_comm.allgather((available, where))
        places = [place for _, place in reports]
        if not all(ok for ok, _ in reports) or len(set(places)) < len(places):
            return None
        unique_id = nccl.get_unique_id() if mpi_comm.Get_rank() == 0 else None
        unique_id = mpi_comm.bcast(unique_id, root=0)
        with device:
            communicator = nccl.NcclCommunicator(mpi_comm.Get_size(), unique_id,
                                                 mpi_comm.Get_rank())
        return cls(communicator, nccl, device)

    @staticmethod
    def supports(dtype_name: str) -> bool:
        """Whether NCCL reduces this dtype (the others are staged through the host)."""
        return dtype_name in _NCCL_TYPES

    def _type(self, buffer) -> int:
        name = _NCCL_TYPES.get(buffer.dtype.name)
        if name is None:
            raise DTypeError(f"NCCL expected a buffer of dtype {', '.join(_NCCL_TYPES)}. "
                             f"Received: {buffer.dtype.name}")
        return getattr(self.nccl, name)

    def allreduce_sum(self, buffer) -> None:
        """Replace ``buffer`` (contiguous, on this rank's GPU) by its sum over the ranks,
        on that GPU's current stream."""
        import cupy

        with self.device:
            stream = cupy.cuda.get_current_stream()
            self.communicator.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size,
                                        self._type(buffer), self.nccl.NCCL_SUM, stream.ptr)

    def broadcast(self, buffer, root: int) -> None:
        """Replace ``buffer`` by rank ``root``'s."""
        import cupy

        with self.device:
            stream = cupy.cuda.get_current_stream()
            self.communicator.bcast(buffer.data.ptr, buffer.size, self._type(buffer), root,
                                    stream.ptr)
