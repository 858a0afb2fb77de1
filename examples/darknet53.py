"""Classify images into the 1000 ImageNet classes with Darknet53 (NumPy, CuPy or torch).

    python examples/darknet53.py cat.jpg dog.png --top 5
    XPNN_BACKEND=cupy python examples/darknet53.py photos/*.jpg --batch-size 16
    python examples/darknet53.py --benchmark --batch-size 8      # speed run, random weights
    mpiexec -n 2 python examples/darknet53.py photos/*.jpg       # images split over 2 ranks

Weights: ./weights/darknet53.safetensors by default, relative to the folder you run in (or
XPNN_DARKNET53_WEIGHTS, or --weights PATH; see weights/README.md for the two ways to get
them). The preprocessing (resize, centre crop, mean/std) and the LeakyReLU slope come with
the weights (xpnn.models.darknet53 reads them from the file, or uses timm's for timm's
file), so timm's and darknet's weights both classify correctly.

Started by ``mpiexec -n N`` (needs ``pip install "xpnn[distributed]"``), each rank reads
and classifies its share of the images (:func:`xpnn.distributed.sharded_outputs`), and
rank 0 prints every result in the order the images were given.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # examples/_cli.py, when imported

import _cli  # noqa: E402

from xpnn import backends, distributed  # noqa: E402
from xpnn.errors import XpnnError  # noqa: E402
from xpnn.models import Darknet53, darknet53  # noqa: E402
from xpnn.models.imagenet import class_names  # noqa: E402
from xpnn.models.preprocess import ImageError, load_rgb, preprocess  # noqa: E402

#: Relative to the current folder, where the commands below write the file (never inside
#: the installed package); git ignores weights/darknet53*.safetensors.
DEFAULT_WEIGHTS = os.path.join("weights", "darknet53.safetensors")
WEIGHTS_VARIABLE = "XPNN_DARKNET53_WEIGHTS"

HOW_TO_GET_WEIGHTS = """\
No Darknet53 weights at {path}.

Get them one of two ways (details in weights/README.md):

  1. darknet's original ImageNet weights (leaky slope 0.1), converted to safetensors:
       mkdir -p weights
       wget https://pjreddie.com/media/files/darknet53.weights
       python -m xpnn.models.convert_darknet darknet53.weights weights/darknet53.safetensors

  2. timm's darknet53.c2ns_in1k (leaky slope 0.01), already safetensors with our names:
       mkdir -p weights
       curl -L -o weights/darknet53.safetensors \\
         https://huggingface.co/timm/darknet53.c2ns_in1k/resolve/main/model.safetensors

Then run this script again from this folder, or pass --weights PATH (or set
XPNN_DARKNET53_WEIGHTS=PATH). (A speed run needs no weights: --benchmark.)"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=_cli.HelpFormatter)
    parser.add_argument("images", nargs="*", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--weights", metavar="PATH",
                        default=os.environ.get(WEIGHTS_VARIABLE) or DEFAULT_WEIGHTS,
                        help=f"safetensors weights, relative to the current folder "
                        f"(or set {WEIGHTS_VARIABLE})")
    parser.add_argument("--top", type=_cli.integer(1, 1000), default=5, metavar="K",
                        help="classes shown per image (1 to 1,000)")
    parser.add_argument("--batch-size", type=_cli.integer(1, 4096), default=8, metavar="N",
                        help="images per forward pass (1 to 4,096)")
    parser.add_argument("--benchmark", action="store_true",
                        help="speed run: random weights, random 256x256 images")
    parser.add_argument("--iterations", type=_cli.integer(1, 10_000), default=5, metavar="N",
                        help="timed batches of the speed run, after one warm-up (1 to 10,000)")
    args = parser.parse_args(argv)
    if not args.benchmark and not args.images:
        parser.error("expected at least one image, or --benchmark for a speed run. "
                     "Received: no image")
    return args


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# -- running -------------------------------------------------------------------------------------


def describe_backend(model) -> str:
    backend = model.backend
    return f"{backend.name} (device {backend.device})"


