"""Optimizers and gradient clipping: step-by-step agreement with torch.optim (also with
parameter groups), state-dict round trips, dtype and in-place behaviour, and
hyperparameter checks, on every backend."""

import numpy as np
import pytest

from xpnn import backends, losses, optim
from xpnn.errors import ConfigError, WeightsError
from xpnn.layers import Dense
from xpnn.module import Parameter
from xpnn.testing import assert_close

SHAPES = [(3, 4), (4,), (2, 1, 3)]
STEPS = 6


def _problem(seed=0, steps=STEPS):
    """Initial values and a gradient per step and parameter (``None`` for "no gradient":
    parameter 1 gets none at step 2, to check that it is skipped)."""
    rng = np.random.default_rng(seed)
    initial = [rng.standard_normal(shape) for shape in SHAPES]
    grads = [[rng.standard_normal(shape) for shape in SHAPES] for _ in range(steps)]
    grads[2][1] = None
    return initial, grads


def _ours(backend, make, initial, grads, dtype="float64"):
    params = [Parameter(backend.asarray(value, dtype)) for value in initial]
    optimizer = make(params)
    history = []
    for step_grads in grads:
        for parameter, grad in zip(params, step_grads, strict=True):
            parameter.grad = None if grad is None else backend.asarray(grad, dtype)
        optimizer.step()
        history.append([backends.to_numpy(p.value).copy() for p in params])
    return history


def _theirs(torch, make, initial, grads):
    params = [torch.tensor(value, requires_grad=True) for value in initial]
    optimizer = make(params)
    history = []
    for step_grads in grads:
        for parameter, grad in zip(params, step_grads, strict=True):
            parameter.grad = None if grad is None else torch.tensor(grad)
        optimizer.step()
        history.append([p.detach().numpy().copy() for p in params])
    return history


def _assert_same_history(ours, theirs, rtol):
    for step, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        for index, (a, b) in enumerate(zip(mine, reference, strict=True)):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-14,
                                       err_msg=f"step {step + 1}, parameter {index}")


SGD_CONFIGS = [
    {"lr": 0.1},
    {"lr": 0.1, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.01},
    {"lr": 0.1, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1},
    {"lr": 0.2, "weight_decay": 0.05},
]


@pytest.mark.parametrize("config", SGD_CONFIGS, ids=lambda c: ",".join(map(str, c.items())))
def test_sgd_matches_torch(backend, config):
    torch = pytest.importorskip("torch")
    initial, grads = _problem()
    ours = _ours(backend, lambda ps: optim.SGD(ps, **config), initial, grads)
    theirs = _theirs(torch, lambda ps: torch.optim.SGD(ps, **config), initial, grads)
    _assert_same_history(ours, theirs, rtol=1e-12)


