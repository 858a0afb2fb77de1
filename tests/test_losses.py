"""Losses: values against float64 NumPy references, gradients by finite differences,
agreement with torch.nn.functional, stability and input checks, on every backend."""

import numpy as np
import pytest

from xpnn import backends, losses
from xpnn.errors import ConfigError, DTypeError, ShapeError, XpnnError
from xpnn.gradcheck import gradcheck_loss
from xpnn.testing import assert_close


def _data(n=5, c=4, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, c)) * 3.0
    labels = rng.integers(0, c, size=n)
    return logits, labels


def _reference_cross_entropy(logits, targets, smoothing=0.0):
    """float64 NumPy: targets (N, C) rows; returns (loss, dlogits)."""
    n, c = logits.shape
    targets = targets * (1.0 - smoothing) + smoothing / c
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    loss = -(targets * log_probs).sum() / n
    grad = (probs * targets.sum(axis=1, keepdims=True) - targets) / n
    return loss, grad


# Finite-difference step: losses are means whose values (~1) are much larger than their
# per-element gradients (~1/N), so h = 1e-6 leaves rounding noise near 1e-6 relative.
EPS = 1e-5


def _one_hot(labels, c):
    return np.eye(c)[labels]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_reference(backend, smoothing):
    logits, labels = _data()
    loss, dlogits = losses.softmax_cross_entropy(
        backend.asarray(logits), backend.asarray(labels), label_smoothing=smoothing
    )
    want_loss, want_grad = _reference_cross_entropy(logits, _one_hot(labels, 4), smoothing)
    assert tuple(loss.shape) == ()
    assert_close(loss, want_loss, rtol=1e-12, backend=backend)
    assert_close(dlogits, want_grad, rtol=1e-10, atol=1e-15, backend=backend)


def test_cross_entropy_soft_targets_match_reference(backend):
    logits, _ = _data()
    rng = np.random.default_rng(1)
    soft = rng.random((5, 4))
    soft /= soft.sum(axis=1, keepdims=True)
    unnormalized = rng.random((5, 4))  # the gradient stays exact for any targets
    for targets in (soft, unnormalized):
        loss, dlogits = losses.softmax_cross_entropy(backend.asarray(logits),
                                                     backend.asarray(targets))
        want_loss, want_grad = _reference_cross_entropy(logits, targets)
        assert_close(loss, want_loss, rtol=1e-12, backend=backend)
        assert_close(dlogits, want_grad, rtol=1e-10, atol=1e-15, backend=backend)


def test_integer_and_one_hot_labels_agree(backend):
    logits, labels = _data(n=7, c=3, seed=2)
    x = backend.asarray(logits)
    by_index = losses.softmax_cross_entropy(x, backend.asarray(labels))
    by_row = losses.softmax_cross_entropy(x, backend.asarray(_one_hot(labels, 3)))
    assert_close(by_index[0], backends.to_numpy(by_row[0]), rtol=1e-15)
    assert_close(by_index[1], backends.to_numpy(by_row[1]), rtol=1e-15, atol=1e-18)
    acc_index = losses.accuracy(x, backend.asarray(labels))
    acc_row = losses.accuracy(x, backend.asarray(_one_hot(labels, 3)))
    assert float(backends.to_numpy(acc_index)) == float(backends.to_numpy(acc_row))


def test_host_labels_are_moved_to_the_backend(backend):
    logits, labels = _data()
    loss, dlogits = losses.softmax_cross_entropy(backend.asarray(logits), labels.astype("uint8"))
    assert_close(loss, _reference_cross_entropy(logits, _one_hot(labels, 4))[0], rtol=1e-12,
                 backend=backend)
    assert_close(dlogits, _reference_cross_entropy(logits, _one_hot(labels, 4))[1], rtol=1e-10,
                 atol=1e-15, backend=backend)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_gradient(backend, smoothing):
    logits, labels = _data(n=4, c=5, seed=3)
    error = gradcheck_loss(losses.softmax_cross_entropy, logits, backend.asarray(labels),
                           label_smoothing=smoothing, eps=EPS)
    assert error < 1e-6
    soft = np.random.default_rng(4).random((4, 5))
    assert gradcheck_loss(losses.softmax_cross_entropy, logits, backend.asarray(soft),
                          eps=EPS) < 1e-6