def peak_memory_mib() -> float:
    """Peak resident memory of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def classify(args) -> int:
    path = args.weights
    if not os.path.exists(path):
        print(HOW_TO_GET_WEIGHTS.format(path=os.path.abspath(path)), file=sys.stderr)
        return 2
    if not os.path.isfile(path):
        return _cli.fail(f"--weights expected a safetensors file. Received: {path!r}, which "
                         f"is a folder.")
    missing = [name for name in args.images if not os.path.isfile(name)]
    if missing and len(missing) == len(args.images):
        return _cli.fail(f"expected image files. Received: {', '.join(missing)}, "
                         f"{'which do' if len(missing) > 1 else 'which does'} not exist.")
    comm = _cli.start_ranks() or distributed.SingleProcess()  # one rank: no MPI needed
    try:
        model = darknet53(path)
    except XpnnError as error:
        print(f"error: cannot load Darknet53 weights from {path}: {error}", file=sys.stderr)
        return 2
    pre = model.preprocessing
    print(f"Darknet53 from {path} (leaky slope {model.negative_slope:g}, input "
          f"{pre['input_size']}px, crop {pre['crop_pct']:g}, {pre['interpolation']}) "
          f"on {describe_backend(model)}")

    timing = {"seconds": 0.0, "images": 0}

    def probabilities(image_names) -> np.ndarray:
        """Class probabilities of a batch of image files; a NaN row for one that cannot be
        read (its error is printed)."""
        out = np.full((len(image_names), model.num_classes), np.nan)
        images, rows = [], []
        for row, name in enumerate(image_names):
            try:
                images.append(preprocess(load_rgb(name), pre, backend=model.backend))
                rows.append(row)
            except ImageError as error:
                print(f"error: {error}", file=sys.stderr)
        if images:
            began = time.perf_counter()
            logits = backends.to_numpy(model(model.backend.xp.stack(images)))  # waits
            timing["seconds"] += time.perf_counter() - began
            timing["images"] += len(images)
            out[rows] = softmax(logits.astype(np.float64))
        return out

    probs = distributed.sharded_outputs(probabilities, list(args.images), comm,
                                        batch_size=args.batch_size)
    seconds, count = comm.allreduce_host([timing["seconds"], timing["images"]])
    if comm.rank != 0:
        return 0  # rank 0 prints every result
    names = class_names() if model.num_classes == 1000 else None
    for name, p in zip(args.images, probs, strict=True):
        if np.isnan(p).any():
            continue  # unreadable: its error was printed
        print(f"\n{name}")
        for k in np.argsort(-p)[:args.top]:
            label = names[k] if names else f"class {k}"
            print(f"  {p[k]:7.2%}  {label}")
    if count == 0:
        return 1
    ranks = f", summed over {comm.size} ranks" if comm.size > 1 else ""
    count = int(count)
    print(f"\n{count} image{'s' if count != 1 else ''} in {seconds:.2f} s of inference"
          f"{ranks}: {seconds / count:.3f} s per image (batch size {args.batch_size}, first "
          f"batch includes warm-up) on {describe_backend(model)}")
    return 1 if count < len(args.images) else 0


def benchmark(args) -> int:
    size, n = 256, args.batch_size
    model = Darknet53(seed=0)
    print(f"SPEED RUN - random weights and random {size}x{size} images; the outputs are "
          f"meaningless. Darknet53, batch size {n}, on {describe_backend(model)}.")
    x = np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)
    x = model.backend.asarray(x)
    began = time.perf_counter()
    backends.to_numpy(model(x))  # warm-up (and the folded BatchNorm weights)
    warmup = time.perf_counter() - began
    times = []
    for _ in range(args.iterations):
        began = time.perf_counter()
        backends.to_numpy(model(x))
        times.append(time.perf_counter() - began)
    best, median = min(times), float(np.median(times))
    print(f"warm-up batch: {warmup:.2f} s")
    print(f"{args.iterations} timed batches: median {median:.3f} s, best {best:.3f} s per "
          f"batch -> {n / median:.2f} images/s ({median / n:.3f} s per image)")
    print(f"peak memory (max RSS of this process): {peak_memory_mib():,.0f} MiB")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return benchmark(args) if args.benchmark else classify(args)
    except XpnnError as error:
        return _cli.fail(str(error))


if __name__ == "__main__":
    sys.exit(main())
