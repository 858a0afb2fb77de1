"""``python -m xpnn.backends``: which backends can run here, and why not.

Exits 2 (after the table) when ``XPNN_BACKEND`` names no backend or one that cannot run
here, so that a typo is caught before a training run starts.

``python -m xpnn.backends --check NAME [--device D]`` runs the self-check instead
(:mod:`xpnn.selfcheck`: every layer's forward and backward, MNIST training steps and
Darknet53 inference on NAME against NumPy float64). This command is the one place in
``backends/`` that imports from above it, and only when ``--check`` is given: it is an
entry point, never imported by the library.
"""

import argparse
import os
import sys

from xpnn.backends import allocator, numba_support
from xpnn.backends.selector import NAMES, probe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xpnn.backends",
        description="Which backends can run here; with --check, whether one computes right.")
    parser.add_argument("--check", metavar="NAME",
                        help=f"run the self-check on this backend ({', '.join(NAMES)})")
    parser.add_argument("--device", default=None,
                        help="the device for --check (e.g. 1 for the second GPU)")
    parser.add_argument("--no-darknet", action="store_true",
                        help="skip Darknet53 inference in --check (the slowest check)")
    args = parser.parse_args(argv)
    if args.check is not None:
        from importlib import import_module

        selfcheck = import_module("xpnn.selfcheck")  # above backends/: see the docstring
        return selfcheck.main(args.check, args.device, darknet=not args.no_darknet)
    return doctor()


def doctor() -> int:
    chosen = os.environ.get("XPNN_BACKEND")
    if chosen:
        print(f"XPNN_BACKEND={chosen!r}\n")
    else:
        print("XPNN_BACKEND is not set (default: numpy)\n")
    print(f"| {'backend':<17} | {'version':<12} | {'runs here':<9} | why not")
    print(f"| {'-' * 17} | {'-' * 12} | {'-' * 9} | -------")
    results = {}
    for name in NAMES:
        ok, version, reason = probe(name)
        results[name] = (ok, reason)
        print(f"| {name:<17} | {version or '-':<12} | {'yes' if ok else 'no':<9} | {reason}")
    print(f"\nHost memory during training: {allocator.describe_plan()}")
    print(f"NumPy fast path (compiled kernels, xpnn[fast]): {numba_support.describe()}")
    key = (chosen or "").strip().lower().replace("-", "_")  # as the selector reads it
    if chosen and key not in results:
        print(f"error: XPNN_BACKEND expected one of {', '.join(NAMES)}. Received: {chosen!r}",
              file=sys.stderr)
        return 2
    if chosen and not results[key][0]:
        print(f"error: XPNN_BACKEND={chosen} cannot run here: {results[key][1]}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
