"""Checks shared by the example command lines: flag values and output paths, done before
any data is loaded, with messages in the flags' own names."""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows each flag's default and keeps the description's line breaks."""


def integer(low: int, high: int):
    """An argparse ``type=``: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low:,} to {high:,}. Received: {text!r}"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low:,} to {high:,}. Received: {value:,}"
            )
        return value

    parse.__name__ = "integer"
    return parse


def number(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    """An argparse ``type=``: a finite number in the interval from ``low`` to ``high``."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    interval = f"{left}{low:g}, {high:g}{right}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number in {interval}. Received: {text!r}") from None
        inside = (math.isfinite(value)
                  and (value > low if low_open else value >= low)
                  and (value < high if high_open else value <= high))
        if not inside:
            raise argparse.ArgumentTypeError(
                f"expected a number in {interval}. Received: {text}")
        return value

    parse.__name__ = "number"
    return parse


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def output_file_problem(flag: str, value: str) -> str | None:
    """Why ``value`` cannot be written as a file, or None when it can."""
    path = Path(value).expanduser()
    parent = path.parent
    if path.is_dir():
        return (f"{flag} expected a file path. Received: {value!r}, which is a folder; "
                f"name a file inside it, e.g. {flag} {path / 'model.safetensors'}")
    if not parent.is_dir():
        what = "is a file" if parent.exists() else "does not exist"
        return (f"{flag} expected a file in an existing folder. Received: {value!r}, but "
                f"the folder {str(parent)!r} {what}. Create the folder first "
                f"(mkdir -p {shlex.quote(str(parent))}) or choose another path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        return (f"{flag} expected a file in a folder you can write. Received: {value!r}, but "
                f"{str(parent)!r} is not writable.")
    if path.exists() and not os.access(path, os.W_OK):
        return f"{flag} expected a writable file. Received: {value!r}, which is read-only."
    return None


def output_folder_problem(flag: str, value: str) -> str | None:
    """Why ``value`` cannot be used (or created) as a folder for output, or None."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        return (f"{flag} expected a folder (existing or new). Received: {value!r}, which is "
                f"an existing file; choose a folder name, e.g. {flag} plots/")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        return (f"{flag} expected a folder that can be created. Received: {value!r}, but "
                f"{str(existing)!r} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        return (f"{flag} expected a folder you can write. Received: {value!r}, but "
                f"{str(existing)!r} is not writable.")
    return None


def input_file_problem(flag: str, value: str) -> str | None:
    path = Path(value).expanduser()
    if not path.exists():
        return f"{flag} expected an existing file. Received: {value!r}, which does not exist."
    if not path.is_file():
        return f"{flag} expected a file. Received: {value!r}, which is a folder."
    return None


def matplotlib_problem(flag: str) -> str | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return (f"{flag} needs matplotlib, which is not installed. Install it "
                f"(pip install matplotlib, or pip install -e \".[examples]\") or drop {flag}.")
    return None


def command_line(script: str | Path, argv: list[str]) -> str:
    """``python SCRIPT ARGS`` as a user can paste it into a shell."""
    path = Path(script).resolve()
    try:
        shown = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        shown = str(path)
    if shown.startswith(".." + os.sep + ".."):
        shown = str(path)
    return shlex.join(["python", shown, *argv])


def replace_flag(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` without any ``flag VALUE`` / ``flag=VALUE``, then ``flag value`` appended."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == flag:
            skip = True
            continue
        if item.startswith(flag + "="):
            continue
        out.append(item)
    return [*out, flag, value]


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def start_ranks():
    """The communicator when started by mpiexec/srun with several ranks (None in one
    process); ranks other than 0 print nothing on standard output (rank 0 speaks for all)."""
    from xpnn import distributed

    if distributed.launched_size() < 2:
        return None
    comm = distributed.init()
    if comm.rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    return comm
