"""Learning-rate schedules: closed forms, agreement with torch.optim.lr_scheduler (every
parameter group), resume from a state dict and from a checkpoint, and argument checks."""

import math

import numpy as np
import pytest

from xpnn import optim, schedules
from xpnn.errors import ConfigError, WeightsError
from xpnn.module import Parameter

EPOCHS = 25


def _optimizer(backend, lr=0.1):
    return optim.SGD([Parameter(backend.asarray(np.zeros(2)))], lr=lr, momentum=0.9)


def _trace(schedule, epochs=EPOCHS):
    """The optimizer's lr at creation and after each step()."""
    lrs = [schedule.optimizer.lr]
    for _ in range(epochs):
        schedule.step()
        lrs.append(schedule.optimizer.lr)
    return lrs


def _torch_trace(torch, make, lr=0.1, epochs=EPOCHS):
    optimizer = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=lr, momentum=0.9)
    schedule = make(optimizer)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(epochs):
        optimizer.step()  # PyTorch warns when the schedule steps before the optimizer
        schedule.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_step_lr_closed_form(backend):
    lrs = _trace(schedules.StepLR(_optimizer(backend, lr=1.0), step_size=3, gamma=0.5), 7)
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_cosine_closed_form(backend):
    schedule = schedules.CosineAnnealingLR(_optimizer(backend, lr=1.0), T_max=4, eta_min=0.2)
    lrs = _trace(schedule, 8)
    half = [1.0, 0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2, 0.6,
            0.2 + 0.8 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.2]
    np.testing.assert_allclose(lrs, half + half[-2::-1][:4], rtol=1e-12)
    assert schedule.get_last_lr() == lrs[-1]


@pytest.mark.parametrize("kind, kwargs", [
    ("StepLR", {"step_size": 4}),
    ("StepLR", {"step_size": 1, "gamma": 0.7}),
    ("CosineAnnealingLR", {"T_max": 10}),
    ("CosineAnnealingLR", {"T_max": 7, "eta_min": 0.01}),
])
def test_schedules_match_torch(backend, kind, kwargs):
    torch = pytest.importorskip("torch")
    ours = _trace(getattr(schedules, kind)(_optimizer(backend), **kwargs))
    theirs = _torch_trace(torch, lambda o: getattr(torch.optim.lr_scheduler, kind)(o, **kwargs))
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("make", [
    lambda o: schedules.StepLR(o, step_size=2, gamma=0.3),
    lambda o: schedules.CosineAnnealingLR(o, T_max=6, eta_min=0.001),
], ids=["StepLR", "CosineAnnealingLR"])
def test_resume_from_state_dict(backend, make):
    full = _trace(make(_optimizer(backend)), 10)
    first = make(_optimizer(backend))
    for _ in range(4):
        first.step()
    state = first.state_dict()
    assert state["last_epoch"] == 4
    assert all(isinstance(value, int | float) for value in state.values())
    optimizer = _optimizer(backend)  # a fresh run: lr is the initial one again
    resumed = make(optimizer).load_state_dict(state)
    assert optimizer.lr == full[4]
    lrs = [optimizer.lr]
    for _ in range(6):
        resumed.step()
        lrs.append(optimizer.lr)
    assert lrs == full[4:]


def test_load_state_dict_of_another_schedule_raises(backend):
    step = schedules.StepLR(_optimizer(backend), step_size=2)
    cosine = schedules.CosineAnnealingLR(_optimizer(backend), T_max=3)
    with pytest.raises(WeightsError, match=r"missing keys \['gamma', 'step_size'\]"):
        step.load_state_dict(cosine.state_dict())


@pytest.mark.parametrize("make, match", [
    (lambda o: schedules.StepLR(o, step_size=0), r"step_size to be a positive integer. "
                                                 r"Received: step_size=0"),
    (lambda o: schedules.StepLR(o, step_size=2.5), r"Received: step_size=2.5"),
    (lambda o: schedules.StepLR(o, step_size=2, gamma=-0.1), r"Received: gamma=-0.1"),
    (lambda o: schedules.CosineAnnealingLR(o, T_max=0), r"Received: T_max=0"),
    (lambda o: schedules.CosineAnnealingLR(o, T_max=5, eta_min=-1.0), r"Received: eta_min=-1"),
    (lambda o: schedules.StepLR(object(), step_size=2), r"optimizer with an lr attribute"),
])
def test_bad_arguments_raise_config_error(backend, make, match):
    with pytest.raises(ConfigError, match=match):
        make(_optimizer(backend))