ADAM_CONFIGS = [
    ("Adam", {}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    ("AdamW", {}),
    ("AdamW", {"lr": 0.01, "betas": (0.5, 0.9), "weight_decay": 0.3}),
]


@pytest.mark.parametrize("name, config", ADAM_CONFIGS,
                         ids=lambda c: c if isinstance(c, str) else ",".join(map(str, c)))
def test_adam_matches_torch(backend, name, config):
    torch = pytest.importorskip("torch")
    initial, grads = _problem(seed=1)
    ours = _ours(backend, lambda ps: getattr(optim, name)(ps, **config), initial, grads)
    theirs = _theirs(torch, lambda ps: getattr(torch.optim, name)(ps, **config), initial, grads)
    _assert_same_history(ours, theirs, rtol=1e-10)


def test_sgd_reference_by_hand(backend):
    """One parameter, two steps of SGD with momentum and weight decay, worked out in NumPy."""
    p0, g1, g2 = np.array([1.0, -2.0]), np.array([0.5, 0.5]), np.array([-1.0, 2.0])
    lr, mu, wd = 0.1, 0.9, 0.01
    d1 = g1 + wd * p0
    p1 = p0 - lr * d1                          # the buffer starts as the first gradient
    d2 = g2 + wd * p1
    p2 = p1 - lr * (mu * d1 + d2)
    history = _ours(backend, lambda ps: optim.SGD(ps, lr=lr, momentum=mu, weight_decay=wd),
                    [p0], [[g1], [g2]])
    np.testing.assert_allclose(history[0][0], p1, rtol=1e-14)
    np.testing.assert_allclose(history[1][0], p2, rtol=1e-14)


def test_adam_first_step_is_lr_times_sign(backend):
    """After one step m/(sqrt(v)) = sign(g) after bias correction: |Δp| = lr (up to eps)."""
    g = np.array([3.0, -1e-3, 20.0])
    history = _ours(backend, lambda ps: optim.Adam(ps, lr=0.5, eps=1e-12), [np.zeros(3)], [[g]])
    np.testing.assert_allclose(history[0][0], -0.5 * np.sign(g), rtol=1e-8)


@pytest.mark.parametrize("name, config", [
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("Adam", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9, "centered": True}),
])
def test_state_dict_round_trip_continues_identically(backend, name, config):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    initial, grads = _problem(seed=2, steps=6)
    make = lambda ps: getattr(optim, name)(ps, **config)  # noqa: E731
    uninterrupted = _ours(backend, make, initial, grads)

    params = [Parameter(backend.asarray(value)) for value in initial]
    first = make(params)
    for step_grads in grads[:3]:
        for parameter, grad in zip(params, step_grads, strict=True):
            parameter.grad = None if grad is None else backend.asarray(grad)
        first.step()
    state = first.state_dict()
    assert int(backends.to_numpy(state["step"])[0]) == 3
    # What a checkpoint does: host copies through safetensors, then a fresh optimizer.
    saved = safetensors_numpy.save(
        {key: np.ascontiguousarray(backends.to_numpy(value)) for key, value in state.items()}
    )
    resumed_params = [Parameter(backend.asarray(backends.to_numpy(p.value))) for p in params]
    resumed = make(resumed_params).load_state_dict(safetensors_numpy.load(saved))
    assert resumed.step_count == 3 and resumed.lr == first.lr
    for step_grads in grads[3:]:
        for parameter, grad in zip(resumed_params, step_grads, strict=True):
            parameter.grad = None if grad is None else backend.asarray(grad)
        resumed.step()
    for index, parameter in enumerate(resumed_params):
        np.testing.assert_array_equal(backends.to_numpy(parameter.value),
                                      uninterrupted[-1][index])


def test_state_dict_is_a_snapshot(backend):
    params = [Parameter(backend.asarray(np.ones(3)))]
    optimizer = optim.SGD(params, lr=0.1, momentum=0.9)
    params[0].grad = backend.asarray(np.ones(3))
    optimizer.step()
    state = optimizer.state_dict()
    optimizer.step()
    assert_close(state["state.0.momentum_buffer"], np.ones(3), backend=backend)
    assert sorted(state) == ["lr", "state.0.momentum_buffer", "step"]


def test_load_state_dict_reports_every_mismatch(backend):
    params = [Parameter(backend.asarray(np.zeros((2, 3)))), Parameter(backend.asarray(np.zeros(4)))]
    optimizer = optim.Adam(params)
    good = optimizer.state_dict()
    bad = dict(good)
    del bad["state.1.exp_avg"]
    bad["state.0.exp_avg_sq"] = np.zeros((3, 2))
    bad["state.0.exp_avg"] = np.zeros((2, 3), dtype="float32")
    bad["state.7.exp_avg"] = np.zeros(1)
    with pytest.raises(WeightsError) as info:
        optimizer.load_state_dict(bad)
    message = str(info.value)
    assert "missing keys (1): 'state.1.exp_avg'" in message
    assert "unexpected keys (1): 'state.7.exp_avg'" in message
    assert "shape mismatch for 'state.0.exp_avg_sq': expected (2, 3), got (3, 2)" in message
    assert "dtype mismatch for 'state.0.exp_avg': expected float64, got float32" in message
    with pytest.raises(WeightsError, match=r"unexpected keys \(6\): 'state.0.exp_avg'"):
        optim.SGD(params, lr=0.1).load_state_dict(good)  # plain SGD keeps no buffers
    assert_close(optimizer.state[0]["exp_avg"], np.zeros((2, 3)))  # nothing changed


