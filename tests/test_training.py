import functools
import json

import numpy as np
import pytest

from xpnn import backends, losses, optim, schedules
from xpnn import io as xpnn_io
from xpnn.errors import ConfigError, WeightsError
from xpnn.io import load_metadata
from xpnn.layers import Dense, ReLU, Sequential
from xpnn.module import Module
from xpnn.training import History, TrainingStopped, evaluate, fit, predict


def blobs(n=200, seed=0):
    """Two well separated Gaussian blobs in 2-D, labels 0 and 1."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    centers = np.array([[-2.0, -2.0], [2.0, 2.0]])
    x = centers[labels] + 0.5 * rng.standard_normal((n, 2))
    return x.astype("float32"), labels


def small_model(hidden=16, seed=0):
    return Sequential([Dense(2, hidden), ReLU(), Dense(hidden, 2)], seed=seed)


def test_fit_drives_a_tiny_problem_to_near_zero_loss(backend):
    x, y = blobs()
    model = small_model()
    history = fit(model, (x, y), (x, y), optimizer=optim.Adam(model.parameters(), lr=0.05),
                  epochs=15, batch_size=20, progress=False, verbose=False)
    assert history.last["train_loss"] < 0.02
    assert history.last["test_accuracy"] == 1.0
    assert history["epoch"] == list(range(1, 16))
    assert predict(model, x).tolist() == y.tolist()


def train_run(tmp_path, epochs, resume=None, name="run", interrupt_at=None):
    x, y = blobs(120)
    model = small_model(seed=1)
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = schedules.StepLR(optimizer, step_size=1, gamma=0.5)
    loss = losses.softmax_cross_entropy
    if interrupt_at is not None:
        calls = {"n": 0}

        def loss(logits, labels):
            calls["n"] += 1
            if calls["n"] == interrupt_at:
                raise KeyboardInterrupt
            return losses.softmax_cross_entropy(logits, labels)

    history = fit(model, (x, y), (x, y), optimizer=optimizer, loss=loss, epochs=epochs,
                  batch_size=16, seed=3, schedule=schedule,
                  checkpoint=tmp_path / f"{name}.safetensors", resume=resume,
                  progress=False, verbose=False)
    return model, optimizer, history


def assert_same_weights(a, b):
    for name, value in a.state_dict().items():
        np.testing.assert_array_equal(backends.to_numpy(value),
                                      backends.to_numpy(b.state_dict()[name]), err_msg=name)


def test_resume_after_an_epoch_equals_an_uninterrupted_run(tmp_path):
    straight, straight_opt, straight_history = train_run(tmp_path, epochs=3, name="straight")
    train_run(tmp_path, epochs=1, name="first")
    resumed, resumed_opt, history = train_run(tmp_path, epochs=3, name="second",
                                              resume=tmp_path / "first.safetensors")
    assert_same_weights(straight, resumed)
    assert resumed_opt.lr == straight_opt.lr
    assert len(history.epochs) == 3
    assert history["train_loss"] == pytest.approx(straight_history["train_loss"])


def test_ctrl_c_saves_a_checkpoint_that_resumes_mid_epoch_exactly(tmp_path):
    straight, _, straight_history = train_run(tmp_path, epochs=2, name="straight")
    with pytest.raises(KeyboardInterrupt):
        # 8 batches per epoch, then the evaluation (call 9): call 12 is epoch 2, batch 3
        train_run(tmp_path, epochs=2, name="cut", interrupt_at=12)
    position = json.loads(load_metadata(tmp_path / "cut.safetensors")["position"])
    assert (position["epoch"], position["batches_done"]) == (1, 2)  # the start of batch 3
    resumed, _, history = train_run(tmp_path, epochs=2, name="cut",
                                    resume=tmp_path / "cut.safetensors")
    assert_same_weights(straight, resumed)
    assert history["train_loss"] == pytest.approx(straight_history["train_loss"])


def test_resume_into_another_architecture_fails_and_keeps_the_checkpoint(tmp_path):
    train_run(tmp_path, epochs=1, name="first")
    path = tmp_path / "first.safetensors"
    before = path.read_bytes()
    x, y = blobs(120)
    other = small_model(hidden=8)
    with pytest.raises(WeightsError, match=r"architecture mismatch"):
        fit(other, (x, y), optimizer=optim.SGD(other.parameters(), lr=0.1, momentum=0.9),
            epochs=2, batch_size=16, seed=3, resume=path, checkpoint=path,
            progress=False, verbose=False)
    assert path.read_bytes() == before


def test_non_finite_loss_stops_with_a_message_and_keeps_last_good_checkpoint(tmp_path):
    x, y = blobs(64)
    model = small_model()
    checkpoint = tmp_path / "ckpt.safetensors"
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    fit(model, (x, y), optimizer=optimizer, epochs=1, batch_size=16, checkpoint=checkpoint,
        progress=False, verbose=False)
    good = checkpoint.read_bytes()
    x_bad = x.copy()
    x_bad[5, 0] = np.nan
    with pytest.raises(TrainingStopped, match=r"NaN or infinite in epoch 2.*kept at"):
        fit(model, (x_bad, y), optimizer=optimizer, epochs=3, batch_size=16, log_every=2,
            checkpoint=checkpoint, resume=checkpoint, progress=False, verbose=False)
    assert checkpoint.read_bytes() == good


def test_target_accuracy_and_patience_stop_early():
    x, y = blobs()
    model = small_model()
    history = fit(model, (x, y), (x, y), optimizer=optim.Adam(model.parameters(), lr=0.05),
                  epochs=50, batch_size=20, target_accuracy=0.99, progress=False, verbose=False)
    assert len(history.epochs) < 50 and "target accuracy" in history.stopped_because
    frozen = small_model()
    history = fit(frozen, (x, y), (x, y), optimizer=optim.SGD(frozen.parameters(), lr=0.0),
                  epochs=50, batch_size=20, patience=2, progress=False, verbose=False)
    assert len(history.epochs) == 3 and "no test-loss improvement" in history.stopped_because


def test_checkpoint_records_position_and_history(tmp_path):
    train_run(tmp_path, epochs=2, name="meta")
    metadata = load_metadata(tmp_path / "meta.safetensors")
    assert metadata["kind"] == "xpnn-checkpoint"
    assert len(History.from_json(metadata["history"]).epochs) == 2


def test_evaluate_returns_host_floats():
    x, y = blobs()
    loss, accuracy = evaluate(small_model(), x, y, batch_size=64)
    assert isinstance(loss, float) and 0.0 <= accuracy <= 1.0


def test_mismatched_labels_are_refused():
    x, y = blobs()
    model = small_model()
    with pytest.raises(ValueError, match="as many labels"):
        fit(model, (x, y[:10]), optimizer=optim.SGD(model.parameters(), lr=0.1))


# -- resume with Adam and BatchNorm buffers ---------------------------------------------------


@pytest.mark.parametrize("how", ["sigint", "raised-in-batch"])
def test_ctrl_c_mid_epoch_with_adam_and_batchnorm_resumes_exactly(tmp_path, how):
    """A real Ctrl-C (SIGINT) lets the batch finish and checkpoints right after it; a
    KeyboardInterrupt raised inside a batch (after the forward pass moved BatchNorm's
    statistics, before the optimizer step) checkpoints the state before that batch, with
    BatchNorm's statistics put back. Both resume exactly."""
    import os
    import signal

    from xpnn.layers import BatchNorm, Conv2D, Flatten, GlobalAvgPool

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 1, 6, 6)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int64)

    def run(name, epochs=2, resume=None, interrupt_at=None):
        model = Sequential([Conv2D(1, 3, 3, padding=1), BatchNorm(3), ReLU(), GlobalAvgPool(),
                            Flatten(), Dense(3, 2)], seed=0)
        optimizer = optim.Adam(model.parameters(), lr=0.01)
        calls = {"n": 0}

        def loss(logits, labels):
            calls["n"] += 1
            if calls["n"] == interrupt_at:
                if how == "sigint":
                    os.kill(os.getpid(), signal.SIGINT)
                else:
                    raise KeyboardInterrupt
            return losses.softmax_cross_entropy(logits, labels)

        fit(model, (x, y), optimizer=optimizer, loss=loss, epochs=epochs, batch_size=8, seed=1,
            checkpoint=tmp_path / f"{name}.safetensors", resume=resume, progress=False,
            verbose=False, log_every=2)
        return model

    straight = run("straight")
    with pytest.raises(KeyboardInterrupt):
        run("cut", interrupt_at=8)  # epoch 2, batch 3
    position = json.loads(load_metadata(tmp_path / "cut.safetensors")["position"])
    # SIGINT: after batch 3 completes; raised inside batch 3: the state before batch 3
    assert (position["epoch"], position["batches_done"]) == (1, 3 if how == "sigint" else 2)
    resumed = run("cut2", resume=tmp_path / "cut.safetensors")
    assert_same_weights(straight, resumed)  # includes BatchNorm's running statistics