@pytest.mark.parametrize("bad", [{"T_max": 0}, {"last_epoch": 2.9}, {"last_epoch": -1},
                                 {"eta_min": float("nan")}, {"base_lr": "0.1"}])
def test_load_state_dict_refuses_bad_values_and_changes_nothing(bad):
    from xpnn.layers import Dense

    optimizer = optim.SGD(Dense(2, 1, seed=0).parameters(), lr=1.0)
    schedule = schedules.CosineAnnealingLR(optimizer, T_max=4)
    schedule.step()
    before = schedule.state_dict()
    with pytest.raises(WeightsError, match="schedule state"):
        schedule.load_state_dict({**before, **bad})
    assert schedule.state_dict() == before and optimizer.lr == schedule.get_last_lr()


@pytest.mark.parametrize("field, value", [("last_epoch", 10**400), ("last_epoch", 2**63 - 1),
                                          ("T_max", 2**53 + 1), ("T_max", 10**400)],
                         ids=["last_epoch-10^400", "last_epoch-2^63-1", "T_max-2^53+1",
                              "T_max-10^400"])
def test_forged_schedule_counters_are_refused_naming_the_field(field, value):
    optimizer = optim.SGD([Parameter(np.zeros(2))], lr=1.0)
    schedule = schedules.CosineAnnealingLR(optimizer, T_max=4)
    state = {**schedule.state_dict(), field: value}
    with pytest.raises(WeightsError, match=field):
        schedule.load_state_dict(state)
    assert schedule.state_dict()["T_max"] == 4 and optimizer.lr == 1.0


def test_a_learning_rate_that_overflows_is_a_config_error_not_an_overflow_error():
    optimizer = optim.SGD([Parameter(np.zeros(2))], lr=1.0)
    schedule = schedules.StepLR(optimizer, step_size=1, gamma=1e200)
    schedule.step()
    with pytest.raises(ConfigError, match="finite learning rate"):
        schedule.step()
    with pytest.raises(WeightsError, match="finite learning rate"):
        schedules.StepLR(optimizer, step_size=1, gamma=10.0).load_state_dict(
            {"last_epoch": 400, "base_lr": 1.0, "step_size": 1, "gamma": 10.0})


# -- issue 14: parameter groups, MultiStepLR, OneCycleLR, LinearWarmup, ReduceLROnPlateau --

GROUP_LRS = (0.1, 0.03)


def _grouped_optimizer(backend, lrs=GROUP_LRS):
    """Ours: SGD with one group per learning rate."""
    groups = [{"params": [Parameter(backend.asarray(np.zeros(2)))], "lr": lr} for lr in lrs]
    return optim.SGD(groups, lr=lrs[0], momentum=0.9)


def _torch_grouped_optimizer(torch, lrs=GROUP_LRS):
    groups = [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)


def _group_trace(schedule, steps=EPOCHS, metrics=None):
    """Every group's lr at creation and after each step()."""
    optimizer = schedule.optimizer
    lrs = [[group["lr"] for group in optimizer.param_groups]]
    for index in range(steps):
        schedule.step(*([] if metrics is None else [metrics[index]]))
        lrs.append([group["lr"] for group in optimizer.param_groups])
    return lrs


