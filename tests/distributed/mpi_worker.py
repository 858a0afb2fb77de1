"""Scenarios run by every rank under ``mpiexec -n 2`` (launched by test_mpi.py).

``python mpi_worker.py SCENARIO OUT_DIR``: each scenario asserts on every rank; an
assertion error ends the job with a non-zero exit (xpnn.distributed.init installs the
abort hook), and the test shows the ranks' output. Rank 0 writes ``OUT_DIR/SCENARIO.json``
with what the test checks on top.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from xpnn import backends, distributed
from xpnn.errors import ConfigError
from xpnn.layers import BatchNorm, Conv2D, Dense, Flatten, GlobalAvgPool, ReLU, Sequential
from xpnn.optim import SGD, Adam
from xpnn.training import fit

SCENARIOS = {}


def scenario(function):
    SCENARIOS[function.__name__] = function
    return function


def host(array):
    return np.asarray(backends.to_numpy(array))


def mlp(seed: int = 1):
    return Sequential([Dense(6, 8, dtype="float64", seed=seed), ReLU(),
                       Dense(8, 3, dtype="float64", seed=seed + 1)])


def cnn(seed: int = 1):
    return Sequential([Conv2D(1, 4, 3, padding=1, dtype="float64", seed=seed),
                       BatchNorm(4, dtype="float64"), ReLU(), GlobalAvgPool(), Flatten(),
                       Dense(4, 3, dtype="float64", seed=seed + 1)])


def data(n: int = 203, shape=(6,)):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, *shape)), rng.integers(0, 3, n)


def max_difference(a, b) -> float:
    return max(float(np.abs(host(a[k]) - host(b[k])).max()) for k in a)


def test_backends():
    names = ["numpy"]
    for name in ("torch", "array_api_strict", "jax"):
        if backends.probe(name)[0]:
            names.append(name)
    return names


@scenario
def collectives(comm, out):
    """Rank-dependent arrays of several dtypes reduce and broadcast correctly, on every
    backend that runs here (packed into one buffer per dtype)."""
    checked = []
    for name in test_backends():
        device = "device1" if name == "array_api_strict" else None
        backend = backends.make_backend(name, device)
        xp = backend.xp
        on = distributed.MPICommunicator(backend=backend)
        r = float(comm.rank + 1)  # ranks hold 1 and 2
        arrays = [backend.asarray(np.full((2, 3), r), "float64"),
                  backend.asarray(np.arange(4.0) * r, "float32"),
                  backend.asarray(np.array([int(r)]), "int64")]
        summed = on.allreduce(arrays, op="sum")
        np.testing.assert_array_equal(host(summed[0]), np.full((2, 3), 3.0))
        np.testing.assert_array_equal(host(summed[1]), np.arange(4.0) * 3)
        np.testing.assert_array_equal(host(summed[2]), [3])
        assert backends.dtype_name(summed[1].dtype) == "float32"
        assert backend.owns(summed[0])
        if backend.mutable:  # in place: the same arrays hold the result
            assert summed[0] is arrays[0]
        mean = on.allreduce([backend.asarray(np.full(5, r), "float64")], op="mean")
        np.testing.assert_array_equal(host(mean[0]), np.full(5, 1.5))
        values = on.broadcast([backend.asarray(np.full(3, r), "float32")])
        np.testing.assert_array_equal(host(values[0]), np.full(3, 1.0))
        # host NumPy and device arrays mixed, as in an optimizer's state dict
        mixed = on.allreduce([np.array([r]), backend.asarray(np.full(2, r), "float64")])
        assert isinstance(mixed[0], np.ndarray) and backend.owns(mixed[1])
        np.testing.assert_array_equal(host(mixed[1]), [3.0, 3.0])
        assert mixed[0].tolist() == [3.0]
        assert xp is not None
        checked.append(name)
    assert list(comm.allreduce_host([comm.rank, 1.0])) == [1.0, 2.0]
    assert comm.broadcast_object({"from": comm.rank}) == {"from": 0}
    assert comm.allgather_object(comm.rank) == [0, 1]
    gathered = comm.gather_object(comm.rank * 10)
    assert gathered == ([0, 10] if comm.rank == 0 else None)
    comm.barrier()
    return {"backends": checked, "size": comm.size}


@scenario
def broadcast(comm, out):
    """After fit's start every rank holds rank 0's parameters; another model on one rank
    is a clear error on every rank."""
    model = mlp(seed=1 + comm.rank * 10)  # different initial values per rank
    optimizer = Adam(model.parameters(), lr=0.01)
    distributed.broadcast_state(comm, model, optimizer)
    mine = {k: host(v) for k, v in model.state_dict().items()}
    theirs = comm.broadcast_object(mine)
    assert max_difference(mine, theirs) == 0.0
    reference = {k: host(v) for k, v in mlp(seed=1).state_dict().items()}
    assert max_difference(mine, reference) == 0.0
    odd = mlp() if comm.rank == 0 else Sequential([Dense(6, 9, dtype="float64", seed=1)])
    try:
        distributed.broadcast_state(comm, odd, None)
    except ConfigError as error:
        message = str(error)
    else:
        raise AssertionError("a different model on rank 1 was not refused")
    assert "rank 1" in message, message
    return {"message": message}


def run_fit(model, optimizer, comm, batch_size, epochs=3, **options):
    x, y = data()
    return fit(model, (x, y), (x[:50], y[:50]), optimizer=optimizer, epochs=epochs,
               batch_size=batch_size, verbose=False, progress=False, communicator=comm,
               **options)


@scenario
def equivalence(comm, out):
    """2 ranks x batch b == 1 process x batch 2b (float64, SGD momentum and Adam), with the
    last incomplete global batch (203 samples, global batch 32: 11 left), and the same
    metrics on every rank; then SGD on torch and array-api-strict (on its non-default
    device, as a GPU would be) when they run here. JAX is left to the collectives scenario
    (its immutable arrays are what differs): a JAX fit compiles every operation anew and
    takes over 20 s here."""
    results = {}
    runs = [("sgd", "numpy", lambda p: SGD(p, lr=0.1, momentum=0.9), 3),
            ("adam", "numpy", lambda p: Adam(p, lr=0.01), 3)]
    runs += [(f"sgd-{name}", name, lambda p: SGD(p, lr=0.1, momentum=0.9), 1)
             for name in test_backends()[1:] if name != "jax"]
    for name, backend_name, make_optimizer, epochs in runs:
        device = "device1" if backend_name == "array_api_strict" else None
        with backends.use(backend_name, device=device):
            results[name] = compare_with_one_process(comm, make_optimizer, epochs)
    return results


def compare_with_one_process(comm, make_optimizer, epochs: int) -> float:
    model = mlp()
    history = run_fit(model, make_optimizer(model.parameters()), comm, 16, epochs=epochs)
    single = mlp()
    single_history = run_fit(single, make_optimizer(single.parameters()), None, 32,
                             epochs=epochs)
    difference = max_difference(model.state_dict(), single.state_dict())
    assert difference < 1e-12, difference
    everyone = comm.allgather_object(history.epochs)
    for record in everyone[1:]:
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert [r[key] for r in record] == [r[key] for r in everyone[0]], key
    for mine, one in zip(history.epochs, single_history.epochs, strict=True):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert abs(mine[key] - one[key]) < 1e-12, (key, mine[key], one[key])
    return difference


@scenario
def stopping(comm, out):
    """Early stopping and target accuracy stop every rank at the same epoch as one process."""
    stopped = {}
    for options in ({"patience": 1}, {"target_accuracy": 0.45}):
        model = mlp()
        history = run_fit(model, SGD(model.parameters(), lr=2.0), comm, 16, epochs=12,
                          **options)
        single = mlp()
        single_history = run_fit(single, SGD(single.parameters(), lr=2.0), None, 32,
                                 epochs=12, **options)
        mine = (len(history.epochs), history.stopped_because)
        assert comm.allgather_object(mine) == [mine] * comm.size
        assert mine == (len(single_history.epochs), single_history.stopped_because), \
            (mine, single_history.stopped_because)
        stopped[next(iter(options))] = mine
    return stopped


@scenario
def batchnorm(comm, out):
    """BatchNorm: per-rank statistics by default (differs from one process); with
    sync_batchnorm the run equals one process with the global batch."""
    x, y = data(96, (1, 5, 5))
    result = {}
    for synced in (False, True):
        model = cnn()
        if synced:
            assert distributed.sync_batchnorm(model, comm) == 1
        fit(model, (x, y), optimizer=SGD(model.parameters(), lr=0.1, momentum=0.9),
            epochs=2, batch_size=8, verbose=False, progress=False, communicator=comm)
        single = cnn()
        fit(single, (x, y), optimizer=SGD(single.parameters(), lr=0.1, momentum=0.9),
            epochs=2, batch_size=16, verbose=False, progress=False)
        result["synced" if synced else "per_rank"] = max_difference(model.state_dict(),
                                                                     single.state_dict())
    assert result["synced"] < 1e-10, result
    assert result["per_rank"] > 1e-6, result
    return result


@scenario
def resume(comm, out):
    """Checkpoints with 2 ranks: written by rank 0 only; resuming (after whole epochs, and
    after a Ctrl-C on one rank mid-epoch) equals the uninterrupted run; a checkpoint of
    another global batch is a clear error on every rank."""
    path = Path(out) / "run.safetensors"
    straight = mlp()
    run_fit(straight, SGD(straight.parameters(), lr=0.1, momentum=0.9), comm, 16, epochs=4)

    first = mlp()
    run_fit(first, SGD(first.parameters(), lr=0.1, momentum=0.9), comm, 16, epochs=2,
            checkpoint=path)
    assert path.exists()
    assert not list(Path(out).glob("*.tmp*")), "a rank left a temporary file"
    resumed = mlp(seed=99)  # other initial values: all must come from the checkpoint
    history = run_fit(resumed, SGD(resumed.parameters(), lr=0.1, momentum=0.9), comm, 16,
                      epochs=4, checkpoint=path, resume=path)
    after_epochs = max_difference(resumed.state_dict(), straight.state_dict())
    assert after_epochs < 1e-12, after_epochs
    assert len(history.epochs) == 4
    if comm.rank == 0:  # the same global batch on another number of ranks: 1 x 32
        alone = mlp(seed=99)
        run_fit(alone, SGD(alone.parameters(), lr=0.1, momentum=0.9), None, 32, epochs=4,
                resume=path)
        on_one_rank = max_difference(alone.state_dict(), straight.state_dict())
        assert on_one_rank < 1e-12, on_one_rank

    # Ctrl-C on rank 1 only, in the middle of epoch 2: every rank stops at the next log point
    interrupted_path = Path(out) / "interrupted.safetensors"
    model = mlp()
    calls = {"n": 0}

    def loss_with_ctrl_c(logits, labels):
        from xpnn.losses import softmax_cross_entropy
        calls["n"] += 1
        if comm.rank == 1 and calls["n"] == 9:
            os.kill(os.getpid(), 2)  # SIGINT, as Ctrl-C
        return softmax_cross_entropy(logits, labels)

    try:
        run_fit(model, SGD(model.parameters(), lr=0.1, momentum=0.9), comm, 16, epochs=4,
                checkpoint=interrupted_path, loss=loss_with_ctrl_c, log_every=3)
    except KeyboardInterrupt as error:
        stopped_at = error.history.resume_from
    else:
        raise AssertionError("the Ctrl-C on rank 1 did not stop the run")
    assert comm.allgather_object(stopped_at) == [str(interrupted_path)] * comm.size
    model = mlp(seed=99)
    run_fit(model, SGD(model.parameters(), lr=0.1, momentum=0.9), comm, 16, epochs=4,
            resume=interrupted_path)
    after_ctrl_c = max_difference(model.state_dict(), straight.state_dict())
    assert after_ctrl_c < 1e-12, after_ctrl_c

    other = mlp()
    try:  # 2 ranks x 8 = 16 is not the checkpointed global batch of 32
        run_fit(other, SGD(other.parameters(), lr=0.1), comm, 8, epochs=4, resume=path)
    except ConfigError as error:
        message = str(error)
    else:
        raise AssertionError("another global batch was accepted")
    assert "global batch" in message and "32" in message, message
    return {"after_epochs": after_epochs, "after_ctrl_c": after_ctrl_c, "message": message,
            "stopped_at": stopped_at, "calls": calls["n"]}


@scenario
def failures_agree(comm, out):
    """What fails on some ranks only fails on every rank, so a script that catches xpnn's
    errors never leaves a rank waiting in a collective: a checkpoint folder that rank 0
    cannot write to, a resume file that does not exist, another training set on one rank,
    and a Ctrl-C on rank 0 while it evaluates."""
    from xpnn.errors import XpnnError

    messages = {}
    cases = {
        "checkpoint": dict(checkpoint=Path(out) / "no-such-folder" / "run.safetensors"),
        "resume": dict(resume=Path(out) / "missing.safetensors"),
    }
    for name, options in cases.items():
        model = mlp()
        try:
            run_fit(model, SGD(model.parameters(), lr=0.1), comm, 16, **options)
        except XpnnError as error:
            messages[name] = f"{type(error).__name__}: {error}"
        else:
            raise AssertionError(f"{name}: no error")
    assert "rank 0" in messages["checkpoint"] or comm.rank == 0, messages
    assert messages["resume"].startswith("MissingFileError: No weights file at"), messages

    x, y = data()
    model = mlp()
    mine = (x, y) if comm.rank == 0 else (x[:150], y[:150])
    try:
        fit(model, mine, optimizer=SGD(model.parameters(), lr=0.1), batch_size=16,
            epochs=1, verbose=False, progress=False, communicator=comm)
    except ConfigError as error:
        messages["data"] = str(error)
    else:
        raise AssertionError("different training sets were accepted")
    assert "number of training samples" in messages["data"] and "rank 1" in messages["data"]

    # Ctrl-C on rank 0 while it evaluates epoch 1: every rank stops after that epoch
    path = Path(out) / "evaluated.safetensors"
    calls = {"n": 0}

    def loss_with_ctrl_c(logits, labels):
        from xpnn.losses import softmax_cross_entropy
        calls["n"] += 1
        if comm.rank == 0 and calls["n"] == 8:  # 7 training batches, then the test set
            os.kill(os.getpid(), 2)
        return softmax_cross_entropy(logits, labels)

    model = mlp()
    try:
        run_fit(model, SGD(model.parameters(), lr=0.1), comm, 16, epochs=3, checkpoint=path,
                loss=loss_with_ctrl_c)
    except KeyboardInterrupt as error:
        stopped = (len(error.history.epochs), error.resume_from)
    else:
        raise AssertionError("the Ctrl-C during evaluation did not stop the run")
    assert comm.allgather_object(stopped) == [(1, str(path))] * comm.size, stopped
    from xpnn.io import load_metadata
    assert json.loads(load_metadata(path)["position"])["epoch"] == 1
    comm.barrier()
    return messages


@scenario
def planted_failure(comm, out):
    """An exception on rank 1 in epoch 2 ends the whole job; the checkpoint of epoch 1
    stays complete."""
    path = Path(out) / "kept.safetensors"
    model = mlp()
    calls = {"n": 0}
    batches = 7  # 203 samples in global batches of 32

    def failing_loss(logits, labels):
        from xpnn.losses import softmax_cross_entropy
        calls["n"] += 1
        if comm.rank == 1 and calls["n"] == batches + 3:
            raise RuntimeError("planted failure on rank 1")
        return softmax_cross_entropy(logits, labels)

    run_fit(model, SGD(model.parameters(), lr=0.1), comm, 16, epochs=3, checkpoint=path,
            loss=failing_loss)
    raise AssertionError("training went on after rank 1 failed")


@scenario
def inference(comm, out):
    """Sharded inference returns every output on rank 0 in input order, for arrays and for
    a list of items with a loader, with uneven shards and a last short batch."""
    x = np.arange(7 * 2, dtype=np.float64).reshape(7, 2)
    outputs = distributed.sharded_outputs(lambda b: b * 10, x, comm, batch_size=2)
    names = [f"item-{i}" for i in range(5)]
    loaded = distributed.sharded_outputs(
        lambda b: b, names, comm, batch_size=2,
        load=lambda items: np.array([[int(name.split("-")[1])] for name in items]))
    if comm.rank != 0:
        assert outputs is None and loaded is None
        return {}
    np.testing.assert_array_equal(outputs, x * 10)
    np.testing.assert_array_equal(loaded[:, 0], np.arange(5))
    return {"rows": len(outputs)}


def main() -> None:
    name, out = sys.argv[1], sys.argv[2]
    comm = distributed.init()
    assert comm.size == distributed.launched_size() == 2, (comm.size,
                                                            distributed.launched_size())
    result = SCENARIOS[name](comm, out)
    comm.barrier()
    if comm.rank == 0:
        (Path(out) / f"{name}.json").write_text(json.dumps(result))
        print(f"scenario {name} passed on {comm.size} ranks", flush=True)


if __name__ == "__main__":
    main()