@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3),
    lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
    lambda ps: optim.AdamW(ps, lr=1e-2),
    lambda ps: optim.RMSprop(ps, lr=1e-2, momentum=0.5, centered=True, weight_decay=1e-3),
], ids=["SGD", "Adam", "AdamW", "RMSprop"])
def test_float32_model_stays_float32_and_updates_in_place(backend, make):
    model = Dense(6, 3, seed=0)
    optimizer = make(model.parameters())
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((8, 6)).astype("float32"), rng.integers(0, 3, 8)
    before = [backends.to_numpy(p.value).copy() for p in model.parameters()]
    identities = [id(p.value) for p in model.parameters()]
    for _ in range(3):
        logits, backprop = model.forward(x, train=True)
        loss, dlogits = losses.softmax_cross_entropy(logits, labels)
        backprop(dlogits)
        optim.clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    for parameter, old in zip(model.parameters(), before, strict=True):
        assert backends.dtype_name(parameter.value.dtype) == "float32"
        assert isinstance(parameter.value, backend.array_type)
        assert parameter.grad is None
        assert not np.allclose(backends.to_numpy(parameter.value), old)
    for buffers in optimizer.state:
        assert all(backends.dtype_name(b.dtype) == "float32" for b in buffers.values())
    if backend.mutable:
        assert [id(p.value) for p in model.parameters()] == identities
    assert backends.dtype_name(loss.dtype) == "float32"


def test_shared_parameter_is_updated_once(backend):
    shared = Parameter(backend.asarray(np.zeros(2)))
    optimizer = optim.SGD([shared, shared], lr=1.0)
    shared.grad = backend.asarray(np.ones(2))
    optimizer.step()
    assert_close(shared.value, -np.ones(2), backend=backend)
    assert len(optimizer.params) == 1


def test_clip_grad_norm_matches_torch(backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(shape) for shape in SHAPES] + [None]
    norm = np.sqrt(sum(np.sum(g * g) for g in grads if g is not None))
    for max_norm in (0.5 * norm, 2.0 * norm):
        ours = [Parameter(backend.asarray(np.zeros(shape))) for shape in [*SHAPES, (2,)]]
        theirs = [torch.zeros(shape, dtype=torch.float64, requires_grad=True)
                  for shape in [*SHAPES, (2,)]]
        for a, b, g in zip(ours, theirs, grads, strict=True):
            a.grad = None if g is None else backend.asarray(g)
            b.grad = None if g is None else torch.tensor(g)
        total = optim.clip_grad_norm(ours, max_norm)
        want = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
        assert tuple(total.shape) == ()
        assert_close(total, want.numpy(), rtol=1e-12, backend=backend)
        assert_close(total, norm, rtol=1e-12)
        for a, b in zip(ours[:-1], theirs[:-1], strict=True):
            assert_close(a.grad, b.grad.numpy(), rtol=1e-12, backend=backend)
        assert ours[-1].grad is None


def test_clip_grad_norm_by_hand(backend):
    p, q = Parameter(backend.asarray(np.zeros(1))), Parameter(backend.asarray(np.zeros(1)))
    p.grad, q.grad = backend.asarray(np.array([3.0])), backend.asarray(np.array([4.0]))
    total = optim.clip_grad_norm([p, q], 1.0)
    assert_close(total, 5.0, rtol=1e-15)
    assert_close(p.grad, [3.0 / (5.0 + 1e-6)], rtol=1e-12)
    assert_close(q.grad, [4.0 / (5.0 + 1e-6)], rtol=1e-12)
    assert_close(optim.clip_grad_norm([p, q], 10.0), 1.0, rtol=1e-6)  # unchanged now
    assert_close(p.grad, [3.0 / (5.0 + 1e-6)], rtol=1e-12)


def test_lr_is_settable_and_zero_grad_clears(backend):
    parameter = Parameter(backend.asarray(np.ones(2)))
    optimizer = optim.SGD([parameter], lr=0.1)
    optimizer.lr = 0.5
    parameter.grad = backend.asarray(np.ones(2))
    optimizer.step()
    assert_close(parameter.value, 0.5 * np.ones(2), backend=backend)
    optimizer.zero_grad()
    assert parameter.grad is None
    optimizer.step()  # nothing to do without gradients
    assert_close(parameter.value, 0.5 * np.ones(2), backend=backend)
    with pytest.raises(ConfigError, match=r"lr to be a number >= 0.0. Received: lr=-1"):
        optimizer.lr = -1


