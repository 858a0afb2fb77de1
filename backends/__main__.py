"""``python -m xpnn.backends``: which backends can run here, and why not.

Exits 2 (after the table) when ``XPNN_BACKEND`` names no backend or one that cannot run
here, so that a typo is caught before a training run starts.
"""

import os
import sys

from xpnn.backends import allocator
from xpnn.backends.selector import NAMES, probe


def main() -> int:
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