def test_cross_entropy_huge_logits_stay_finite(backend):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [5e3, 5e3, -1e4]], dtype="float32")
    labels = np.array([1, 2, 0])
    loss, dlogits = losses.softmax_cross_entropy(backend.asarray(logits), labels)
    loss_host, grad_host = backends.to_numpy(loss), backends.to_numpy(dlogits)
    assert np.isfinite(loss_host) and np.all(np.isfinite(grad_host))
    # row 0: log p_1 = -2e4; row 1: 0; row 2: log p_0 = -log 2.
    np.testing.assert_allclose(loss_host, (2e4 + np.log(2.0)) / 3, rtol=1e-6)
    want_grad = np.array([[1, -1, 0], [0, 0, 0], [-0.5, 0.5, 0]]) / 3
    np.testing.assert_allclose(grad_host, want_grad, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_losses_keep_the_input_dtype(backend, dtype):
    logits, labels = _data()
    x = backend.asarray(logits, dtype)
    outputs = [
        losses.softmax_cross_entropy(x, labels, label_smoothing=0.1),
        losses.softmax_cross_entropy(x, _one_hot(labels, 4)),  # float64 one-hot rows
        losses.mean_squared_error(x, logits),
        losses.binary_cross_entropy_with_logits(x, (logits > 0).astype("float64")),
    ]
    for loss, grad in outputs:
        assert backends.dtype_name(loss.dtype) == dtype and backends.dtype_name(grad.dtype) == dtype
        assert tuple(loss.shape) == ()
    assert backends.dtype_name(losses.accuracy(x, labels).dtype) == dtype


def test_cross_entropy_matches_torch(backend):
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    logits, labels = _data(n=6, c=5, seed=5)
    for smoothing in (0.0, 0.3):
        reference = torch.tensor(logits, requires_grad=True)
        want = functional.cross_entropy(reference, torch.tensor(labels),
                                        label_smoothing=smoothing)
        want.backward()
        loss, dlogits = losses.softmax_cross_entropy(backend.asarray(logits), labels,
                                                     label_smoothing=smoothing)
        assert_close(loss, want.detach().numpy(), rtol=1e-12)
        assert_close(dlogits, reference.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_binary_and_squared_losses_match_torch(backend):
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    rng = np.random.default_rng(6)
    z, y = rng.standard_normal((4, 3)) * 4.0, rng.random((4, 3))
    for ours, theirs in [
        (losses.binary_cross_entropy_with_logits, functional.binary_cross_entropy_with_logits),
        (losses.mean_squared_error, functional.mse_loss),
    ]:
        reference = torch.tensor(z, requires_grad=True)
        want = theirs(reference, torch.tensor(y))
        want.backward()
        loss, grad = ours(backend.asarray(z), backend.asarray(y))
        assert_close(loss, want.detach().numpy(), rtol=1e-12, backend=backend)
        assert_close(grad, reference.grad.numpy(), rtol=1e-10, atol=1e-15, backend=backend)


def test_mean_squared_error_reference_and_gradient(backend):
    rng = np.random.default_rng(7)
    pred, target = rng.standard_normal((3, 2, 2)), rng.standard_normal((3, 2, 2))
    loss, grad = losses.mean_squared_error(backend.asarray(pred), backend.asarray(target))
    assert_close(loss, np.mean((pred - target) ** 2), rtol=1e-12, backend=backend)
    assert_close(grad, 2 * (pred - target) / pred.size, rtol=1e-12, backend=backend)
    assert gradcheck_loss(losses.mean_squared_error, pred, backend.asarray(target),
                          eps=EPS) < 1e-6


def test_binary_cross_entropy_reference_gradient_and_stability(backend):
    rng = np.random.default_rng(8)
    z, y = rng.standard_normal((6,)) * 3.0, rng.random((6,))
    loss, grad = losses.binary_cross_entropy_with_logits(backend.asarray(z), backend.asarray(y))
    sigmoid = 1.0 / (1.0 + np.exp(-z))
    want = np.mean(-(y * np.log(sigmoid) + (1 - y) * np.log(1 - sigmoid)))
    assert_close(loss, want, rtol=1e-12, backend=backend)
    assert_close(grad, (sigmoid - y) / z.size, rtol=1e-10, backend=backend)
    assert gradcheck_loss(losses.binary_cross_entropy_with_logits, z, backend.asarray(y),
                          eps=EPS) < 1e-6

    huge = np.array([1e4, -1e4, 1e4, -1e4], dtype="float32")
    targets = np.array([1.0, 0.0, 0.0, 1.0], dtype="float32")
    loss, grad = losses.binary_cross_entropy_with_logits(backend.asarray(huge), targets)
    assert_close(loss, 5e3, rtol=1e-6)
    assert_close(grad, [0.0, 0.0, 0.25, -0.25], atol=1e-7)


def test_accuracy(backend):
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 2.0]])
    acc = losses.accuracy(backend.asarray(logits), np.array([1, 0, 0, 2]))
    assert tuple(acc.shape) == ()
    assert_close(acc, 0.75, rtol=1e-15, backend=backend)


