"""Darknet53, the ImageNet classifier of YOLOv3 (Redmon & Farhadi 2018, Table 1).

    stem        ConvBNAct 3x3, 32 channels
    stage s     conv_down: ConvBNAct 3x3 stride 2 to C_s = 64, 128, 256, 512, 1024 channels,
                then D_s = 1, 2, 8, 8, 4 residual blocks  x + conv2(conv1(x)),
                conv1: ConvBNAct 1x1 to C_s / 2,  conv2: ConvBNAct 3x3 back to C_s
    head        global average pool, Dense(1024, num_classes); softmax gives probabilities

Every ConvBNAct is conv (no bias) -> BatchNorm -> LeakyReLU. The attribute paths give the
state names of timm's ``darknet53`` (``timm/models/cspnet.py``: ``stem.conv1.conv.weight``,
``stages.0.conv_down.bn.weight``, ``stages.0.blocks.0.conv1.bn.running_mean``,
``head.fc.weight``).

Weights load through :func:`darknet53`:

- a file saved by xpnn records the architecture, the LeakyReLU slope and the preprocessing
  (``Darknet53.config()``), and is rebuilt by :func:`xpnn.io.load_model`. darknet's own
  ``darknet53.weights`` becomes such a file with ``python -m xpnn.models.convert_darknet``
  (slope 0.1, pixels scaled to [0, 1] without mean/std);
- timm's ``darknet53.c2ns_in1k`` safetensors has the same names but no record:
  :func:`load_timm_weights` adapts it to a network built with timm's configuration (the
  defaults: slope 0.01, ImageNet mean/std, crop 0.887, bicubic).
"""

from __future__ import annotations

import os

from xpnn.backends import host_rng
from xpnn.errors import ConfigError, ShapeError, WeightsError
from xpnn.io import load_model, read_architecture, read_arrays
from xpnn.layers.blocks import ConvBNAct
from xpnn.layers.containers import Chain, skip_connection
from xpnn.layers.dense import Dense
from xpnn.layers.pooling import GlobalAvgPool
from xpnn.models.preprocess import INTERPOLATIONS, MAX_INPUT_SIZE, check_preprocessing
from xpnn.validation import float_dtype, is_int, number, positive_int

__all__ = ["INTERPOLATIONS", "MAX_INPUT_SIZE", "Darknet53", "darknet53", "load_timm_weights"]

DEPTHS = (1, 2, 8, 8, 4)
WIDTHS = (64, 128, 256, 512, 1024)
STEM_WIDTH = 32
#: Most modules a Darknet53 config may describe (darknet's own has 241).
MAX_MODULES = 20_000


class DarkStem(Chain):
    """``conv1``: a 3x3 ConvBNAct from RGB to ``out_channels`` (timm's ``stem``)."""

    def __init__(self, out_channels: int, **conv_args):
        super().__init__()
        self.conv1 = ConvBNAct(3, out_channels, 3, **conv_args)

    def steps(self):
        return [self.conv1]


