"""Finding, downloading (with pooch faked: never the network) and loading MNIST files,
and the embedded sample."""

import dataclasses
import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from xpnn.datasets import mnist, sample
from xpnn.datasets.dataset import load_dataset
from xpnn.datasets.idx import write_idx
from xpnn.datasets.mnist import FILES, DataNotFoundError, load_mnist
from xpnn.datasets.sample import load_mnist_sample
from xpnn.errors import ConfigError, DataError

GZ_NAMES = [stem + ".gz" for stem in FILES.values()]
SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No XPNN_DATA from the environment, and a per-test cache folder."""
    monkeypatch.delenv("XPNN_DATA", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setattr(mnist, "default_cache_dir", lambda: cache)
    return cache


def fake_mnist(folder: Path, *, seed=0, n_train=6, n_test=4, compress=True):
    """Write four tiny IDX files into ``folder``; return their arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for role, stem in FILES.items():
        write_idx(folder / (stem + (".gz" if compress else "")), arrays[role], gzip=compress)
    return arrays


def assert_loaded(result, arrays):
    (x_train, y_train), (x_test, y_test) = result
    np.testing.assert_array_equal(x_train, arrays["train_images"])
    np.testing.assert_array_equal(y_train, arrays["train_labels"])
    np.testing.assert_array_equal(x_test, arrays["test_images"])
    np.testing.assert_array_equal(y_test, arrays["test_labels"])
    assert x_train.dtype == np.uint8 and y_train.dtype == np.uint8


# -- finding files --------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_finds_files_in_root(tmp_path, compress):
    arrays = fake_mnist(tmp_path / "data", compress=compress)
    assert_loaded(load_mnist("digits", root=tmp_path / "data", download=False), arrays)


def test_finds_files_in_kind_subfolder_of_root(tmp_path):
    arrays = fake_mnist(tmp_path / "data" / "fashion-mnist", seed=3)
    assert_loaded(load_mnist("fashion", root=str(tmp_path / "data"), download=False), arrays)


def test_finds_files_in_xpnn_data_folder_and_subfolder(tmp_path, monkeypatch):
    digits = fake_mnist(tmp_path / "shared", seed=1)
    fashion = fake_mnist(tmp_path / "shared" / "fashion-mnist", seed=2)
    monkeypatch.setenv("XPNN_DATA", str(tmp_path / "shared"))
    assert_loaded(load_mnist("digits", download=False), digits)
    assert_loaded(load_mnist("fashion", download=False), fashion)


def test_root_comes_before_xpnn_data_before_cache(tmp_path, monkeypatch, isolated):
    in_root = fake_mnist(tmp_path / "root", seed=1)
    in_env = fake_mnist(tmp_path / "env", seed=2)
    in_cache = fake_mnist(isolated / "mnist", seed=3)
    monkeypatch.setenv("XPNN_DATA", str(tmp_path / "env"))
    assert_loaded(load_mnist(root=tmp_path / "root", download=False), in_root)
    assert_loaded(load_mnist(download=False), in_env)
    monkeypatch.delenv("XPNN_DATA")
    assert_loaded(load_mnist(download=False), in_cache)


def test_mixed_raw_and_gz_files(tmp_path):
    arrays = fake_mnist(tmp_path / "d")
    stem = FILES["test_labels"]
    (tmp_path / "d" / (stem + ".gz")).unlink()  # replaced by an uncompressed copy
    write_idx(tmp_path / "d" / stem, arrays["test_labels"])
    assert_loaded(load_mnist(root=tmp_path / "d", download=False), arrays)


def test_other_datasets_files_are_not_returned(tmp_path, monkeypatch):
    digits = fake_mnist(tmp_path / "shared", seed=1)
    hashes = {name: hashlib.sha256((tmp_path / "shared" / name).read_bytes()).hexdigest()
              for name in GZ_NAMES}
    spec = dataclasses.replace(mnist.DATASETS["digits"], sha256=hashes)
    monkeypatch.setitem(mnist.DATASETS, "digits", spec)  # these fakes now "are" MNIST
    monkeypatch.setenv("XPNN_DATA", str(tmp_path / "shared"))
    assert_loaded(load_mnist("digits", download=False), digits)
    with pytest.raises(DataNotFoundError, match="holds MNIST, not Fashion-MNIST"):
        load_mnist("fashion", download=False)


# -- missing files ---------------------------------------------------------------------------


