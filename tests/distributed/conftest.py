"""Fixtures of the distributed tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def tiny_darknet(tmp_path) -> list[str]:
    """In ``tmp_path``: a small Darknet53 (10 classes, 64 px) saved with its record as
    ``tiny.safetensors``, five images and one file that is not an image; returns the image
    arguments, the broken one third."""
    pytest.importorskip("PIL")
    import numpy as np
    from PIL import Image

    import xpnn
    from xpnn.models import Darknet53

    net = Darknet53(num_classes=10, depths=(1, 1, 1, 1, 1), widths=(8, 16, 16, 16, 16),
                    stem_width=4, input_size=64, seed=0)
    xpnn.io.save(net, tmp_path / "tiny.safetensors")
    rng = np.random.default_rng(0)
    names = []
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(
            tmp_path / f"img{i}.png")
        names.append(f"img{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    return names[:2] + ["broken.png"] + names[2:]