# -- non-finite values: which batch and which layer ---------------------------------------------


class SqrtShift(Module):
    """sqrt(x - 1.5): NaN wherever x < 1.5 (a layer that produces NaN from finite input)."""

    def forward(self, x, *, train=False):
        x, xp = self.prepare(x)
        def backprop(dy, *, need_input_grad=True):
            return dy

        return xp.sqrt(xp.abs(x) + 1.0) - 1.0 + xp.sqrt(x - 1.5), backprop


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_input_names_the_batch_and_rolls_back():
    x, y = blobs(64)
    x[37, 1] = np.nan
    model = small_model()
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingStopped) as caught:
        fit(model, (x, y), optimizer=optimizer, epochs=1, batch_size=8, log_every=4, seed=0,
            progress=False, verbose=False, diagnose=True)
    error = caught.value
    from xpnn.datasets import epoch_order

    position = int(np.flatnonzero(epoch_order(64, 0, 0) == 37)[0])
    assert (error.epoch, error.batch, error.where) == (1, position // 8 + 1, "input")
    assert f"at batch {position // 8 + 1} of 8: the batch's input x holds NaN" in str(error)
    for value in model.state_dict().values():  # rolled back to the last good state
        assert np.isfinite(value).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_layer_producing_nan_is_named_by_its_dotted_name():
    x, y = blobs(64)
    model = Sequential([Dense(2, 8), ReLU(), Sequential([Dense(8, 8), SqrtShift()]),
                        Dense(8, 2)], seed=0)
    with pytest.raises(TrainingStopped) as caught:
        fit(model, (x, y), optimizer=optim.SGD(model.parameters(), lr=0.1), epochs=1,
            batch_size=8, log_every=3, progress=False, verbose=False, diagnose=True)
    error = caught.value
    assert (error.batch, error.layer, error.where) == (1, "2.1", "output")
    assert "layer '2.1' (SqrtShift()) produced a non-finite output from finite input" \
        in str(error)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_exploding_learning_rate_is_traced_to_a_layer_and_a_batch_after_the_last_check():
    x, y = blobs(64)
    model = small_model()
    with pytest.raises(TrainingStopped) as caught:
        fit(model, (x * 1e3, y), optimizer=optim.SGD(model.parameters(), lr=1e30), epochs=2,
            batch_size=8, log_every=4, progress=False, verbose=False, diagnose=True)
    error = caught.value
    assert error.epoch == 1 and 1 <= error.batch <= 4
    assert error.layer in {"0", "1", "2"} and error.where in {"output", "gradient", "update"}
    assert "rolled back to their state before batch 1" in str(error)


def test_checkpoint_with_nan_weights_or_other_data_is_refused(tmp_path):
    import xpnn.io

    train_run(tmp_path, epochs=1, name="good")
    path = tmp_path / "good.safetensors"
    x, y = blobs(120)
    model = small_model(seed=1)
    with pytest.raises(ConfigError, match="120 samples.*Received: 100 samples"):
        fit(model, (x[:100], y[:100]), optimizer=optim.SGD(model.parameters(), lr=0.1,
                                                           momentum=0.9),
            epochs=2, batch_size=16, seed=3, resume=path, progress=False, verbose=False)
    with backends.use("numpy"):
        tensors = xpnn.io.load(path)
    tensors["model.0.weight"][0, 0] = np.nan
    xpnn.io.save(tensors, path, metadata={
        k: v for k, v in xpnn.io.load_metadata(path).items()
        if k not in ("format", "format_version", "xpnn_version")})
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match="NaN or infinite values in 1 arrays: 'model.0.weight'"):
        fit(model, (x, y), optimizer=optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            epochs=2, batch_size=16, seed=3, resume=path, progress=False, verbose=False)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": -1}, "epochs to be an integer >= 0"),
    ({"log_every": 0}, "log_every to be a positive integer"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"patience": 0}, "patience to be a positive integer"),
    ({"target_accuracy": 1.5}, r"target_accuracy in \[0, 1\]"),
    ({"optimizer": "sgd"}, "optimizer from xpnn.optim"),
    ({"loss": "mse"}, "loss to be callable"),
], ids=["negative-epochs", "zero-log-every", "zero-batch", "zero-patience",
        "target-above-1", "optimizer-string", "loss-string"])
