"""``submit``, ``worker``, ``status`` and ``audit``: one batch on PostgreSQL, many workers.

``submit`` registers a batch (targets, output directory, service) and its inputs; ``worker``
claims and processes until nothing is left, and may run N times on N machines; ``status``
counts; ``audit`` lists tasks of the account that share a client token (the one residual risk).
``run --journal postgresql://...`` is submit + one worker in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import AsyncIterator
from typing import Any, TextIO

import anyio
import anyio.to_thread

from .. import errors
from .._convert import structure, unstructure
from ..batch import BatchEvent, BatchOptions, FlowUpdate, expand_inputs
from ..batch.cluster import submit, work
from ..batch.journal_pg import PostgresJournal, is_postgres_dsn
from ..batch.reconcile import token_of
from ..core.ratelimit_pg import PostgresRateLimiter
from ..legacy import DEFAULT_LEGACY_BASE_URL, ENV_LEGACY_BASE_URL, ENV_LEGACY_TOKEN
from ..models import Target
from ..musicai import DEFAULT_BASE_URL as MUSICAI_BASE_URL
from ..musicai import ENV_API_KEY as MUSICAI_API_KEY
from ..musicai import ENV_BASE_URL as MUSICAI_BASE_URL_ENV
from ..storage.s3 import S3Settings, S3Uri, is_s3_uri
from ..tasks import ENV_API_KEY, ENV_BASE_URL
from ..tasks.wire import DEFAULT_BASE_URL
from .display import ProgressTracker, live_display
from .parser import (
    EXIT_ITEMS_FAILED,
    EXIT_OK,
    UsageError,
    check_out_dir,
    selected,
    targets_from_args,
)
from .providers import open_provider, tasks_api

__all__ = ["EXIT_LEASE_LOST", "cluster_command", "run_on_postgres"]

#: Where each service's key and base URL come from (the shared budget is keyed by account).
_ACCOUNT_ENV = {
    "audioshake": (ENV_API_KEY, ENV_BASE_URL, DEFAULT_BASE_URL),
    "legacy": (ENV_LEGACY_TOKEN, ENV_LEGACY_BASE_URL, DEFAULT_LEGACY_BASE_URL),
    "musicai": (MUSICAI_API_KEY, MUSICAI_BASE_URL_ENV, MUSICAI_BASE_URL),
}

#: A worker stopped because one of its leases was taken over (restart it: it claims afresh).
EXIT_LEASE_LOST = 3
#: Stopped by SIGTERM (128 + 15): leases released, nothing lost; the batch goes on elsewhere.
EXIT_TERMINATED = 143


def _open_journal(args: argparse.Namespace, **kwargs: Any) -> PostgresJournal:
    if not is_postgres_dsn(args.journal):
        raise UsageError("--journal takes a postgresql:// URL here")
    return PostgresJournal(args.journal, args.batch, **kwargs)


def _service_namespace(args: argparse.Namespace, settings: dict[str, Any]) -> argparse.Namespace:
    """The options ``open_provider`` reads, from the command line and the stored batch."""
    return argparse.Namespace(
        provider=settings.get("provider", "audioshake"),
        workflow=settings.get("workflow"),
        api_key=args.api_key,
        base_url=args.base_url,
        rate_limit=args.rate_limit,
        request_timeout=getattr(args, "request_timeout", 60.0),
        emulator=False,
        emulator_delay=0.5,
        no_journal=True,
        journal=None,
        out=settings["out"],
    )


def _s3_of(settings: dict[str, Any]) -> S3Settings | None:
    """The batch's stored S3 settings (endpoint, URL lifetime), as every worker uses them."""
    stored = settings.get("s3")
    if not stored:
        return None
    try:
        return S3Settings(**stored)
    except (TypeError, errors.ValidationError) as exc:
        raise UsageError(f"the batch's stored S3 settings are not usable: {exc}") from None


async def _submit(args: argparse.Namespace, targets: list[Target], err: TextIO) -> int:
    s3: dict[str, Any] = {}
    if getattr(args, "s3_endpoint", None):
        s3["endpoint"] = args.s3_endpoint
    if getattr(args, "s3_url_lifetime", None):
        s3["url_lifetime"] = args.s3_url_lifetime
    exclude: list[Any] = []
    if is_s3_uri(args.out):
        try:
            S3Uri.parse(args.out)
        except errors.ValidationError as exc:
            raise UsageError(str(exc)) from None
        out = args.out
    else:
        out_dir = check_out_dir(args.out)
        out, exclude = str(out_dir.resolve()), [out_dir]
    settings: dict[str, Any] = {
        "provider": args.provider,
        "workflow": args.workflow,
        "out": out,
        "targets": [unstructure(t) for t in targets],
    }
    if s3:
        # Stored with the batch: every worker reaches the same store (credentials are not
        # stored; each worker takes them from its own AWS environment).
        settings["s3"] = s3
    s3_settings = _s3_of(settings)
    journal = await anyio.to_thread.run_sync(_open_journal, args)
    with contextlib.closing(journal):
        async with open_provider(_service_namespace(args, settings), targets) as opened:
            inputs = expand_inputs(
                args.inputs, exclude=exclude, extensions=opened.provider.input_extensions
            )
            filters = getattr(args, "filters", None)  # run's --include/--exclude
            if filters:
                inputs = (value async for value in inputs if selected(value, filters))
            added = await submit(
                journal, opened.provider, inputs, targets=targets, settings=settings, s3=s3_settings
            )
    print(f"batch {args.batch}: {added} new input(s) registered", file=err)
    return EXIT_OK