def test_missing_files_without_download_say_what_to_put_where(tmp_path, isolated):
    with pytest.raises(DataNotFoundError) as info:
        load_mnist("fashion", download=False)
    message = str(info.value)
    for name in GZ_NAMES:
        assert name in message
    assert str(isolated / "fashion-mnist") in message
    assert "XPNN_DATA" in message and "root=DIR" in message and "--" not in message
    assert isinstance(info.value, DataError)


def test_partial_folder_is_reported(tmp_path):
    fake_mnist(tmp_path / "d")
    (tmp_path / "d" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match=r"has 3 of 4 files; missing t10k-images"):
        load_mnist(root=tmp_path / "d", download=False)


def test_corrupt_file_is_an_error_naming_it(tmp_path):
    fake_mnist(tmp_path / "d")
    bad = tmp_path / "d" / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-6])
    with pytest.raises(DataError) as info:
        load_mnist(root=tmp_path / "d", download=False)
    assert not isinstance(info.value, DataNotFoundError)
    assert str(bad) in str(info.value)


def test_label_count_must_match_image_count(tmp_path):
    fake_mnist(tmp_path / "d")
    write_idx(tmp_path / "d" / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8), gzip=True)
    with pytest.raises(DataError, match="holds 5 labels, but .* holds 6 images"):
        load_mnist(root=tmp_path / "d", download=False)


def test_images_must_be_28x28_uint8(tmp_path):
    fake_mnist(tmp_path / "d")
    write_idx(tmp_path / "d" / "t10k-images-idx3-ubyte.gz", np.zeros((4, 32, 32), np.uint8),
              gzip=True)
    with pytest.raises(DataError, match=r"expected uint8 of shape \(N, 28, 28\)"):
        load_mnist(root=tmp_path / "d", download=False)


def test_unknown_kind():
    with pytest.raises(ConfigError, match="Expected 'digits' or 'fashion'"):
        load_mnist("kmnist", download=False)


# -- downloading (pooch's real retrieve, with a fake downloader instead of the network) --------


class FakeServer:
    """Serves ``files`` (name -> bytes) from ``good_mirror``; every other mirror is down."""

    def __init__(self, files, good_mirror):
        self.files, self.good_mirror, self.requests = files, good_mirror, []

    def __call__(self, url, output_file, pooch_instance, check_only=False):
        import requests

        self.requests.append(url)
        if not url.startswith(self.good_mirror):
            raise requests.exceptions.ConnectionError(f"cannot reach {url}")
        Path(output_file).write_bytes(self.files[url.rsplit("/", 1)[1]])


