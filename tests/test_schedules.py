"""Learning-rate schedules: closed forms, agreement with torch.optim.lr_scheduler, resume
from a state dict, and argument checks."""

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
