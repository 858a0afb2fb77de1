import json

import numpy as np
import pytest

from xpnn import backends, losses, optim, schedules
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
        train_run(tmp_path, epochs=2, name="cut", interrupt_at=12)  # epoch 2, batch 4
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
    with pytest.raises(WeightsError, match="shape mismatch"):
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
    statistics) checkpoints the last consistent state instead. Both resume exactly."""
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
    # SIGINT: after batch 3 completes; raised inside batch 3: the check after batch 2
    assert (position["epoch"], position["batches_done"]) == (1, 3 if how == "sigint" else 2)
    resumed = run("cut2", resume=tmp_path / "cut.safetensors")
    assert_same_weights(straight, resumed)  # includes BatchNorm's running statistics


# -- non-finite values: which batch and which layer ---------------------------------------------


class SqrtShift(Module):
    """sqrt(x - 1.5): NaN wherever x < 1.5 (a layer that produces NaN from finite input)."""

    def forward(self, x, *, train=False):
        x, xp = self.prepare(x)
        return xp.sqrt(xp.abs(x) + 1.0) - 1.0 + xp.sqrt(x - 1.5), lambda dy: dy


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_input_names_the_batch_and_rolls_back():
    x, y = blobs(64)
    x[37, 1] = np.nan
    model = small_model()
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingStopped) as caught:
        fit(model, (x, y), optimizer=optimizer, epochs=1, batch_size=8, log_every=4, seed=0,
            progress=False, verbose=False)
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
            batch_size=8, log_every=3, progress=False, verbose=False)
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
            batch_size=8, log_every=4, progress=False, verbose=False)
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
        return x, lambda dy: dy * float("inf")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_broken_backward_pass_is_named_as_a_gradient_problem():
    x, y = blobs(64)
    model = Sequential([Dense(2, 8), InfiniteGradient(), ReLU(), Dense(8, 2)], seed=0)
    with pytest.raises(TrainingStopped) as caught:
        fit(model, (x, y), optimizer=optim.SGD(model.parameters(), lr=0.1), epochs=1,
            batch_size=8, log_every=8, progress=False, verbose=False)
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
