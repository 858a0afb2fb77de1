"""Downloading MNIST-format files with pooch: every mirror in turn, pinned SHA-256 hashes,
and nothing left behind when all mirrors fail (see :mod:`xpnn.datasets.mnist`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from xpnn.errors import DataError, DataNotFoundError


def progressbar_wanted() -> bool:
    interactive = sys.stderr is not None and sys.stderr.isatty()
    return interactive and importlib.util.find_spec("tqdm") is not None


def download(spec, names: list[str], folder: Path, placement_help: str) -> None:
    """Fetch each of ``names`` into ``folder`` with pooch, trying every mirror of ``spec``
    (an :class:`~xpnn.datasets.mnist.MnistSpec`) in turn, each checked against its pinned
    SHA-256. ``placement_help`` ends every error message: how to place the files by hand."""
    try:
        import pooch
    except ImportError:
        raise DataNotFoundError(
            f"{spec.title} files {', '.join(names)} are missing in {folder}, and "
            f"downloading needs pooch, which is not installed (pip install pooch). "
            f"{placement_help}"
        ) from None
    created = not folder.exists()
    for index, name in enumerate(names):
        failures, mismatches = [], []
        for mirror in spec.mirrors:
            url = mirror + name
            try:
                pooch.retrieve(url, known_hash=f"sha256:{spec.sha256[name]}", fname=name,
                               path=folder, progressbar=progressbar_wanted())
                break
            except ValueError as error:  # pooch's hash mismatch; it deleted the download
                (folder / name).unlink(missing_ok=True)
                mismatches.append(f"{url}: {short(error)}")
            except Exception as error:  # network: requests' ConnectionError, HTTPError, ...
                (folder / name).unlink(missing_ok=True)
                failures.append(f"{url}: {type(error).__name__}: {short(error)}")
        else:
            if created and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # leave no empty folder behind a failed first download
            if mismatches:
                raise DataError(
                    f"Downloaded {name} for {spec.title}, but its SHA-256 does not match the "
                    f"pinned hash {spec.sha256[name]}. The downloaded file was deleted; "
                    f"nothing was kept in {folder}. Details: "
                    f"{'; '.join(mismatches + failures)}. Try again later (a mirror may be "
                    f"serving a damaged file). {placement_help}"
                )
            raise DataNotFoundError(
                f"Could not download {spec.title} file {name}: no mirror answered (is there "
                f"a network connection?). Tried: {'; '.join(failures)}. Still missing in "
                f"{folder}: {', '.join(names[index:])}. {placement_help}",
                filename=str(folder / name),
            )


def short(error: BaseException, limit: int = 160) -> str:
    """The first line of an error message, cut to ``limit`` characters."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."