def _torch_group_trace(torch, make, steps=EPOCHS, metrics=None):
    import warnings

    optimizer = _torch_grouped_optimizer(torch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's and step-order warnings
        schedule = make(torch, optimizer)
        lrs = [[group["lr"] for group in optimizer.param_groups]]
        for index in range(steps):
            optimizer.step()
            schedule.step(*([] if metrics is None else [metrics[index]]))
            lrs.append([group["lr"] for group in optimizer.param_groups])
    return lrs


def _sequential(torch, optimizer, warmup, start_factor, after):
    lr_scheduler = torch.optim.lr_scheduler
    first = lr_scheduler.LinearLR(optimizer, start_factor=start_factor, total_iters=warmup)
    if after is None:
        return first
    return lr_scheduler.SequentialLR(optimizer, [first, after(optimizer)], milestones=[warmup])


SCHEDULE_CASES = {
    "StepLR": (lambda o: schedules.StepLR(o, step_size=3, gamma=0.5),
               lambda t, o: t.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5)),
    "Cosine-eta_min": (lambda o: schedules.CosineAnnealingLR(o, T_max=10, eta_min=0.01),
                       lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10,
                                                                           eta_min=0.01)),
    "MultiStepLR": (lambda o: schedules.MultiStepLR(o, milestones=[12, 3, 7, 7], gamma=0.5),
                    lambda t, o: t.optim.lr_scheduler.MultiStepLR(o, milestones=[12, 3, 7, 7],
                                                                  gamma=0.5)),
    "OneCycle-cos": (lambda o: schedules.OneCycleLR(o, max_lr=1.0, total_steps=EPOCHS),
                     lambda t, o: t.optim.lr_scheduler.OneCycleLR(
                         o, max_lr=1.0, total_steps=EPOCHS, cycle_momentum=False)),
    "OneCycle-linear-3phase": (
        lambda o: schedules.OneCycleLR(o, max_lr=[1.0, 0.2], epochs=5, steps_per_epoch=5,
                                       pct_start=0.4, anneal_strategy="linear",
                                       div_factor=10.0, final_div_factor=100.0,
                                       three_phase=True),
        lambda t, o: t.optim.lr_scheduler.OneCycleLR(
            o, max_lr=[1.0, 0.2], epochs=5, steps_per_epoch=5, pct_start=0.4,
            anneal_strategy="linear", div_factor=10.0, final_div_factor=100.0,
            three_phase=True, cycle_momentum=False)),
    "Warmup-cosine": (
        lambda o: schedules.LinearWarmup(o, 5, start_factor=0.1,
                                         after=schedules.CosineAnnealingLR(o, T_max=20)),
        lambda t, o: _sequential(t, o, 5, 0.1,
                                 lambda o: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=20))),
    "Warmup-step": (
        lambda o: schedules.LinearWarmup(o, 4, after=schedules.StepLR(o, 5, gamma=0.3)),
        lambda t, o: _sequential(t, o, 4, 1.0 / 3.0,
                                 lambda o: t.optim.lr_scheduler.StepLR(o, 5, gamma=0.3))),
    "Warmup-alone": (lambda o: schedules.LinearWarmup(o, 6, start_factor=0.25),
                     lambda t, o: _sequential(t, o, 6, 0.25, None)),
}


@pytest.mark.parametrize("name", list(SCHEDULE_CASES))
def test_every_schedule_scales_every_group_as_torch(backend, name):
    torch = pytest.importorskip("torch")
    ours, theirs = SCHEDULE_CASES[name]
    got = _group_trace(ours(_grouped_optimizer(backend)))
    want = _torch_group_trace(torch, theirs)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)


PLATEAU_METRICS = [5.0, 4.0, 4.0, 4.0, 3.9999, 3.5, 3.6, 3.6, 3.6, 3.6, 3.0, 3.0, 3.0, 3.0,
                   3.0, 3.0, 2.0, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5, 2.5]
PLATEAU_CONFIGS = [
    {"patience": 2},
    {"patience": 1, "factor": 0.5, "cooldown": 2},
    {"mode": "max", "patience": 1, "factor": 0.3, "threshold": 0.1, "threshold_mode": "abs"},
    {"patience": 0, "factor": 0.2, "min_lr": 0.005, "threshold": 0.0},
    {"patience": 1, "factor": 0.5, "eps": 0.02},
]


@pytest.mark.parametrize("config", PLATEAU_CONFIGS, ids=lambda c: ",".join(map(str, c.items())))
def test_reduce_lr_on_plateau_matches_torch(backend, config):
    torch = pytest.importorskip("torch")
    metrics = [-m for m in PLATEAU_METRICS] if config.get("mode") == "max" else PLATEAU_METRICS
    got = _group_trace(schedules.ReduceLROnPlateau(_grouped_optimizer(backend), **config),
                       metrics=metrics)
    want = _torch_group_trace(
        torch, lambda t, o: t.optim.lr_scheduler.ReduceLROnPlateau(o, **config),
        metrics=metrics)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert got[-1] != got[0]  # it did reduce


RESUME_CASES = {
    **{name: ours for name, (ours, _) in SCHEDULE_CASES.items()},
    "Plateau": lambda o: schedules.ReduceLROnPlateau(o, patience=1, factor=0.5, cooldown=1),
}


