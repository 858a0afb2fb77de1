"""Image files to Darknet53's input (xpnn.models.preprocess): every image mode to RGB, errors
that name the file, and the resize, crop and normalization on every backend."""

import numpy as np
import pytest

from xpnn import backends
from xpnn.errors import ConfigError, DataError
from xpnn.models.preprocess import ImageError, load_rgb, preprocess
from xpnn.testing import assert_close

Image = pytest.importorskip("PIL.Image")

PRE = {"input_size": 16, "crop_pct": 0.8, "interpolation": "bicubic",
       "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def test_every_image_mode_becomes_rgb(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"gray.png": rng.integers(0, 255, (20, 30), dtype=np.uint8),
              "rgba.png": rng.integers(0, 255, (20, 30, 4), dtype=np.uint8),
              "deep.png": np.full((20, 30), 65535, dtype=np.uint16),
              "rgb.jpg": rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)}
    for name, values in arrays.items():
        Image.fromarray(values).save(tmp_path / name)
        image = load_rgb(str(tmp_path / name))
        assert image.mode == "RGB" and image.size == (30, 20)
    assert np.asarray(load_rgb(str(tmp_path / "deep.png"))).min() == 255  # not clipped


def test_float_images_in_zero_to_one_are_scaled_and_nan_becomes_black(tmp_path):
    values = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    values[1, 1] = np.nan
    Image.fromarray(values).save(tmp_path / "float.tiff")
    rgb = np.asarray(load_rgb(str(tmp_path / "float.tiff")))
    assert rgb[0, 0, 0] == 0 and rgb[2, 3, 0] == 255 and rgb[1, 1, 0] == 0
    assert rgb[1, 2, 0] == round(float(values[1, 2]) * 255)


def test_unreadable_files_are_named(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="notes.txt: not an image"):
        load_rgb(str(text))
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.jpg: cannot decode") as caught:
        load_rgb(str(tmp_path / "cut.jpg"))
    assert isinstance(caught.value, DataError)


def reference(image, pre):
    """Resize the shorter side to 20 (16 / 0.8), centre-crop 16, normalize: in NumPy."""
    resized = image.resize((30, 20), Image.Resampling.BICUBIC)  # 45x30 scaled by 20/30
    cropped = np.asarray(resized.crop((7, 2, 23, 18)), dtype=np.float32) / 255.0
    mean, std = np.float32(pre["mean"]), np.float32(pre["std"])
    return ((cropped - mean) / std).transpose(2, 0, 1)


def test_preprocess_resizes_crops_and_normalizes_on_every_backend(backend):
    pixels = np.random.default_rng(1).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    x = preprocess(image, PRE, backend=backend)
    assert tuple(x.shape) == (3, 16, 16)
    assert backends.dtype_name(x.dtype) == "float32"
    assert_close(x, reference(image, PRE), rtol=0, atol=1e-6, backend=backend)
    assert_close(preprocess(image, PRE), reference(image, PRE), rtol=0, atol=1e-6,
                 backend=backend)  # the current backend by default


def test_preprocess_of_an_extreme_strip_stays_small():
    strip = Image.fromarray(np.zeros((1, 20000, 3), np.uint8))  # resized naively: 5 GB
    with backends.use("numpy"):
        x = preprocess(strip, {**PRE, "input_size": 256})
    assert x.shape == (3, 256, 256)


def test_unknown_interpolation_is_refused():
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ConfigError, match="interpolation to be one of bicubic"):
        preprocess(image, {**PRE, "interpolation": "cubic"})
