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
from xpnn.validation import is_int, number

__all__ = ["INTERPOLATIONS", "MAX_INPUT_SIZE", "ImageError", "check_preprocessing", "load_rgb",
           "preprocess"]

#: Resampling filters the preprocessing may name.
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")
#: Largest ``input_size``: a 2048x2048 float32 image is 48 MiB, and the image resized
#: before the crop is bounded by ``_RESIZE_LIMIT`` times the crop.
MAX_INPUT_SIZE = 2048
#: Smallest ``crop_pct``: the shorter side is resized to ``input_size / crop_pct``.
MIN_CROP_PCT = 0.05
#: Bounds of ``std`` and ``|mean|`` (in the [0, 1] pixel scale): normalized pixels stay
#: far from float32 overflow.
MIN_STD, MAX_STD, MAX_ABS_MEAN = 1e-3, 1e3, 1e3

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


def check_preprocessing(who: str, preprocessing) -> dict:
    """``preprocessing`` checked and normalized: ``input_size`` an integer in
    ``[1, MAX_INPUT_SIZE]``, ``crop_pct`` in ``[MIN_CROP_PCT, 1]``, ``interpolation`` one of
    ``INTERPOLATIONS``, ``mean`` and ``std`` three finite numbers each (``|mean| <=
    MAX_ABS_MEAN``, ``MIN_STD <= std <= MAX_STD``). ``who`` names the caller in messages.

    Raises
    ------
    ConfigError
        A missing entry or a value out of range.

    Examples
    --------
    >>> check_preprocessing("demo", {"input_size": 8, "crop_pct": 1, "interpolation": "nearest",
    ...                              "mean": [0, 0, 0], "std": [1, 1, 1]})["crop_pct"]
    1.0
    """
    if not isinstance(preprocessing, dict):
        raise ConfigError(f"{who} expected preprocessing to be a dict. "
                          f"Received: {type(preprocessing).__name__}")
    missing = [key for key in ("input_size", "crop_pct", "interpolation", "mean", "std")
               if key not in preprocessing]
    if missing:
        raise ConfigError(f"{who} expected preprocessing with input_size, crop_pct, "
                          f"interpolation, mean and std. Received: no {', '.join(missing)}")
    input_size, crop_pct = preprocessing["input_size"], preprocessing["crop_pct"]
    interpolation = preprocessing["interpolation"]
    if not is_int(input_size, 1) or input_size > MAX_INPUT_SIZE:
        raise ConfigError(
            f"{who} expected input_size to be an integer in [1, {MAX_INPUT_SIZE}]. "
            f"Received: input_size={input_size!r}"
        )
    if not isinstance(interpolation, str) or interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"{who} expected interpolation to be one of {', '.join(INTERPOLATIONS)}. "
            f"Received: interpolation={interpolation!r}"
        )
    crop_pct = number(who, "crop_pct", crop_pct, low=0.0, high=1.0, low_inclusive=False)
    number(who, "crop_pct", crop_pct, low=MIN_CROP_PCT, high=1.0)
    mean = _channel_numbers(who, "mean", preprocessing["mean"], low=None)
    std = _channel_numbers(who, "std", preprocessing["std"], low=0.0)
    for index, value in enumerate(mean):
        number(who, f"mean[{index}]", value, low=-MAX_ABS_MEAN, high=MAX_ABS_MEAN)
    for index, value in enumerate(std):
        number(who, f"std[{index}]", value, low=MIN_STD, high=MAX_STD)
    return {"input_size": int(input_size), "crop_pct": crop_pct,
            "interpolation": interpolation, "mean": mean, "std": std}


def _channel_numbers(who: str, name: str, values, *, low: float | None) -> list[float]:
    """Three finite numbers, one per RGB channel (above ``low`` when given)."""
    if not isinstance(values, list | tuple) or len(values) != 3:
        raise ConfigError(
            f"{who} expected {name} to be three numbers, one per RGB channel. "
            f"Received: {name}={values!r}"
        )
    return [number(who, f"{name}[{index}]", value, low=low, low_inclusive=False)
            for index, value in enumerate(values)]


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
        [0, 1] scale): ``Darknet53.preprocessing``, range-checked by
        :func:`check_preprocessing` (a ConfigError when out of range).
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

    preprocessing = check_preprocessing("preprocess", preprocessing)
    image = image if image.mode == "RGB" else _to_rgb(image)
    filters = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
               "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
    name = preprocessing["interpolation"]
    size = preprocessing["input_size"]
    shorter = math.floor(size / preprocessing["crop_pct"])
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