@pytest.mark.parametrize("name", list(RESUME_CASES))
@pytest.mark.parametrize("at", [0, 4, 11])
def test_save_load_continue_equals_uninterrupted(backend, name, at):
    """A state dict through JSON (as a checkpoint stores it) and the optimizer's state
    restore the schedule exactly, whichever step the run stopped at."""
    import json

    make = RESUME_CASES[name]
    metrics = PLATEAU_METRICS if name == "Plateau" else None
    full = _group_trace(make(_grouped_optimizer(backend)), metrics=metrics)

    first = make(_grouped_optimizer(backend))
    for index in range(at):
        first.step(*([] if metrics is None else [metrics[index]]))
    state = json.loads(json.dumps(first.state_dict()))
    optimizer_state = first.optimizer.state_dict()
    optimizer = _grouped_optimizer(backend)  # a fresh run
    resumed = make(optimizer)
    optimizer.load_state_dict(optimizer_state)  # fit restores the optimizer first
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    lrs = [[group["lr"] for group in optimizer.param_groups]]
    for index in range(at, EPOCHS):
        resumed.step(*([] if metrics is None else [metrics[index]]))
        lrs.append([group["lr"] for group in optimizer.param_groups])
    assert lrs == full[at:]


def test_schedule_attributes_tell_fit_when_to_step(backend):
    optimizer = _optimizer(backend)
    epoch_schedules = [schedules.StepLR(optimizer, 2), schedules.MultiStepLR(optimizer, [2]),
                       schedules.CosineAnnealingLR(optimizer, 4),
                       schedules.LinearWarmup(optimizer, 2)]
    for schedule in epoch_schedules:
        assert (schedule.interval, schedule.needs_metric) == ("epoch", False)
    one_cycle = schedules.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
    assert (one_cycle.interval, one_cycle.needs_metric) == ("batch", False)
    plateau = schedules.ReduceLROnPlateau(optimizer)
    assert (plateau.interval, plateau.needs_metric) == ("epoch", True)


def test_base_lrs_per_group_and_state_format(backend):
    optimizer = _grouped_optimizer(backend)
    schedule = schedules.StepLR(optimizer, step_size=1, gamma=0.5)
    assert schedule.base_lrs == list(GROUP_LRS) and schedule.base_lr == GROUP_LRS[0]
    schedule.step()
    assert schedule.get_last_lrs() == [lr * 0.5 for lr in GROUP_LRS]
    assert schedule.get_last_lr() == GROUP_LRS[0] * 0.5 == optimizer.lr
    assert schedule.state_dict() == {"last_epoch": 1, "base_lr": list(GROUP_LRS),
                                     "step_size": 1, "gamma": 0.5}
    single = schedules.StepLR(_optimizer(backend), step_size=1)
    with pytest.raises(WeightsError, match=r"base_lr to be a list of 2 numbers, one per "
                                           r"parameter group. Received: base_lr=0.1"):
        schedule.load_state_dict(single.state_dict())
    plateau = schedules.ReduceLROnPlateau(optimizer)
    assert plateau.state_dict()["best"] is None  # no metric yet (PyTorch: inf)
    plateau.step(2.0)
    assert plateau.state_dict()["best"] == 2.0


def test_one_cycle_refuses_to_step_past_total_steps(backend):
    schedule = schedules.OneCycleLR(_optimizer(backend), max_lr=1.0, total_steps=3)
    for _ in range(3):
        schedule.step()
    last = schedule.optimizer.lr
    with pytest.raises(ConfigError, match=r"at most total_steps=3 steps. Received: step 4"):
        schedule.step()
    assert schedule.last_epoch == 3 and schedule.optimizer.lr == last
    with pytest.raises(WeightsError, match="total_steps=3"):
        schedule.load_state_dict({**schedule.state_dict(), "last_epoch": 5})


