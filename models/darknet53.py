"""Darknet53, the ImageNet classifier of YOLOv3 (Redmon & Farhadi 2018, Table 1).

    stem        ConvBNAct 3x3, 32 channels
    stage s     conv_down: ConvBNAct 3x3 stride 2 to C_s = 64, 128, 256, 512, 1024 channels,
                then D_s = 1, 2, 8, 8, 4 residual blocks  x + conv2(conv1(x)),
                conv1: ConvBNAct 1x1 to C_s / 2,  conv2: ConvBNAct 3x3 back to C_s
    head        global average pool, Dense(1024, num_classes); softmax gives probabilities

Every ConvBNAct is conv (no bias) -> BatchNorm -> LeakyReLU. The attribute paths give the
state names of timm's ``darknet53`` (``timm/models/cspnet.py``: ``stem.conv1.conv.weight``,
``stages.0.conv_down.bn.weight``, ``stages.0.blocks.0.conv1.bn.running_mean``,
``head.fc.weight``), so timm's safetensors file loads as it is (its ``num_batches_tracked``
counters are ignored).

Weights come from timm (``darknet53.c2ns_in1k``: leaky slope 0.01, ImageNet mean/std) or
from darknet's ``darknet53.weights`` converted with

    python -m xpnn.models.darknet53 convert darknet53.weights weights/darknet53.safetensors

(leaky slope 0.1, pixels scaled to [0, 1] without mean/std). The slope, BatchNorm epsilon
and preprocessing are read from the file's metadata when present.
"""

from __future__ import annotations

import json
import os
import sys
import types

from xpnn import backends
from xpnn.backends import host_rng
from xpnn.errors import ConfigError, ShapeError, WeightsError
from xpnn.layers.blocks import ConvBNAct
from xpnn.layers.containers import Chain, skip_connection
from xpnn.layers.dense import Dense
from xpnn.layers.pooling import GlobalAvgPool

DEPTHS = (1, 2, 8, 8, 4)
WIDTHS = (64, 128, 256, 512, 1024)
STEM_WIDTH = 32

