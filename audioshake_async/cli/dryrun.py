"""``run --dry-run``: what a run would do to each input, read from the journal; no billing.

The provider is opened as for a run (so a bad key, model or workflow fails the same way, with
the catalog check the only request), inputs are expanded and filtered, each is checked locally
(the provider's size and type rules) and looked up in the journal without writing to it.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import time
from collections.abc import Sequence
from typing import TextIO

import anyio
import anyio.to_thread

from .. import errors
from ..batch import SqliteJournal, expand_inputs
from ..batch.items import is_url
from ..batch.journal import ItemRecord, journal_key
from ..batch.seam import BatchProvider
from ..models import Target
from ..storage.s3 import is_s3_uri
from .parser import EXIT_OK, selected
from .providers import JOURNAL_NAME, open_provider

__all__ = ["dry_run", "plan_item"]


def plan_item(
    record: ItemRecord | None,
    *,
    size: int | None,
    mtime_ns: int | None,
    asset_max_age: float,
    retry_failed: bool,
    now: float,
) -> str:
    """The action a run would take for one input, given its journal record."""
    if record is None:
        return "upload+create"
    if size is not None and (record.size, record.mtime_ns) != (size, mtime_ns):
        return "upload+create (changed since the last run)"
    if record.status == "done":
        return "skip (done)"
    if record.task_id and not (retry_failed and record.status == "failed"):
        return f"resume task {record.task_id}"
    fresh = record.asset_uploaded_at is not None and now - record.asset_uploaded_at < asset_max_age
    if record.asset_id and fresh:
        return f"create (reusing asset {record.asset_id})"
    if record.token:
        return "look up the unanswered create by its token, then create"
    return "upload+create"


async def dry_run(args: argparse.Namespace, targets: Sequence[Target], out: TextIO) -> int:
    """Print one line per input (``ACTION  INPUT``) and the totals; exit 0."""
    journal_path: str | None = None
    if not args.no_journal:
        journal_path = args.journal or os.path.join(args.out, JOURNAL_NAME)
    async with open_provider(args, targets) as opened:
        provider = opened.provider
        key = journal_key(provider, provider.check_targets(targets))
        journal = None
        if journal_path is not None and await anyio.Path(journal_path).exists():
            journal = await anyio.to_thread.run_sync(SqliteJournal, journal_path)
        totals: collections.Counter[str] = collections.Counter()
        try:
            async for value in expand_inputs(
                args.inputs,
                exclude=[pathlib.Path(args.out)],
                extensions=provider.input_extensions,
            ):
                if not selected(value, args.filters):
                    totals["left out by filters"] += 1
                    continue
                action = await _plan(provider, journal, key, value, args.retry_failed)
                totals[action.split(" ", 1)[0]] += 1
                print(f"{action:50} {value}", file=out)
        finally:
            if journal is not None:
                await anyio.to_thread.run_sync(journal.close)
    summary = ", ".join(f"{count} {action}" for action, count in sorted(totals.items()))
    print(f"dry run, nothing sent: {summary or 'no inputs'}", file=out)
    return EXIT_OK


async def _plan(
    provider: BatchProvider,
    journal: SqliteJournal | None,
    key: str,
    value: str,
    retry_failed: bool,
) -> str:
    if is_s3_uri(value):
        # Never uploaded: the service reads it through a presigned URL (a prefix is listed
        # when the run starts; listing it here would be a request).
        return "create from s3 (presigned URL)"
    url = is_url(value)
    # The journal keys inputs by absolute path, as the pipeline does.
    source = value if url else os.path.abspath(value)  # noqa: ASYNC240 - string work only
    size = mtime_ns = None
    if not url:
        try:
            size = await provider.check_source(pathlib.Path(source))
            stat = await anyio.to_thread.run_sync(os.stat, source)
        except errors.AudioShakeError as exc:
            return f"fail ({exc})"
        except OSError as exc:
            return f"fail ({exc.strerror or exc})"
        mtime_ns = stat.st_mtime_ns
    record = None
    if journal is not None:
        record = await anyio.to_thread.run_sync(journal.lookup, source, key)
    lifetime = provider.source_lifetime
    return plan_item(
        record,
        size=size,
        mtime_ns=mtime_ns,
        asset_max_age=lifetime - min(7200.0, lifetime / 10),
        retry_failed=retry_failed,
        now=time.time(),
    )
