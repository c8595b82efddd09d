"""The download stage: each completed output streamed through the output seam into its sink.

The sink is a local directory (:class:`~audioshake_async.core.sink.DiskSink`) or a bucket
(:class:`~audioshake_async.storage.s3.S3Sink`); the stage neither knows nor cares which. An
output the journal recorded and the sink still holds whole is not fetched again.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Callable

import anyio

from ..core.files import safe_filename
from ..core.sink import DiskSink, OutputSink
from ..models import Task
from ..storage.s3 import S3Sink, S3Stores, is_s3_uri
from .events import BatchEvent, FileWritten, TargetDone
from .items import DownloadJob, Item
from .journal import OutputRecord
from .options import BatchOptions
from .seam import BatchProvider

logger = logging.getLogger("audioshake_async.batch")


def open_sink(out_dir: str | os.PathLike[str], stores: S3Stores) -> OutputSink:
    """The sink of ``out_dir``: an ``s3://bucket/prefix`` or a local directory."""
    text = os.fspath(out_dir)
    if is_s3_uri(text):
        return S3Sink(text, stores)
    return DiskSink(pathlib.Path(text))


class OutputStage:
    """Plans the downloads of completed targets and writes each output into the sink."""

    def __init__(
        self,
        provider: BatchProvider,
        sink: OutputSink,
        options: BatchOptions,
        emit: Callable[[BatchEvent], None],
    ) -> None:
        self.provider = provider
        self.sink = sink
        self.options = options
        self.emit = emit
        self.on_disk = isinstance(sink, DiskSink)

    def plan(self, item: Item, task: Task) -> list[DownloadJob]:
        """Download jobs for targets that completed since the last look."""
        jobs = []
        for target in task.targets:
            if target.is_terminal and target.id not in item.reported_targets:
                item.reported_targets.add(target.id)
                self.emit(TargetDone(item.display, task.id, target.id, target.model, target.status))
            if not target.is_completed:
                continue
            for output in target.output:
                key = (target.id, output.name, output.format)
                if key in item.dispatched:
                    continue
                item.dispatched.add(key)
                name = safe_filename(output.name, output.format)
                base, counter = safe_filename(output.name), 2
                while name.lower() in item.used_names:
                    name = safe_filename(f"{base}_{counter}", output.format)
                    counter += 1
                item.used_names.add(name.lower())
                item.pending_downloads += 1
                jobs.append(DownloadJob(item, output, name))
        return jobs

    def keep(self, item: Item, name: str) -> None:
        """Count ``name`` among the item's outputs (the file list and the locations)."""
        relative = f"{item.dirname}/{name}"
        if self.on_disk:
            item.files.append(item.directory / name)
        item.locations.append(self.sink.location(relative))

    async def all_present(self, item: Item) -> bool:
        """Every output the journal recorded is still whole in the sink (a resumed item)."""
        if not item.known_outputs:
            return False
        for name, output in item.known_outputs.items():
            if not await self.sink.present(f"{item.dirname}/{name}", output.size, output.sha256):
                return False
        return True

    async def download(self, job: DownloadJob) -> None:
        """Write one output unless an earlier run already wrote it completely."""
        item = job.item
        known = item.known_outputs.get(job.name)
        if known is not None and await self.sink.present(job.relative, known.size, known.sha256):
            self.keep(item, job.name)
            return
        assert item.task is not None
        writer = await self.sink.open(job.relative, checksum=self.options.checksum)
        try:
            done = await self.provider.fetch_output(item.task, job.output, writer)
        except BaseException:
            # Providers abort on their own failures; this covers one that failed before it.
            with anyio.CancelScope(shield=True):
                await writer.abort()
            raise
        record = OutputRecord(job.name, done.size, done.sha256)
        with anyio.CancelScope(shield=True):
            await item.journal.record_output(record)
        item.known_outputs[record.filename] = record
        self.keep(item, job.name)
        path = item.directory / job.name if self.on_disk else None
        self.emit(FileWritten(item.display, path, done.size, done.location))
