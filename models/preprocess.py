"""Image files to a classifier's input: decoding any image to RGB, then the resize, centre
crop and normalization its weights expect (Darknet53's ``model.preprocessing``, which its
weights file records).

    image = load_rgb("cat.jpg")
    x = preprocess(image, model.preprocessing, backend=model.backend)   # (3, size, size)

Decoding and resizing use Pillow (``pip install pillow``, part of ``xpnn[examples]``); the
arithmetic runs on the backend the batch is for.
"""

from __future__ import annotations

import math

from xpnn import backends
from xpnn.errors import ConfigError, DataError

__all__ = ["ImageError", "load_rgb", "preprocess"]

_DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # more than 8 bits per pixel
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
#: Above this many times the crop's pixels, only the part of the image the crop keeps is
#: resized (a 1x20000 strip resized whole would take gigabytes).
_RESIZE_LIMIT = 16


class ImageError(DataError):
    """An input file that is not a readable image (a DataError, hence also an OSError)."""


def load_rgb(path: str):
    """Open ``path`` with Pillow as 8-bit RGB: EXIF rotation applied, 16-bit and float
    images rescaled, transparency composited onto white, grayscale and palettes expanded.

    Raises
    ------
    ImageError
        The file is missing, not an image, truncated or corrupt, too large (Pillow's
        decompression-bomb limit, about 179 megapixels), or in a mode with no RGB
        conversion.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()  # decode now: a truncated file fails here, not later
            image = ImageOps.exif_transpose(opened)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"{path}: refused, the image is too large ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as error:
        raise ImageError(f"{path}: cannot decode the image ({error}); the file may be "
                         f"truncated or corrupt") from None
    try:
        return _to_rgb(image)
    except (OSError, ValueError, TypeError) as error:
        raise ImageError(f"{path}: cannot convert the image (mode {image.mode}) to RGB "
                         f"({error})") from None


def _to_rgb(image):
    from PIL import Image

    if image.mode in _DEEP_MODES:
        # To 8 bits: integers above 255 are taken as 16-bit, floats up to 1 as [0, 1];
        # rounded, clipped to 0-255 (NaN becomes 0) by the conversion to "L".
        floating = image.convert("F")
        _, highest = floating.getextrema()
        if image.mode == "F":
            top = 1.0 if highest <= 1.0 else 255.0
        else:
            top = 65535.0 if highest > 255 else 255.0
        image = floating.point(lambda value: value * (255.0 / top) + 0.5).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def preprocess(image, preprocessing: dict, *, backend=None):
    """Resize the shorter side to ``input_size / crop_pct``, centre-crop ``input_size``
    square, scale to [0, 1] and normalize with ``mean`` and ``std``.

    Parameters
    ----------
    image : PIL.Image.Image
        An image, usually from :func:`load_rgb` (other modes are converted to RGB).
    preprocessing : dict
        ``input_size``, ``crop_pct``, ``interpolation`` (``"bicubic"``, ``"bilinear"``,
        ``"nearest"``, ``"lanczos"``), ``mean`` and ``std`` (three numbers each, in the
        [0, 1] scale): ``Darknet53.preprocessing``.
    backend : Backend, optional
        Where the result goes (default: the current backend); pass ``model.backend``.

    Returns
    -------
    array
        ``(3, input_size, input_size)`` float32, channels first.

    For extreme aspect ratios (a resized image above 16 times the crop's pixels, e.g. a
    1x5000 strip) only the part that survives the crop is resized, so memory stays
    bounded; the result differs from resize-then-crop only by the filter's border.
    """
    from PIL import Image

    image = image if image.mode == "RGB" else _to_rgb(image)
    filters = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
               "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
    name = preprocessing["interpolation"]
    if name not in filters:
        raise ConfigError(
            f"preprocess expected interpolation to be one of {', '.join(filters)}. "
            f"Received: interpolation={name!r}"
        )
    size = int(preprocessing["input_size"])
    shorter = math.floor(size / float(preprocessing["crop_pct"]))
    w, h = image.size
    scale = shorter / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (new_w - size) // 2, (new_h - size) // 2
    if new_w * new_h > _RESIZE_LIMIT * size * size:
        box = (left / new_w * w, top / new_h * h, (left + size) / new_w * w,
               (top + size) / new_h * h)
        image = image.resize((size, size), filters[name], box=box)
    else:
        image = image.resize((new_w, new_h), filters[name])
        image = image.crop((left, top, left + size, top + size))
    backend = backends.current() if backend is None else backend
    xp = backend.xp
    pixels = backend.asarray(memoryview(image.tobytes()), "uint8")
    x = xp.astype(xp.reshape(pixels, (size, size, 3)), xp.float32) / 255.0
    mean = xp.asarray(preprocessing["mean"], dtype=xp.float32, device=backend.device)
    std = xp.asarray(preprocessing["std"], dtype=xp.float32, device=backend.device)
    return xp.permute_dims((x - mean) / std, (2, 0, 1))