@pytest.mark.parametrize("make, match", [
    (lambda o: schedules.MultiStepLR(o, milestones=[2, -1]),
     r"milestones to be a list of integers >= 0. Received: milestones=\[2, -1\]"),
    (lambda o: schedules.MultiStepLR(o, milestones=3), r"Received: milestones=3"),
    (lambda o: schedules.OneCycleLR(o, max_lr=1.0), r"total_steps, or epochs and "
                                                    r"steps_per_epoch"),
    (lambda o: schedules.OneCycleLR(o, max_lr=0.0, total_steps=5), r"max_lr to be a number "
                                                                   r"> 0.0"),
    (lambda o: schedules.OneCycleLR(o, max_lr=[1.0, 2.0], total_steps=5),
     r"max_lr to be a list of 1 numbers, one per parameter group"),
    (lambda o: schedules.OneCycleLR(o, max_lr=1.0, total_steps=5, anneal_strategy="cosine"),
     r"anneal_strategy to be one of \['cos', 'linear'\]. Received: anneal_strategy='cosine'"),
    (lambda o: schedules.OneCycleLR(o, max_lr=1.0, total_steps=5, pct_start=1.5),
     r"pct_start to be a number in \[0.0, 1.0\]"),
    (lambda o: schedules.OneCycleLR(o, max_lr=1.0, epochs=2, steps_per_epoch=0),
     r"steps_per_epoch to be a positive integer"),
    (lambda o: schedules.LinearWarmup(o, 0), r"warmup_epochs to be a positive integer"),
    (lambda o: schedules.LinearWarmup(o, 2, start_factor=2.0), r"start_factor to be a number "
                                                               r"in \[0.0, 1.0\]"),
    (lambda o: schedules.LinearWarmup(o, 2, after=schedules.ReduceLROnPlateau(o)),
     r"after to be a StepLR, MultiStepLR or CosineAnnealingLR"),
    (lambda o: schedules.LinearWarmup(o, 2, after=schedules.StepLR(
        optim.SGD([Parameter(np.zeros(1))], lr=0.1), 2)), r"built on the same optimizer"),
    (lambda o: schedules.ReduceLROnPlateau(o, mode="lowest"), r"mode to be one of"),
    (lambda o: schedules.ReduceLROnPlateau(o, factor=1.0), r"factor to be a number in "
                                                           r"\[0.0, 1.0\)"),
    (lambda o: schedules.ReduceLROnPlateau(o, patience=-1), r"patience to be an integer >= 0"),
    (lambda o: schedules.ReduceLROnPlateau(o, threshold_mode="relative"),
     r"threshold_mode to be one of \['rel', 'abs'\]"),
    (lambda o: schedules.ReduceLROnPlateau(o).step("low"), r"step expected the epoch's "
                                                           r"metric as a number"),
    (lambda o: schedules.ReduceLROnPlateau(object()), r"optimizer with an lr attribute"),
])
def test_bad_arguments_of_new_schedules_raise_config_error(backend, make, match):
    with pytest.raises(ConfigError, match=match):
        make(_optimizer(backend))


@pytest.mark.parametrize("make, bad", [
    (lambda o: schedules.ReduceLROnPlateau(o), {"best": float("nan")}),
    (lambda o: schedules.ReduceLROnPlateau(o), {"num_bad_epochs": -1}),
    (lambda o: schedules.ReduceLROnPlateau(o), {"mode": "up"}),
    (lambda o: schedules.MultiStepLR(o, [2]), {"milestones": [2**60]}),
    (lambda o: schedules.OneCycleLR(o, max_lr=1.0, total_steps=9), {"three_phase": 1}),
    (lambda o: schedules.LinearWarmup(o, 2, after=schedules.CosineAnnealingLR(o, 3)),
     {"after.T_max": 0}),
])
def test_new_schedules_refuse_bad_states_and_change_nothing(make, bad):
    optimizer = optim.SGD([Parameter(np.zeros(2))], lr=1.0)
    schedule = make(optimizer)
    before, lr = schedule.state_dict(), optimizer.lr
    with pytest.raises(WeightsError, match="schedule state"):
        schedule.load_state_dict({**before, **bad})
    assert schedule.state_dict() == before and optimizer.lr == lr


CHECKPOINT_CASES = {
    "Plateau-fresh": (lambda o: schedules.ReduceLROnPlateau(o, patience=0), 0),
    "Plateau": (lambda o: schedules.ReduceLROnPlateau(o, patience=0, factor=0.5), 3),
    "OneCycle": (lambda o: schedules.OneCycleLR(o, max_lr=[0.5, 0.2], total_steps=10), 4),
    "Warmup-cosine": (lambda o: schedules.LinearWarmup(
        o, 2, after=schedules.CosineAnnealingLR(o, T_max=6, eta_min=0.001)), 3),
    "MultiStepLR": (lambda o: schedules.MultiStepLR(o, milestones=[1, 2], gamma=0.5), 3),
}


