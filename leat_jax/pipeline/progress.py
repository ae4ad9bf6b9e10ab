"""A progress bar with images per second and ETA, on one terminal line.

On a terminal the line is redrawn in place; when the stream is a file or a
pipe (logs, CI), a plain line is printed every ``log_every`` seconds instead.
Messages (errors, warnings) go through ``message`` so they never tear the bar.
"""
from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Counts images done, skipped and failed out of ``total``."""

    def __init__(self, total: int, stream=None, quiet: bool = False, width: int = 28, log_every: float = 10.0):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.width = width
        self.log_every = log_every
        self.done = self.skipped = self.failed = 0
        self.start = time.monotonic()
        self._first_done: float | None = None
        self._last_draw = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._drawn = False

    def message(self, text: str) -> None:
        """A line of its own (errors are shown even when quiet)."""
        self._clear()
        print(text, file=self.stream, flush=True)
        self._draw(force=True)

    def note(self, text: str) -> None:
        """A line of its own that is progress, not an error (compilations, retries): none when quiet."""
        if not self.quiet:
            self.message(text)

    def update(self, done: int = 0, skipped: int = 0, failed: int = 0) -> None:
        self.done += done
        self.skipped += skipped
        self.failed += failed
        if done and self._first_done is None:
            # Rate from the first finished batch on: compilation is not throughput.
            self._first_done = time.monotonic()
            self._done_at_first = self.done
        self._draw()

    @property
    def finished(self) -> int:
        return self.done + self.skipped + self.failed

    def rate(self) -> float | None:
        if self._first_done is None:
            return None
        elapsed = time.monotonic() - self._first_done
        n = self.done - self._done_at_first
        # Too early to say: batches finishing together would show a silly rate.
        return n / elapsed if elapsed >= 1.0 and n > 0 else None

    def line(self) -> str:
        frac = self.finished / self.total if self.total else 1.0
        fill = int(round(frac * self.width))
        bar = "#" * fill + "." * (self.width - fill)
        rate = self.rate()
        left = self.total - self.finished
        speed = f"{rate:.2f} img/s" if rate else "-- img/s"
        eta = f"ETA {_duration(left / rate)}" if rate and left else ("" if not left else "ETA --")
        extra = "".join(
            f", {n} {what}" for n, what in ((self.skipped, "already done"), (self.failed, "failed")) if n
        )
        return (
            f"[{bar}] {self.finished}/{self.total}{extra}  {speed}  {eta}  "
            f"{_duration(time.monotonic() - self.start)}"
        )

    def _clear(self) -> None:
        if self._tty and self._drawn and not self.quiet:
            print("\r\033[K", end="", file=self.stream, flush=True)
            self._drawn = False

    def _draw(self, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if self._tty:
            if force or now - self._last_draw >= 0.2 or self.finished == self.total:
                print("\r\033[K" + self.line(), end="", file=self.stream, flush=True)
                self._drawn = True
                self._last_draw = now
        elif now - self._last_draw >= self.log_every or (self.finished == self.total and not force):
            print(self.line(), file=self.stream, flush=True)
            self._last_draw = now

    def close(self) -> None:
        if self._tty and self._drawn and not self.quiet:
            print(file=self.stream, flush=True)
            self._drawn = False