def test_bad_fit_arguments_raise_config_errors(kwargs, match):
    x, y = blobs(32)
    model = small_model()
    arguments = {"optimizer": optim.SGD(model.parameters(), lr=0.1), "epochs": 1,
                 "progress": False, "verbose": False, **kwargs}
    with pytest.raises(ConfigError, match=match):
        fit(model, (x, y), **arguments)
    with pytest.raises(ConfigError, match="pair"):
        fit(model, x, optimizer=optim.SGD(model.parameters(), lr=0.1))


class InfiniteGradient(Module):
    """Identity forward; backward multiplies by infinity (a broken backward pass)."""

    def forward(self, x, *, train=False):
        x, _ = self.prepare(x)

        def backprop(dy, *, need_input_grad=True):
            return dy * float("inf")

        return x, backprop


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_broken_backward_pass_is_named_as_a_gradient_problem():
    x, y = blobs(64)
    model = Sequential([Dense(2, 8), InfiniteGradient(), ReLU(), Dense(8, 2)], seed=0)
    with pytest.raises(TrainingStopped) as caught:
        fit(model, (x, y), optimizer=optim.SGD(model.parameters(), lr=0.1), epochs=1,
            batch_size=8, log_every=8, progress=False, verbose=False, diagnose=True)
    error = caught.value
    assert (error.batch, error.layer, error.where) == (1, "1", "gradient")
    assert "the input gradient of layer '1' (InfiniteGradient())" in str(error)


