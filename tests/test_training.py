import numpy as np
import pytest

from xpnn import backends, losses, optim, schedules
from xpnn.errors import WeightsError
from xpnn.io import load_metadata
from xpnn.layers import Dense, ReLU, Sequential
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