class DarkBlock(Chain):
    """Residual block ``x + conv2(conv1(x))``: 1x1 to half the channels, 3x3 back."""

    def __init__(self, channels: int, **conv_args):
        super().__init__()
        self.conv1 = ConvBNAct(channels, channels // 2, 1, **conv_args)
        self.conv2 = ConvBNAct(channels // 2, channels, 3, **conv_args)

    def steps(self):
        return [self.conv1, self.conv2]

    def __call__(self, x):
        x, _ = self.prepare(x)
        return x + super().__call__(x)

    def forward(self, x, *, train: bool = False):
        x, _ = self.prepare(x)
        fx, branch_backprop = super().forward(x, train=train)
        return x + fx, skip_connection(branch_backprop)


class DarkStage(Chain):
    """``conv_down`` (3x3, stride 2) then ``blocks`` (a list of DarkBlock)."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, **conv_args):
        super().__init__()
        self.conv_down = ConvBNAct(in_channels, out_channels, 3, 2, **conv_args)
        self.blocks = [DarkBlock(out_channels, **conv_args) for _ in range(depth)]

    def steps(self):
        return [self.conv_down, *self.blocks]


class ClassifierHead(Chain):
    """``global_pool`` (GlobalAvgPool) then ``fc`` (Dense): NCHW features to logits."""

    def __init__(self, in_features: int, num_classes: int, *, dtype="float32", seed=None):
        super().__init__()
        self.global_pool = GlobalAvgPool()
        self.fc = Dense(in_features, num_classes, dtype=dtype, seed=seed)

    def steps(self):
        return [self.global_pool, self.fc]


class Darknet53(Chain):
    """Darknet53 ImageNet classifier with timm's parameter names; returns logits.

    Parameters
    ----------
    num_classes : int
        Size of the classifier (default 1000).
    negative_slope : float
        LeakyReLU slope (0.01 for timm's weights, 0.1 for darknet's).
    eps : float
        BatchNorm epsilon (default 1e-5).
    depths, widths, stem_width :
        Residual blocks and channels per stage, stem channels (defaults: Darknet53's;
        smaller values build reduced networks for tests).
    input_size, crop_pct, interpolation, mean, std :
        The preprocessing the weights expect, kept as ``preprocessing`` (a dict) and
        recorded in saved files; default timm's. See :func:`xpnn.models.preprocess.preprocess`.
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    seed : int, optional
        Seed of the generator every initial weight is drawn from, in order.

    Examples
    --------
    >>> import numpy as np
    >>> net = Darknet53(num_classes=10, depths=(1, 1), widths=(16, 32), seed=0)
    >>> net(np.zeros((2, 3, 32, 32), dtype="float32")).shape
    (2, 10)
    >>> list(net.state_dict())[:3]
    ['stem.conv1.conv.weight', 'stem.conv1.bn.weight', 'stem.conv1.bn.bias']
    """

    def __init__(self, num_classes: int = 1000, *, negative_slope: float = 0.01,
                 eps: float = 1e-5, depths=DEPTHS, widths=WIDTHS, stem_width: int = STEM_WIDTH,
                 input_size: int = 256, crop_pct: float = 0.887, interpolation: str = "bicubic",
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), dtype="float32",
                 seed=None):
        super().__init__()
        _, _, depths, widths = _sizes({"num_classes": num_classes, "stem_width": stem_width,
                                       "depths": depths, "widths": widths})
        self.num_classes = positive_int("Darknet53", "num_classes", num_classes)
        self.stem_width = positive_int("Darknet53", "stem_width", stem_width)
        self.negative_slope = number("Darknet53", "negative_slope", negative_slope)
        self.eps = number("Darknet53", "eps", eps, low=0.0, low_inclusive=False)
        self.depths, self.widths = depths, widths
        self.preprocessing = _preprocessing(input_size, crop_pct, interpolation, mean, std)
        self.dtype = float_dtype("Darknet53", dtype)
        rng = host_rng(seed)  # one generator, drawn in construction order
        conv_args = {"negative_slope": self.negative_slope, "eps": self.eps,
                     "dtype": self.dtype, "seed": rng}
        self.stem = DarkStem(stem_width, **conv_args)
        self.stages = []
        channels = stem_width
        for depth, width in zip(depths, widths, strict=True):
            self.stages.append(DarkStage(channels, width, depth, **conv_args))
            channels = width
        self.head = ClassifierHead(channels, num_classes, dtype=self.dtype, seed=rng)

    def steps(self):
        return [self.stem, *self.stages, self.head]

    def __call__(self, x):
        x, _ = self.prepare(x)
        self._check(x)
        return super().__call__(x)

    def forward(self, x, *, train: bool = False):
        x, _ = self.prepare(x)
        self._check(x)
        return super().forward(x, train=train)

    @classmethod
    def values_from_config(cls, config: dict) -> int:
        """The number of values (parameters and buffers) of the network ``config``
        describes, computed without building it (used to refuse forged files).

        The sizes are checked as the constructor checks them (an integer ``depths`` is one
        stage, as there), so no config the constructor accepts is counted short.

        Raises
        ------
        ConfigError
            The sizes are not ones the constructor accepts.
        """
        classes, stem, depths, widths = _sizes(config)
        channels = stem
        total = 3 * channels * 9 + 4 * channels  # stem: conv 3x3 and BatchNorm
        for depth, width in zip(depths, widths, strict=True):
            half = width // 2
            total += channels * width * 9 + 4 * width  # conv_down
            total += depth * (width * half + 4 * half + half * width * 9 + 4 * width)
            channels = width
        return total + channels * classes + classes  # head.fc

    @classmethod
    def modules_from_config(cls, config: dict) -> int:
        """The number of modules (this one included) the network ``config`` describes,
        computed without building it: 5 for the stem, 5 per stage plus 9 per residual
        block, 3 for the head.

        Raises
        ------
        ConfigError
            The sizes are not ones the constructor accepts.
        """
        _, _, depths, _ = _sizes(config)
        return 1 + 5 + sum(5 + 9 * depth for depth in depths) + 3

    def _check(self, x) -> None:
        smallest = 2 ** len(self.stages)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ShapeError(
                f"Darknet53 expected a batch of RGB images of shape (N, 3, H, W). "
                f"Received: x.shape={tuple(x.shape)}. Convert images to RGB and transpose "
                f"HWC to CHW."
            )
        if x.shape[2] < smallest or x.shape[3] < smallest:
            raise ShapeError(
                f"Darknet53 expected images of at least {smallest}x{smallest} pixels "
                f"(it halves the resolution {len(self.stages)} times; trained at "
                f"{self.preprocessing['input_size']}). Received: x.shape={tuple(x.shape)}"
            )

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "negative_slope": self.negative_slope,
                "eps": self.eps, "depths": list(self.depths), "widths": list(self.widths),
                "stem_width": self.stem_width, **self.preprocessing, "dtype": self.dtype}

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, negative_slope={self.negative_slope:g}, "
                f"depths={self.depths}")


def _sizes(config) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
    """``(num_classes, stem_width, depths, widths)`` of a config, checked as
    :class:`Darknet53` checks them."""
    if not isinstance(config, dict):
        raise ConfigError(f"Darknet53 expected a config dict. Received: {type(config).__name__}")
    depths = _int_tuple("depths", config.get("depths", DEPTHS), 0)
    widths = _int_tuple("widths", config.get("widths", WIDTHS), 2)
    if len(depths) != len(widths) or not depths:
        raise ConfigError(
            f"Darknet53 expected as many stage depths as widths. "
            f"Received: depths={depths}, widths={widths}"
        )
    classes = positive_int("Darknet53", "num_classes", config.get("num_classes", 1000))
    stem = positive_int("Darknet53", "stem_width", config.get("stem_width", STEM_WIDTH))
    modules = 1 + 5 + sum(5 + 9 * depth for depth in depths) + 3
    if modules > MAX_MODULES:
        raise ConfigError(
            f"Darknet53 expected at most {MAX_MODULES:,} modules. Received: depths="
            f"{_short(depths)}, which builds {modules:,}."
        )
    return classes, stem, depths, widths


def _short(values, limit: int = 80) -> str:
    text = repr(values)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int_tuple(name: str, values, minimum: int) -> tuple[int, ...]:
    try:
        values = tuple(values)
    except TypeError:
        values = (values,)
    if not all(is_int(value, minimum) for value in values):
        raise ConfigError(
            f"Darknet53 expected {name} to be a sequence of integers >= {minimum}. "
            f"Received: {name}={values!r}"
        )
    return tuple(int(value) for value in values)


def _preprocessing(input_size, crop_pct, interpolation, mean, std) -> dict:
    """The checked preprocessing arguments as the dict kept in ``Darknet53.preprocessing``
    (ranges: :func:`xpnn.models.preprocess.check_preprocessing`)."""
    return check_preprocessing("Darknet53", {
        "input_size": input_size, "crop_pct": crop_pct, "interpolation": interpolation,
        "mean": mean, "std": std})


def darknet53(weights=None, *, num_classes=None, negative_slope=None, eps=None, dtype=None,
              seed=None) -> Darknet53:
    """Build Darknet53 with random weights, or from a weights file.

    Parameters
    ----------
    weights : str or os.PathLike, optional
        A file saved by xpnn, such as one converted from darknet's ``darknet53.weights``
        (see the module docstring): rebuilt from its architecture record by
        :func:`xpnn.io.load_model`. Or timm's ``darknet53.c2ns_in1k`` safetensors, which has
        no record: the network is built with timm's configuration and the file loaded by
        :func:`load_timm_weights`.
    num_classes, negative_slope, eps, dtype :
        The configuration of random weights and of files without a record (defaults
        1000, 0.01, 1e-5, ``"float32"``). A value that contradicts a file's record is a
        ConfigError.
    seed : int, optional
        Seed of the initial (random) weights.

    Examples
    --------
    >>> net = darknet53(seed=0)
    >>> net.num_parameters()
    41609928
    """
    chosen = {name: value for name, value in (("num_classes", num_classes),
                                              ("negative_slope", negative_slope),
                                              ("eps", eps), ("dtype", dtype))
              if value is not None}
    if weights is None:
        return Darknet53(**chosen, seed=seed)
    record = read_architecture(weights)
    if record is None:
        return load_timm_weights(Darknet53(**chosen, seed=seed), weights)
    _check_record(os.fspath(weights), record, chosen)
    return load_model(weights)


def _check_record(path: str, record, chosen: dict) -> None:
    """Refuse a record of another model, or one that the arguments contradict."""
    kind = record.get("type") if isinstance(record, dict) else None
    if kind != "Darknet53":
        raise WeightsError(
            f"darknet53 expected Darknet53 weights, but {path!r} records a {kind!r} model. "
            f"Load it with xpnn.io.load_model(path)."
        )
    config = record.get("config")
    config = config if isinstance(config, dict) else {}
    contradicted = {name: value for name, value in chosen.items() if config.get(name) != value}
    if contradicted:
        recorded = {name: config.get(name) for name in contradicted}
        raise ConfigError(
            f"darknet53 expected no arguments that contradict the architecture {path!r} "
            f"records. Received: {contradicted}, recorded: {recorded}. Drop the arguments, "
            f"or build Darknet53(...) yourself and call load_timm_weights(model, path)."
        )


def load_timm_weights(model: Darknet53, path) -> Darknet53:
    """Load a safetensors file with timm's Darknet53 names into ``model``: the adapter for
    files that have no xpnn architecture record (timm's ``darknet53.c2ns_in1k``).

    timm's ``num_batches_tracked`` counters are ignored, a classifier stored as a 1x1
    convolution ``(classes, 1024, 1, 1)`` is reshaped to Dense's ``(classes, 1024)``, and
    floating-point arrays are cast to the model's dtype. Names and shapes are checked by
    ``model.load_state_dict``, which lists every mismatch.
    """
    if not isinstance(model, Darknet53):
        raise ConfigError(
            f"load_timm_weights expected a Darknet53 model. Received: {type(model).__name__}"
        )
    state = read_arrays(path)
    fc = state.get("head.fc.weight")
    if fc is not None and fc.ndim == 4 and fc.shape[2:] == (1, 1):
        state["head.fc.weight"] = fc.reshape(fc.shape[:2])
    for name, value in state.items():
        if value.dtype.kind == "f" and value.dtype.name != model.dtype:
            state[name] = value.astype(model.dtype)
    return model.load_state_dict(state)
