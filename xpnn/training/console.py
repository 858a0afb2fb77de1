"""What a training run shows and hears on the terminal: the progress bar, the line printed
per epoch, and Ctrl-C.

Ctrl-C (SIGINT) during ``fit``:

* the first one asks training to stop after the current batch; ``fit`` then writes a
  checkpoint of that position (a consistent state) and re-raises ``KeyboardInterrupt``;
* a second one stops at once, unless the batch's optimizer step is under way: an update
  cut in half cannot be undone cheaply, so that Ctrl-C waits for the end of the batch
  (milliseconds: the step and the metric bookkeeping).

The handler is installed only in the main thread and only while SIGINT has Python's
default handler; otherwise Ctrl-C behaves as the program arranged it.
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
from collections.abc import Callable

__all__ = ["GracefulInterrupt", "ProgressBar", "print_epoch"]


class GracefulInterrupt:
    """Context manager: while it is active, the first Ctrl-C sets ``requested`` and a
    second one raises ``KeyboardInterrupt`` when ``may_stop_now()`` is true (otherwise it
    too only sets ``requested``, and the loop stops at the end of the batch). ``when`` is
    where the messages say the loop will stop; ``quiet`` prints nothing (ranks but 0).

    Examples
    --------
    >>> with GracefulInterrupt() as interrupt:
    ...     pass  # the training loop checks interrupt.requested after each batch
    >>> interrupt.requested
    False
    """

    def __init__(self, may_stop_now: Callable[[], bool] = lambda: True, *,
                 when: str = "after this batch", quiet: bool = False):
        self.requested = False
        self.may_stop_now = may_stop_now
        self.when, self.quiet = when, quiet  # what the first Ctrl-C's message promises
        self._previous = None

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if not self.requested:
            self.requested = True
            if not self.quiet:
                again = " (press Ctrl-C again to stop at once)" if self.may_stop_now() else ""
                print(f"\nCtrl-C: stopping {self.when}{again}", file=sys.stderr)
        elif self.may_stop_now():
            raise KeyboardInterrupt
        elif not self.quiet:
            busy = ("the optimizer step of this batch is under way; stopping right after it"
                    if self.when == "after this batch" else f"stopping {self.when}")
            print(f"\nCtrl-C: {busy}", file=sys.stderr)

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class ProgressBar:
    """A tqdm bar over the batches of one epoch, on standard output.

    It is drawn only when ``progress`` is True, or ``progress`` is None and standard output
    is a terminal (so ``| tee`` and log files get the epoch lines alone; nothing when tqdm
    is missing or ``progress`` is False). ``start`` is the number of batches already done
    (a resumed epoch): the bar starts there. :meth:`advance` moves it by one batch, a host
    counter with no device synchronization; the bar is redrawn at most every
    ``REFRESH_SECONDS`` and at every batch that ends later than that after the last redraw,
    and a daemon thread redraws it every ``REFRESH_SECONDS`` while a long batch runs (its
    elapsed time moves even when a batch takes minutes; the thread touches only the bar).
    The loss and accuracy shown are those of the last read to the host (:meth:`update`,
    at each of ``fit``'s log points). The line fits ``MAX_COLUMNS`` columns, and :meth:`close`
    erases it before ``fit`` prints the epoch's line, so the two never share a line.

    Examples
    --------
    >>> import io
    >>> bar = ProgressBar(10, 0, 1, progress=True, start=4, file=io.StringIO())
    >>> bar.advance(5)
    >>> bar.position
    5
    >>> bar.close()
    """

    REFRESH_SECONDS = 0.5
    MAX_COLUMNS = 80
    FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"

    def __init__(self, total: int, epoch: int, epochs: int, progress: bool | None,
                 start: int = 0, *, file=None):
        self.position = start
        self.bar = None
        stream = sys.stdout if file is None else file
        if progress is False or (progress is None and not _is_terminal(stream)):
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        columns = min(shutil.get_terminal_size((self.MAX_COLUMNS, 24)).columns,
                      self.MAX_COLUMNS)
        self.bar = tqdm(total=total, initial=start, desc=f"epoch {epoch + 1}/{epochs}",
                        unit="batch", leave=False, file=stream, ncols=columns,
                        mininterval=self.REFRESH_SECONDS, miniters=1,
                        bar_format=self.FORMAT)
        self._closing = threading.Event()
        self._ticker = threading.Thread(target=self._tick, args=(self.bar,), daemon=True,
                                        name="xpnn-progress")
        self._ticker.start()

    def _tick(self, bar) -> None:
        """Redraw ``bar`` every ``REFRESH_SECONDS`` until :meth:`close`."""
        while not self._closing.wait(self.REFRESH_SECONDS):
            bar.refresh()

    def advance(self, done: int) -> None:
        """Move to ``done`` batches (called once per batch; host counter only)."""
        if self.bar is not None and done > self.position:
            self.bar.update(done - self.position)
        self.position = max(self.position, done)

    def update(self, done: int, sums, started: float) -> None:
        """Move to ``done`` batches and show the running (host) loss and accuracy."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {sums.loss:.4f} acc {sums.accuracy:.4f}",
                                     refresh=False)
        self.advance(done)

    def close(self) -> None:
        if self.bar is not None:
            self._closing.set()
            self._ticker.join(timeout=2 * self.REFRESH_SECONDS)
            self.bar.close()
            self.bar = None


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def print_epoch(record: dict, epochs: int) -> None:
    """One line of an epoch's metrics, e.g.
    ``epoch 2/5: train loss 0.1234 acc 0.9612 | test loss 0.1100 acc 0.9650 | 3.2 s``."""
    line = (f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f}")
    if "test_accuracy" in record:
        line += f" | test loss {record['test_loss']:.4f} acc {record['test_accuracy']:.4f}"
    print(line + f" | {record['seconds']:.1f} s")
