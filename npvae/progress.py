"""Progress on long work: a live bar within a training epoch, and lines at every tenth of a long job."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Shows progress within an epoch: a live bar on a terminal, a few plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.live = self.stream.isatty() if live is None else live

    def batch(self, epoch: int, epochs: int, done: int, total: int, loss: float, elapsed: float) -> None:
        left = elapsed / done * (total - done)
        if self.live:
            width = 30
            filled = int(width * done / total)
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\repoch {epoch}/{epochs} [{bar}] {done}/{total} batches  loss {loss:8.3f}  "
                              f"{elapsed:5.1f} s, ~{left:4.0f} s left ")
            self.stream.flush()
        elif done * 4 // total > (done - 1) * 4 // total:      # a line at every quarter, the last at the end
            self.stream.write(f"  epoch {epoch}/{epochs}: {done}/{total} batches, loss {loss:.3f}, "
                              f"{elapsed:.1f} s, ~{left:.0f} s left\n")
            self.stream.flush()

    def epoch_end(self) -> None:
        if self.live:
            self.stream.write("\r\033[K")   # clear the bar: the epoch line replaces it
            self.stream.flush()


def progress_stream(progress: bool | TextIO | None) -> TextIO | None:
    """progress=True: stderr; False/None: silent; a stream: that stream."""
    if progress is True:
        return sys.stderr
    if not progress:
        return None
    return progress


class Ticker:
    """Writes a line at every ~10% of `total` units of work, with the elapsed time and an ETA."""

    def __init__(self, what: str, total: int, stream: TextIO | None, unit: str = "images") -> None:
        self.what, self.total, self.stream, self.unit = what, max(1, total), stream, unit
        self.start = time.perf_counter()
        self.next_tenth = 1

    def update(self, done: int, extra: str = "") -> None:
        if self.stream is None or done * 10 < self.next_tenth * self.total:
            return
        while done * 10 >= self.next_tenth * self.total:
            self.next_tenth += 1
        elapsed = time.perf_counter() - self.start
        left = elapsed / max(done, 1) * (self.total - done)
        self.stream.write(f"  {self.what}: {done:,}/{self.total:,} {self.unit} ({100 * done / self.total:3.0f}%), "
                          f"{elapsed:.1f} s, ~{left:.0f} s left{extra}\n")
        self.stream.flush()
