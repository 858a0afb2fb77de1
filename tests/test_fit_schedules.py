"""fit steps each schedule as its ``interval`` and ``needs_metric`` say: OneCycleLR after
every optimizer step, ReduceLROnPlateau with each epoch's test loss."""

import numpy as np
import pytest

from xpnn import backends
from xpnn.errors import ConfigError
from xpnn.layers import Dense, ReLU, Sequential
from xpnn.optim import SGD
from xpnn.schedules import CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau
from xpnn.training import fit


def mlp():
    return Sequential([Dense(4, 8, dtype="float64", seed=1), ReLU(),
                       Dense(8, 3, dtype="float64", seed=2)])


def data(n=40):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 4)), rng.integers(0, 3, n)


def run(schedule_for, epochs=3, batch_size=8, test=True, **options):
    model = mlp()
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = schedule_for(optimizer)
    x, y = data()
    history = fit(model, (x, y), (x, y) if test else None, optimizer=optimizer,
                  epochs=epochs, batch_size=batch_size, schedule=schedule, verbose=False,
                  progress=False, **options)
    return model, optimizer, schedule, history


def test_one_cycle_steps_after_every_batch_as_pytorch_would():
    steps = 3 * 5  # 3 epochs of 40 samples in batches of 8
    _, optimizer, schedule, history = run(
        lambda opt: OneCycleLR(opt, max_lr=0.5, total_steps=steps))
    alone = OneCycleLR(SGD(mlp().parameters(), lr=0.1), max_lr=0.5, total_steps=steps)
    lrs = []
    for _ in range(steps):
        alone.step()
        lrs.append(alone.get_last_lr())
    assert schedule.last_epoch == steps
    assert optimizer.lr == pytest.approx(lrs[-1], rel=1e-12)
    # per batch, an epoch's record holds the lr after its last step
    assert [r["lr"] for r in history.epochs] == pytest.approx([lrs[4], lrs[9], lrs[14]])


def test_reduce_on_plateau_is_stepped_with_each_epochs_test_loss():
    def plateau(opt):
        return ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.5)

    _, optimizer, _, history = run(plateau, epochs=5)
    replay = ReduceLROnPlateau(SGD(mlp().parameters(), lr=0.1), factor=0.5, patience=0,
                               threshold=0.5)
    after = []  # the lr after each epoch's step
    for record in history.epochs:
        replay.step(record["test_loss"])
        after.append(replay.get_last_lr())
    # an epoch's record holds the lr it trained with: the one set after the epoch before
    assert [r["lr"] for r in history.epochs] == [0.1] + after[:-1]
    assert optimizer.lr == after[-1] < 0.1  # the plateau rule did reduce it


def test_a_schedule_stepped_with_the_test_loss_needs_a_test_set():
    with pytest.raises(ConfigError, match="test set with ReduceLROnPlateau"):
        run(lambda opt: ReduceLROnPlateau(opt), test=False)


def test_a_one_cycle_shorter_than_the_run_is_refused_before_training():
    with pytest.raises(ConfigError, match=r"3 epochs x 5 batches = 15 steps.*total_steps=10"):
        run(lambda opt: OneCycleLR(opt, max_lr=0.5, total_steps=10))


def test_diagnose_with_a_per_batch_schedule_is_refused():
    with pytest.raises(ConfigError, match="diagnose=True with a schedule stepped per batch"):
        run(lambda opt: OneCycleLR(opt, max_lr=0.5, total_steps=15), diagnose=True)


def test_resuming_a_one_cycle_run_equals_the_uninterrupted_run(tmp_path):
    path = tmp_path / "run.safetensors"

    def cycle(opt):
        return OneCycleLR(opt, max_lr=0.5, total_steps=20)

    straight, _, _, _ = run(cycle, epochs=4)
    run(cycle, epochs=2, checkpoint=path)
    resumed, optimizer, schedule, _ = run(cycle, epochs=4, resume=path)
    assert schedule.last_epoch == 20
    for name, value in straight.state_dict().items():
        np.testing.assert_allclose(backends.to_numpy(resumed.state_dict()[name]),
                                   backends.to_numpy(value), rtol=0, atol=1e-15)