@pytest.mark.parametrize("make, match", [
    (lambda ps: optim.SGD(ps, lr=-0.1), r"SGD expected lr to be a number >= 0.0. "
                                        r"Received: lr=-0.1"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=1.0), r"momentum to be a number in \[0.0, 1.0\)"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.5), r"Received: momentum=-0.5"),
    (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), r"momentum > 0 with nesterov=True"),
    (lambda ps: optim.SGD(ps, lr=0.1, weight_decay=-1), r"weight_decay to be a number >= 0"),
    (lambda ps: optim.SGD(ps, lr="fast"), r"Received: lr='fast'"),
    (lambda ps: optim.Adam(ps, betas=(0.9, 1.0)), r"betas\[1\] to be a number in \[0.0, 1.0\)"),
    (lambda ps: optim.Adam(ps, betas=(-0.1, 0.9)), r"Received: betas\[0\]=-0.1"),
    (lambda ps: optim.Adam(ps, betas=0.9), r"betas to be a pair"),
    (lambda ps: optim.AdamW(ps, lr=float("nan")), r"Received: lr=nan"),
    (lambda ps: optim.Adam(ps, eps=-1.0), r"eps to be a number >= 0"),
    (lambda ps: optim.SGD([], lr=0.1), r"at least one parameter"),
    (lambda ps: optim.SGD([ps[0].value], lr=0.1), r"Received: params\[0\] of type"),
    (lambda ps: optim.clip_grad_norm(ps, -1.0), r"max_norm to be a number >= 0"),
])
def test_bad_hyperparameters_raise_config_error(backend, make, match):
    params = [Parameter(backend.asarray(np.zeros(2)))]
    with pytest.raises(ConfigError, match=match):
        make(params)


@pytest.mark.parametrize("bad", [{"lr": -1.0}, {"lr": float("nan")}, {"step": -3},
                                 {"step": float("nan")}])