def test_a_model_moved_to_another_backend_trains_there():
    pytest.importorskip("torch")
    x, y = blobs(64)
    with backends.use("numpy"):
        model = small_model().to("torch")
        history = fit(model, (x, y), (x, y), optimizer=optim.SGD(model.parameters(), lr=0.1),
                      epochs=2, batch_size=16, progress=False, verbose=False)
    assert history.last["test_accuracy"] > 0.9
    assert type(model[0].weight.value).__module__.startswith("torch")


def test_labels_are_range_checked_once_on_the_host_not_per_batch(monkeypatch):
    calls = []
    original = losses._check_range
    monkeypatch.setattr(losses, "_check_range", lambda *a: calls.append(1) or original(*a))
    x, y = blobs(64)
    model = small_model()
    fit(model, (x, y), (x, y), optimizer=optim.SGD(model.parameters(), lr=0.1), epochs=1,
        batch_size=8, progress=False, verbose=False)
    assert calls == []
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\).*max=5"):
        fit(model, (x, np.where(y == 1, 5, 0)), optimizer=optim.SGD(model.parameters(), lr=0.1),
            epochs=1, batch_size=8, progress=False, verbose=False)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_fit_refuses_bad_seeds(seed):
    x, y = blobs(16)
    model = small_model()
    with pytest.raises(ValueError, match="seed"):
        fit(model, (x, y), optimizer=optim.SGD(model.parameters(), lr=0.1), seed=seed,
            progress=False, verbose=False)


def test_resume_with_other_optimizer_settings_is_refused(tmp_path):
    train_run(tmp_path, epochs=1, name="first")
    x, y = blobs(120)
    model = small_model(seed=1)
    with pytest.raises(ValueError, match="optimizer settings.*momentum"):
        fit(model, (x, y), optimizer=optim.SGD(model.parameters(), lr=0.1, momentum=0.5),
            epochs=2, batch_size=16, seed=3, resume=tmp_path / "first.safetensors",
            progress=False, verbose=False)


# -- train_step, the loss calling convention, opt-in diagnosis, torn interrupts ---------------


