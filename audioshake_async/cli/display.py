"""Progress of a run on the terminal: counts from batch events, one live line."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TextIO

import attrs

from ..batch import (
    BatchEvent,
    BatchResult,
    FileWritten,
    ItemDone,
    ItemFailed,
    ItemQueued,
    ItemSkipped,
    TaskCreated,
    Uploaded,
    UploadProgress,
)


@attrs.define
class ProgressTracker:
    """Counts batch events for the progress display and the summary."""

    started: float = attrs.Factory(time.monotonic)
    queued: int = 0
    uploaded: int = 0
    bytes_sent: int = 0
    tasks: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    files: int = 0
    bytes_written: int = 0
    _partial: dict[str, int] = attrs.Factory(dict)
    # Inputs whose task exists and that have not finished (at most max_in_flight of them).
    _waiting: set[str] = attrs.Factory(set)

    def __call__(self, event: BatchEvent) -> None:
        if isinstance(event, ItemQueued):
            self.queued += 1
        elif isinstance(event, UploadProgress):
            self._partial[event.input] = event.sent
        elif isinstance(event, Uploaded):
            self.uploaded += 1
            self._partial.pop(event.input, None)
            if not event.reused:
                self.bytes_sent += event.size
        elif isinstance(event, TaskCreated):
            self.tasks += 1
            self._waiting.add(event.input)
        elif isinstance(event, FileWritten):
            self.files += 1
            self.bytes_written += event.size
        elif isinstance(event, ItemSkipped):
            self.skipped += 1
        elif isinstance(event, ItemFailed):
            self.failed += 1
            self._waiting.discard(event.input)
        elif isinstance(event, ItemDone):
            self._waiting.discard(event.input)

    def record(self, result: BatchResult) -> None:
        """Count a finished item (done items are counted here, not from events)."""
        if result.status == "done":
            self.done += 1

    @property
    def finished(self) -> int:
        """Items that reached an end."""
        return self.done + self.skipped + self.failed

    def line(self) -> str:
        """One plain progress line."""
        elapsed = time.monotonic() - self.started
        eta = ""
        if self.finished and self.queued > self.finished:
            rate = self.finished / max(elapsed, 1e-9)
            eta = f", ETA {(self.queued - self.finished) / rate:.0f}s"
        return (
            f"[{elapsed:6.1f}s] {self.finished}/{self.queued} items: {self.done} done, "
            f"{self.skipped} skipped, {self.failed} failed; {len(self._waiting)} tasks in "
            f"flight; uploaded {_size(self.bytes_sent + sum(self._partial.values()))}, "
            f"wrote {self.files} files ({_size(self.bytes_written)}){eta}"
        )


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


@contextlib.asynccontextmanager
async def live_display(
    tracker: ProgressTracker, *, quiet: bool, stream: TextIO
) -> AsyncIterator[None]:
    """A live display on a terminal, periodic plain lines otherwise, nothing with --quiet."""
    if quiet:
        yield
        return
    if stream.isatty():
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        with Live(
            Text(tracker.line()),
            console=Console(file=stream),
            refresh_per_second=4,
            transient=False,
        ) as live:

            async def refresh() -> None:
                while True:
                    live.update(Text(tracker.line()))
                    await asyncio.sleep(0.25)

            task = asyncio.ensure_future(refresh())
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                live.update(Text(tracker.line()))
        return

    async def lines() -> None:
        while True:
            await asyncio.sleep(5.0)
            print(tracker.line(), file=stream, flush=True)

    task = asyncio.ensure_future(lines())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        print(tracker.line(), file=stream, flush=True)
