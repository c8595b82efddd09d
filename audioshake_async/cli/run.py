"""The ``run``, ``models`` and ``migrate`` commands."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import pathlib
import sys
from collections.abc import AsyncIterator
from typing import Any, TextIO

import anyio.to_thread
import attrs

from .. import errors
from ..batch import (
    BatchEvent,
    BatchOptions,
    BatchResult,
    FlowUpdate,
    SqliteJournal,
    expand_inputs,
    run_batch,
)
from ..batch.journal_pg import is_postgres_dsn
from ..storage.s3 import S3Settings, S3Uri, is_s3_uri
from .display import ProgressTracker, count_inputs, counts_text, live_display
from .parser import (
    EXIT_ITEMS_FAILED,
    EXIT_OK,
    UsageError,
    check_inputs_exist,
    check_out_dir,
    selected,
    targets_from_args,
)
from .providers import JOURNAL_NAME, open_provider, serve_webhooks, tasks_api


@attrs.define
class RunSummary:
    """What the end of ``run`` prints, kept without holding every :class:`BatchResult`.

    Counters and the failed inputs (for the FAILED listing) always; with ``keep_records``
    (``--json``) also one compact tuple per item, for ``results``.
    """

    keep_records: bool
    items: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[tuple[str, str | None]] = attrs.Factory(list)
    #: The engine's last budget figures (window, processing time, shares).
    flow: FlowUpdate | None = None
    records: list[tuple[str, str, str | None, tuple[str, ...], str | None]] = attrs.Factory(list)
    #: Why the batch stopped before its end (the journal failed), if it did.
    stopped: str | None = None

    def add(self, result: BatchResult, *, error: str | None = None) -> None:
        """Count one finished item; ``error`` overrides the result's own."""
        error = error or result.error
        self.items += 1
        if result.status == "done":
            self.done += 1
        elif result.status == "skipped":
            self.skipped += 1
        if not result.ok:
            self.failed += 1
            self.failures.append((result.input, error))
        if self.keep_records:
            task_id = result.task.id if result.task else None
            files = result.locations or tuple(str(p) for p in result.files)
            self.records.append((result.input, result.status, task_id, files, error))

    def counts(self) -> str:
        """``3 of 3 items finished: 0 done, 3 skipped, 0 failed`` (as the display says it)."""
        return counts_text(self.items, self.items, self.done, self.skipped, self.failed)

    def observe(self, event: BatchEvent) -> None:
        """Keep the latest :class:`FlowUpdate` for the summary."""
        if isinstance(event, FlowUpdate):
            self.flow = event

    def flow_line(self) -> str | None:
        """One line of budget figures for the text summary."""
        flow = self.flow
        if flow is None:
            return None
        seconds = "-" if flow.processing_time is None else f"{flow.processing_time:.1f} s"
        return (
            f"window {flow.window} (peak {flow.peak_window}, {flow.peak_in_flight} in flight), "
            f"time in flight {seconds}; budget: creates {flow.share(flow.create_requests):.0%}, "
            f"uploads {flow.share(flow.upload_requests):.0%}, "
            f"polling {flow.share(flow.poll_requests):.0%} of {flow.rate:g}/s"
            + (f" (its share: {flow.workers} workers on one budget)" if flow.workers > 1 else "")
        )

    def write_json(self, out: TextIO, requests: dict[str, int]) -> None:
        """The ``--json`` summary, byte for byte ``json.dumps(summary, indent=2)``."""
        head: dict[str, Any] = {
            "items": self.items,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "api_requests": dict(sorted(requests.items())),
        }
        if self.stopped is not None:
            head = {"stopped": self.stopped, **head}
        if self.flow is not None:
            head["flow"] = self.flow.to_json()
        head["results"] = []
        text = json.dumps(head, indent=2)
        if not self.records:
            print(text, file=out)
            return
        # Each record is encoded on its own as it is written: no second copy of them all.
        out.write(text[: -len("[]\n}")] + "[\n")
        for index, (item, status, task_id, files, error) in enumerate(self.records):
            record = {
                "input": item,
                "status": status,
                "task_id": task_id,
                "files": list(files),
                "error": error,
            }
            encoded = json.dumps(record, indent=2).replace("\n", "\n    ")
            out.write(("    " if index == 0 else ",\n    ") + encoded)
        out.write("\n  ]\n}\n")


async def _filtered(
    inputs: AsyncIterator[str], filters: list[tuple[str, str]] | None, excluded: list[int]
) -> AsyncIterator[str]:
    async for value in inputs:
        if selected(value, filters):
            yield value
        else:
            excluded[0] += 1


@contextlib.asynccontextmanager
async def open_journal(path: str | None) -> AsyncIterator[SqliteJournal | None]:
    """The run's journal (None: the engine keeps a throw-away one), locked for the whole run.

    Opened before the provider: a journal in use by another run is refused (JournalBusyError,
    exit 2) before any request.
    """
    if path is None:
        yield None
        return
    journal = await anyio.to_thread.run_sync(SqliteJournal, path)
    try:
        yield journal
    finally:
        await anyio.to_thread.run_sync(journal.close)