def test_train_step_is_one_fit_batch_and_leaves_results_on_the_device(backend):
    from xpnn.training import train_step

    x, y = blobs(16)
    stepped, reference = small_model(), small_model()
    optimizer = optim.SGD(stepped.parameters(), lr=0.1)
    batch_loss, logits = train_step(stepped, losses.softmax_cross_entropy, optimizer, x, y)
    assert backend.owns(batch_loss) and backend.owns(logits)
    assert tuple(batch_loss.shape) == () and tuple(logits.shape) == (16, 2)
    assert all(p.grad is None for p in stepped.parameters())
    assert optimizer.step_count == 1
    # the same update by hand
    ref_logits, backprop = reference.forward(x, train=True)
    ref_loss, dlogits = losses.softmax_cross_entropy(ref_logits, y)
    backprop(dlogits)
    optim.SGD(reference.parameters(), lr=0.1).step()
    assert float(backends.to_numpy(batch_loss)) == float(backends.to_numpy(ref_loss))
    for name, value in stepped.state_dict().items():
        np.testing.assert_allclose(backends.to_numpy(value),
                                   backends.to_numpy(reference.state_dict()[name]),
                                   rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("make_loss", [
    lambda: losses.softmax_cross_entropy,
    lambda: functools.partial(losses.softmax_cross_entropy),
    lambda: functools.partial(losses.softmax_cross_entropy, label_smoothing=0.1),
], ids=["function", "partial", "partial-with-smoothing"])
def test_a_wrapped_loss_gets_no_per_batch_label_check(monkeypatch, make_loss):
    calls = []
    original = losses._check_range
    monkeypatch.setattr(losses, "_check_range", lambda *a: calls.append(1) or original(*a))
    x, y = blobs(64)
    model = small_model()
    fit(model, (x, y), (x, y), optimizer=optim.SGD(model.parameters(), lr=0.1),
        loss=make_loss(), epochs=2, batch_size=8, progress=False, verbose=False)
    assert calls == []  # 16 training batches and 2 evaluations, no device check
    with pytest.raises(ValueError, match=r"softmax_cross_entropy expected class indices in "
                                         r"\[0, 2\).*max=3"):
        fit(model, (x, np.where(y == 1, 3, 0)), optimizer=optim.SGD(model.parameters(), lr=0.1),
            loss=make_loss(), epochs=1, batch_size=8, progress=False, verbose=False)


def test_a_loss_without_check_labels_is_called_with_two_arguments(monkeypatch):
    seen = []

    def plain_loss(logits, labels):
        seen.append(type(labels).__name__)
        return losses.softmax_cross_entropy(logits, labels)

    calls = []
    original = losses._check_range
    monkeypatch.setattr(losses, "_check_range", lambda *a: calls.append(1) or original(*a))
    x, y = blobs(32)
    model = small_model()
    fit(model, (x, y), optimizer=optim.SGD(model.parameters(), lr=0.1), loss=plain_loss,
        epochs=1, batch_size=8, progress=False, verbose=False)
    assert len(seen) == 4 and len(calls) == 4  # it does its own (per-batch) checks


def test_every_loss_accepts_check_labels_so_fit_skips_the_device_check():
    from xpnn.training.labels import accepts_check_labels

    for loss in (losses.softmax_cross_entropy, losses.mean_squared_error,
                 losses.binary_cross_entropy_with_logits):
        assert accepts_check_labels(loss), loss.__name__
    assert not accepts_check_labels(lambda logits, labels: None)
    assert not accepts_check_labels(lambda logits, labels, **options: None)


def test_fit_tunes_host_memory_once_when_training_starts(monkeypatch):
    from xpnn.backends import allocator

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or "")
    x, y = blobs(16)
    model = small_model()
    fit(model, (x, y), optimizer=optim.SGD(model.parameters(), lr=0.1), epochs=2,
        batch_size=8, progress=False, verbose=False)
    assert calls == [1]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_without_diagnose_a_nan_names_epoch_and_batches_and_how_to_diagnose(tmp_path):
    x, y = blobs(64)
    x[37, 1] = np.nan
    model = small_model()
    snapshots = []
    from xpnn.training import rollback

    original = rollback.Snapshot.take
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rollback.Snapshot, "take",
                      classmethod(lambda cls, *a, **k: snapshots.append(1) or original(*a, **k)))
        with pytest.raises(TrainingStopped) as caught:
            fit(model, (x, y), optimizer=optim.SGD(model.parameters(), lr=0.1), epochs=1,
                batch_size=8, log_every=4, seed=0, progress=False, verbose=False)
    assert snapshots == []  # no copy of the model or optimizer state was taken
    error = caught.value
    from xpnn.datasets import epoch_order

    batch = int(np.flatnonzero(epoch_order(64, 0, 0) == 37)[0]) // 8 + 1
    first, last = (1, 4) if batch <= 4 else (5, 8)
    assert (error.epoch, error.batch, error.layer, error.where) == (1, last, None, None)
    assert f"in epoch 1, between batches {first} and {last} of 8" in str(error)
    assert "diagnose=True" in str(error)
    model = small_model()
    with pytest.raises(TrainingStopped, match=f"in epoch 1, at batch {batch} of 8") as caught:
        fit(model, (x, y), optimizer=optim.SGD(model.parameters(), lr=0.1), epochs=1,
            batch_size=8, log_every=1, seed=0, progress=False, verbose=False)
    assert caught.value.batch == batch


