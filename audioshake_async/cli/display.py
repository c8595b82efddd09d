"""Progress of a run: counters from batch events, a live display per phase, plain lines.

:class:`ProgressTracker` turns batch events into counters; it knows nothing of the screen. On
a terminal :func:`live_display` draws one ``rich`` progress bar per phase (uploading,
processing, downloading) with counts, bytes, transfer speed, elapsed time and ETA, and prints
log records above the bars; elsewhere it prints one plain line every few seconds. Other
commands (or more counters, e.g. an adaptive in-flight window) add fields to the tracker and
a column to :func:`phase_rows` without touching the drawing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import TextIO, TypeVar

import attrs

from ..batch import (
    BatchEvent,
    BatchResult,
    FileWritten,
    ItemDone,
    ItemFailed,
    ItemQueued,
    ItemSkipped,
    TargetDone,
    TaskCreated,
    Uploaded,
    UploadProgress,
)

__all__ = [
    "PhaseRow",
    "ProgressTracker",
    "count_inputs",
    "counts_text",
    "live_display",
    "log_handler",
    "phase_rows",
]

T = TypeVar("T")

#: How far an item has come; an item past a phase counts as done in that phase's bar.
_UPLOADED, _PROCESSED, _FINISHED = 1, 2, 3
#: Seconds of history behind a transfer speed.
SPEED_WINDOW = 5.0


class _Rate:
    """Bytes per second over the last few seconds (a moving window, not the run average)."""

    def __init__(self) -> None:
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, total: int, now: float | None = None) -> None:
        moment = time.monotonic() if now is None else now
        self._samples.append((moment, total))
        while len(self._samples) > 2 and moment - self._samples[0][0] > SPEED_WINDOW:
            self._samples.popleft()

    def per_second(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None


@attrs.define
class ProgressTracker:
    """Counts batch events for the progress display and the summary.

    ``targets_per_item`` lets "processing" count an item once all its targets are terminal;
    ``inputs_known`` turns true when the inputs have all been read (the denominator is final).
    """

    targets_per_item: int = 1
    started: float = attrs.Factory(time.monotonic)
    queued: int = 0
    inputs_known: bool = False
    uploaded: int = 0
    bytes_sent: int = 0
    tasks: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    files: int = 0
    bytes_written: int = 0
    #: Items past each phase (skipped and failed items count as past every phase).
    past_upload: int = 0
    past_processing: int = 0
    _partial: dict[str, int] = attrs.Factory(dict)
    # Per unfinished input: how far it came and how many targets ended (bounded by the items
    # in flight, not the catalog).
    _stage: dict[str, int] = attrs.Factory(dict)
    _targets_done: dict[str, int] = attrs.Factory(dict)
    # Inputs whose task exists and that have not finished (at most max_in_flight of them).
    _waiting: set[str] = attrs.Factory(set)
    _upload_rate: _Rate = attrs.Factory(_Rate)
    _download_rate: _Rate = attrs.Factory(_Rate)

    def __call__(self, event: BatchEvent) -> None:
        if isinstance(event, ItemQueued):
            self.queued += 1
            self._stage[event.input] = 0
        elif isinstance(event, UploadProgress):
            self._partial[event.input] = event.sent
            self._upload_rate.add(self.bytes_uploading)
        elif isinstance(event, Uploaded):
            self.uploaded += 1
            self._partial.pop(event.input, None)
            if not event.reused:
                self.bytes_sent += event.size
            self._upload_rate.add(self.bytes_uploading)
            self._advance(event.input, _UPLOADED)
        elif isinstance(event, TaskCreated):
            self.tasks += 1
            self._waiting.add(event.input)
            self._advance(event.input, _UPLOADED)  # a resumed task skipped the upload
        elif isinstance(event, TargetDone):
            count = self._targets_done.get(event.input, 0) + 1
            self._targets_done[event.input] = count
            if count >= self.targets_per_item:
                self._advance(event.input, _PROCESSED)
        elif isinstance(event, FileWritten):
            self.files += 1
            self.bytes_written += event.size
            self._download_rate.add(self.bytes_written)
        elif isinstance(event, ItemSkipped):
            self.skipped += 1
            self._finish(event.input)
        elif isinstance(event, ItemFailed):
            self.failed += 1
            self._finish(event.input)
        elif isinstance(event, ItemDone):
            self._finish(event.input)

    def _advance(self, item: str, stage: int) -> None:
        current = self._stage.get(item)
        if current is None or current >= stage:
            return
        if current < _UPLOADED <= stage:
            self.past_upload += 1
        if current < _PROCESSED <= stage:
            self.past_processing += 1
        self._stage[item] = stage

    def _finish(self, item: str) -> None:
        self._advance(item, _FINISHED)
        self._stage.pop(item, None)
        self._targets_done.pop(item, None)
        self._partial.pop(item, None)
        self._waiting.discard(item)

    def record(self, result: BatchResult) -> None:
        """Count a finished item (done items are counted here, not from events)."""
        if result.status == "done":
            self.done += 1

    @property
    def finished(self) -> int:
        """Items that reached an end."""
        return self.done + self.skipped + self.failed

    @property
    def in_flight(self) -> int:
        """Tasks created and not yet finished."""
        return len(self._waiting)

    @property
    def bytes_uploading(self) -> int:
        """Bytes sent: finished uploads plus the attempts in progress."""
        return self.bytes_sent + sum(self._partial.values())

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def eta(self) -> float | None:
        """Seconds left at the item rate so far; None until it means something."""
        if not self.inputs_known or not self.finished or self.queued <= self.finished:
            return None
        rate = self.finished / max(self.elapsed, 1e-9)
        return (self.queued - self.finished) / rate

    def upload_speed(self) -> float | None:
        """Upload bytes per second over the last few seconds."""
        return self._upload_rate.per_second()

    def download_speed(self) -> float | None:
        """Download bytes per second over the last few seconds."""
        return self._download_rate.per_second()

    def counts(self) -> str:
        """The item counts, worded as the summary words them."""
        total = self.queued if self.inputs_known else f"{self.queued}+"
        return counts_text(self.finished, total, self.done, self.skipped, self.failed)

    def line(self) -> str:
        """One plain progress line (logs and pipes)."""
        eta = self.eta()
        return (
            f"[{self.elapsed:6.1f}s] {self.counts()}; {self.in_flight} tasks in flight; "
            f"uploaded {_size(self.bytes_uploading)}, wrote {self.files} files "
            f"({_size(self.bytes_written)})" + (f", ETA {eta:.0f}s" if eta is not None else "")
        )


def counts_text(finished: int, total: int | str, done: int, skipped: int, failed: int) -> str:
    """The one wording of item counts, shared by the display and the summary."""
    return f"{finished} of {total} items finished: {done} done, {skipped} skipped, {failed} failed"


@attrs.frozen
class PhaseRow:
    """One bar of the live display: ``completed`` of ``total`` items past the phase."""

    name: str
    completed: int
    total: int
    detail: str


def phase_rows(tracker: ProgressTracker) -> list[PhaseRow]:
    """The display's rows, computed from the tracker alone (tested without a terminal)."""
    total = max(tracker.queued, 1)
    up_speed, down_speed = tracker.upload_speed(), tracker.download_speed()
    return [
        PhaseRow(
            "uploading",
            tracker.past_upload,
            total,
            f"{_size(tracker.bytes_uploading)}" + (f" {_speed(up_speed)}" if up_speed else ""),
        ),
        PhaseRow(
            "processing",
            tracker.past_processing,
            total,
            f"{tracker.in_flight} tasks in flight",
        ),
        PhaseRow(
            "downloading",
            tracker.finished,
            total,
            f"{tracker.files} files {_size(tracker.bytes_written)}"
            + (f" {_speed(down_speed)}" if down_speed else ""),
        ),
    ]


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _speed(per_second: float) -> str:
    return f"{_size(int(per_second))}/s"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


