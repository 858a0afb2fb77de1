"""ImageNet-1k class names in the standard order (index i = output i of a 1000-way
classifier trained on ILSVRC-2012, such as Darknet53's), shipped as
``weights/imagenet_classes.txt``: one name per line, the first WordNet lemma of each
synset with underscores as spaces (the names Keras and PyTorch Hub use)."""

from __future__ import annotations

import functools

from xpnn.errors import DataError

FILENAME = "imagenet_classes.txt"


@functools.lru_cache(maxsize=1)
def class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names, index-aligned with the classifier's outputs.

    Examples
    --------
    >>> names = class_names()
    >>> len(names), names[0], names[207]
    (1000, 'tench', 'golden retriever')
    """
    from xpnn import weights

    path = weights.path(FILENAME)
    try:
        with open(path, encoding="utf-8") as handle:
            names = tuple(line.strip() for line in handle if line.strip())
    except OSError as error:
        raise DataError(
            f"Cannot read the ImageNet class names at {str(path)!r}: {error}. "
            f"Reinstall xpnn (the file ships in the xpnn.weights package)."
        ) from error
    if len(names) != 1000:
        raise DataError(
            f"{str(path)!r} should list 1000 ImageNet classes, one per line. "
            f"Received: {len(names)} names. Reinstall xpnn."
        )
    return names
