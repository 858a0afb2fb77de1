"""Convert darknet's ``darknet53.weights`` (the ImageNet classifier) to an xpnn file.

    python -m xpnn.models.convert_darknet darknet53.weights weights/darknet53.safetensors

An existing target is refused unless ``--force`` is given, and the source itself (also
through a symbolic or hard link) is always refused as the target. Weights with NaN or
infinite values, or negative BatchNorm running variances, are refused naming the layer.

The result is an ordinary xpnn safetensors file: timm's parameter names and an
architecture record with darknet's configuration (LeakyReLU slope 0.1; shorter side
resized to 256, centre crop, bilinear, RGB scaled to [0, 1] without mean/std), so
:func:`xpnn.io.load_model` and :func:`xpnn.models.darknet53` rebuild it.

darknet53.cfg lists a 3x3/32 conv, then per stage a 3x3 stride-2 conv and, per residual
block, a 1x1 conv, a 3x3 conv and a shortcut; then avgpool, a 1x1 conv with 1000 filters,
bias and no BatchNorm (our ``head.fc``), and softmax (:func:`darknet53_layers`). darknet
normalizes with ``sqrt(var) + 1e-6`` in its CPU code (``normalize_cpu``) and
``sqrt(var + 1e-5)`` in its cuDNN code; the converted file uses the standard
``sqrt(var + eps)`` with eps = 1e-5 and says so in its metadata (``bn_eps_convention``).
"""

from __future__ import annotations

import argparse
import os
import sys

from xpnn.errors import WeightsError, XpnnError
from xpnn.io import save
from xpnn.io.darknet import ConvLayer, read_weights
from xpnn.io.files import check_conversion_target, fspath
from xpnn.models.darknet import DEPTHS, STEM_WIDTH, WIDTHS, Darknet53

__all__ = ["DARKNET_PREPROCESSING", "convert_darknet53", "darknet53_layers", "main"]

# darknet's classifier: RGB scaled to [0, 1], shorter side resized to the input size, centre
# crop (src/classifier.c validate_classifier_single: resize_min then crop_image).
DARKNET_PREPROCESSING = {
    "input_size": 256, "crop_pct": 1.0, "interpolation": "bilinear",
    "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
}
NETWORK = ("Darknet53 (darknet53.cfg, the ImageNet classifier; not yolov3.weights or "
           "darknet53.conv.74)")


def darknet53_layers(num_classes: int = 1000, depths=DEPTHS, widths=WIDTHS,
                     stem_width: int = STEM_WIDTH) -> list[ConvLayer]:
    """The convolutional layers of darknet53.cfg, in file order, with timm's names.

    Examples
    --------
    >>> layers = darknet53_layers(10, depths=(1,), widths=(8,))
    >>> [layer.name for layer in layers][1:4]
    ['stages.0.conv_down', 'stages.0.blocks.0.conv1', 'stages.0.blocks.0.conv2']
    """
    layers = [ConvLayer("stem.conv1", 3, stem_width, 3)]
    channels = stem_width
    for s, (depth, width) in enumerate(zip(depths, widths, strict=True)):
        layers.append(ConvLayer(f"stages.{s}.conv_down", channels, width, 3))
        for b in range(depth):
            prefix = f"stages.{s}.blocks.{b}"
            layers.append(ConvLayer(f"{prefix}.conv1", width, width // 2, 1))
            layers.append(ConvLayer(f"{prefix}.conv2", width // 2, width, 3))
        channels = width
    layers.append(ConvLayer("head.fc", channels, num_classes, 1, batch_normalize=False,
                            dense=True))
    return layers


def convert_darknet53(source, target, *, eps: float = 1e-5, num_classes: int = 1000,
                      depths=DEPTHS, widths=WIDTHS, stem_width: int = STEM_WIDTH,
                      force: bool = False) -> dict:
    """Convert darknet's ``darknet53.weights`` to an xpnn safetensors file (written
    atomically, after the weights were checked by loading them into a Darknet53).
    ``depths``, ``widths`` and ``stem_width`` describe reduced networks (tests).

    Parameters
    ----------
    source, target : str or os.PathLike
        The ``.weights`` file and the ``.safetensors`` file to write.
    force : bool
        Replace an existing ``target`` (default False: an existing target is refused).

    Returns
    -------
    dict
        ``tensors`` and ``parameters`` written, the darknet header's ``version`` and
        ``seen`` counter.

    Raises
    ------
    ConfigError
        ``target`` is ``source`` (also through a symbolic or hard link), or exists and
        ``force`` is False.
    WeightsError
        The file does not hold Darknet53's weights, or holds non-finite values or negative
        running variances (which give NaN outputs).
    """
    source = fspath("convert_darknet53", source)
    target = fspath("convert_darknet53", target)
    check_conversion_target("convert_darknet53", source, target, force=force,
                            example="darknet53.safetensors", force_hint="--force (force=True)")
    layers = darknet53_layers(num_classes, depths, widths, stem_width)
    state, header = read_weights(source, layers, what=NETWORK, check_finite=True)
    _check_variances(source, state, layers)
    model = Darknet53(num_classes, negative_slope=0.1, eps=eps, depths=depths, widths=widths,
                      stem_width=stem_width, **DARKNET_PREPROCESSING, seed=0)
    model.load_state_dict(state)
    save(model, target, metadata={
        "source": f"darknet .weights {os.path.basename(os.fspath(source))}, "
                  f"version {header.version}, seen {header.seen}",
        "bn_eps_convention": f"sqrt(running_var + eps), eps={eps:g} (PyTorch and darknet's "
                             f"cuDNN path; darknet's CPU path uses sqrt(running_var) + 1e-6)",
    })
    return {"tensors": len(state), "parameters": sum(layer.num_values for layer in layers),
            "version": header.version, "seen": header.seen}


def _check_variances(source: str, state: dict, layers) -> None:
    """Refuse BatchNorm running variances that are negative (sqrt gives NaN)."""
    for layer in layers:
        variance = state.get(f"{layer.name}.bn.running_var")
        if variance is not None and (variance < 0).any():
            count = int((variance < 0).sum())
            raise WeightsError(
                f"{source!r}: layer {layer.name} expected non-negative BatchNorm running "
                f"variances. Received: {count} negative, the smallest "
                f"{float(variance.min()):g}. The file is corrupt; download it again."
            )


def main(argv=None) -> int:
    """The command: convert, print what was written; errors go to stderr (exit status 1)."""
    parser = argparse.ArgumentParser(
        prog="python -m xpnn.models.convert_darknet",
        description="Convert darknet's darknet53.weights (the ImageNet classifier, "
                    "https://pjreddie.com/media/files/darknet53.weights) into an xpnn "
                    "safetensors file with timm's parameter names.",
    )
    parser.add_argument("source", help="darknet53.weights")
    parser.add_argument("target", help="output .safetensors file")
    parser.add_argument("--eps", type=float, default=1e-5,
                        help="BatchNorm epsilon recorded for sqrt(var + eps) (default 1e-5)")
    parser.add_argument("--force", action="store_true",
                        help="replace the target if it exists (never the source itself)")
    args = parser.parse_args(argv)
    try:
        info = convert_darknet53(args.source, args.target, eps=args.eps, force=args.force)
    except (XpnnError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {args.target}: {info['tensors']} tensors, {info['parameters']:,} values "
          f"(darknet header {info['version']}, seen={info['seen']:,}).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
