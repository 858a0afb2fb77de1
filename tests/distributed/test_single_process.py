"""xpnn.distributed in one process: sharding, the checks fit makes before training, the
one-rank communicator, and what needs no MPI (the ranks themselves: test_mpi.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xpnn import backends, distributed
from xpnn.datasets import BatchLoader
from xpnn.datasets.batches import shard_bounds
from xpnn.errors import ConfigError
from xpnn.layers import BatchNorm, Conv2D, Dense, Flatten, GlobalAvgPool, ReLU, Sequential
from xpnn.optim import SGD
from xpnn.training import evaluate, fit
from xpnn.training.checkpoint import Position, restore_checkpoint, save_checkpoint
from xpnn.training.history import History

ROOT = Path(__file__).resolve().parents[2]


class CollectivesForbidden(distributed.Communicator):
    """Rank 0 of ``size`` ranks that fails if any collective is called: what fit must
    check before it talks to the other ranks."""

    def __init__(self, size: int):
        self.rank, self.size = 0, size

    def _called(self, *args, **kwargs):
        raise AssertionError("a collective ran before the arguments were checked")

    allreduce = broadcast = allreduce_host = barrier = _called
    broadcast_object = gather_object = allgather_object = _called


class EveryRankAlike(CollectivesForbidden):
    """Rank 0 of ``size`` ranks that all report what rank 0 reports: the exchange of
    check results works, any other collective fails the test."""

    def allgather_object(self, obj):
        return [obj] * self.size


def mlp(seed: int = 1):
    return Sequential([Dense(6, 8, dtype="float64", seed=seed), ReLU(),
                       Dense(8, 3, dtype="float64", seed=seed + 1)])


def data(n: int = 50):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 6)), rng.integers(0, 3, n)


@pytest.mark.parametrize("count", [0, 1, 5, 32, 203])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_shards_cover_every_item_once_in_order_with_sizes_within_one(count, size):
    bounds = [shard_bounds(count, rank, size) for rank in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == count
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(size - 1))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_a_full_global_batch_gives_rank_r_the_r_th_slice():
    assert [shard_bounds(4 * 16, rank, 4) for rank in range(4)] == [
        (0, 16), (16, 32), (32, 48), (48, 64)]


def test_sharded_batches_together_are_the_one_process_batches():
    x, y = np.arange(23.0).reshape(23, 1), np.arange(23)
    loader = BatchLoader(x, y, 8, seed=3, backend="numpy")
    whole = [yb.tolist() for _, yb in loader.epoch_batches(2)]
    parts = [[yb.tolist() for _, yb in loader.epoch_batches(2, shard=(rank, 3))]
             for rank in range(3)]
    joined = [sum((parts[rank][k] for rank in range(3)), []) for k in range(len(whole))]
    assert joined == whole
    resumed = [yb.tolist() for _, yb in loader.epoch_batches(2, start=1, shard=(1, 3))]
    assert resumed == parts[1][1:]


def test_one_rank_communicator_trains_exactly_as_no_communicator():
    x, y = data()
    models = [mlp(), mlp()]
    for model, communicator in zip(models, (None, distributed.SingleProcess()), strict=True):
        fit(model, (x, y), (x, y), optimizer=SGD(model.parameters(), lr=0.1, momentum=0.9),
            epochs=2, batch_size=8, verbose=False, progress=False, communicator=communicator)
    for name, value in models[0].state_dict().items():
        np.testing.assert_array_equal(backends.to_numpy(value),
                                      backends.to_numpy(models[1].state_dict()[name]))
    assert evaluate(models[0], x, y) == evaluate(models[0], x, y,
                                                 communicator=distributed.SingleProcess())


def test_fit_refuses_what_is_not_a_communicator():
    model = mlp()
    with pytest.raises(ConfigError, match="communicator.*xpnn.distributed.init"):
        fit(model, data(), optimizer=SGD(model.parameters(), lr=0.1), communicator=object(),
            verbose=False, progress=False)


def test_fit_refuses_diagnose_with_several_ranks_before_any_collective():
    model = mlp()
    with pytest.raises(ConfigError, match="diagnose=True.*2 ranks"):
        fit(model, data(), optimizer=SGD(model.parameters(), lr=0.1), diagnose=True,
            communicator=CollectivesForbidden(2), verbose=False, progress=False)


def test_a_last_global_batch_smaller_than_the_ranks_is_refused_before_training():
    model = mlp()
    before = backends.to_numpy(model.state_dict()["0.weight"]).copy()
    with pytest.raises(ConfigError, match=r"50 samples.*4 ranks x 4 leave 2 sample"):
        fit(model, data(50), optimizer=SGD(model.parameters(), lr=0.1), batch_size=4,
            communicator=EveryRankAlike(4), verbose=False, progress=False)
    np.testing.assert_array_equal(backends.to_numpy(model.state_dict()["0.weight"]), before)


def test_resuming_with_another_global_batch_names_ranks_and_the_batch_to_use(tmp_path):
    model = mlp()
    optimizer = SGD(model.parameters(), lr=0.1)
    path = tmp_path / "run.safetensors"
    save_checkpoint(path, model, optimizer, None, History(), Position(0), seed=0,
                    batch_size=64, num_samples=50, ranks=2)
    with pytest.raises(ConfigError) as error:
        restore_checkpoint(path, model, optimizer, None, seed=0, batch_size=32,
                           num_samples=50, batches_per_epoch=2, ranks=1)
    message = str(error.value)
    assert "global batch of the checkpointed run, 64 (2 ranks x 32" in message
    assert "1 ranks x 32" in message and "64 = 1 ranks x 64" in message
    # the same global batch on one process is accepted
    restore_checkpoint(path, model, optimizer, None, seed=0, batch_size=64, num_samples=50,
                       batches_per_epoch=1, ranks=1)


def test_sync_batchnorm_with_one_rank_changes_nothing():
    def cnn():
        return Sequential([Conv2D(1, 3, 3, padding=1, dtype="float64", seed=0),
                           BatchNorm(3, dtype="float64"), ReLU(), GlobalAvgPool(), Flatten(),
                           Dense(3, 2, dtype="float64", seed=1)])

    x = np.random.default_rng(0).standard_normal((16, 1, 5, 5))
    y = np.arange(16) % 2
    plain, synced = cnn(), cnn()
    assert distributed.sync_batchnorm(synced, distributed.SingleProcess()) == 1
    for model in (plain, synced):
        fit(model, (x, y), optimizer=SGD(model.parameters(), lr=0.1), epochs=1, batch_size=4,
            verbose=False, progress=False)
    for name, value in plain.state_dict().items():
        np.testing.assert_array_equal(backends.to_numpy(value),
                                      backends.to_numpy(synced.state_dict()[name]))
    assert "communicator" not in synced.config() and distributed.sync_batchnorm(synced, None)


def test_sharded_outputs_on_one_rank_keep_the_input_order_and_refuse_nothing_to_do():
    names = [f"n{i}" for i in range(5)]
    out = distributed.sharded_outputs(lambda batch: np.array([[int(n[1:])] for n in batch]),
                                      names, distributed.SingleProcess(), batch_size=2)
    assert out[:, 0].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="at least one input"):
        distributed.sharded_outputs(lambda b: b, [], distributed.SingleProcess())


def test_one_rank_communicator_collectives_are_the_identity():
    comm = distributed.SingleProcess()
    arrays = [np.ones(3)]
    assert comm.allreduce(arrays, op="mean")[0] is arrays[0]
    assert comm.broadcast(arrays)[0] is arrays[0]
    assert comm.allreduce_host([1, 2]).tolist() == [1.0, 2.0]
    assert comm.gather_object(5) == comm.allgather_object(5) == [5]
    with pytest.raises(ConfigError, match="op 'sum' or 'mean'"):
        comm.allreduce(arrays, op="max")


def test_init_without_mpi4py_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ConfigError, match=r'pip install "xpnn\[distributed\]"'):
        distributed.init()


@pytest.mark.parametrize("variables, expected", [
    ({}, 1),
    ({"PMI_SIZE": "4"}, 4),                          # MPICH / Intel MPI (Hydra)
    ({"OMPI_COMM_WORLD_SIZE": "3"}, 3),              # Open MPI
    ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "8"}, 8),  # srun
    ({"SLURM_STEP_NUM_TASKS": "8"}, 1),              # inside an allocation, not srun
    ({"PMI_SIZE": "junk"}, 1),
])
def test_launched_size_reads_the_launchers_variables(monkeypatch, variables, expected):
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert distributed.launched_size() == expected


def test_the_darknet53_example_prints_results_in_input_order_in_one_process(tmp_path,
                                                                          tiny_darknet):
    images = tiny_darknet
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "darknet53.py"), *images,
                           "--weights", "tiny.safetensors", "--batch-size", "2"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 1, done.stderr  # broken.png is not an image
    shown = [line for line in done.stdout.splitlines() if line.startswith("img")]
    assert shown == ["img0.png", "img1.png", "img2.png", "img3.png", "img4.png"]
    assert "broken.png: not an image" in done.stderr
    assert "5 images in" in done.stdout


def test_an_unsynchronized_batchnorm_needs_two_samples_per_rank_in_the_last_batch():
    model = Sequential([Dense(6, 4, dtype="float64", seed=0), BatchNorm(4, dtype="float64"),
                        ReLU(), Dense(4, 3, dtype="float64", seed=1)])
    with pytest.raises(ConfigError, match=r"at least 2 sample\(s\) per rank.*sync_batchnorm"):
        fit(model, data(50), optimizer=SGD(model.parameters(), lr=0.1), batch_size=4,
            communicator=EveryRankAlike(2), verbose=False, progress=False)


class RankOneFailed(EveryRankAlike):
    """Rank 0 of two, told that rank 1 raised a MissingFileError."""

    def allgather_object(self, obj):
        from xpnn.errors import MissingFileError

        return [obj, (MissingFileError, "No weights file at 'x'")]


def test_an_error_on_another_rank_is_raised_here_with_its_class_and_rank():
    from xpnn.distributed.agreement import on_every_rank
    from xpnn.errors import MissingFileError

    with pytest.raises(MissingFileError, match=r"No weights file at 'x' \(raised on rank 1\)"):
        on_every_rank(RankOneFailed(2), lambda: 1)


def test_dropout_draws_masks_of_its_own_on_each_rank_reproducibly():
    from xpnn.distributed.data_parallel import split_random_streams
    from xpnn.layers import Dropout

    def masks(rank, seed=3):
        model = Sequential([Dropout(0.5, seed=seed)])
        assert split_random_streams(model, rank) == 1
        y, _ = model.forward(np.ones((4, 8)), train=True)
        return backends.to_numpy(y)

    assert not np.array_equal(masks(0), masks(1))  # the ranks' slices get other masks
    np.testing.assert_array_equal(masks(1), masks(1))  # a run is reproducible