def test_load_state_dict_checks_scalars_before_changing_anything(bad):
    import numpy as np

    from xpnn.errors import WeightsError
    from xpnn.layers import Dense

    layer = Dense(3, 2, seed=0)
    optimizer = optim.Adam(layer.parameters(), lr=0.01)
    layer.weight.grad = layer.weight.value * 0 + 1
    optimizer.step()
    state = {k: backends.to_numpy(v) for k, v in optimizer.state_dict().items()}
    before = {k: v.copy() for k, v in state.items()}
    bad_state = dict(state)
    for key, value in bad.items():
        bad_state[key] = np.asarray([value], dtype=state[key].dtype if key == "lr" else "float64")
    with pytest.raises(WeightsError):
        optimizer.load_state_dict(bad_state)
    after = {k: backends.to_numpy(v) for k, v in optimizer.state_dict().items()}
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def test_hyperparameters_are_reported_without_the_learning_rate():
    from xpnn.layers import Dense

    params = Dense(2, 1, seed=0).parameters()
    assert optim.SGD(params, lr=0.1, momentum=0.9).hyperparameters() == {
        "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}
    assert "betas" in optim.AdamW(params).hyperparameters()
    assert "lr=0.1" in repr(optim.SGD(params, lr=0.1))


# -- issue 14: RMSprop, parameter groups, clip_grad_value ----------------------------------

RMSPROP_CONFIGS = [
    {},
    {"lr": 0.05, "alpha": 0.9, "eps": 1e-6},
    {"lr": 0.01, "momentum": 0.9},
    {"lr": 0.01, "centered": True},
    {"lr": 0.02, "alpha": 0.95, "weight_decay": 0.1, "momentum": 0.5, "centered": True},
]


@pytest.mark.parametrize("config", RMSPROP_CONFIGS, ids=lambda c: ",".join(map(str, c.items())))
def test_rmsprop_matches_torch(backend, config):
    torch = pytest.importorskip("torch")
    initial, grads = _problem(seed=4)
    ours = _ours(backend, lambda ps: optim.RMSprop(ps, **config), initial, grads)
    theirs = _theirs(torch, lambda ps: torch.optim.RMSprop(ps, **config), initial, grads)
    _assert_same_history(ours, theirs, rtol=1e-10)


def _grouped(params, groups):
    """``groups`` (dicts of settings, with ``"params"`` a list of indices into ``params``)
    with the parameters filled in."""
    return [{**group, "params": [params[i] for i in group["params"]]} for group in groups]


GROUP_CONFIGS = [
    ("SGD", [{"params": [0], "weight_decay": 0.0}, {"params": [1, 2], "lr": 0.01}],
     {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}),
    ("SGD", [{"params": [2], "momentum": 0.0}, {"params": [0, 1], "nesterov": True}],
     {"lr": 0.05, "momentum": 0.8}),
    ("SGD", [{"params": [0, 2]}, {"params": [1], "momentum": 0.5, "lr": 0.3}], {"lr": 0.1}),
    ("Adam", [{"params": [0], "betas": (0.5, 0.9), "eps": 1e-6}, {"params": [1, 2],
                                                                  "weight_decay": 0.1}],
     {"lr": 0.01}),
    ("AdamW", [{"params": [1], "weight_decay": 0.0}, {"params": [0, 2], "lr": 0.003}],
     {"lr": 0.01, "weight_decay": 0.2}),
    ("RMSprop", [{"params": [0], "centered": True}, {"params": [1, 2], "momentum": 0.9,
                                                     "alpha": 0.9}],
     {"lr": 0.01, "weight_decay": 0.01}),
]


@pytest.mark.parametrize("name, groups, config", GROUP_CONFIGS,
                         ids=[f"{name}-{i}" for i, (name, _, _) in enumerate(GROUP_CONFIGS)])
def test_parameter_groups_match_torch(backend, name, groups, config):
    torch = pytest.importorskip("torch")
    initial, grads = _problem(seed=5)
    ours = _ours(backend, lambda ps: getattr(optim, name)(_grouped(ps, groups), **config),
                 initial, grads)
    theirs = _theirs(torch, lambda ps: getattr(torch.optim, name)(_grouped(ps, groups),
                                                                  **config), initial, grads)
    # the history lists parameters in the order of ``params``, whatever the groups
    _assert_same_history(ours, theirs, rtol=1e-10)


def test_param_groups_are_filled_in_as_pytorch_does():
    torch = pytest.importorskip("torch")
    ours = [Parameter(np.zeros(2)), Parameter(np.zeros((2, 2)))]
    theirs = [torch.zeros(2, requires_grad=True), torch.zeros(2, 2, requires_grad=True)]
    groups = [{"params": [0], "lr": 0.01}, {"params": [1], "momentum": 0.5}]
    mine = optim.SGD(_grouped(ours, groups), lr=0.1, momentum=0.9, weight_decay=1e-4)
    reference = torch.optim.SGD(_grouped(theirs, groups), lr=0.1, momentum=0.9,
                                weight_decay=1e-4)
    assert len(mine.param_groups) == 2
    for group, their_group in zip(mine.param_groups, reference.param_groups, strict=True):
        assert set(group) <= set(their_group)
        for key in set(group) - {"params"}:
            assert group[key] == their_group[key], key
        assert len(group["params"]) == len(their_group["params"])
    assert mine.param_groups[0]["params"][0] is ours[0]
    assert mine.momentum == 0.9 and mine.lr == 0.01  # the first group's


def test_lr_property_keeps_the_ratios_of_the_groups():
    params = [Parameter(np.zeros(2)) for _ in range(3)]
    same = optim.SGD([{"params": params[:1], "weight_decay": 0.0}, {"params": params[1:]}],
                     lr=0.1, weight_decay=1e-3)
    same.lr = 0.5
    assert [g["lr"] for g in same.param_groups] == [0.5, 0.5]
    ratio = optim.SGD([{"params": params[:1]}, {"params": params[1:], "lr": 0.01}], lr=0.1)
    assert ratio.lr == 0.1
    ratio.lr = 0.05
    np.testing.assert_allclose([g["lr"] for g in ratio.param_groups], [0.05, 0.005],
                               rtol=1e-15)
    ratio.param_groups[1]["lr"] = 0.3  # groups may be changed directly, as in PyTorch
    ratio.lr = 1.0
    np.testing.assert_allclose([g["lr"] for g in ratio.param_groups], [1.0, 0.1], rtol=1e-15)
    frozen = optim.SGD([{"params": params[:1], "lr": 0.0}, {"params": params[1:]}], lr=0.1)
    frozen.lr = 0.0  # zero keeps working
    with pytest.raises(ConfigError, match=r"param_groups\[0\] to have been built with an "
                                          r"lr > 0.*param_groups\[k\]\['lr'\]"):
        frozen.lr = 0.1


def test_groups_state_dict_round_trip_and_backward_compatible_keys():
    initial, grads = _problem(seed=6)
    groups = [{"params": [0], "momentum": 0.0}, {"params": [1, 2], "lr": 0.02}]
    make = lambda ps: optim.SGD(_grouped(ps, groups), lr=0.1, momentum=0.9)  # noqa: E731
    uninterrupted = _ours(backends.current(), make, initial, grads)
    params = [Parameter(value.copy()) for value in initial]
    first = make(params)
    for step_grads in grads[:3]:
        for parameter, grad in zip(params, step_grads, strict=True):
            parameter.grad = grad
        first.step()
    first.param_groups[1]["lr"] = 0.04  # as a schedule would
    state = first.state_dict()
    assert sorted(state) == ["group.1.lr", "lr", "state.1.momentum_buffer",
                             "state.2.momentum_buffer", "step"]
    resumed = make([Parameter(p.value.copy()) for p in params]).load_state_dict(
        {key: np.asarray(value) for key, value in state.items()})
    assert [g["lr"] for g in resumed.param_groups] == [0.1, 0.04]
    resumed.param_groups[1]["lr"] = 0.02
    for step_grads in grads[3:]:
        for parameter, grad in zip(resumed.params, step_grads, strict=True):
            parameter.grad = grad
        resumed.step()
    for index, parameter in enumerate(resumed.params):
        np.testing.assert_array_equal(parameter.value, uninterrupted[-1][index])
    single = optim.SGD([Parameter(v.copy()) for v in initial], lr=0.1, momentum=0.9)
    with pytest.raises(WeightsError, match=r"missing keys \(1\): 'group.1.lr'.*parameter "
                                           r"groups"):
        make([Parameter(v.copy()) for v in initial]).load_state_dict(single.state_dict())
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\): 'group.1.lr'"):
        single.load_state_dict(state | {"state.0.momentum_buffer": np.zeros((3, 4))})
    bad = dict(state)
    bad["group.1.lr"] = np.asarray([-1.0])
    with pytest.raises(WeightsError, match=r"finite lr >= 0.*lr=\[0.1, -1.0\]"):
        resumed.load_state_dict(bad)
    assert resumed.param_groups[1]["lr"] == 0.02  # unchanged


