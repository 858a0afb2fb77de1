"""``python -m xpnn.onnx MODEL.safetensors MODEL.onnx [--input-shape None,1,28,28]``

Rebuilds the model a file saved by :func:`xpnn.io.save` records
(:func:`xpnn.io.load_model`) and exports it with :func:`xpnn.onnx.export`. The input shape
defaults to the one the model states (:func:`xpnn.onnx.exporter.input_shape_of`: the MNIST
models, Darknet53, networks that start with Dense) and is required otherwise; ``None`` (or
``N``) as the batch size exports a dynamic batch axis. An existing target is refused
unless ``--force`` is given, and the source itself never is a target. Errors go to stderr
with exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from xpnn.errors import ConfigError, XpnnError
from xpnn.io import load_model
from xpnn.io.files import check_conversion_target, fspath
from xpnn.onnx.exporter import OPSET, export, input_shape_of

__all__ = ["main", "parse_shape"]

DYNAMIC = ("none", "n", "batch", "?", "-1")


def parse_shape(text: str) -> tuple:
    """``"None,1,28,28"`` -> ``(None, 1, 28, 28)``; an ``x`` separates too (``1x3x256x256``).

    Examples
    --------
    >>> parse_shape("None,1,28,28"), parse_shape("1x3x256x256")
    ((None, 1, 28, 28), (1, 3, 256, 256))
    """
    items = [item.strip() for item in text.replace("x", ",").split(",") if item.strip()]
    shape = []
    for axis, item in enumerate(items):
        if axis == 0 and item.lower() in DYNAMIC:
            shape.append(None)
        elif item.isdigit() and int(item) > 0:
            shape.append(int(item))
        else:
            raise argparse.ArgumentTypeError(
                f"expected sizes separated by commas, the batch first (None for any), e.g. "
                f"None,1,28,28. Received: {text!r}"
            )
    if not shape:
        raise argparse.ArgumentTypeError(f"expected at least one size. Received: {text!r}")
    return tuple(shape)


def main(argv=None) -> int:
    """The command: load, export, print what was written."""
    parser = argparse.ArgumentParser(
        prog="python -m xpnn.onnx",
        description="Export a model saved by xpnn.io.save (a .safetensors file with an "
                    "architecture record) to ONNX.",
    )
    parser.add_argument("source", help="the model, a .safetensors file saved by xpnn")
    parser.add_argument("target", help="the .onnx file to write")
    parser.add_argument("--input-shape", type=parse_shape, default=None,
                        help="input shape, batch first, e.g. None,1,28,28 (None: any batch "
                             "size). Default: the model's own, where it states one")
    parser.add_argument("--opset", type=int, default=OPSET,
                        help=f"ONNX operator set (default {OPSET})")
    parser.add_argument("--dtype", choices=("float32", "float64"), default=None,
                        help="the graph's dtype (default: the model's; onnxruntime's CPU "
                             "convolution needs float32)")
    parser.add_argument("--force", action="store_true",
                        help="replace the target if it exists (never the source itself)")
    args = parser.parse_args(argv)
    try:
        source = fspath("xpnn.onnx", args.source)
        target = fspath("xpnn.onnx", args.target)
        check_conversion_target("xpnn.onnx", source, target, force=args.force,
                                example=repr(os.path.splitext(source)[0] + ".onnx"))
        model = load_model(source)
        shape = args.input_shape or input_shape_of(model)
        if shape is None:
            raise ConfigError(
                f"xpnn.onnx cannot tell the input shape of {type(model).__name__} from "
                f"{source!r}. Give it with --input-shape, batch first, e.g. "
                f"--input-shape None,3,224,224."
            )
        proto = export(model, target, shape, opset=args.opset, dtype=args.dtype)
    except (XpnnError, OSError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    def dims(value_info) -> str:
        shape = value_info.type.tensor_type.shape.dim
        return "(" + ", ".join(dim.dim_param or str(dim.dim_value) for dim in shape) + ")"

    graph = proto.graph
    print(f"Wrote {target}: {type(model).__name__}, input {dims(graph.input[0])} -> output "
          f"{dims(graph.output[0])}, {model.num_parameters():,} parameters, "
          f"{len(graph.node)} nodes, opset {args.opset}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
