"""fit against bad training inputs: forged checkpoint counters, malformed test sets and
checkpoint targets that cannot be written.

Every case must end in an :class:`~xpnn.errors.XpnnError` that names what is wrong, before
the first batch (the model's weights unchanged), never in a bare ``OverflowError`` or after
an epoch of training.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from xpnn import backends, optim, schedules
from xpnn.errors import ConfigError, ShapeError, WeightsError, XpnnError
from xpnn.io import load, load_metadata, save
from xpnn.layers import Dense, ReLU, Sequential
from xpnn.training import fit


def blobs(n=64, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = np.array([[-2.0, -2.0], [2.0, 2.0]])[labels] + 0.5 * rng.standard_normal((n, 2))
    return x.astype("float32"), labels


def model_and_optimizer(seed=1):
    model = Sequential([Dense(2, 8), ReLU(), Dense(8, 2)], seed=seed)
    return model, optim.Adam(model.parameters(), lr=0.01)


def weights(model):
    return [backends.to_numpy(v).copy() for v in model.state_dict().values()]


def assert_unchanged(before, model):
    for old, new in zip(before, model.state_dict().values(), strict=True):
        np.testing.assert_array_equal(old, backends.to_numpy(new))


# -- forged checkpoint counters ------------------------------------------------------------

FORGED_INTEGERS = [10**400, 2**63 - 1, 2**64, 2**53 + 1, -1, -(2**63)]
FORGED_OTHERS = [1e300, -1e300, 0.5, True, None, "3", [1], {"a": 1}]


def short_id(value) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"int_{len(text)}_digits"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint written mid-epoch (so every counter, partial sums included, is present)
    with a cosine schedule."""
    path = tmp_path_factory.mktemp("forged") / "good.safetensors"
    x, y = blobs()
    model, optimizer = model_and_optimizer()
    calls = {"n": 0}

    def loss(logits, labels):
        from xpnn.losses import softmax_cross_entropy

        calls["n"] += 1
        if calls["n"] == 8:  # epoch 2 (4 batches and an evaluation per epoch), batch 3
            raise KeyboardInterrupt
        return softmax_cross_entropy(logits, labels)

    with pytest.raises(KeyboardInterrupt):
        fit(model, (x, y), (x, y), optimizer=optimizer, loss=loss, epochs=3, batch_size=16,
            schedule=schedules.CosineAnnealingLR(optimizer, T_max=3), checkpoint=path,
            progress=False, verbose=False)
    position = json.loads(load_metadata(path)["position"])
    assert position["partial"] is not None
    return path


def forge(source, target, *, position=None, partial=None, schedule=None, tensor=None):
    """Copy ``source`` to ``target`` with one field replaced."""
    metadata = {k: v for k, v in load_metadata(source).items()
                if k not in ("format", "format_version", "xpnn_version")}  # save writes them
    tensors = load(source)
    if position is not None:
        record = json.loads(metadata["position"])
        record[position[0]] = position[1]
        metadata["position"] = json.dumps(record)
    if partial is not None:
        record = json.loads(metadata["position"])
        record["partial"][partial[0]] = partial[1]
        metadata["position"] = json.dumps(record)
    if schedule is not None:
        record = json.loads(metadata["schedule"])
        record[schedule[0]] = schedule[1]
        metadata["schedule"] = json.dumps(record)
    if tensor is not None:
        tensors[tensor[0]] = tensor[1]
    save(tensors, target, metadata=metadata)
    return target


def resume_from(path, epochs=3):
    x, y = blobs()
    model, optimizer = model_and_optimizer(seed=2)
    before = weights(model)
    try:
        fit(model, (x, y), (x, y), optimizer=optimizer, epochs=epochs, batch_size=16,
            schedule=schedules.CosineAnnealingLR(optimizer, T_max=3), resume=path,
            progress=False, verbose=False)
    except XpnnError as error:
        assert_unchanged(before, model)
        return error
    raise AssertionError(f"fit resumed from the forged checkpoint {path}")


