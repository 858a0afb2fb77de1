"""Making the ranks fail together: an error on one rank is raised on every rank.

MPI has no timeout: a rank that stops calling collectives (it raised an error that its
caller caught, or it returned early) leaves the others waiting in the next collective for
ever. So every step of ``fit`` that may fail on some ranks only (argument checks, reading
or writing a checkpoint on rank 0) runs through :func:`on_every_rank`: the ranks exchange
"ok" or the error they got, and if any failed, every rank raises it, before any of them
goes on to the next collective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xpnn.errors import ConfigError

__all__ = ["on_every_rank", "same_on_every_rank"]


def on_every_rank(communicator, function: Callable[[], Any], *, root: int | None = None,
                  share_result: bool = False) -> Any:
    """Call ``function()`` on every rank (``root=None``) or on rank ``root`` only; if it
    raises on any rank, raise on every rank: the rank's own exception where it failed, the
    same class with the failing rank named elsewhere. Returns the result (with
    ``share_result``, ``root``'s result on every rank, sent as a Python object).

    Examples
    --------
    >>> from xpnn.distributed import SingleProcess
    >>> on_every_rank(SingleProcess(), lambda: 42, root=0, share_result=True)
    42
    """
    result, failure = None, None
    if root is None or communicator.rank == root:
        try:
            result = function()
        except Exception as error:  # noqa: BLE001 (re-raised below, on every rank)
            failure = error
    if communicator.size > 1:
        reports = communicator.allgather_object(
            None if failure is None else (type(failure), str(failure)))
    else:
        reports = [None if failure is None else True]
    for rank, report in enumerate(reports):
        if report is None:
            continue
        if failure is not None:
            raise failure
        kind, message = report
        raise _rebuilt(kind, f"{message} (raised on rank {rank})")
    if share_result and communicator.size > 1:
        result = communicator.broadcast_object(result, root=root or 0)
    return result


def _rebuilt(kind: type, message: str) -> Exception:
    """An exception of class ``kind`` with ``message`` (a RuntimeError naming the class when
    that class cannot be built from a message alone)."""
    try:
        error = kind(message)
    except Exception:  # noqa: BLE001 (any constructor problem: fall back)
        return RuntimeError(f"{kind.__name__}: {message}")
    return error if isinstance(error, BaseException) else RuntimeError(message)


def same_on_every_rank(communicator, who: str, values: dict[str, Any]) -> None:
    """Raise a :class:`~xpnn.errors.ConfigError` on every rank unless every rank passed
    the same ``values`` (e.g. the number of training samples and the batch size), naming
    the first rank and field that differ from rank 0's."""
    if communicator.size == 1:
        return
    everyone = communicator.allgather_object(values)
    for rank, theirs in enumerate(everyone):
        for name, value in everyone[0].items():
            if theirs.get(name) != value:
                raise ConfigError(
                    f"{who} expected the same {name} on every rank (each rank takes its "
                    f"slice of the same data and runs the same steps). Received: "
                    f"{name}={theirs.get(name)!r} on rank {rank}, {value!r} on rank 0"
                )