def test_per_epoch_schedules_still_step_once_per_epoch():
    _, optimizer, schedule, history = run(lambda opt: CosineAnnealingLR(opt, T_max=3))
    assert schedule.last_epoch == 3
    assert [r["lr"] for r in history.epochs] == pytest.approx([0.1, 0.075, 0.025])
    assert optimizer.lr == pytest.approx(0.0, abs=1e-12)


def test_fit_refuses_labels_equal_to_ignore_index_with_a_clear_error():
    """fit's loss and accuracy sums weight a batch by its size, so samples the loss ignores
    (label -100) would be counted: refused before training, naming them."""
    x, y = data()
    y = y.copy()
    y[::5] = -100
    model = mlp()
    with pytest.raises(ConfigError, match=r"ignore_index \(-100\).*8 such labels"):
        fit(model, (x, y), optimizer=SGD(model.parameters(), lr=0.1), epochs=1,
            batch_size=8, verbose=False, progress=False)


def test_a_batch_whose_labels_are_all_ignored_has_a_zero_gradient():
    from xpnn.losses import softmax_cross_entropy

    loss, dlogits = softmax_cross_entropy(np.ones((2, 3)), np.array([-100, -100]))
    assert np.isnan(float(loss))  # as PyTorch
    assert np.all(backends.to_numpy(dlogits) == 0.0)


def test_resuming_a_run_with_dropout_draws_the_same_masks(tmp_path):
    from xpnn.layers import Dropout

    def model():
        return Sequential([Dense(4, 8, dtype="float64", seed=1), ReLU(), Dropout(0.5, seed=3),
                           Dense(8, 3, dtype="float64", seed=2)])

    x, y = data()
    options = dict(batch_size=8, verbose=False, progress=False)
    straight = model()
    fit(straight, (x, y), optimizer=SGD(straight.parameters(), lr=0.1), epochs=2, **options)
    first = model()
    fit(first, (x, y), optimizer=SGD(first.parameters(), lr=0.1), epochs=1,
        checkpoint=tmp_path / "d.safetensors", **options)
    resumed = model()
    fit(resumed, (x, y), optimizer=SGD(resumed.parameters(), lr=0.1), epochs=2,
        resume=tmp_path / "d.safetensors", **options)
    for name, value in straight.state_dict().items():
        np.testing.assert_array_equal(backends.to_numpy(resumed.state_dict()[name]),
                                      backends.to_numpy(value))


def test_resuming_with_the_parameter_groups_swapped_is_refused(tmp_path):
    def model():
        return Sequential([Dense(4, 4, dtype="float64", seed=1), ReLU(),
                           Dense(4, 4, dtype="float64", seed=2)])

    x, y = data()
    y = y % 3
    net = model()
    first, second = net.children()[0].parameters(), net.children()[2].parameters()
    fit(net, (x, y), optimizer=SGD([{"params": first, "lr": 0.1}, {"params": second}],
                                   lr=0.001), epochs=1, batch_size=8, verbose=False,
        progress=False, checkpoint=tmp_path / "g.safetensors")
    net = model()
    first, second = net.children()[0].parameters(), net.children()[2].parameters()
    swapped = SGD([{"params": second, "lr": 0.1}, {"params": first}], lr=0.001)
    with pytest.raises(ConfigError, match="parameters in the groups and order"):
        fit(net, (x, y), optimizer=swapped, epochs=2, batch_size=8, verbose=False,
            progress=False, resume=tmp_path / "g.safetensors")


def test_a_plateau_schedule_watching_for_a_maximum_is_refused():
    with pytest.raises(ConfigError, match="mode='min'.*Received: mode='max'"):
        run(lambda opt: ReduceLROnPlateau(opt, mode="max"))