async def count_inputs(inputs: AsyncIterable[T], tracker: ProgressTracker) -> AsyncIterator[T]:
    """Pass ``inputs`` through, telling the tracker when the last one was read."""
    async for value in inputs:
        yield value
    tracker.inputs_known = True


class _ConsoleHandler(logging.Handler):
    """Log records printed through the live display's console: above the bars, not through."""

    def __init__(self, emit_line: Callable[[str], None]) -> None:
        super().__init__()
        self._emit_line = emit_line

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._emit_line(self.format(record))
        except Exception:  # pragma: no cover - logging must never break the run
            self.handleError(record)


@contextlib.contextmanager
def _logs_to(handler: logging.Handler | None, target: logging.Handler) -> Iterator[None]:
    # The CLI's -v/--debug handler writes to the display while it is up, to stderr otherwise.
    if handler is None or not isinstance(handler, _Redirectable):
        yield
        return
    handler.target = target
    try:
        yield
    finally:
        handler.target = None


class _Redirectable(logging.Handler):
    """The CLI's log handler: plain stderr lines, or a live display's console while one is up."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.target: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.target is not None:
            self.target.emit(record)
            return
        try:
            print(self.format(record), file=self.stream, flush=True)
        except Exception:  # pragma: no cover - logging must never break the run
            self.handleError(record)


def log_handler(stream: TextIO) -> logging.Handler:
    """The handler ``-v``/``--debug`` install: follows the live display while it is drawn."""
    handler = _Redirectable(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    return handler


@contextlib.asynccontextmanager
async def live_display(
    tracker: ProgressTracker,
    *,
    quiet: bool,
    stream: TextIO,
    logs: logging.Handler | None = None,
    interval: float = 5.0,
) -> AsyncIterator[None]:
    """A live display per phase on a terminal, plain lines every ``interval`` s otherwise,
    nothing with ``quiet``. ``logs`` (from :func:`log_handler`) prints above the display."""
    if quiet:
        yield
        return
    if not stream.isatty():
        async with _plain_lines(tracker, stream, interval):
            yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn
    from rich.text import Text

    console = Console(file=stream, stderr=True)
    progress = Progress(
        TextColumn("{task.description:<11}"),
        BarColumn(bar_width=30),
        TextColumn("{task.fields[count]:>11}"),
        TextColumn("{task.fields[detail]}"),
        TextColumn("[dim]{task.fields[clock]}"),
        console=console,
        refresh_per_second=4,
        transient=False,
    )
    rows = {
        row.name: progress.add_task(row.name, total=row.total, count="", detail="", clock="")
        for row in phase_rows(tracker)
    }
    formatter = logs.formatter if logs is not None and logs.formatter else logging.Formatter()
    printer = _ConsoleHandler(lambda line: console.print(Text(line), highlight=False))
    printer.setFormatter(formatter)

    def draw() -> None:
        clock = f"elapsed {_clock(tracker.elapsed)} ETA {_clock(tracker.eta())}"
        for row in phase_rows(tracker):
            known = "" if tracker.inputs_known else "+"
            progress.update(
                rows[row.name],
                completed=row.completed,
                total=row.total,
                count=f"{row.completed}/{tracker.queued}{known}",
                detail=row.detail,
                clock=clock,
            )

    async def refresh() -> None:
        while True:
            draw()
            await asyncio.sleep(0.25)

    with progress, _logs_to(logs, printer):
        task = asyncio.ensure_future(refresh())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            draw()
    console.print(Text(tracker.counts()), highlight=False)


@contextlib.asynccontextmanager
async def _plain_lines(
    tracker: ProgressTracker, stream: TextIO, interval: float
) -> AsyncIterator[None]:
    async def lines() -> None:
        while True:
            await asyncio.sleep(interval)
            print(tracker.line(), file=stream, flush=True)

    task = asyncio.ensure_future(lines())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        print(tracker.line(), file=stream, flush=True)
