"""Data-parallel training and sharded inference over several processes (``xpnn.distributed``).

Start N copies of a program with ``mpiexec -n N python train.py`` (or Slurm's ``srun``);
in it, :func:`init` returns the communicator that connects them::

    comm = xpnn.distributed.init()
    fit(model, train, test, optimizer=optimizer, batch_size=64, communicator=comm)

- :mod:`~xpnn.distributed.communicator`: the MPI communicator (NCCL for CuPy arrays, host
  staging elsewhere) and :class:`SingleProcess`;
- :mod:`~xpnn.distributed.launch`: :func:`init` (one device per rank, an uncaught error ends
  every rank) and :func:`launched_size`;
- :mod:`~xpnn.distributed.data_parallel`: gradient all-reduce, the state broadcast at the
  start, :func:`sync_batchnorm`;
- :mod:`~xpnn.distributed.inference`: :func:`sharded_outputs`, batch inference split over
  the ranks and gathered on rank 0 in input order.

Needs ``pip install "xpnn[distributed]"`` (mpi4py and the MPICH wheel); nothing here is
imported by ``import xpnn`` unless used.
"""

from xpnn.distributed.communicator import Communicator, MPICommunicator, SingleProcess
from xpnn.distributed.data_parallel import broadcast_state, reduce_gradients, sync_batchnorm
from xpnn.distributed.inference import sharded_outputs
from xpnn.distributed.launch import init, launched_size

__all__ = [
    "Communicator",
    "MPICommunicator",
    "SingleProcess",
    "broadcast_state",
    "init",
    "launched_size",
    "reduce_gradients",
    "sharded_outputs",
    "sync_batchnorm",
]