def test_labels_out_of_range_raise(backend):
    logits = backend.asarray(np.zeros((3, 4)))
    for bad, low, high in [([0, 4, 1], 0, 4), ([-1, 2, 3], -1, 3)]:
        with pytest.raises(XpnnError, match=rf"\[0, 4\).*min={low}, max={high}"):
            losses.softmax_cross_entropy(logits, np.array(bad))
    # check_labels=False skips the (host-synchronizing) check: the row simply has no target.
    loss, _ = losses.softmax_cross_entropy(logits, np.array([0, 4, 1]), check_labels=False)
    assert_close(loss, 2 * np.log(4.0) / 3, rtol=1e-12)


def test_bad_inputs_raise(backend):
    logits = backend.asarray(np.zeros((3, 4)))
    with pytest.raises(ShapeError, match=r"2-D logits.*\(12,\)"):
        losses.softmax_cross_entropy(backend.asarray(np.zeros(12)), np.zeros(12, dtype=int))
    with pytest.raises(ShapeError, match=r"labels of shape \(3,\).*labels.shape=\(2,\)"):
        losses.softmax_cross_entropy(logits, np.array([0, 1]))
    with pytest.raises(ShapeError, match=r"labels.shape=\(3, 3\)"):
        losses.softmax_cross_entropy(logits, np.zeros((3, 3)))
    with pytest.raises(DTypeError, match="integer class indices"):
        losses.softmax_cross_entropy(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(DTypeError, match="floating-point logits"):
        losses.softmax_cross_entropy(backend.asarray(np.zeros((3, 4), dtype="int64")),
                                     np.array([0, 1, 2]))
    with pytest.raises(ConfigError, match="label_smoothing"):
        losses.softmax_cross_entropy(logits, np.array([0, 1, 2]), label_smoothing=1.5)
    with pytest.raises(ShapeError, match=r"target.shape=\(3, 5\)"):
        losses.mean_squared_error(logits, np.zeros((3, 5)))
    with pytest.raises(ShapeError, match=r"targets.shape=\(4, 3\)"):
        losses.binary_cross_entropy_with_logits(logits, np.zeros((4, 3)))


@pytest.mark.parametrize("loss", [losses.softmax_cross_entropy, losses.mean_squared_error,
                                  losses.binary_cross_entropy_with_logits],
                         ids=lambda loss: loss.__name__)
def test_every_loss_takes_check_labels_and_it_never_changes_the_result(backend, loss):
    """One calling convention: fit passes check_labels=False to any loss that has it."""
    import inspect

    parameter = inspect.signature(loss).parameters["check_labels"]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default is True
    logits, labels = _data()
    targets = labels if loss is losses.softmax_cross_entropy else _one_hot(labels, 4)
    checked = loss(backend.asarray(logits), targets)
    unchecked = loss(backend.asarray(logits), targets, check_labels=False)
    for a, b in zip(checked, unchecked, strict=True):
        np.testing.assert_array_equal(backends.to_numpy(a), backends.to_numpy(b))


# -- issue 14: class weights and ignore_index (torch.nn.functional.cross_entropy) -----------

WEIGHTED_CASES = [
    ("weight", {"weight": True}),
    ("ignore-default", {"ignored": -100}),
    ("ignore-a-class", {"ignored": 2, "ignore_index": 2}),
    ("weight-ignore-smoothing", {"weight": True, "ignored": -100, "label_smoothing": 0.2}),
    ("weight-ignore-class-smoothing", {"weight": True, "ignored": 0, "ignore_index": 0,
                                       "label_smoothing": 0.1}),
    ("soft-weight", {"weight": True, "soft": True}),
    ("soft-weight-smoothing", {"weight": True, "soft": True, "label_smoothing": 0.3}),
]


def _weighted_problem(case, n=9, c=5):
    rng = np.random.default_rng(11)
    logits = rng.standard_normal((n, c)) * 2.0
    labels = rng.integers(0, c, size=n)
    if "ignored" in case:
        labels[[1, 4, 5]] = case["ignored"]
    weight = rng.uniform(0.2, 3.0, size=c) if case.get("weight") else None
    targets = rng.dirichlet(np.ones(c), size=n) if case.get("soft") else labels
    kwargs = {key: case[key] for key in ("ignore_index", "label_smoothing") if key in case}
    return logits, targets, weight, kwargs


@pytest.mark.parametrize("name, case", WEIGHTED_CASES, ids=[name for name, _ in WEIGHTED_CASES])
def test_weighted_and_ignored_cross_entropy_matches_torch(backend, name, case):
    torch = pytest.importorskip("torch")
    logits, targets, weight, kwargs = _weighted_problem(case)
    ours_weight = None if weight is None else backend.asarray(weight)
    # check_labels=False promises labels in [0, C): -100 labels need the check (see below)
    for check_labels in (True,) if case.get("ignored") == -100 else (True, False):
        loss, dlogits = losses.softmax_cross_entropy(
            backend.asarray(logits), backend.asarray(targets), weight=ours_weight,
            check_labels=check_labels, **kwargs)
        z = torch.tensor(logits, requires_grad=True)
        want = torch.nn.functional.cross_entropy(
            z, torch.tensor(targets), weight=None if weight is None else torch.tensor(weight),
            **kwargs)
        want.backward()
        assert tuple(loss.shape) == ()
        assert_close(loss, want.item(), rtol=1e-12, backend=backend)
        assert_close(dlogits, z.grad.numpy(), rtol=1e-10, atol=1e-15, backend=backend)
    if "ignored" in case:  # the ignored rows get no gradient at all
        rows = backends.to_numpy(dlogits)[[1, 4, 5]]
        np.testing.assert_array_equal(rows, np.zeros_like(rows))


@pytest.mark.parametrize("name, case", WEIGHTED_CASES[1:5],
                         ids=[name for name, _ in WEIGHTED_CASES[1:5]])
def test_weighted_and_ignored_cross_entropy_gradient(backend, name, case):
    logits, targets, weight, kwargs = _weighted_problem(case)
    error = gradcheck_loss(losses.softmax_cross_entropy, logits, backend.asarray(targets),
                           weight=None if weight is None else backend.asarray(weight),
                           eps=EPS, **kwargs)
    assert error < 1e-6


def test_ignored_labels_pass_the_range_check_and_others_still_fail(backend):
    logits = backend.asarray(np.zeros((4, 3)))
    loss, _ = losses.softmax_cross_entropy(logits, np.array([0, -100, 2, -100]))
    assert_close(loss, np.log(3.0), rtol=1e-12, backend=backend)  # the mean over 2 samples
    with pytest.raises(ShapeError, match=r"\[0, 3\) for 3 classes \(or ignore_index=-100\)"
                                         r".*min=0, max=5"):
        losses.softmax_cross_entropy(logits, np.array([0, -100, 5, 1]))
    with pytest.raises(ShapeError, match=r"min=-100, max=1"):
        losses.softmax_cross_entropy(logits, np.array([0, -100, 1, 1]), ignore_index=-1)
    loss, _ = losses.softmax_cross_entropy(logits, np.array([0, 7, 7, 1]), ignore_index=7)
    assert_close(loss, np.log(3.0), rtol=1e-12, backend=backend)
    # check_labels=False promises labels in [0, C), so an ignore_index outside that range
    # is assumed absent (the unweighted fast path: the mean over all 4 rows, as before)
    loss, _ = losses.softmax_cross_entropy(logits, np.array([0, -100, 2, -100]),
                                           check_labels=False)
    assert_close(loss, np.log(3.0) / 2, rtol=1e-12, backend=backend)


def test_class_weights_keep_dtype_and_accept_host_arrays_and_lists(backend):
    logits, labels = _data()
    x = backend.asarray(logits, "float32")
    weight = [1.0, 2.0, 0.5, 1.0]
    from_list = losses.softmax_cross_entropy(x, labels, weight=weight)
    from_host = losses.softmax_cross_entropy(x, labels, weight=np.asarray(weight))
    from_device = losses.softmax_cross_entropy(x, labels, weight=backend.asarray(
        np.asarray(weight), "float32"))
    for loss, dlogits in (from_list, from_host, from_device):
        assert backends.dtype_name(loss.dtype) == "float32"
        assert backends.dtype_name(dlogits.dtype) == "float32"
        assert isinstance(dlogits, backend.array_type)
        assert_close(loss, backends.to_numpy(from_list[0]), rtol=1e-6)
    ones = losses.softmax_cross_entropy(backend.asarray(logits), labels, weight=np.ones(4))
    plain = losses.softmax_cross_entropy(backend.asarray(logits), labels)
    assert_close(ones[0], backends.to_numpy(plain[0]), rtol=1e-14)
    assert_close(ones[1], backends.to_numpy(plain[1]), rtol=1e-12, atol=1e-16)


def test_bad_weight_and_ignore_index_raise(backend):
    logits = backend.asarray(np.zeros((3, 4)))
    with pytest.raises(ShapeError, match=r"weight of shape \(4,\).*weight.shape=\(3,\)"):
        losses.softmax_cross_entropy(logits, np.array([0, 1, 2]), weight=np.ones(3))
    with pytest.raises(ConfigError, match=r"ignore_index to be an integer. "
                                          r"Received: ignore_index=0.5"):
        losses.softmax_cross_entropy(logits, np.array([0, 1, 2]), ignore_index=0.5)


def test_all_labels_ignored_give_nan_as_torch():
    torch = pytest.importorskip("torch")
    want = torch.nn.functional.cross_entropy(torch.zeros(2, 3, dtype=torch.float64),
                                             torch.tensor([-100, -100]))
    with np.errstate(invalid="ignore"):
        loss, _ = losses.softmax_cross_entropy(np.zeros((2, 3)), np.array([-100, -100]))
    assert np.isnan(float(loss)) and np.isnan(want.item())