# Preprocessing of timm's darknet53.c2ns_in1k (timm/models/cspnet.py default_cfgs).
TIMM_PREPROCESSING = {
    "input_size": 256, "crop_pct": 0.887, "interpolation": "bicubic",
    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
}
# darknet's classifier: RGB scaled to [0, 1], shorter side resized to the input size, centre
# crop (src/classifier.c validate_classifier_single: resize_min then crop_image).
DARKNET_PREPROCESSING = {
    "input_size": 256, "crop_pct": 1.0, "interpolation": "bilinear",
    "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
}
PREPROCESSING_KEYS = tuple(TIMM_PREPROCESSING)


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
        return x + fx, skip_connection(self, branch_backprop)


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
        The preprocessing the weights expect (recorded in saved files); default timm's.
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
        depths, widths = _int_tuple("depths", depths, 0), _int_tuple("widths", widths, 2)
        if len(depths) != len(widths) or not depths:
            raise ConfigError(
                f"Darknet53 expected as many stage depths as widths. "
                f"Received: depths={depths}, widths={widths}"
            )
        for name, value in (("num_classes", num_classes), ("stem_width", stem_width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"Darknet53 expected {name} to be a positive integer. "
                    f"Received: {name}={value!r}"
                )
        self.num_classes = num_classes
        try:
            self.negative_slope, self.eps = float(negative_slope), float(eps)
        except (TypeError, ValueError):
            raise ConfigError(
                f"Darknet53 expected numbers for negative_slope and eps. "
                f"Received: negative_slope={negative_slope!r}, eps={eps!r}"
            ) from None
        self.depths, self.widths, self.stem_width = depths, widths, stem_width
        try:
            self.preprocessing = _check_preprocessing({
                "input_size": input_size, "crop_pct": crop_pct, "interpolation": interpolation,
                "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            })
        except (TypeError, ValueError) as error:
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(
                f"Darknet53 expected numbers for input_size, crop_pct, mean and std. "
                f"Received: input_size={input_size!r}, crop_pct={crop_pct!r}, mean={mean!r}, "
                f"std={std!r} ({error})"
            ) from None
        self.dtype = dtype
        rng = host_rng(seed)  # one generator, drawn in construction order
        conv_args = {"negative_slope": self.negative_slope, "eps": self.eps, "dtype": dtype,
                     "seed": rng}
        self.stem = DarkStem(stem_width, **conv_args)
        self.stages = []
        channels = stem_width
        for depth, width in zip(depths, widths, strict=True):
            self.stages.append(DarkStage(channels, width, depth, **conv_args))
            channels = width
        self.head = ClassifierHead(channels, num_classes, dtype=dtype, seed=rng)

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
        describes, computed without building it (used to refuse forged files)."""
        classes = config.get("num_classes", 1000)
        depths = config.get("depths", DEPTHS)
        widths = config.get("widths", WIDTHS)
        channels = config.get("stem_width", STEM_WIDTH)
        total = 3 * channels * 9 + 4 * channels  # stem: conv 3x3 and BatchNorm
        for depth, width in zip(depths, widths, strict=False):
            half = width // 2
            total += channels * width * 9 + 4 * width  # conv_down
            total += depth * (width * half + 4 * half + half * width * 9 + 4 * width)
            channels = width
        return total + channels * classes + classes  # head.fc

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

    def metadata(self) -> dict[str, str]:
        """The config as safetensors metadata (str -> str: strings as they are, numbers and
        lists JSON-encoded), e.g. ``{"negative_slope": "0.1", "interpolation": "bilinear"}``."""
        meta = {"model": "darknet53"}
        for key, value in self.config().items():
            meta[key] = value if isinstance(value, str) else json.dumps(value)
        return meta

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, negative_slope={self.negative_slope:g}, "
                f"depths={self.depths}")


def _int_tuple(name: str, values, minimum: int) -> tuple[int, ...]:
    try:
        values = tuple(values)
    except TypeError:
        values = (values,)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values):
        raise ConfigError(
            f"Darknet53 expected {name} to be a sequence of integers >= {minimum}. "
            f"Received: {name}={values!r}"
        )
    return values


def _check_preprocessing(pre: dict) -> dict:
    if len(pre["mean"]) != 3 or len(pre["std"]) != 3 or min(pre["std"]) <= 0:
        raise ConfigError(
            f"Darknet53 expected mean and std as three numbers each (std > 0). "
            f"Received: mean={pre['mean']}, std={pre['std']}"
        )
    if not 0 < float(pre["crop_pct"]) <= 1 or not 1 <= int(pre["input_size"]) <= 8192:
        raise ConfigError(
            f"Darknet53 expected 0 < crop_pct <= 1 and 1 <= input_size <= 8192. "
            f"Received: crop_pct={pre['crop_pct']}, input_size={pre['input_size']}"
        )
    pre["input_size"] = int(pre["input_size"])
    pre["crop_pct"] = float(pre["crop_pct"])
    return pre


def config_from_metadata(metadata: dict[str, str]) -> dict:
    """The Darknet53 constructor arguments recorded in a file's metadata: the individual
    keys written by :meth:`Darknet53.metadata`, else the ``architecture`` record of
    :func:`xpnn.io.save`. Keys absent from both are left out (defaults apply)."""
    keys = ("num_classes", "negative_slope", "eps", "depths", "widths", "stem_width",
            *PREPROCESSING_KEYS)
    found = {}
    architecture = metadata.get("architecture")
    if architecture:
        try:
            record = json.loads(architecture)
        except (ValueError, RecursionError):
            record = None
        if isinstance(record, dict) and record.get("type") == "Darknet53" \
                and isinstance(record.get("config"), dict):
            found.update({k: v for k, v in record["config"].items() if k in keys})
    for key in keys:
        if key in metadata:
            try:
                found[key] = json.loads(metadata[key])
            except (ValueError, RecursionError):
                found[key] = metadata[key]  # a plain string such as bicubic
    return found


def darknet53(weights=None, *, num_classes=None, negative_slope=None, eps=None,
              dtype="float32", seed=None) -> Darknet53:
    """Build Darknet53, optionally loading ``weights`` (a safetensors file).

    Parameters
    ----------
    weights : str or os.PathLike, optional
        timm's ``darknet53.c2ns_in1k`` safetensors, a file converted from darknet's
        ``darknet53.weights`` (see the module docstring), or one saved by xpnn.
    num_classes, negative_slope, eps :
        Override the file's metadata; defaults without weights or metadata: 1000, 0.01
        (timm), 1e-5.
    dtype : str
        Parameter dtype (default ``"float32"``).
    seed : int, optional
        Seed for the initial (random) weights when no file is given.

    Examples
    --------
    >>> net = darknet53(seed=0)
    >>> net.num_parameters()
    41609928
    """
    config = {}
    if weights is not None:
        import xpnn.io

        config = config_from_metadata(xpnn.io.load_metadata(weights))
    for key, value in (("num_classes", num_classes), ("negative_slope", negative_slope),
                       ("eps", eps)):
        if value is not None:
            config[key] = value
    if weights is None:
        return Darknet53(**config, dtype=dtype, seed=seed)
    # A forged header must not make us allocate a giant network: refuse a configuration
    # larger than both the file and the standard Darknet53 (smaller mismatches are listed
    # name by name by load_weights, which is more helpful).
    stored = xpnn.io.stored_values(weights)
    try:
        needed = Darknet53.values_from_config(config)
    except Exception:
        needed = 0  # malformed values: the constructor names them
    if needed > max(stored, Darknet53.values_from_config({})):
        raise WeightsError(
            f"{os.fspath(weights)!r} cannot hold Darknet53 weights for the configuration "
            f"its metadata records ({needed:,} values needed, {stored:,} stored). The "
            f"metadata is corrupt or belongs to another network; build Darknet53(...) "
            f"yourself and call load_weights(model, path)."
        )
    try:
        model = Darknet53(**config, dtype=dtype, seed=seed)
    except ConfigError as error:
        raise WeightsError(
            f"{os.fspath(weights)!r} records a Darknet53 configuration that cannot be built: "
            f"{error}"
        ) from error
    load_weights(model, weights)
    return model


def load_weights(model: Darknet53, path) -> Darknet53:
    """Load a safetensors file into ``model`` (names, shapes and dtypes checked; timm's
    ``num_batches_tracked`` ignored; a classifier stored as a 1x1 convolution,
    ``(classes, 1024, 1, 1)``, is reshaped to Dense's ``(classes, 1024)``)."""
    import xpnn.io

    state = xpnn.io.load(path)  # arrays on the current backend
    current = backends.current()
    fc = state.get("head.fc.weight")
    if fc is not None and fc.ndim == 4 and tuple(fc.shape[2:]) == (1, 1):
        state["head.fc.weight"] = current.xp.reshape(fc, tuple(fc.shape[:2]))
    wanted = backends.dtype_name(model.stem.conv1.conv.weight.value.dtype)
    for name, value in state.items():  # float32 files load into float64 models too
        if name.endswith("num_batches_tracked"):
            continue
        if backends.dtype_name(value.dtype) in ("float16", "float32", "float64") and (
            backends.dtype_name(value.dtype) != wanted
        ):
            state[name] = current.xp.astype(value, current.dtype(wanted))
    return model.load_state_dict(state)


def main(argv=None) -> int:
    """``python -m xpnn.models.darknet53 convert IN.weights OUT.safetensors``."""
    import argparse

    from xpnn.models import darknet_weights

    parser = argparse.ArgumentParser(
        prog="python -m xpnn.models.darknet53",
        description="Darknet53 tools. 'convert' turns darknet's darknet53.weights (the "
                    "ImageNet classifier, https://pjreddie.com/media/files/darknet53.weights) "
                    "into a safetensors file with timm's parameter names.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="darknet .weights -> .safetensors")
    convert.add_argument("source", help="darknet53.weights")
    convert.add_argument("target", help="output .safetensors file")
    convert.add_argument("--eps", type=float, default=1e-5,
                         help="BatchNorm epsilon recorded for sqrt(var + eps) (default 1e-5)")
    args = parser.parse_args(argv)
    from xpnn.errors import XpnnError

    try:
        info = darknet_weights.convert_darknet53(args.source, args.target, eps=args.eps)
    except (XpnnError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {os.fspath(args.target)}: {info['tensors']} tensors, "
          f"{info['parameters']:,} values (darknet header {info['version']}, "
          f"seen={info['seen']:,}).")
    return 0


class _CallableModule(types.ModuleType):
    """This module, callable as :func:`darknet53`.

    ``xpnn.models.darknet53`` has to be both this module (``python -m
    xpnn.models.darknet53 convert ...``) and the builder function (``xpnn.models.darknet53(
    weights=...)``). Importing a submodule binds its name in the package to the module,
    so making the module callable keeps ``xpnn.models.darknet53(...)`` working however it
    was imported, and lets ``xpnn/models/__init__.py`` expose it lazily, which keeps
    ``python -m`` free of runpy's "found in sys.modules" warning.
    """

    def __call__(self, weights=None, **kwargs) -> Darknet53:
        return darknet53(weights, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    raise SystemExit(main())