@pytest.fixture
def served(tmp_path, monkeypatch):
    """Fake MNIST files, pinned as MNIST's hashes, served by a fake fallback mirror."""
    pooch = pytest.importorskip("pooch")
    arrays = fake_mnist(tmp_path / "origin", seed=7)
    files = {name: (tmp_path / "origin" / name).read_bytes() for name in GZ_NAMES}
    spec = dataclasses.replace(
        mnist.DATASETS["digits"],
        mirrors=("https://down.invalid/mnist/", "https://up.invalid/mnist/"),
        sha256={name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    )
    monkeypatch.setitem(mnist.DATASETS, "digits", spec)
    server = FakeServer(files, "https://up.invalid/")
    real_retrieve = pooch.retrieve
    monkeypatch.setattr(pooch, "retrieve",
                        lambda *args, **kwargs: real_retrieve(*args, downloader=server, **kwargs))
    return arrays, files, server


def test_download_falls_back_to_second_mirror_and_checks_hash(served, isolated):
    arrays, files, server = served
    assert_loaded(load_mnist("digits"), arrays)
    for name in GZ_NAMES:
        assert (isolated / "mnist" / name).read_bytes() == files[name]
        assert f"https://down.invalid/mnist/{name}" in server.requests
        assert f"https://up.invalid/mnist/{name}" in server.requests
    server.requests.clear()
    assert_loaded(load_mnist("digits"), arrays)  # now found in the cache: no request
    assert server.requests == []


def test_download_goes_to_kind_subfolder_of_root(served, tmp_path):
    arrays, _, _ = served
    assert_loaded(load_mnist("digits", root=tmp_path / "mine"), arrays)
    assert sorted(p.name for p in (tmp_path / "mine" / "mnist").iterdir()) == sorted(GZ_NAMES)


def test_download_only_fetches_missing_files(served, isolated):
    arrays, _, server = served
    fake_mnist(isolated / "mnist", seed=7)
    (isolated / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    assert_loaded(load_mnist("digits"), arrays)
    assert {url.rsplit("/", 1)[1] for url in server.requests} == {"t10k-labels-idx1-ubyte.gz"}


def test_hash_mismatch_deletes_the_file_and_says_so(served, isolated):
    _, files, server = served
    server.files = {**files, "train-images-idx3-ubyte.gz": b"tampered" + files[GZ_NAMES[0]]}
    with pytest.raises(DataError) as info:
        load_mnist("digits")
    message = str(info.value)
    assert "SHA-256 does not match" in message and "deleted" in message
    assert "train-images-idx3-ubyte.gz" in message
    folder = isolated / "mnist"
    leftovers = list(folder.iterdir()) if folder.exists() else []
    assert leftovers == []  # neither the bad file nor pooch's temporary file remains


def test_hash_mismatch_file_left_behind_is_deleted(tmp_path, monkeypatch, isolated):
    pooch = pytest.importorskip("pooch")

    def retrieve_leaving_the_file(url, known_hash, fname, path, **kwargs):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / fname).write_bytes(b"bad")
        raise ValueError(f"SHA256 hash of downloaded file ({fname}) does not match")

    monkeypatch.setattr(pooch, "retrieve", retrieve_leaving_the_file)
    with pytest.raises(DataError, match="was deleted"):
        load_mnist("fashion")
    assert not (isolated / "fashion-mnist" / "train-images-idx3-ubyte.gz").exists()


def test_no_network_says_what_to_put_where(served, isolated):
    _, _, server = served
    server.good_mirror = "https://nowhere/"
    with pytest.raises(DataNotFoundError) as info:
        load_mnist("digits")
    message = str(info.value)
    assert "Could not download MNIST" in message
    assert "https://down.invalid/mnist/" in message and "https://up.invalid/mnist/" in message
    for name in GZ_NAMES:
        assert name in message
    assert str(isolated / "mnist") in message and "XPNN_DATA" in message
    assert not (isolated / "mnist").exists()  # no empty folder left behind


# -- the embedded sample and load_dataset ----------------------------------------------------


def test_embedded_sample_shapes_dtypes_and_label_counts():
    (x_train, y_train), (x_test, y_test) = load_mnist_sample()
    assert x_train.shape == (4000, 28, 28) and x_test.shape == (1000, 28, 28)
    assert y_train.shape == (4000,) and y_test.shape == (1000,)
    for array in (x_train, y_train, x_test, y_test):
        assert array.dtype == np.uint8
    train_counts = np.bincount(y_train, minlength=10)
    test_counts = np.bincount(y_test, minlength=10)
    assert train_counts.shape == (10,) and test_counts.shape == (10,)
    assert (train_counts >= 300).all() and (test_counts >= 75).all()
    assert train_counts.tolist() == [400] * 10 and test_counts.tolist() == [100] * 10
    assert x_train.max() == 255 and x_train.min() == 0
    assert 0.08 < x_train.mean() / 255 < 0.2  # mostly dark background, as MNIST


def test_embedded_sample_file_is_plain_npz_and_splits_are_disjoint():
    with np.load(sample.SAMPLE_PATH, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["x_test", "x_train", "y_test", "y_train"]
    assert sample.SAMPLE_PATH.stat().st_size < 3_000_000
    (x_train, _), (x_test, _) = load_mnist_sample()
    train_rows = {image.tobytes() for image in x_train}
    assert len(train_rows) == 4000
    assert not any(image.tobytes() in train_rows for image in x_test)


def test_damaged_sample_is_detected(tmp_path, monkeypatch):
    (x_train, y_train), (x_test, y_test) = load_mnist_sample()
    x_train = x_train.copy()
    x_train[0, 0, 0] ^= 1
    damaged = tmp_path / "sample.npz"
    np.savez_compressed(damaged, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    monkeypatch.setattr(sample, "SAMPLE_PATH", damaged)
    with pytest.raises(DataError, match="does not match its pinned content hash"):
        load_mnist_sample()


def test_load_dataset_reports_where_data_came_from(tmp_path):
    arrays = fake_mnist(tmp_path / "d")
    data = load_dataset("mnist", data_dir=tmp_path / "d", download=False)
    assert data.name == "mnist"
    assert data.source == f"full MNIST from {tmp_path / 'd'}"
    np.testing.assert_array_equal(data.x_train, arrays["train_images"])
    assert data.train[1] is data.y_train and data.test[0] is data.x_test
    assert data.class_names[3] == "3"
    (x_train, y_train), (x_test, y_test), source = data
    assert x_train is data.x_train and y_test is data.y_test and source == data.source


def test_load_dataset_sample():
    data = load_dataset("mnist-sample")
    assert data.name == "mnist-sample" and data.x_train.shape == (4000, 28, 28)
    assert data.source.startswith("embedded 5,000-image MNIST sample")


def test_load_dataset_mnist_falls_back_to_sample_with_instructions(isolated):
    data = load_dataset("mnist", download=False)
    assert data.name == "mnist-sample" and data.x_test.shape == (1000, 28, 28)
    assert data.source.startswith("embedded 5,000-image MNIST sample")
    for name in GZ_NAMES:
        assert name in data.source
    assert str(isolated / "mnist") in data.source and "data_dir" in data.source


def test_load_dataset_fallback_can_be_refused_and_never_hides_corruption(tmp_path):
    with pytest.raises(DataNotFoundError):
        load_dataset("mnist", download=False, fallback=False)
    with pytest.raises(DataNotFoundError, match="Fashion-MNIST"):
        load_dataset("fashion-mnist", download=False)
    fake_mnist(tmp_path / "d")
    (tmp_path / "d" / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bjunk")
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        load_dataset("mnist", data_dir=tmp_path / "d", download=False)


def test_load_dataset_default_does_not_download(monkeypatch, isolated):
    pooch = pytest.importorskip("pooch")
    monkeypatch.setattr(pooch, "retrieve", lambda *a, **k: pytest.fail("downloaded"))
    assert load_dataset("mnist").name == "mnist-sample"


def test_load_dataset_given_source_never_falls_back(tmp_path, monkeypatch, isolated):
    fake_mnist(isolated / "mnist", seed=4)  # the cache is complete, but was not asked for
    fake_mnist(tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match=r"Received: missing t10k-labels-idx1-ubyte;"):
        load_dataset("mnist", data_dir=tmp_path / "d")
    monkeypatch.setenv("XPNN_DATA", str(tmp_path / "d"))
    with pytest.raises(DataNotFoundError, match=r"in XPNN_DATA=.*missing t10k-labels"):
        load_dataset("mnist")


def test_download_goes_to_xpnn_data_when_set(served, tmp_path, monkeypatch):
    arrays, _, _ = served
    monkeypatch.setenv("XPNN_DATA", str(tmp_path / "env"))
    assert_loaded(load_mnist("digits"), arrays)
    assert sorted(p.name for p in (tmp_path / "env" / "mnist").iterdir()) == sorted(GZ_NAMES)


def test_load_dataset_unknown_name():
    with pytest.raises(ConfigError, match="Expected 'mnist', 'fashion-mnist' or 'mnist-sample'"):
        load_dataset("cifar10")


# -- the real files, when this machine has them ------------------------------------------------


@pytest.mark.skipif(not (SHARED_MNIST / "train-images-idx3-ubyte.gz").is_file(),
                    reason=f"real MNIST files not present in {SHARED_MNIST}")
def test_real_mnist_files():
    spec = mnist.DATASETS["digits"]
    for name in GZ_NAMES:
        digest = hashlib.sha256((SHARED_MNIST / name).read_bytes()).hexdigest()
        assert digest == spec.sha256[name], name
        with gzip.open(SHARED_MNIST / name) as stream:
            assert stream.read(4)[:3] == b"\x00\x00\x08"
    (x_train, y_train), (x_test, y_test) = load_mnist(root=SHARED_MNIST, download=False)
    assert x_train.shape == (60000, 28, 28) and y_train.shape == (60000,)
    assert x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)
    assert y_train[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]  # MNIST's well-known first labels
    # the embedded sample is the first 500 images of each digit of the training set
    (s_train, s_ytrain), (s_test, s_ytest) = load_mnist_sample()
    sample = np.concatenate([s_train, s_test])
    sample_labels = np.concatenate([s_ytrain, s_ytest])
    for digit in (0, 7):
        firsts = x_train[np.flatnonzero(y_train == digit)[:500]]
        mine = sample[sample_labels == digit]
        assert {img.tobytes() for img in firsts} == {img.tobytes() for img in mine}
