"""``python -m xpnn.backends``: which backends can run here, and why not."""

import os

from xpnn.backends import allocator
from xpnn.backends.selector import NAMES, probe


def main() -> None:
    chosen = os.environ.get("XPNN_BACKEND", "numpy")
    print(f"XPNN_BACKEND={chosen!r}\n")
    print(f"| {'backend':<17} | {'version':<12} | {'runs here':<9} | why not")
    print(f"| {'-' * 17} | {'-' * 12} | {'-' * 9} | -------")
    for name in NAMES:
        ok, version, reason = probe(name)
        print(f"| {name:<17} | {version or '-':<12} | {'yes' if ok else 'no':<9} | {reason}")
    print(f"\nHost memory during training: {allocator.describe_plan()}")


if __name__ == "__main__":
    main()