def test_hyperparameters_and_repr_with_groups():
    params = [Parameter(np.zeros((2, 2))), Parameter(np.zeros(2))]
    single = optim.Adam([{"params": params, "eps": 1e-6}], lr=0.01)
    assert single.hyperparameters() == {"betas": (0.9, 0.999), "eps": 1e-6,
                                        "weight_decay": 0.0}
    grouped = optim.SGD(optim.weight_decay_groups(params, 1e-4), lr=0.1, momentum=0.9)
    assert grouped.hyperparameters() == {"param_groups": [
        {"params": 1, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4},
        {"params": 1, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}]}
    assert repr(grouped).startswith("SGD(2 parameters in 2 groups: lr=0.1, momentum=0.9")


def test_weight_decay_groups_leave_out_biases_and_normalization():
    from xpnn.layers import BatchNorm, Conv2D, Dense, Flatten, Sequential

    model = Sequential([Conv2D(1, 2, 3, seed=0), BatchNorm(2), Flatten(),
                        Dense(8, 3, seed=0)])
    decayed, others = optim.weight_decay_groups(model, weight_decay=5e-4)
    assert decayed["weight_decay"] == 5e-4 and others["weight_decay"] == 0.0
    assert [p.value.ndim for p in decayed["params"]] == [4, 2]
    assert all(p.value.ndim == 1 for p in others["params"]) and len(others["params"]) == 4
    assert len(optim.weight_decay_groups([decayed["params"][0]], 0.1)) == 1  # none empty
    optimizer = optim.SGD(optim.weight_decay_groups(model, 5e-4), lr=0.1, momentum=0.9)
    assert len(optimizer.params) == len(model.parameters())