POSITION_FIELDS = ["epoch", "batches_done", "seed", "batch_size", "num_samples", "epochs"]


@pytest.mark.parametrize("field", POSITION_FIELDS)
@pytest.mark.parametrize("value", FORGED_INTEGERS + FORGED_OTHERS, ids=short_id)
def test_forged_position_counters_are_weights_errors_naming_the_field(
        checkpoint, tmp_path, field, value, hardening_report):
    error = resume_from(forge(checkpoint, tmp_path / "forged.safetensors",
                              position=(field, value)))
    assert isinstance(error, WeightsError), repr(error)
    assert field in str(error) or "position record" in str(error)
    counts = hardening_report.setdefault("forged_checkpoint_counters", {"cases": 0})
    counts["cases"] += 1


@pytest.mark.parametrize("field", ["count", "batches"])
@pytest.mark.parametrize("value", FORGED_INTEGERS + [1e300, 0.5, None], ids=short_id)
def test_forged_partial_epoch_counters_are_weights_errors(checkpoint, tmp_path, field, value):
    error = resume_from(forge(checkpoint, tmp_path / "forged.safetensors",
                              partial=(field, value)))
    assert isinstance(error, WeightsError), repr(error)
    assert f"partial.{field}" in str(error) or "position record" in str(error)


@pytest.mark.parametrize("field", ["last_epoch", "T_max"])
@pytest.mark.parametrize("value", FORGED_INTEGERS + [1e300, 0.5], ids=short_id)
def test_forged_schedule_counters_are_weights_errors_naming_the_field(
        checkpoint, tmp_path, field, value):
    error = resume_from(forge(checkpoint, tmp_path / "forged.safetensors",
                              schedule=(field, value)))
    assert isinstance(error, WeightsError), repr(error)
    assert field in str(error)


@pytest.mark.parametrize("value", [2**63 - 1, 2**62, 2**53 + 2, -1])
def test_forged_optimizer_step_counts_are_weights_errors(checkpoint, tmp_path, value):
    error = resume_from(forge(checkpoint, tmp_path / "forged.safetensors",
                              tensor=("optimizer.step", np.asarray([value], dtype=np.int64))))
    assert isinstance(error, WeightsError), repr(error)
    assert "step" in str(error)


@pytest.mark.parametrize("value", [1e300, 1e38])
def test_forged_float_optimizer_step_counts_are_weights_errors(checkpoint, tmp_path, value):
    error = resume_from(forge(checkpoint, tmp_path / "forged.safetensors",
                              tensor=("optimizer.state.0.step",
                                      np.asarray([value], dtype=np.float64))))
    assert isinstance(error, WeightsError), repr(error)


