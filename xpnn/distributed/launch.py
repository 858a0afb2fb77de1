"""Starting the ranks' communicator: :func:`init`, what the launcher says
(:func:`launched_size`), and the process-wide settings a job of several ranks needs (an
uncaught error ends every rank; a warning when their BLAS threads oversubscribe a machine).
"""

from __future__ import annotations

import os
import sys
import time
import traceback

from xpnn import backends
from xpnn.distributed.communicator import Communicator, MPICommunicator

__all__ = ["init", "launched_size"]

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


_hook_installed = False
# Seconds an uncaught exception's rank waits, after printing it, before MPI_Abort.
ABORT_GRACE_SECONDS = 0.5


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
            # The launcher forwards each rank's output asynchronously, and MPI_Abort kills
            # every process at once: without a moment for the forwarding, the traceback
            # was sometimes lost (an empty stderr from mpiexec, seen once in four CI runs).
            time.sleep(ABORT_GRACE_SECONDS)
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