class InterruptingSGD(optim.SGD):
    """SGD whose step is cut short by a KeyboardInterrupt after updating the first
    parameter, at step ``at`` (a torn update, as a KeyboardInterrupt raised by other code
    than fit's Ctrl-C handler could leave it)."""

    def __init__(self, *args, at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.at = at

    def _update(self, index, parameter, grad):
        super()._update(index, parameter, grad)
        if self.step_count == self.at and index == 0:
            raise KeyboardInterrupt


def interrupted_run(tmp_path, name, *, at=None, resume=None, diagnose=False):
    x, y = blobs(120)
    model = small_model(seed=1)
    optimizer = InterruptingSGD(model.parameters(), lr=0.1, momentum=0.9, at=at)
    fit(model, (x, y), optimizer=optimizer, epochs=2, batch_size=16, seed=3, log_every=3,
        checkpoint=tmp_path / f"{name}.safetensors", resume=resume, progress=False,
        verbose=False, diagnose=diagnose)
    return model


def test_an_interrupt_inside_the_optimizer_step_writes_no_torn_checkpoint(tmp_path, capsys):
    path = tmp_path / "cut.safetensors"
    with pytest.raises(KeyboardInterrupt):
        interrupted_run(tmp_path, "cut", at=12)  # epoch 2, batch 4
    assert "no checkpoint was written" in capsys.readouterr().err
    position = json.loads(load_metadata(path)["position"])
    assert (position["epoch"], position["batches_done"]) == (1, 0)  # the epoch-1 checkpoint
    straight = interrupted_run(tmp_path, "straight")
    resumed = interrupted_run(tmp_path, "resumed", resume=path)
    assert_same_weights(straight, resumed)


def test_with_diagnose_an_interrupt_inside_the_step_goes_back_to_the_snapshot(tmp_path):
    path = tmp_path / "cut.safetensors"
    with pytest.raises(KeyboardInterrupt):
        interrupted_run(tmp_path, "cut", at=12, diagnose=True)  # epoch 2, batch 4
    position = json.loads(load_metadata(path)["position"])
    assert (position["epoch"], position["batches_done"]) == (1, 3)  # the check after batch 3
    straight = interrupted_run(tmp_path, "straight")
    resumed = interrupted_run(tmp_path, "resumed", resume=path)
    assert_same_weights(straight, resumed)


def test_a_second_ctrl_c_during_the_optimizer_step_waits_for_the_end_of_the_batch(tmp_path):
    import os
    import signal

    class SignallingSGD(optim.SGD):
        at = None

        def _update(self, index, parameter, grad):
            if self.step_count == self.at and index == 0:
                os.kill(os.getpid(), signal.SIGINT)  # first Ctrl-C: stop after the batch
                os.kill(os.getpid(), signal.SIGINT)  # second: the step is under way
            super()._update(index, parameter, grad)

    def run(name, at=None, resume=None):
        x, y = blobs(120)
        model = small_model(seed=1)
        optimizer = SignallingSGD(model.parameters(), lr=0.1, momentum=0.9)
        optimizer.at = at
        fit(model, (x, y), optimizer=optimizer, epochs=2, batch_size=16, seed=3,
            checkpoint=tmp_path / f"{name}.safetensors", resume=resume, progress=False,
            verbose=False)
        return model

    with pytest.raises(KeyboardInterrupt):
        run("cut", at=12)  # epoch 2, batch 4
    position = json.loads(load_metadata(tmp_path / "cut.safetensors")["position"])
    assert (position["epoch"], position["batches_done"]) == (1, 4)
    assert_same_weights(run("straight"), run("resumed", resume=tmp_path / "cut.safetensors"))


# -- issue 13: resume command, progress bar, restore_best, unmet target, schedules --------


def test_ctrl_c_prints_the_exact_call_to_continue_and_exposes_the_path(tmp_path, capsys):
    with pytest.raises(KeyboardInterrupt) as caught:
        train_run(tmp_path, epochs=2, name="cut", interrupt_at=12)
    path = str(tmp_path / "cut.safetensors")
    assert f"continue with fit(..., resume={path!r})" in capsys.readouterr().err
    assert caught.value.resume_from == path
    assert caught.value.history.resume_from == path
    assert caught.value.history.stopped_because == "interrupted"


def test_a_torn_interrupt_names_the_kept_checkpoint_to_continue_from(tmp_path, capsys):
    with pytest.raises(KeyboardInterrupt) as caught:
        interrupted_run(tmp_path, "cut", at=12)  # epoch 2: the epoch-1 checkpoint is kept
    path = str(tmp_path / "cut.safetensors")
    assert f"fit(..., resume={path!r})" in capsys.readouterr().err
    assert caught.value.resume_from == path
    with pytest.raises(KeyboardInterrupt) as caught:
        interrupted_run(tmp_path, "early", at=2)  # epoch 1: there is no checkpoint yet
    assert caught.value.resume_from is None


class RecordingBar:
    """Stands in for console.ProgressBar and records every position it is moved to."""

    instances: list = []

    def __init__(self, total, epoch, epochs, progress, start=0, **kwargs):
        self.start, self.positions = start, []
        RecordingBar.instances.append(self)

    def advance(self, done):
        self.positions.append(done)

    def update(self, done, sums, started):
        self.positions.append(done)

    def close(self):
        pass


def test_the_progress_bar_moves_every_batch_and_starts_at_the_resumed_batch(
        tmp_path, monkeypatch):
    from xpnn.training import loop

    monkeypatch.setattr(loop, "ProgressBar", RecordingBar)
    RecordingBar.instances = []
    with pytest.raises(KeyboardInterrupt):
        train_run(tmp_path, epochs=2, name="cut", interrupt_at=12)  # epoch 2, batch 3
    first = RecordingBar.instances[0]
    assert sorted(set(first.positions)) == list(range(1, 9))  # log_every=50 > 8 batches
    RecordingBar.instances = []
    train_run(tmp_path, epochs=2, name="cut", resume=tmp_path / "cut.safetensors")
    resumed = RecordingBar.instances[0]
    assert resumed.start == 2
    assert sorted(set(resumed.positions)) == list(range(3, 9))


def test_the_progress_bar_fits_80_columns_and_shows_the_resumed_position(monkeypatch):
    import io

    from xpnn.training.console import ProgressBar

    monkeypatch.setattr(ProgressBar, "REFRESH_SECONDS", 0.0)  # redraw at every move

    class Sums:
        loss, accuracy = 0.123456, 0.987654

    out = io.StringIO()
    bar = ProgressBar(4690, 2, 10, progress=True, start=1234, file=out)
    bar.update(1300, Sums, 0.0)
    bar.close()
    lines = [line for line in out.getvalue().replace("\r", "\n").split("\n") if line.strip()]
    assert lines and "1234/4690" in lines[0]
    assert all(len(line) <= 80 for line in lines)
    assert all("|" in line and "#" in line for line in lines)  # the bar itself shows
    assert any("loss 0.1235" in line for line in lines)


def test_the_progress_bar_is_not_drawn_when_stdout_is_not_a_terminal(capsys):
    import io

    from xpnn.training.console import ProgressBar

    class Pipe(io.StringIO):
        def isatty(self):
            return False

    pipe = Pipe()
    bar = ProgressBar(10, 0, 1, progress=None, file=pipe)
    bar.advance(5)
    bar.close()
    assert bar.bar is None and pipe.getvalue() == ""
    x, y = blobs(64)
    model = small_model()
    fit(model, (x, y), optimizer=optim.SGD(model.parameters(), lr=0.1), epochs=2,
        batch_size=16, progress=None)  # pytest's captured stdout is not a terminal
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    assert [line.split(":")[0] for line in captured.out.splitlines()] == ["epoch 1/2",
                                                                          "epoch 2/2"]


def test_restore_best_puts_back_the_weights_of_the_lowest_test_loss(tmp_path):
    x, y = blobs()
    xt, yt = blobs(60, seed=5)
    yt = 1 - yt  # the better the model fits the training set, the worse its test loss
    model = small_model()
    history = fit(model, (x, y), (xt, yt), optimizer=optim.SGD(model.parameters(), lr=0.1),
                  epochs=4, batch_size=20, progress=False, verbose=False, restore_best=True,
                  checkpoint=tmp_path / "run.safetensors")
    losses = history["test_loss"]
    best = int(np.argmin(losses)) + 1
    assert best < 4 and losses[best - 1] < losses[-1]  # the last epoch is not the best
    assert history.restored_epoch == best
    assert evaluate(model, xt, yt)[0] == pytest.approx(losses[best - 1], rel=1e-5)
    last = small_model(seed=7)
    last.load_state_dict({k[len("model."):]: v for k, v in
                          xpnn_io.load(tmp_path / "run.safetensors").items()
                          if k.startswith("model.")})
    assert evaluate(last, xt, yt)[0] == pytest.approx(losses[-1], rel=1e-5)  # resumable


def test_restore_best_is_off_by_default_and_needs_a_test_set():
    x, y = blobs(60)
    model = small_model()
    history = fit(model, (x, y), (x, y), optimizer=optim.SGD(model.parameters(), lr=0.1),
                  epochs=1, batch_size=20, progress=False, verbose=False)
    assert history.restored_epoch is None
    with pytest.raises(ConfigError, match="restore_best"):
        fit(model, (x, y), optimizer=optim.SGD(model.parameters(), lr=0.1), epochs=1,
            restore_best=True, progress=False, verbose=False)


def test_an_unreached_target_accuracy_is_reported(capsys):
    x, y = blobs(60)
    model = small_model()
    history = fit(model, (x, y), (x, y), optimizer=optim.SGD(model.parameters(), lr=0.0),
                  epochs=2, batch_size=20, target_accuracy=1.0, progress=False)
    assert history.stopped_because.startswith("target accuracy 1.0000 not reached in 2 epochs")
    assert history.stopped_because in capsys.readouterr().out
    reached = fit(model, (x, y), (x, y), optimizer=optim.SGD(model.parameters(), lr=0.0),
                  epochs=1, batch_size=20, target_accuracy=0.0, progress=False,
                  verbose=False)
    assert "reached target" in reached.stopped_because


def test_resume_prints_the_epoch_and_batch_it_resumed_at(tmp_path, capsys):
    with pytest.raises(KeyboardInterrupt):
        train_run(tmp_path, epochs=2, name="cut", interrupt_at=12)
    x, y = blobs(120)
    model = small_model(seed=1)
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    capsys.readouterr()
    fit(model, (x, y), optimizer=optimizer, epochs=2, batch_size=16, seed=3,
        schedule=schedules.StepLR(optimizer, step_size=1, gamma=0.5),
        resume=tmp_path / "cut.safetensors", progress=False)
    assert "resumed at epoch 2, batch 2" in capsys.readouterr().out


def test_resume_into_another_architecture_with_the_same_shapes_is_refused(tmp_path):
    from xpnn.layers import Tanh

    train_run(tmp_path, epochs=1, name="first")
    x, y = blobs(120)
    other = Sequential([Dense(2, 16), Tanh(), Dense(16, 2)], seed=1)  # same shapes
    optimizer = optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    before = [backends.to_numpy(v).copy() for v in other.state_dict().values()]
    with pytest.raises(WeightsError, match=r"architecture mismatch") as caught:
        fit(other, (x, y), optimizer=optimizer, epochs=2, batch_size=16, seed=3,
            resume=tmp_path / "first.safetensors", progress=False, verbose=False)
    assert '"ReLU"' in str(caught.value) and '"Tanh"' in str(caught.value)
    for old, new in zip(before, other.state_dict().values(), strict=True):
        np.testing.assert_array_equal(old, backends.to_numpy(new))


def cosine_run(tmp_path, epochs, t_max, name, resume=None):
    x, y = blobs(120)
    model = small_model(seed=1)
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    schedule = schedules.CosineAnnealingLR(optimizer, T_max=t_max)
    history = fit(model, (x, y), optimizer=optimizer, epochs=epochs, batch_size=16, seed=3,
                  schedule=schedule, checkpoint=tmp_path / f"{name}.safetensors",
                  resume=resume, progress=False, verbose=False)
    return model, history


def test_resuming_with_more_epochs_under_the_old_cosine_period_is_refused(tmp_path):
    cosine_run(tmp_path, epochs=2, t_max=2, name="short")
    with pytest.raises(ConfigError, match=r"T_max=4"):
        cosine_run(tmp_path, epochs=4, t_max=2, name="longer",
                   resume=tmp_path / "short.safetensors")


def test_a_resumed_run_uses_the_t_max_of_the_schedule_it_is_given(tmp_path):
    cosine_run(tmp_path, epochs=2, t_max=2, name="short")
    _, history = cosine_run(tmp_path, epochs=4, t_max=4, name="longer",
                            resume=tmp_path / "short.safetensors")
    # epochs 3 and 4 train on the new cosine (T_max=4), not at lr 0 of the old one
    assert history["lr"][2:] == pytest.approx([0.1 * (1 + np.cos(np.pi * t / 4)) / 2
                                               for t in (2, 3)])
    assert min(history["lr"][2:]) > 0.01


def test_the_progress_bar_is_redrawn_every_half_second_during_a_long_batch():
    """A batch that takes longer than the refresh interval still sees the bar move (its
    elapsed time), so a slow epoch never sits still for the length of a batch."""
    import io
    import time

    pytest.importorskip("tqdm")
    from xpnn.training.console import ProgressBar

    stream = io.StringIO()
    bar = ProgressBar(10, 0, 1, progress=True, file=stream)
    drawn_at_start = stream.getvalue().count("\r")
    time.sleep(4 * ProgressBar.REFRESH_SECONDS + 0.2)  # one long "batch": no advance()
    redraws = stream.getvalue().count("\r") - drawn_at_start
    bar.close()
    assert redraws >= 3, stream.getvalue()
    after_close = stream.getvalue()
    time.sleep(2 * ProgressBar.REFRESH_SECONDS)
    assert stream.getvalue() == after_close  # the redrawing thread stopped with the bar