def test_random_forged_counters_never_escape_as_overflow_errors(checkpoint, tmp_path,
                                                               fuzz_trials, hardening_report):
    rng = np.random.default_rng(13)
    fields = [("position", f) for f in POSITION_FIELDS] + [
        ("partial", "count"), ("partial", "batches"), ("schedule", "last_epoch"),
        ("schedule", "T_max"), ("schedule", "base_lr"), ("schedule", "eta_min")]
    trials = max(fuzz_trials // 4, 10)
    outcomes = {"refused": 0, "resumed": 0}
    for trial in range(trials):
        kind, field = fields[rng.integers(len(fields))]
        exponent = int(rng.integers(0, 1300))
        value = [10**exponent, -(10**exponent), 2**int(rng.integers(0, 128)) - 1,
                 float(f"1e{rng.integers(0, 308)}")][trial % 4]
        path = forge(checkpoint, tmp_path / f"forged{trial}.safetensors", **{kind: (field, value)})
        x, y = blobs()
        model, optimizer = model_and_optimizer(seed=2)
        try:
            fit(model, (x, y), (x, y), optimizer=optimizer, epochs=3, batch_size=16,
                schedule=schedules.CosineAnnealingLR(optimizer, T_max=3), resume=path,
                progress=False, verbose=False)
            outcomes["resumed"] += 1  # a harmless value (e.g. a large finite base_lr)
        except XpnnError:
            outcomes["refused"] += 1
        except Exception as error:  # noqa: BLE001 - the point of the test
            raise AssertionError(f"{kind}.{field}={value!r}: {type(error).__name__}: "
                                 f"{error}") from error
    hardening_report["forged_counters_fuzz"] = {"trials": trials, **outcomes}


def test_a_schedule_whose_learning_rate_overflows_is_a_config_error():
    model, optimizer = model_and_optimizer()
    schedule = schedules.StepLR(optimizer, step_size=1, gamma=1e300)
    schedule.step()
    with pytest.raises(ConfigError, match="finite learning rate"):
        schedule.step()


# -- malformed test sets -------------------------------------------------------------------


def bad_test_sets():
    x, y = blobs(20)
    return {
        "not a pair": ((x, y, y), ConfigError, "pair"),
        "one array": (x, ConfigError, "pair"),
        "lengths differ": ((x, y[:-1]), ConfigError, "as many test labels"),
        "empty": ((x[:0], y[:0]), ConfigError, "non-empty test set"),
        "sample shape": ((np.ones((20, 3), "float32"), y), ShapeError, r"\(2,\)"),
        "sample rank": ((x[:, :, None], y), ShapeError, "test samples"),
        "one-hot labels": ((x, np.eye(2)[y]), ShapeError, "test labels"),
        "float labels": ((x, y.astype("float32")), ConfigError, "kind"),
        "labels out of range": ((x, y + 5), ShapeError, "class indices"),
    }


@pytest.mark.parametrize("case", list(bad_test_sets()))
def test_a_malformed_test_set_is_refused_before_the_first_batch(case, tmp_path):
    test, error_type, match = bad_test_sets()[case]
    x, y = blobs()
    model, optimizer = model_and_optimizer()
    before = weights(model)
    path = tmp_path / "ckpt.safetensors"
    with pytest.raises(error_type, match=match):
        fit(model, (x, y), test, optimizer=optimizer, epochs=2, batch_size=16,
            checkpoint=path, progress=False, verbose=False)
    assert_unchanged(before, model)
    assert not path.exists()


# -- checkpoint targets that cannot be written ---------------------------------------------


def bad_targets(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    return {
        "missing folder": (tmp_path / "missing" / "ckpt.safetensors", "does not exist"),
        "a folder": (tmp_path / "folder", "not a folder"),
        "under a file": (tmp_path / "file" / "ckpt.safetensors", "does not exist"),
        "empty string": ("", "file path"),
        "not a path": (3, "file path"),
    }


@pytest.mark.parametrize("case", ["missing folder", "a folder", "under a file",
                                  "empty string", "not a path"])
def test_an_unwritable_checkpoint_target_is_refused_before_the_first_batch(case, tmp_path):
    target, match = bad_targets(tmp_path)[case]
    x, y = blobs()
    model, optimizer = model_and_optimizer()
    before = weights(model)
    with pytest.raises(ConfigError, match=match):
        fit(model, (x, y), optimizer=optimizer, epochs=1, batch_size=16, checkpoint=target,
            progress=False, verbose=False)
    assert_unchanged(before, model)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root can write into read-only folders")
def test_a_checkpoint_in_a_read_only_folder_is_refused_before_the_first_batch(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        x, y = blobs()
        model, optimizer = model_and_optimizer()
        with pytest.raises(ConfigError, match="writable"):
            fit(model, (x, y), optimizer=optimizer, epochs=1, batch_size=16,
                checkpoint=folder / "ckpt.safetensors", progress=False, verbose=False)
    finally:
        folder.chmod(0o700)