@pytest.mark.parametrize("make, match", [
    (lambda ps: optim.SGD([{"params": ps[:1], "wd": 0.1}], lr=0.1),
     r"keys 'params', 'lr', 'momentum', 'nesterov', 'weight_decay'. Received: "
     r"param_groups\[0\] with 'wd'"),
    (lambda ps: optim.SGD([{"params": ps[:1]}, {"params": ps}], lr=0.1),
     r"every parameter in one group only. Received: .* param_groups\[0\] and param_groups\[1\]"),
    (lambda ps: optim.SGD([{"params": ps[:1]}, {"params": ps[1:], "momentum": 1.5}], lr=0.1),
     r"SGD expected param_groups\[1\]\['momentum'\] to be a number in \[0.0, 1.0\). "
     r"Received: param_groups\[1\]\['momentum'\]=1.5"),
    (lambda ps: optim.SGD([{"params": ps, "nesterov": True}], lr=0.1),
     r"param_groups\[0\]\['momentum'\] > 0 with param_groups\[0\]\['nesterov'\]=True"),
    (lambda ps: optim.Adam([{"params": ps, "betas": (0.9, 1.2)}]),
     r"param_groups\[0\]\['betas'\]\[1\] to be a number in"),
    (lambda ps: optim.SGD([{"params": ps[:1], "lr": -1.0}], lr=0.1),
     r"Received: param_groups\[0\]\['lr'\]=-1.0"),
    (lambda ps: optim.SGD([{"params": ps[:1]}, ps[1]], lr=0.1),
     r"either a list of Parameters or a list of parameter groups"),
    (lambda ps: optim.SGD([{"lr": 0.1}], lr=0.1), r"without a 'params' key"),
    (lambda ps: optim.SGD([{"params": []}], lr=0.1), r"at least one parameter"),
    (lambda ps: optim.SGD([{"params": [ps[0].value]}], lr=0.1),
     r"Received: param_groups\[0\]\['params'\]\[0\] of type"),
    (lambda ps: optim.RMSprop(ps, alpha=1.5), r"RMSprop expected alpha to be a number in "
                                              r"\[0.0, 1.0\]"),
    (lambda ps: optim.RMSprop(ps, momentum=-0.1), r"Received: momentum=-0.1"),
    (lambda ps: optim.RMSprop(ps, centered=1), r"centered to be True or False"),
    (lambda ps: optim.RMSprop(ps, eps=-1.0), r"eps to be a number >= 0"),
    (lambda ps: optim.clip_grad_value(ps, -1.0), r"clip_value to be a number >= 0"),
    (lambda ps: optim.weight_decay_groups(ps, -1.0), r"weight_decay to be a number >= 0"),
])
def test_bad_groups_and_new_arguments_raise_config_error(make, match):
    params = [Parameter(np.zeros(2)), Parameter(np.zeros((2, 2)))]
    with pytest.raises(ConfigError, match=match):
        make(params)


def test_clip_grad_value_matches_torch(backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    grads = [3.0 * rng.standard_normal(shape) for shape in SHAPES] + [None]
    ours = [Parameter(backend.asarray(np.zeros(shape))) for shape in [*SHAPES, (2,)]]
    theirs = [torch.zeros(shape, dtype=torch.float64, requires_grad=True)
              for shape in [*SHAPES, (2,)]]
    for a, b, g in zip(ours, theirs, grads, strict=True):
        a.grad = None if g is None else backend.asarray(g)
        b.grad = None if g is None else torch.tensor(g)
    assert optim.clip_grad_value(ours, 1.5) is None
    torch.nn.utils.clip_grad_value_(theirs, 1.5)
    for a, b in zip(ours[:-1], theirs[:-1], strict=True):
        assert isinstance(a.grad, backend.array_type)
        assert_close(a.grad, b.grad.numpy(), rtol=0, backend=backend)
    assert ours[-1].grad is None
    small = Parameter(backend.asarray(np.zeros(3), "float32"))
    small.grad = backend.asarray(np.array([-2.0, 0.25, 9.0]), "float32")
    optim.clip_grad_value([small], 0.5)
    assert backends.dtype_name(small.grad.dtype) == "float32"
    assert_close(small.grad, np.array([-0.5, 0.25, 0.5], dtype="float32"), backend=backend)
