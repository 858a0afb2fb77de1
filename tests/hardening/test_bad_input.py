"""Bad input at every public entry point: the table of what works and what is refused.

Each row is one call with one kind of bad input. It either

* works, and a check on the result pins what "works" means (the documented behaviour), or
* raises a specific :class:`~xpnn.errors.XpnnError` subclass whose message matches a
  regular expression (what was wrong, what was expected, what was received).

Decisions pinned here:

* An empty batch (N = 0) works for layers (Dense, Conv2D, pooling, Flatten, activations,
  BatchNorm in evaluation) and gives an empty output, as PyTorch does. Where a mean over
  the batch is needed (losses, accuracy, BatchNorm in training, evaluate, fit) it is a
  ShapeError or ConfigError: a mean over nothing is undefined (PyTorch returns NaN).
* NaN inputs propagate (no per-call check, which would cost a device sync): the output
  has NaN where the input did. ``fit`` detects a NaN loss and names the batch and layer.
* Integer, bool and float16 inputs to layers with parameters are a DTypeError naming the
  cast; parameter-free activations follow the array library's promotion rules.
* Arrays of another backend or device are a BackendError naming both sides; host NumPy
  batches are moved to the model's backend. Non-contiguous, Fortran-ordered and read-only
  arrays work and give the same result as a contiguous copy.
* Images of every mode are converted to RGB; unreadable ones are an ImageError (a
  DataError, hence an OSError).

Rows marked xfail need a change in a file this suite does not own; the reason says which.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import xpnn
from xpnn import backends, losses, optim, schedules
from xpnn.datasets import (
    BatchLoader,
    DataNotFoundError,
    load_dataset,
    load_mnist,
    normalize,
    one_hot,
    read_idx,
    write_idx,
)
from xpnn.errors import (
    BackendError,
    ConfigError,
    DataError,
    DTypeError,
    MissingFileError,
    ShapeError,
    WeightsError,
    XpnnError,
)
from xpnn.io.darknet import read_weights as read_darknet_weights
from xpnn.layers import (
    BatchNorm,
    Conv2D,
    Dense,
    Flatten,
    GlobalAvgPool,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Residual,
    Sequential,
    Sigmoid,
    Softmax,
)
from xpnn.models import Darknet53
from xpnn.training import evaluate, fit

F32 = np.float32


@dataclass
class Case:
    id: str
    call: Any  # callable(tmp_path) -> result
    works: Any = None  # callable(result) -> bool, when the call must work
    raises: type | None = None
    match: str = ""
    xfail: str = ""


def works(id, call, check):
    return Case(id, call, works=check)


def raises(id, call, error, match):
    return Case(id, call, raises=error, match=match)


def x(*shape, dtype=F32, fill=None):
    if fill is not None:
        return np.full(shape, fill, dtype=dtype)
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def dense():
    return Dense(3, 2, seed=0)


def conv():
    return Conv2D(2, 4, 3, padding=1, seed=0)


def readonly(array):
    array = array.copy()
    array.flags.writeable = False
    return array


def same_as_contiguous(layer, array):
    def check(result):
        return np.array_equal(result, layer(np.ascontiguousarray(array)))

    return check


def has_nan_rows(rows):
    def check(result):
        bad = np.isnan(result).reshape(result.shape[0], -1).any(axis=1)
        return bad.tolist() == [i in rows for i in range(result.shape[0])]

    return check


# -- layers ---------------------------------------------------------------------------------------

D, C = dense(), conv()
NON_CONTIGUOUS = x(6, 4)[::2, :3]
FORTRAN = np.asfortranarray(x(4, 3))
NAN_BATCH = x(3, 3)
NAN_BATCH[1, 2] = np.nan
NAN_IMAGES = x(2, 2, 5, 5)
NAN_IMAGES[0, 1, 2, 2] = np.nan
STRIDED_IMAGES = x(2, 2, 10, 10)[:, :, ::2, ::2]

LAYER_CASES = [
    works("Dense/empty-batch", lambda t: D(x(0, 3)), lambda y: y.shape == (0, 2)),
    works("Dense/nan-input-propagates", lambda t: D(NAN_BATCH), has_nan_rows({1})),
    works("Dense/read-only-input", lambda t: D(readonly(x(4, 3))),
          lambda y: np.array_equal(y, D(x(4, 3)))),
    works("Dense/non-contiguous-input", lambda t: D(NON_CONTIGUOUS),
          same_as_contiguous(D, NON_CONTIGUOUS)),
    works("Dense/fortran-order-input", lambda t: D(FORTRAN), same_as_contiguous(D, FORTRAN)),
    works("Dense/leading-axes", lambda t: D(x(2, 5, 3)), lambda y: y.shape == (2, 5, 2)),
    raises("Dense/wrong-features", lambda t: D(x(4, 5)), ShapeError,
           r"Dense\(3, 2\) expected an input of shape \(batch, 3\)\. Received: x\.shape=\(4, 5\)"),
    raises("Dense/rank-0", lambda t: D(np.zeros((), F32)), ShapeError, r"x\.shape=\(\)"),
    raises("Dense/int64-input", lambda t: D(x(2, 3, dtype=np.int64)), DTypeError,
           r"expected a float32 input.*x\.dtype=int64.*astype\('float32'\)"),
    raises("Dense/bool-input", lambda t: D(x(2, 3, dtype=bool)), DTypeError, r"x\.dtype=bool"),
    raises("Dense/float16-input", lambda t: D(x(2, 3, dtype=np.float16)), DTypeError,
           r"x\.dtype=float16"),
    raises("Dense/float64-into-float32", lambda t: D(x(2, 3, dtype=np.float64)), DTypeError,
           r"float32 input.*float64"),
    raises("Dense/uint8-pixels", lambda t: D(x(2, 3, dtype=np.uint8)), DTypeError,
           r"Scale images with x\.astype\('float32'\) / 255"),
    raises("Dense/python-list", lambda t: D([[1.0, 2.0, 3.0]]), BackendError,
           r"expected an array\. Received: a Python list"),
    raises("Dense/none", lambda t: D(None), BackendError, r"NoneType"),
    raises("Dense/array-api-strict-array-into-numpy-model",
           lambda t: D(__import__("array_api_strict").zeros((2, 3))), BackendError,
           r"numpy backend.*array_api_strict.*to_numpy"),
    works("Conv2D/empty-batch", lambda t: C(x(0, 2, 5, 5)), lambda y: y.shape == (0, 4, 5, 5)),
    works("Conv2D/nan-input-propagates", lambda t: C(NAN_IMAGES), has_nan_rows({0})),
    works("Conv2D/strided-input", lambda t: C(STRIDED_IMAGES),
          same_as_contiguous(C, STRIDED_IMAGES)),
    works("Conv2D/read-only-input", lambda t: C(readonly(x(1, 2, 5, 5))),
          lambda y: np.array_equal(y, C(x(1, 2, 5, 5)))),
    raises("Conv2D/rank-3", lambda t: C(x(2, 5, 5)), ShapeError,
           r"Conv2D expected a 4-D NCHW input\. Received: x\.shape=\(2, 5, 5\)"),
    raises("Conv2D/wrong-channels", lambda t: C(x(1, 3, 5, 5)), ShapeError,
           r"expected 2 input channels.*Received: 3 channels"),
    raises("Conv2D/image-smaller-than-kernel", lambda t: Conv2D(1, 1, 5)(x(1, 1, 3, 3)),
           ShapeError, r"needs a padded input of at least 5x5 pixels"),
    raises("Conv2D/int-input", lambda t: C(x(1, 2, 5, 5, dtype=np.int32)), DTypeError,
           r"x\.dtype=int32"),
    works("MaxPool2D/empty-batch", lambda t: MaxPool2D(2)(x(0, 1, 4, 4)),
          lambda y: y.shape == (0, 1, 2, 2)),
    raises("MaxPool2D/int-input", lambda t: MaxPool2D(2)(x(1, 1, 4, 4, dtype=np.int64)),
           DTypeError, r"floating-point input.*int64"),
    raises("MaxPool2D/rank-2", lambda t: MaxPool2D(2)(x(4, 4)), ShapeError, r"4-D NCHW"),
    works("GlobalAvgPool/empty-batch", lambda t: GlobalAvgPool()(x(0, 3, 4, 4)),
          lambda y: y.shape == (0, 3)),
    raises("GlobalAvgPool/zero-pixels", lambda t: GlobalAvgPool()(x(1, 3, 0, 4)), ShapeError,
           r"at least one pixel.*\(1, 3, 0, 4\)"),
    works("BatchNorm/empty-batch-eval", lambda t: BatchNorm(2)(x(0, 2, 3, 3)),
          lambda y: y.shape == (0, 2, 3, 3)),
    raises("BatchNorm/one-value-per-channel-in-training",
           lambda t: BatchNorm(2).forward(x(1, 2), train=True), ShapeError,
           r"more than one value per channel"),
    raises("BatchNorm/wrong-channels", lambda t: BatchNorm(2)(x(4, 3)), ShapeError,
           r"expected an input of shape \(N, 2, H, W\) or \(N, 2\)"),
    works("Flatten/empty-batch", lambda t: Flatten()(x(0, 3, 4)), lambda y: y.shape == (0, 12)),
    raises("Flatten/rank-0", lambda t: Flatten()(np.zeros((), F32)), ShapeError, r"batch axis"),
    works("ReLU/int-input-follows-numpy", lambda t: ReLU()(np.array([-1, 2])),
          lambda y: y.tolist() == [0, 2]),
    works("Sigmoid/nan-propagates", lambda t: Sigmoid()(np.array([0.0, np.nan], F32)),
          lambda y: y[0] == 0.5 and np.isnan(y[1])),
    works("Softmax/empty-batch", lambda t: Softmax()(x(0, 3)), lambda y: y.shape == (0, 3)),
    raises("Softmax/zero-classes", lambda t: Softmax()(x(2, 0)), ShapeError, r"at least one"),
    raises("Softmax/axis-out-of-range", lambda t: Softmax(axis=5)(x(2, 3)), ShapeError,
           r"axis 5"),
    raises("Residual/block-changes-shape", lambda t: Residual(Dense(3, 2))(x(1, 3)),
           ShapeError, r"keep the shape of the input.*\(1, 3\).*\(1, 2\)"),
    raises("Darknet53/grayscale-batch", lambda t: tiny_darknet()(x(1, 1, 8, 8)), ShapeError,
           r"RGB images of shape \(N, 3, H, W\)"),
    raises("Darknet53/too-small", lambda t: tiny_darknet()(x(1, 3, 2, 8)), ShapeError,
           r"at least 4x4 pixels"),
]


def tiny_darknet():
    return Darknet53(num_classes=2, depths=(1, 1), widths=(4, 8), stem_width=4, seed=0)


def strict_model_cpu_input(tmp_path):
    import array_api_strict

    with backends.use("array_api_strict", device="device1"):
        model = Dense(3, 2, seed=0)
        return model(array_api_strict.zeros((2, 3), device=array_api_strict.Device("CPU_DEVICE")))


def torch_tensor_into_numpy_model(tmp_path):
    torch = pytest.importorskip("torch")
    return dense()(torch.zeros(2, 3))


def numpy_batch_into_torch_model(tmp_path):
    pytest.importorskip("torch")
    with backends.use("torch"):
        return backends.to_numpy(Dense(3, 2, seed=0)(x(2, 3)))


BACKEND_CASES = [
    raises("backend/array-on-another-device", strict_model_cpu_input, BackendError,
           r"lives on device .*device1.*but the input is on device .*CPU_DEVICE"),
    raises("backend/torch-tensor-into-numpy-model", torch_tensor_into_numpy_model,
           BackendError, r"input is a torch\.Tensor.*model\.to\('torch'\)"),
    works("backend/numpy-batch-into-torch-model-is-moved", numpy_batch_into_torch_model,
          lambda y: np.allclose(y, dense()(x(2, 3)), atol=1e-6)),
    raises("backend/unknown-backend-name", lambda t: backends.use("tensorflow"), BackendError,
           r"Unknown backend 'tensorflow'\. Expected one of: numpy"),
]

# -- hyperparameters ------------------------------------------------------------------------------

PARAMS = dense().parameters()

HYPERPARAMETER_CASES = [
    raises("Dense/zero-features", lambda t: Dense(3, 0), ConfigError,
           r"out_features to be a positive integer\. Received: out_features=0"),
    raises("Dense/float-features", lambda t: Dense(3.5, 2), ConfigError, r"in_features=3\.5"),
    raises("Dense/bool-features", lambda t: Dense(True, 2), ConfigError, r"in_features=True"),
    raises("Dense/float16-dtype", lambda t: Dense(3, 2, dtype="float16"), ConfigError,
           r"dtype float32 or float64\. Received: dtype='float16'"),
    raises("Conv2D/negative-channels", lambda t: Conv2D(1, -2, 3), ConfigError,
           r"out_channels=-2"),
    raises("Conv2D/zero-stride", lambda t: Conv2D(1, 2, 3, stride=0), ConfigError,
           r"stride to be a positive integer or a pair of them\. Received: stride=0"),
    raises("Conv2D/negative-padding", lambda t: Conv2D(1, 2, 3, padding=-1), ConfigError,
           r"padding to be an integer >= 0"),
    raises("Conv2D/padding-valid", lambda t: Conv2D(1, 2, 3, padding="valid"), ConfigError,
           r"integer, a pair or 'same'"),
    raises("Conv2D/same-padding-with-stride", lambda t: Conv2D(1, 2, 3, 2, padding="same"),
           ConfigError, r"only with stride 1"),
    raises("Conv2D/kernel-triple", lambda t: Conv2D(1, 2, (3, 3, 3)), ConfigError,
           r"kernel_size=\(3, 3, 3\)"),
    raises("MaxPool2D/zero-kernel", lambda t: MaxPool2D(0), ConfigError, r"kernel_size=0"),
    raises("MaxPool2D/padding-above-half-kernel", lambda t: MaxPool2D(2, padding=2),
           ConfigError, r"at most half the kernel size"),
    raises("BatchNorm/zero-features", lambda t: BatchNorm(0), ConfigError, r"num_features=0"),
    raises("BatchNorm/zero-eps", lambda t: BatchNorm(4, eps=0), ConfigError, r"eps"),
    raises("BatchNorm/momentum-above-1", lambda t: BatchNorm(4, momentum=2.0), ConfigError,
           r"momentum"),
    raises("LeakyReLU/string-slope", lambda t: LeakyReLU("0.1"), ConfigError,
           r"negative_slope to be a number"),
    raises("LeakyReLU/nan-slope", lambda t: LeakyReLU(float("nan")), ConfigError,
           r"negative_slope"),
    raises("Sequential/not-a-layer", lambda t: Sequential([Dense(3, 2), "relu"]), ConfigError,
           r"Received at position 1: 'relu'"),
    raises("SGD/negative-lr", lambda t: optim.SGD(PARAMS, lr=-1), ConfigError,
           r"lr to be a number >= 0\.0\. Received: lr=-1"),
    raises("SGD/nan-lr", lambda t: optim.SGD(PARAMS, lr=float("nan")), ConfigError, r"lr=nan"),
    raises("SGD/string-lr", lambda t: optim.SGD(PARAMS, lr="0.1"), ConfigError, r"lr='0\.1'"),
    raises("SGD/momentum-1", lambda t: optim.SGD(PARAMS, lr=0.1, momentum=1.0), ConfigError,
           r"momentum to be a number in \[0\.0, 1\.0\)"),
    raises("SGD/no-parameters", lambda t: optim.SGD([], lr=0.1), ConfigError,
           r"at least one parameter"),
    raises("SGD/arrays-not-parameters", lambda t: optim.SGD([np.zeros(3)], lr=0.1),
           ConfigError, r"Parameters.*params\[0\] of type ndarray"),
    raises("Adam/beta1-1", lambda t: optim.Adam(PARAMS, betas=(1.0, 0.9)), ConfigError,
           r"betas\[0\]"),
    raises("Adam/betas-string", lambda t: optim.Adam(PARAMS, betas="ab"), ConfigError,
           r"pair \(beta1, beta2\)"),
    raises("Adam/negative-eps", lambda t: optim.Adam(PARAMS, eps=-1), ConfigError, r"eps"),
    raises("AdamW/negative-weight-decay", lambda t: optim.AdamW(PARAMS, weight_decay=-1),
           ConfigError, r"weight_decay"),
    raises("clip_grad_norm/negative", lambda t: optim.clip_grad_norm(PARAMS, -1), ConfigError,
           r"max_norm"),
    raises("StepLR/zero-step", lambda t: schedules.StepLR(optim.SGD(PARAMS, lr=0.1), 0),
           ConfigError, r"step_size"),
    raises("Darknet53/negative-depth", lambda t: Darknet53(depths=(-1,), widths=(8,)),
           ConfigError, r"depths to be a sequence of integers >= 0"),
    raises("Darknet53/depths-widths-mismatch", lambda t: Darknet53(depths=(1, 1), widths=(8,)),
           ConfigError, r"as many stage depths as widths"),
    raises("Darknet53/zero-classes", lambda t: Darknet53(0, depths=(1,), widths=(8,)),
           ConfigError, r"num_classes to be a positive integer"),
    raises("Darknet53/crop-above-1", lambda t: Darknet53(crop_pct=2.0, depths=(1,), widths=(8,)),
           ConfigError, r"crop_pct to be a number in \(0\.0, 1\.0\]"),
    raises("Darknet53/string-mean", lambda t: Darknet53(mean="abc", depths=(1,), widths=(8,)),
           ConfigError, r"mean to be three numbers"),
    raises("registry/register-a-function", lambda t: xpnn.io.register(len), ConfigError,
           r"Module subclass"),
]

# -- losses ---------------------------------------------------------------------------------------

LOGITS = x(4, 3)
CE = losses.softmax_cross_entropy

LOSS_CASES = [
    raises("cross-entropy/label-equal-to-classes", lambda t: CE(LOGITS, np.array([0, 1, 2, 3])),
           ShapeError, r"class indices in \[0, 3\).*max=3.*number of output units"),
    raises("cross-entropy/negative-label", lambda t: CE(LOGITS, np.array([0, -1, 2, 1])),
           ShapeError, r"min=-1"),
    raises("cross-entropy/float-labels", lambda t: CE(LOGITS, np.array([0.0, 1, 2, 1])),
           DTypeError, r"integer class indices.*float64.*astype\('int64'\)"),
    raises("cross-entropy/bool-labels", lambda t: CE(LOGITS, np.ones(4, bool)), DTypeError,
           r"labels\.dtype=bool"),
    raises("cross-entropy/label-count", lambda t: CE(LOGITS, np.array([0, 1])), ShapeError,
           r"labels of shape \(4,\).*Received: labels\.shape=\(2,\)"),
    raises("cross-entropy/empty-batch", lambda t: CE(x(0, 3), np.zeros(0, np.int64)), ShapeError,
           r"at least one sample"),
    raises("cross-entropy/int-logits", lambda t: CE(LOGITS.astype(int), np.array([0, 1, 2, 1])),
           DTypeError, r"floating-point logits"),
    raises("cross-entropy/1d-logits", lambda t: CE(x(3), np.array([0])), ShapeError,
           r"2-D logits"),
    raises("cross-entropy/smoothing-above-1", lambda t: CE(LOGITS, np.zeros(4, int),
                                                           label_smoothing=1.5),
           ConfigError, r"label_smoothing in \[0, 1\]"),
    raises("cross-entropy/smoothing-string", lambda t: CE(LOGITS, np.zeros(4, int),
                                                          label_smoothing="0.1"),
           ConfigError, r"label_smoothing='0\.1'"),
    raises("cross-entropy/labels-as-list", lambda t: CE(LOGITS, [0, 1, 2, 1]), BackendError,
           r"expected an array\. Received: a Python list"),
    works("cross-entropy/uint8-labels", lambda t: CE(LOGITS, np.array([0, 1, 2, 1], np.uint8)),
          lambda out: np.isfinite(out[0])),
    works("cross-entropy/float16-logits", lambda t: CE(LOGITS.astype(np.float16),
                                                       np.array([0, 1, 2, 1])),
          lambda out: out[0].dtype == np.float16 and np.isfinite(out[0])),
    works("cross-entropy/nan-logits-give-nan-loss",
          lambda t: CE(np.where(np.eye(4, 3) > 0, np.nan, LOGITS), np.array([0, 1, 2, 1])),
          lambda out: np.isnan(out[0])),
    raises("mse/shape-mismatch", lambda t: losses.mean_squared_error(x(4, 3), x(4, 2)),
           ShapeError, r"target of the same shape as pred"),
    raises("mse/empty", lambda t: losses.mean_squared_error(x(0, 3), x(0, 3)), ShapeError,
           r"at least one element"),
    raises("bce/empty", lambda t: losses.binary_cross_entropy_with_logits(x(0), x(0)),
           ShapeError, r"at least one element"),
    raises("accuracy/empty", lambda t: losses.accuracy(x(0, 3), np.zeros(0, int)), ShapeError,
           r"at least one sample"),
]

# -- files ----------------------------------------------------------------------------------------


def saved(tmp_path, values=None):
    path = tmp_path / "m.safetensors"
    if values is None:
        xpnn.io.save(Sequential([Dense(3, 2)], seed=0), path)
    else:
        xpnn.io.save(values, path)
    return path


def missing_file(tmp_path):
    try:
        xpnn.io.load(tmp_path / "absent.safetensors")
    except MissingFileError as error:
        assert isinstance(error, FileNotFoundError) and error.errno == 2
        assert error.filename.endswith("absent.safetensors")
        raise


NAN_WEIGHTS = {"w": np.array([1.0, np.nan, np.inf], dtype=F32)}

FILE_CASES = [
    raises("io.load/folder", lambda t: xpnn.io.load(t), DataError,
           r"Expected a weights file, but .* is a folder"),
    raises("io.load/missing", missing_file, MissingFileError,
           r"No weights file at .*absent\.safetensors.*Check the path"),
    raises("io.load/none", lambda t: xpnn.io.load(None), ConfigError,
           r"expected a file path \(str or os\.PathLike\)\. Received: NoneType None"),
    raises("io.load/into-not-a-module", lambda t: xpnn.io.load(saved(t), into={}), ConfigError,
           r"into= to be an xpnn Module"),
    raises("io.load/empty-file", lambda t: xpnn.io.load(write(t, b"")), WeightsError,
           r"fewer than the 8-byte header length"),
    raises("io.load/text-file", lambda t: xpnn.io.load(write(t, b"hello, not weights")),
           WeightsError, r"header claims .* bytes"),
    works("io.load/nan-weights-load-as-they-are",
          lambda t: xpnn.io.load(saved(t, NAN_WEIGHTS))["w"],
          lambda w: np.isnan(w[1]) and np.isinf(w[2])),
    raises("io.load/nan-weights-check-finite",
           lambda t: xpnn.io.load(saved(t, NAN_WEIGHTS), check_finite=True), WeightsError,
           r"NaN or infinite values in 1 arrays: 'w' \(2 of 3\)"),
    raises("io.load/into-wrong-architecture",
           lambda t: xpnn.io.load(saved(t), into=Sequential([Dense(3, 4)])), WeightsError,
           r"shape mismatch for '0\.weight': expected \(4, 3\), got \(2, 3\)"),
    raises("io.load_model/no-architecture", lambda t: xpnn.io.load_model(saved(t, NAN_WEIGHTS)),
           WeightsError, r"records no architecture"),
    raises("io.save/into-a-folder", lambda t: xpnn.io.save(dense(), t), DataError,
           r"it is a folder"),
    raises("io.save/missing-folder", lambda t: xpnn.io.save(dense(), t / "no" / "m.st"),
           DataError, r"folder .* does not exist"),
    raises("io.save/string-array", lambda t: xpnn.io.save({"s": np.array(["a"])}, t / "m"),
           DTypeError, r"cannot store 's'.*dtype=<U1"),
    raises("io.save/complex128", lambda t: xpnn.io.save({"c": np.zeros(2, complex)}, t / "m"),
           DTypeError, r"complex128"),
    raises("io.save/object-array", lambda t: xpnn.io.save({"o": np.array([None])}, t / "m"),
           DTypeError, r"dtype=object"),
    raises("io.save/number-metadata", lambda t: xpnn.io.save(dense(), t / "m",
                                                             metadata={"epochs": 3}),
           ConfigError, r"str to str.*json\.dumps"),
    raises("io.save/not-a-model", lambda t: xpnn.io.save([1, 2], t / "m"), ConfigError,
           r"a Module or a dict"),
    works("io.save/big-endian-array", lambda t: xpnn.io.load(saved(t, {
        "b": np.arange(3, dtype=">f4")}))["b"], lambda b: b.tolist() == [0.0, 1.0, 2.0]),
    raises("darknet/missing-file", lambda t: read_darknet_weights(t / "no.weights", []),
           MissingFileError, r"No darknet weights file"),
    raises("darknet/folder", lambda t: read_darknet_weights(t, []), DataError, r"is a folder"),
    raises("darknet/bad-layer-spec", lambda t: read_darknet_weights(write(t, b"0" * 20), ["x"]),
           ConfigError, r"list of ConvLayer"),
    raises("read_idx/folder", lambda t: read_idx(t), DataError, r"is a directory"),
    raises("read_idx/html-page", lambda t: read_idx(write(t, b"<html>404</html>")), DataError,
           r"not an IDX file: bad magic number.*HTML error page"),
]


def write(tmp_path, data: bytes) -> Path:
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    return path


def mnist_folder(tmp_path, labels_max=9, image_shape=(28, 28), corrupt=False):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (4, *image_shape), np.uint8),
              "train-labels-idx1-ubyte": np.array([0, 1, 2, labels_max], np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 28, 28), np.uint8),
              "t10k-labels-idx1-ubyte": np.array([3, 4], np.uint8)}
    for stem, array in arrays.items():
        write_idx(tmp_path / f"{stem}.gz", array, gzip=True)
    if corrupt:
        path = tmp_path / "t10k-images-idx3-ubyte.gz"
        path.write_bytes(path.read_bytes()[:-20])
    return tmp_path


def missing_dataset(tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XPNN_DATA", str(tmp_path / "nowhere"))
        patch.setattr("xpnn.datasets.mnist.default_cache_dir", lambda: tmp_path / "cache")
        try:
            load_mnist(root=tmp_path / "empty", download=False)
        except DataNotFoundError as error:
            assert isinstance(error, FileNotFoundError) and isinstance(error, DataError)
            raise


DATA_CASES = [
    works("load_mnist/valid-folder", lambda t: load_mnist(root=mnist_folder(t), download=False),
          lambda out: out[0][0].shape == (4, 28, 28)),
    raises("load_mnist/truncated-gzip", lambda t: load_mnist(
        root=mnist_folder(t, corrupt=True), download=False), DataError,
           r"t10k-images-idx3-ubyte\.gz is a corrupt or truncated gzip file"),
    raises("load_mnist/label-out-of-range", lambda t: load_mnist(
        root=mnist_folder(t, labels_max=12), download=False), DataError,
           r"holds label 12\. Expected labels 0 to 9"),
    raises("load_mnist/wrong-image-size", lambda t: load_mnist(
        root=mnist_folder(t, image_shape=(32, 32)), download=False), DataError,
           r"expected uint8 of shape \(N, 28, 28\)\. Received: uint8 of shape \(4, 32, 32\)"),
    Case("load_mnist/missing-files", missing_dataset, raises=DataNotFoundError,
         match=r"MNIST files not found, and download=False.*To fix: place the 4"),
    raises("load_mnist/unknown-kind", lambda t: load_mnist("letters"), ConfigError,
           r"Unknown MNIST kind 'letters'"),
    raises("load_dataset/unknown-name", lambda t: load_dataset("cifar10"), ConfigError,
           r"Unknown dataset 'cifar10'"),
    raises("BatchLoader/zero-batch", lambda t: BatchLoader(x(4, 2), np.arange(4), 0),
           ConfigError, r"batch_size must be a positive integer"),
    raises("BatchLoader/length-mismatch", lambda t: BatchLoader(x(4, 2), np.arange(3), 2),
           ShapeError, r"same number of samples.*\(4, 2\).*\(3,\)"),
    raises("normalize/float-pixels", lambda t: normalize(x(2, 2)), DTypeError,
           r"raw integer pixels 0-255"),
    raises("one_hot/label-out-of-range", lambda t: one_hot(np.array([0, 10]), 10), DataError,
           r"labels in 0\.\.9"),
    raises("fit/empty-training-set", lambda t: fit(dense(), (x(0, 3), np.zeros(0, int)),
                                                   optimizer=optim.SGD(dense().parameters(),
                                                                       lr=0.1)),
           ConfigError, r"non-empty training set"),
    raises("fit/labels-out-of-range", lambda t: fit_tiny(np.array([0, 1, 5, 1])), ShapeError,
           r"class indices in \[0, 2\).*max=5"),
    works("fit/read-only-inputs", lambda t: fit_tiny(readonly(np.array([0, 1, 1, 0])),
                                                     readonly(x(4, 3))),
          lambda history: len(history.epochs) == 1),
    raises("evaluate/empty", lambda t: evaluate(dense(), x(0, 3), np.zeros(0, int)),
           ConfigError, r"at least one sample"),
]


def fit_tiny(labels, inputs=None):
    model = Sequential([Dense(3, 2)], seed=0)
    return fit(model, (x(4, 3) if inputs is None else inputs, labels),
               optimizer=optim.SGD(model.parameters(), lr=0.1), epochs=1, batch_size=2,
               progress=False, verbose=False)


# -- images (xpnn.models.preprocess) --------------------------------------------------------------


@pytest.fixture(scope="module")
def example():
    import xpnn.models.preprocess

    return xpnn.models.preprocess


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` pixels and holds no image data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def image_file(tmp_path, name, array=None, mode=None, data=None, **save_args):
    from PIL import Image

    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    else:
        image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
        image.save(path, **save_args)
    return path


PIXELS = np.random.default_rng(1).integers(0, 256, (12, 20, 3), dtype=np.uint8)
PRE = {"input_size": 8, "crop_pct": 0.875, "interpolation": "bicubic",
       "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def is_rgb(image):
    return image.mode == "RGB" and image.size == (20, 12)


def truncated_png(tmp_path):
    full = image_file(tmp_path, "full.png", PIXELS).read_bytes()
    return image_file(tmp_path, "cut.png", data=full[: len(full) // 2])


def float_image_with_nan(tmp_path):
    values = np.linspace(0, 1, 240, dtype=np.float32).reshape(12, 20)
    values[3, 4] = np.nan
    return image_file(tmp_path, "float.tiff", values)


IMAGE_CASES = [
    ("grayscale-png", lambda t: image_file(t, "g.png", PIXELS[..., 0]), is_rgb),
    ("rgba-png", lambda t: image_file(t, "a.png", np.dstack([PIXELS, PIXELS[..., :1]])), is_rgb),
    ("16-bit-png", lambda t: image_file(t, "d.png", PIXELS[..., 0].astype(np.uint16) * 257),
     is_rgb),
    ("palette-png", lambda t: image_file(t, "p.png", PIXELS, mode="P"), is_rgb),
    ("cmyk-jpeg", lambda t: image_file(t, "c.jpg", PIXELS, mode="CMYK"), is_rgb),
    ("one-bit-png", lambda t: image_file(t, "b.png", PIXELS[..., 0], mode="1"), is_rgb),
    ("float-tiff-with-nan", float_image_with_nan, is_rgb),
    ("truncated-png", truncated_png, r"cut\.png: cannot decode the image"),
    ("not-an-image", lambda t: image_file(t, "notes.txt", data=b"hello"),
     r"notes\.txt: not an image Pillow can read"),
    ("empty-file", lambda t: image_file(t, "empty.jpg", data=b""), r"not an image"),
    ("folder", lambda t: t, r"is a folder, not an image file"),
    ("missing", lambda t: t / "absent.jpg", r"absent\.jpg: no such file"),
    ("decompression-bomb-header", lambda t: image_file(t, "bomb.png",
                                                       data=png_header_only(20000, 20000)),
     r"bomb\.png: refused, the image is too large"),
]


@pytest.mark.parametrize("name, make, expect", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_example_image_loader(tmp_path, example, name, make, expect):
    pytest.importorskip("PIL")
    path = str(make(tmp_path))
    if callable(expect):
        image = example.load_rgb(path)
        assert expect(image)
        chw = example.preprocess(image, PRE)
        assert chw.shape == (3, 8, 8) and chw.dtype == np.float32 and np.isfinite(chw).all()
    else:
        with pytest.raises(example.ImageError, match=expect) as caught:
            example.load_rgb(path)
        assert isinstance(caught.value, DataError) and isinstance(caught.value, OSError)


def test_example_preprocess_of_an_extreme_strip_stays_small(example):
    from PIL import Image

    strip = Image.fromarray(np.zeros((1, 20000, 3), np.uint8))  # resized naively: 5 GB
    pre = {**PRE, "input_size": 256}
    assert example.preprocess(strip, pre).shape == (3, 256, 256)


# -- running the table ----------------------------------------------------------------------------

ALL_CASES = (LAYER_CASES + BACKEND_CASES + HYPERPARAMETER_CASES + LOSS_CASES + FILE_CASES
             + DATA_CASES)


def _param(case: Case):
    marks = [pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


def test_case_ids_are_unique():
    ids = [case.id for case in ALL_CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("case", [_param(case) for case in ALL_CASES])
def test_bad_input(case, tmp_path):
    with backends.use("numpy"):
        if case.raises is None:
            result = case.call(tmp_path)
            assert case.works(result), f"{case.id}: unexpected result {result!r}"
            return
        with pytest.raises(XpnnError) as caught:
            case.call(tmp_path)
    error = caught.value
    assert isinstance(error, case.raises), f"{type(error).__name__}: {error}"
    assert re.search(case.match, str(error), flags=re.DOTALL), str(error)
