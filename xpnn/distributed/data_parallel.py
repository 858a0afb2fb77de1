"""What data-parallel training adds to a step: sharing gradients and starting in step.

Every rank holds a full copy of the model. In step k the ranks together take the global
batch k of a single-process run with batch ``size × batch_size`` (same seeded shuffle); rank
``r`` computes the loss and gradients of its slice only (:func:`~xpnn.datasets.batches.
shard_bounds`). With ``n_r`` samples on rank r and ``n = Σ n_r`` in the global batch, the
global mean loss ``L = (1/n) Σ_i ℓ_i`` has the gradient

    ∂L/∂θ = Σ_r (n_r / n) ∂L_r/∂θ,      L_r = (1/n_r) Σ_{i on rank r} ℓ_i

so each rank scales its loss gradient by ``n_r / n`` (``1 / size`` for a full global batch)
and the gradients are *summed* over the ranks (:func:`reduce_gradients`, one packed
all-reduce). Every rank then applies the same optimizer step to the same values, so the
replicas stay equal without ever broadcasting parameters again; :func:`broadcast_state`
makes them equal at the start (and after rank 0 resumed from a checkpoint).

This holds for losses that are a mean over the batch's samples (every loss in
:mod:`xpnn.losses`) and layers whose training forward treats samples independently. A
BatchNorm layer normalizes with its own rank's batch statistics unless
:func:`sync_batchnorm` connects it to the communicator.
"""

from __future__ import annotations

from xpnn import backends
from xpnn.errors import ConfigError
from xpnn.module import Module

__all__ = ["batchnorm_layers", "broadcast_state", "reduce_gradients", "split_random_streams",
           "sync_batchnorm"]


def reduce_gradients(parameters, communicator) -> None:
    """Replace every parameter's ``grad`` by its sum over the ranks (one all-reduce of a
    packed buffer per dtype). Parameters without a gradient are left alone; every rank must
    have gradients for the same parameters (they do when they run the same model)."""
    having = [p for p in parameters if p.grad is not None]
    reduced = communicator.allreduce([p.grad for p in having], op="sum")
    for parameter, grad in zip(having, reduced, strict=True):
        parameter.grad = grad


def _layout(state: dict) -> list[tuple[str, tuple[int, ...], str]]:
    return [(name, tuple(int(d) for d in value.shape), backends.dtype_name(value.dtype))
            for name, value in state.items()]


def broadcast_state(communicator, model: Module, optimizer=None, root: int = 0) -> None:
    """Give every rank ``root``'s model parameters and buffers and optimizer state.

    First every rank's layout (names, shapes and dtypes) is compared with ``root``'s: a rank
    that built another model or optimizer is a :class:`~xpnn.errors.ConfigError` raised
    on every rank, naming the rank and the first difference, before anything is sent.
    """
    model_state = model.state_dict()
    optimizer_state = optimizer.state_dict() if optimizer is not None else {}
    mine = (_layout(model_state), type(optimizer).__name__, _layout(optimizer_state))
    layouts = communicator.allgather_object(mine)
    for rank, theirs in enumerate(layouts):
        if theirs != layouts[root]:
            raise ConfigError(
                f"data-parallel training expected the same model and optimizer on every rank. "
                f"Received: rank {rank}'s differ from rank {root}'s: "
                f"{_first_difference(layouts[root], theirs)}. Build them the same way on "
                f"every rank (same class, sizes, dtype and optimizer)."
            )
    values = communicator.broadcast(list(model_state.values()), root=root)
    model.load_state_dict(dict(zip(model_state, values, strict=True)))
    if optimizer is not None:
        values = communicator.broadcast(list(optimizer_state.values()), root=root)
        optimizer.load_state_dict(dict(zip(optimizer_state, values, strict=True)))


def _first_difference(expected, received) -> str:
    (model_a, kind_a, opt_a), (model_b, kind_b, opt_b) = expected, received
    if kind_a != kind_b:
        return f"optimizer {kind_b} instead of {kind_a}"
    for what, a, b in (("model", model_a, model_b), ("optimizer state", opt_a, opt_b)):
        for entry_a, entry_b in zip(a, b, strict=False):
            if entry_a != entry_b:
                return f"{what} entry {entry_b} instead of {entry_a}"
        if len(a) != len(b):
            return f"{what} with {len(b)} entries instead of {len(a)}"
    return "unknown"


def split_random_streams(model: Module, rank: int) -> int:
    """Give every layer that draws random numbers in training (Dropout) a stream of this
    rank's own, so the ranks' slices of a batch get independent masks (the same seed on
    every rank would give them all the same mask). The masks then differ from a
    one-process run's, as the batches' random draws are made per slice. Returns the
    number of layers."""
    layers = [module for module in model.modules() if hasattr(module, "split_stream")]
    for layer in layers:
        layer.split_stream(rank)
    return len(layers)


def sync_batchnorm(model: Module, communicator) -> int:
    """Make every BatchNorm layer of ``model`` compute its training statistics over the
    global batch of all ranks (PyTorch's SyncBatchNorm): per channel, the sums behind the
    mean and variance, and in the backward pass ``Σ dy`` and ``Σ dy (x - μ)``, are
    all-reduced (four small collectives per layer and step: the count, Σx and Σ(x - μ)²
    forward, the two backward sums together). ``communicator=None`` turns
    it off again. Inference and saved files are unchanged. Returns the number of layers.

    Examples
    --------
    >>> from xpnn.distributed import SingleProcess
    >>> from xpnn.models import mnist_cnn
    >>> sync_batchnorm(mnist_cnn(seed=0), SingleProcess())  # its seven ConvBNAct units
    7
    """
    layers = batchnorm_layers(model)
    for layer in layers:
        layer.communicator = communicator
    return len(layers)


def batchnorm_layers(model: Module) -> list[Module]:
    """The layers of ``model`` that :func:`sync_batchnorm` connects (BatchNorm's)."""
    return [module for module in model.modules()
            if hasattr(module, "communicator") and hasattr(module, "running_mean")]