async def run_command(
    args: argparse.Namespace, out: TextIO, err: TextIO, logs: logging.Handler | None = None
) -> int:
    """``run INPUT...``: the batch, its progress on stderr, the summary on stdout."""
    targets = targets_from_args(args)
    if is_postgres_dsn(args.journal):
        if args.dry_run:
            raise UsageError(
                "--dry-run reads a local journal; see a postgresql:// batch with status"
            )
        from .cluster import run_on_postgres

        check_inputs_exist(args.inputs)
        return await run_on_postgres(args, targets, out, err, logs)
    if (args.concurrency is not None and args.concurrency < 1) or (
        args.max_in_flight is not None and args.max_in_flight < 1
    ):
        raise UsageError("--concurrency and --max-in-flight must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    out_dir: str | pathlib.Path
    s3 = s3_settings(args)
    if is_s3_uri(args.out):
        try:
            S3Uri.parse(args.out)
        except errors.ValidationError as exc:
            raise UsageError(str(exc)) from None
        if not (args.journal or args.no_journal or args.dry_run):
            raise UsageError(
                "with -o s3://..., give --journal PATH (a local file: resume and no double "
                "billing depend on it) or --no-journal"
            )
        out_dir = args.out
    elif args.dry_run:
        out_dir = pathlib.Path(args.out)
    else:
        out_dir = check_out_dir(args.out)
    # After the flags: a bad flag is named first, whatever the inputs.
    check_inputs_exist(args.inputs)
    if args.dry_run:
        from .dryrun import dry_run

        return await dry_run(args, targets, out)
    journal: str | None = None
    if not args.no_journal:
        journal = args.journal or str(pathlib.Path(out_dir) / JOURNAL_NAME)
    options = BatchOptions(
        s3=s3,
        upload_concurrency=args.concurrency,
        download_concurrency=8 if args.concurrency is None else 2 * args.concurrency,
        max_in_flight=args.max_in_flight,
        task_timeout=args.timeout,
        retry_failed=args.retry_failed,
    )
    tracker = ProgressTracker(targets_per_item=len(targets))
    summary = RunSummary(keep_records=args.json)
    unreadable: dict[str, str] = {}

    def on_event(event: BatchEvent) -> None:
        summary.observe(event)
        tracker(event)

    def on_unreadable(path: str, exc: OSError) -> None:
        # Called from a worker thread; a plain dict store is atomic under the GIL.
        unreadable[path] = f"cannot read directory: {exc.strerror or exc}"

    async with (
        open_journal(journal) as store,
        open_provider(args, targets) as opened,
        serve_webhooks(args, opened.webhooks, err) as receiver,
    ):
        if receiver is not None:
            options = attrs.evolve(options, webhooks=receiver)
        excluded = [0]
        inputs = count_inputs(
            _filtered(
                expand_inputs(
                    args.inputs,
                    exclude=[] if isinstance(out_dir, str) else [out_dir],
                    on_unreadable=on_unreadable,
                    extensions=opened.provider.input_extensions,
                ),
                args.filters,
                excluded,
            ),
            tracker,
        )
        async with live_display(tracker, quiet=args.quiet or args.json, stream=err, logs=logs):
            batch = run_batch(
                opened.provider,
                inputs,
                targets=targets,
                out_dir=out_dir,
                journal=store,
                progress=on_event,
                options=options,
            )
            async with contextlib.aclosing(batch):
                try:
                    async for result in batch:
                        tracker.record(result)
                        # The engine only sees "not a regular file"; the walk knows why.
                        reason = unreadable.pop(result.input, None) if not result.ok else None
                        summary.add(result, error=reason)
                except errors.JournalError as exc:
                    # A clean stop (a full disk): every item in flight was reported failed.
                    summary.stopped = str(exc)
        requests = opened.provider.request_counts()
    # Failures go to stderr in both modes: with --json, stdout stays one JSON document.
    for item, error in summary.failures:
        print(f"FAILED {item}: {error}", file=err)
    flow_line = summary.flow_line()
    if flow_line is not None and not args.quiet and not args.json:
        print(flow_line, file=err)
    if summary.stopped is not None:
        print(f"STOPPED: {summary.stopped}; re-run the same command to resume", file=err)
    if excluded[0]:
        print(f"{excluded[0]} inputs left out by --include/--exclude", file=err)
    if args.json:
        summary.write_json(out, requests)
    else:
        # Worded as the progress display words it: the two never disagree.
        print(f"{summary.counts()}; outputs in {out_dir}", file=out)
    return EXIT_ITEMS_FAILED if summary.failed or summary.stopped else EXIT_OK


def s3_settings(args: argparse.Namespace) -> S3Settings | None:
    """The S3 settings the flags ask for (None: the AWS environment's defaults)."""
    if args.s3_endpoint is None and args.s3_url_lifetime is None:
        return None
    try:
        return S3Settings(
            endpoint=args.s3_endpoint,
            **({"url_lifetime": args.s3_url_lifetime} if args.s3_url_lifetime else {}),
        )
    except errors.ValidationError as exc:
        raise UsageError(str(exc)) from None


def migrate_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``migrate FILE.json``: the Tasks API requests on stdout (JSON), the notes on stderr."""
    from ..legacy import migrate_jobs

    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            text = pathlib.Path(args.file).read_text(encoding="utf-8")
        data = json.loads(text)
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"{args.file} is not JSON: {exc}") from None
    result = migrate_jobs(data)
    print(json.dumps(result.to_json(), indent=2), file=out)
    for note in result.notes:
        print(note, file=err)
    return EXIT_OK if result.ok else EXIT_ITEMS_FAILED


async def models_command(args: argparse.Namespace, out: TextIO) -> int:
    """``models``: the models of the account, with formats and prices (``--json``: as JSON)."""
    async with tasks_api(args) as client:
        catalog = await client.models.list()
    if args.json:
        rows = [
            {
                "id": model.id,
                "name": model.name,
                "enabled": model.enabled,
                "output_formats": list(model.output_formats),
                "credits_per_minute": model.credits_per_minute,
            }
            for model in catalog
        ]
        print(json.dumps(rows, indent=2), file=out)
        return EXIT_OK
    for model in catalog:
        access = "" if model.enabled else "  (request access)"
        formats = ",".join(model.output_formats)
        print(f"{model.id:24} {formats:32} {model.credits_per_minute or '-'}{access}", file=out)
    return EXIT_OK
