"""The IDX reader and writer: round trips, byte layout, and every kind of broken file."""

import gzip
import os

import numpy as np
import pytest

from xpnn.datasets.idx import read_idx, read_idx_header, write_idx
from xpnn.errors import ConfigError, DataError

DTYPES = ["uint8", "int8", "int16", "int32", "float32", "float64"]


def _sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype) * 1e3
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 1, 3, 2)])
def test_round_trip(tmp_path, dtype, shape, compress):
    array = _sample(dtype, shape)
    path = tmp_path / "data-idx"
    write_idx(path, array, gzip=compress)
    back = read_idx(path)
    assert back.shape == shape
    assert back.dtype == np.dtype(dtype)  # native byte order
    assert back.dtype.isnative
    assert back.flags.writeable
    np.testing.assert_array_equal(back, array)


def test_reads_handwritten_big_endian_file(tmp_path):
    # 00 00 0B 02: int16, 2-D; dims 2 x 3; values big-endian
    values = [1, -2, 300, -32768, 32767, 0]
    content = bytes([0, 0, 0x0B, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    content += b"".join(v.to_bytes(2, "big", signed=True) for v in values)
    path = tmp_path / "hand-idx2-short"
    path.write_bytes(content)
    np.testing.assert_array_equal(read_idx(path), np.array(values, np.int16).reshape(2, 3))


def test_writer_produces_the_standard_header(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    write_idx(path, np.array([5, 0, 4], dtype=np.uint8))
    assert path.read_bytes() == b"\x00\x00\x08\x01" + b"\x00\x00\x00\x03" + b"\x05\x00\x04"


def test_gzip_is_detected_by_content_not_name(tmp_path):
    array = _sample("uint8", (4, 28, 28))
    gz_without_suffix = tmp_path / "images-idx3-ubyte"
    raw_with_suffix = tmp_path / "images-idx3-ubyte.gz"
    write_idx(gz_without_suffix, array, gzip=True)
    write_idx(raw_with_suffix, array, gzip=False)
    assert gz_without_suffix.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(gz_without_suffix), array)
    np.testing.assert_array_equal(read_idx(raw_with_suffix), array)


def test_gzip_output_is_reproducible(tmp_path):
    array = _sample("uint8", (3, 5))
    write_idx(tmp_path / "a", array, gzip=True)
    write_idx(tmp_path / "b", array, gzip=True)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


# -- broken files ---------------------------------------------------------------------------


def _write_bytes(tmp_path, name, content, compress):
    path = tmp_path / name
    path.write_bytes(gzip.compress(content) if compress else content)
    return path


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize(
    "magic", [b"\x01\x00\x08\x01", b"\x00\x01\x08\x01", b"\x00\x00\x0a\x01", b"\x00\x00\x08\x00"],
    ids=["byte0", "byte1", "bad-type", "zero-ndim"],
)
def test_wrong_magic(tmp_path, magic, compress):
    path = _write_bytes(tmp_path, "bad-magic", magic + b"\x00\x00\x00\x01" + b"\x07", compress)
    with pytest.raises(DataError, match="not an IDX file: bad magic") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_html_page_saved_as_idx_is_refused(tmp_path):
    path = _write_bytes(tmp_path, "train-images-idx3-ubyte", b"<html>404</html>", False)
    with pytest.raises(DataError, match="bad magic"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_truncated_payload(tmp_path, compress):
    full = tmp_path / "full"
    write_idx(full, _sample("uint8", (10, 28, 28)))
    content = full.read_bytes()[:-100]
    path = _write_bytes(tmp_path, "train-images-idx3-ubyte", content, compress)
    with pytest.raises(DataError, match="is truncated") as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert "7840 payload bytes" in message and "7740 bytes" in message


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_extra_bytes(tmp_path, compress):
    full = tmp_path / "full"
    write_idx(full, _sample("int32", (5,)))
    path = _write_bytes(tmp_path, "labels", full.read_bytes() + b"\x00" * 3, compress)
    with pytest.raises(DataError, match="longer than its header says") as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert "20 payload bytes" in message and "23 bytes" in message


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_truncated_header(tmp_path, compress):
    path = _write_bytes(tmp_path, "short", b"\x00\x00\x08\x03\x00\x00", compress)
    with pytest.raises(DataError, match="truncated inside its header") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_empty_file(tmp_path, compress):
    path = _write_bytes(tmp_path, "empty", b"", compress)
    with pytest.raises(DataError, match="too short") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "images.gz"
    write_idx(path, _sample("uint8", (50, 28, 28)), gzip=True)
    path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip_stream(tmp_path):
    path = tmp_path / "images.gz"
    write_idx(path, _sample("uint8", (50, 28, 28)), gzip=True)
    content = bytearray(path.read_bytes())
    for i in range(100, len(content) - 100, 97):  # scramble the deflate data, keep the header
        content[i] ^= 0x5A
    path.write_bytes(bytes(content))
    with pytest.raises(DataError, match="corrupt or truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_gzip_crc_mismatch(tmp_path):
    path = tmp_path / "labels.gz"
    write_idx(path, np.arange(200, dtype=np.uint8), gzip=True)
    content = bytearray(path.read_bytes())
    content[-8] ^= 0xFF  # the CRC-32 of the trailer
    path.write_bytes(bytes(content))
    with pytest.raises(DataError, match="corrupt or truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def _huge_header():
    # uint8, 3-D, 65535 x 65535 x 65535: a 2.8e14-byte claim
    return b"\x00\x00\x08\x03" + (65535).to_bytes(4, "big") * 3


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_huge_claimed_size_is_refused_without_allocating(tmp_path, compress):
    path = _write_bytes(tmp_path, "huge", _huge_header() + b"\x00" * 64, compress)
    with pytest.raises(DataError) as info:  # a MemoryError would mean it tried to allocate
        read_idx(path)
    assert str(path) in str(info.value)
    assert "281462092005375" in str(info.value)  # 65535 ** 3, the declared payload


def test_gzip_claim_above_deflate_limit_is_refused_even_without_cap(tmp_path):
    path = _write_bytes(tmp_path, "huge.gz", _huge_header(), True)
    with pytest.raises(DataError, match="gzip file can expand to"):
        read_idx(path, max_bytes=None)


def test_max_bytes_cap(tmp_path):
    path = tmp_path / "x"
    write_idx(path, np.zeros(1000, dtype=np.uint8))
    with pytest.raises(DataError, match="above the limit of 999 bytes"):
        read_idx(path, max_bytes=999)
    assert read_idx(path, max_bytes=1000).shape == (1000,)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="not found") as info:
        read_idx(tmp_path / "nope-idx1-ubyte")
    assert "nope-idx1-ubyte" in str(info.value)
    with pytest.raises(DataError, match="is a directory"):
        read_idx(tmp_path)


def test_write_rejects_unsupported_arrays(tmp_path):
    with pytest.raises(ConfigError, match="cannot store dtype int64"):
        write_idx(tmp_path / "x", np.arange(3, dtype=np.int64))
    with pytest.raises(ConfigError, match="1 to 255 dimensions"):
        write_idx(tmp_path / "x", np.array(3, dtype=np.uint8))


# -- the header alone -----------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_read_idx_header_matches_read_idx(tmp_path, dtype, compress):
    array = _sample(dtype, (3, 4, 5))
    path = tmp_path / "data-idx"
    write_idx(path, array, gzip=compress)
    header_dtype, shape = read_idx_header(path)
    back = read_idx(path)
    assert (header_dtype, shape) == (back.dtype, back.shape)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_read_idx_header_reads_only_the_header(tmp_path, compress):
    # a header claiming 10,000 bytes, then a truncated payload: the header alone is fine
    content = b"\x00\x00\x08\x02" + (100).to_bytes(4, "big") * 2 + b"\x00" * 10
    path = _write_bytes(tmp_path, "short-payload", content, compress)
    assert read_idx_header(path) == (np.dtype("uint8"), (100, 100))
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_read_idx_header_refuses_bad_magic_and_deflate_claims(tmp_path):
    with pytest.raises(DataError, match="bad magic"):
        read_idx_header(_write_bytes(tmp_path, "bad", b"<html>404</html>", False))
    with pytest.raises(DataError, match="gzip file can expand to"):
        read_idx_header(_write_bytes(tmp_path, "huge.gz", _huge_header(), True))


def test_more_than_64_dimensions_is_a_data_error(tmp_path):
    path = tmp_path / "65-dims"
    path.write_bytes(b"\x00\x00\x08\x41" + (1).to_bytes(4, "big") * 65 + b"\x07")
    with pytest.raises(DataError, match="at most 64 dimensions.*declaring 65 dimensions"):
        read_idx(path)


def test_fifo_is_refused_without_blocking(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(DataError, match="expected a regular file.*a FIFO"):
        read_idx(tmp_path / "pipe")  # open() would block here until a writer came