@contextlib.asynccontextmanager
async def _terminate_cancels() -> AsyncIterator[list[bool]]:
    """SIGTERM cancels the work like Ctrl-C would (docker, Kubernetes and systemd send it)."""
    task = asyncio.current_task()
    stopped: list[bool] = []
    loop = asyncio.get_running_loop()

    def on_term() -> None:
        stopped.append(True)
        if task is not None:
            task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_term)
    except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows, threads
        yield stopped
        return
    try:
        yield stopped
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _work(
    args: argparse.Namespace,
    journal: PostgresJournal,
    out: TextIO,
    err: TextIO,
    logs: logging.Handler | None,
) -> int:
    _, settings = await anyio.to_thread.run_sync(journal.batch_settings)
    targets = [structure(t, Target) for t in settings["targets"]]
    if (args.concurrency is not None and args.concurrency < 1) or (
        args.max_in_flight is not None and args.max_in_flight < 1
    ):
        raise UsageError("--concurrency and --max-in-flight must be at least 1")
    options = BatchOptions(
        s3=_s3_of(settings),
        upload_concurrency=args.concurrency,
        download_concurrency=8 if args.concurrency is None else 2 * args.concurrency,
        max_in_flight=args.max_in_flight,
        task_timeout=args.timeout,
    )
    namespace = _service_namespace(args, settings)
    async with _shared_budget(args, namespace) as limiter:
        if limiter is not None:
            namespace.rate_limit = limiter
        return await _work_with(args, journal, namespace, targets, options, out, err, logs)


@contextlib.asynccontextmanager
async def _shared_budget(
    args: argparse.Namespace, namespace: argparse.Namespace
) -> AsyncIterator[PostgresRateLimiter | None]:
    """The account's one rate budget in the journal's database (unless --local-rate-limit)."""
    if getattr(args, "local_rate_limit", False) or not args.rate_limit:
        yield None
        return
    key_env, url_env, default_url = _ACCOUNT_ENV[namespace.provider]
    key = namespace.api_key or os.environ.get(key_env) or ""
    base_url = namespace.base_url or os.environ.get(url_env) or default_url
    if not key:
        yield None  # open_provider explains the missing key next
        return
    async with PostgresRateLimiter(
        args.journal, rate=args.rate_limit, api_key=key, base_url=base_url
    ) as limiter:
        yield limiter


async def _work_with(
    args: argparse.Namespace,
    journal: PostgresJournal,
    namespace: argparse.Namespace,
    targets: list[Target],
    options: BatchOptions,
    out: TextIO,
    err: TextIO,
    logs: logging.Handler | None,
) -> int:
    tracker = ProgressTracker(targets_per_item=len(targets))
    done = failed = 0
    failures: list[tuple[str, str | None]] = []
    status = EXIT_OK
    flows: list[FlowUpdate] = []  # the engine's latest budget figures, for the summary

    def on_event(event: BatchEvent) -> None:
        if isinstance(event, FlowUpdate):
            flows[:] = [event]
        tracker(event)

    async with (
        open_provider(namespace, targets) as opened,
        live_display(tracker, quiet=args.quiet or args.json, stream=err, logs=logs),
    ):
        try:
            async with contextlib.aclosing(
                work(
                    opened.provider,
                    journal,
                    out_dir=namespace.out,
                    targets=targets,
                    progress=on_event,
                    options=options,
                )
            ) as results:
                async for result in results:
                    tracker.record(result)
                    if result.ok:
                        done += 1
                    else:
                        failed += 1
                        failures.append((result.input, result.error))
        except errors.LeaseLostError as exc:
            print(f"audioshake-async: {exc}", file=err)
            status = EXIT_LEASE_LOST
        requests = opened.provider.request_counts()
    for item, error in failures:
        print(f"FAILED {item}: {error}", file=err)
    if args.json:
        summary = {
            "batch": args.batch,
            "worker": journal.owner,
            "done": done,
            "failed": failed,
            "api_requests": dict(sorted(requests.items())),
            "journal_round_trips": journal.round_trips,
            "rate_budget_round_trips": getattr(namespace.rate_limit, "round_trips", 0),
        }
        if flows:
            summary["flow"] = flows[0].to_json()
        print(json.dumps(summary, indent=2), file=out)
    else:
        print(f"worker {journal.owner}: {done} done, {failed} failed", file=out)
    if status != EXIT_OK:
        return status
    return EXIT_ITEMS_FAILED if failed else EXIT_OK