@pytest.mark.parametrize("name", list(CHECKPOINT_CASES))
def test_checkpoints_restore_groups_and_new_schedules(tmp_path, name):
    """save_checkpoint → restore_checkpoint into a fresh run restores the groups' learning
    rates, the optimizer's settings and the schedule's state exactly."""
    from xpnn.layers import Dense, ReLU, Sequential
    from xpnn.training.checkpoint import Position, restore_checkpoint, save_checkpoint
    from xpnn.training.history import History

    make, steps = CHECKPOINT_CASES[name]

    def run():
        model = Sequential([Dense(2, 4), ReLU(), Dense(4, 2)], seed=0)
        groups = optim.weight_decay_groups(model, 1e-3)
        groups[1]["lr"] = 0.05
        optimizer = optim.RMSprop(groups, lr=0.1, momentum=0.9)
        return model, optimizer, make(optimizer)

    model, optimizer, schedule = run()
    rng = np.random.default_rng(0)
    for _ in range(steps):
        for parameter in model.parameters():
            parameter.grad = rng.standard_normal(parameter.value.shape).astype("float32")
        optimizer.step()
        schedule.step(*([1.0] if schedule.needs_metric else []))
    path = tmp_path / "run.safetensors"
    save_checkpoint(path, model, optimizer, schedule, History(), Position(0, steps),
                    seed=0, batch_size=4, num_samples=400)
    model2, optimizer2, schedule2 = run()
    restore_checkpoint(path, model2, optimizer2, schedule2, seed=0, batch_size=4,
                       num_samples=400, batches_per_epoch=100)
    assert schedule2.state_dict() == schedule.state_dict()
    assert [g["lr"] for g in optimizer2.param_groups] == \
        [g["lr"] for g in optimizer.param_groups]
    assert optimizer2.hyperparameters() == optimizer.hyperparameters()
    for key, value in optimizer.state_dict().items():
        np.testing.assert_array_equal(np.asarray(optimizer2.state_dict()[key]),
                                      np.asarray(value), err_msg=key)
    other = optim.RMSprop(model2.parameters(), lr=0.1, momentum=0.9)  # one group
    with pytest.raises(ConfigError, match="parameters in the groups and order"):
        restore_checkpoint(path, model2, other, None, seed=0, batch_size=4,
                           num_samples=400, batches_per_epoch=100)


@pytest.mark.parametrize("field, value, match", [
    ("base_lr", [0.1, "x"], "schedule record is not a dict of finite numbers"),
    ("base_lr", [0.1, float("nan")], "schedule record is not a dict of finite numbers"),
    ("milestones", [2, 2**63], r"schedule.milestones"),
    ("base_lr", [0.1], r"base_lr to be a list of 2 numbers"),
    ("gamma", {"a": 1}, "schedule record is not a dict of finite numbers"),
])
def test_forged_schedule_records_in_a_checkpoint_are_refused(tmp_path, field, value, match):
    import json

    import xpnn.io
    from xpnn.layers import Dense
    from xpnn.training.checkpoint import Position, restore_checkpoint, save_checkpoint
    from xpnn.training.history import History

    def run():
        model = Dense(2, 2, seed=0)
        optimizer = optim.SGD([{"params": [model.weight]}, {"params": [model.bias],
                                                            "lr": 0.01}], lr=0.1)
        return model, optimizer, schedules.MultiStepLR(optimizer, [2, 4])

    path = tmp_path / "forged.safetensors"
    save_checkpoint(path, *run(), History(), Position(0, 1), seed=0, batch_size=4,
                    num_samples=40)
    metadata = {k: v for k, v in xpnn.io.load_metadata(path).items()
                if k not in ("format", "format_version", "xpnn_version")}
    record = json.loads(metadata["schedule"])
    record[field] = value
    metadata["schedule"] = json.dumps(record)
    xpnn.io.save(xpnn.io.load(path), path, metadata=metadata)
    model, optimizer, schedule = run()
    with pytest.raises(WeightsError, match=match):
        restore_checkpoint(path, model, optimizer, schedule, seed=0, batch_size=4,
                           num_samples=40, batches_per_epoch=10)
    assert schedule.last_epoch == 0 and [g["lr"] for g in optimizer.param_groups] == [0.1, 0.01]