async def _worker(
    args: argparse.Namespace, out: TextIO, err: TextIO, logs: logging.Handler | None = None
) -> int:
    margin = max(1.0, min(15.0, args.request_timeout / 2))
    window = args.request_timeout + margin
    if args.request_timeout <= 0 or args.lease <= window:
        raise UsageError(
            f"--lease must exceed --request-timeout plus a margin ({window:g} s here): a "
            "worker sends POST /tasks only while its lease covers the whole request"
        )
    journal = await anyio.to_thread.run_sync(
        lambda: _open_journal(args, lease=args.lease, create_window=window)
    )
    with contextlib.closing(journal):
        async with _terminate_cancels() as stopped:
            try:
                return await _work(args, journal, out, err, logs)
            except asyncio.CancelledError:
                if not stopped:
                    raise
        # work() released the leases on its way out.
        print("audioshake-async: stopped by SIGTERM; leases released", file=err)
        return EXIT_TERMINATED


async def _status(args: argparse.Namespace, out: TextIO) -> int:
    journal = await anyio.to_thread.run_sync(_open_journal, args)
    with contextlib.closing(journal):
        report = await anyio.to_thread.run_sync(journal.status)
    if args.json:
        print(json.dumps(report.to_json(), indent=2), file=out)
        return EXIT_OK
    counts = ", ".join(f"{n} {state}" for state, n in sorted(report.counts.items())) or "empty"
    print(f"batch {report.name}: {counts}; {report.open} open, {report.leased} leased", file=out)
    for worker in report.workers:
        print(
            f"  worker {worker['id']} (pid {worker['pid']} on {worker['host']}), "
            f"seen {worker['seen_seconds_ago']} s ago",
            file=out,
        )
    for source, error in report.failures:
        print(f"  FAILED {source}: {error}", file=out)
    return EXIT_OK


async def _audit(args: argparse.Namespace, out: TextIO) -> int:
    """Tasks of the account sharing a token, and journal items that recorded two tasks."""
    journal = await anyio.to_thread.run_sync(_open_journal, args)
    with contextlib.closing(journal):
        in_journal = await anyio.to_thread.run_sync(journal.shared_tokens)
    namespace = argparse.Namespace(
        api_key=args.api_key, base_url=args.base_url, emulator=False, rate_limit=args.rate_limit
    )
    by_token: dict[str, list[str]] = {}
    async with tasks_api(namespace, rate_limit=args.rate_limit) as client:
        async for task in client.tasks.list():
            token = token_of(task)
            if token:
                by_token.setdefault(token, []).append(task.id)
    shared = {token: ids for token, ids in by_token.items() if len(ids) > 1}
    for token, ids in sorted(shared.items()):
        print(f"token {token}: {len(ids)} tasks: {', '.join(ids)}", file=out)
    for token, ids in in_journal:
        print(f"journal token {token}: tasks {', '.join(ids)}", file=out)
    print(f"{len(by_token)} tokens seen, {len(shared)} shared by several tasks", file=out)
    return EXIT_ITEMS_FAILED if shared or in_journal else EXIT_OK


async def cluster_command(
    args: argparse.Namespace, out: TextIO, err: TextIO, logs: logging.Handler | None = None
) -> int:
    """Dispatch ``submit``, ``worker``, ``status`` and ``audit`` (``logs``: the -v/--debug
    handler, printed above the worker's live display)."""
    if args.command == "submit":
        return await _submit(args, targets_from_args(args), err)
    if args.command == "worker":
        return await _worker(args, out, err, logs)
    if args.command == "status":
        return await _status(args, out)
    return await _audit(args, out)


async def run_on_postgres(
    args: argparse.Namespace,
    targets: list[Target],
    out: TextIO,
    err: TextIO,
    logs: logging.Handler | None = None,
) -> int:
    """``run --journal postgresql://...``: submit, then work as one worker, in one process."""
    # Pure string work on the given path: no blocking call.
    out_path = args.out if is_s3_uri(args.out) else os.path.abspath(args.out)  # noqa: ASYNC240
    args.batch = getattr(args, "batch", None) or f"run:{out_path}"
    await _submit(args, targets, err)
    args.lease, args.request_timeout = 120.0, 60.0
    return await _worker(args, out, err, logs)
