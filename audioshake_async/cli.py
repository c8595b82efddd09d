"""The ``audioshake-async`` command: argument parsing and progress display only.

All work is done by the batch engine; this module turns flags into a target list and options,
checks everything it can before the first upload (exit 2 with one clear line), shows progress,
and exits 0 when every item is done, 1 when some failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn, TextIO

import anyio
import attrs

from . import errors
from ._version import __version__
from .batch import (
    AudioShakeProvider,
    BatchEvent,
    BatchOptions,
    BatchProvider,
    BatchResult,
    FileWritten,
    ItemDone,
    ItemFailed,
    ItemQueued,
    ItemSkipped,
    TaskCreated,
    Uploaded,
    UploadProgress,
    expand_inputs,
    run_batch,
)
from .client import ENV_API_KEY, AudioShake
from .models import MAX_TARGETS_PER_TASK, Model, Target
from .webhooks import WebhookReceiver

__all__ = ["main"]

EXIT_OK = 0
EXIT_ITEMS_FAILED = 1
EXIT_USAGE = 2

PROVIDERS = ("audioshake", "legacy", "musicai")


class UsageError(Exception):
    """A problem with the command line or configuration (exit status 2)."""


class ArgumentsError(UsageError):
    """A command line argparse refused; ``prog`` is the (sub)command whose ``--help`` helps."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    # argparse's own error() prints the whole usage block to sys.stderr and exits; the CLI
    # wants one line on its own stream (and subparsers inherit this class from the parent).
    def error(self, message: str) -> NoReturn:
        raise ArgumentsError(message, self.prog)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``audioshake-async``; its errors raise :class:`ArgumentsError`."""
    parser = _Parser(
        prog="audioshake-async",
        description="Drive the AudioShake API from the command line: bulk stem separation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="process files, directories or URLs into stems on disk",
        description="Upload inputs, create one task per input with every requested model, "
        "wait, and download the outputs to OUT/<input name>/<output>.<format>.",
    )
    run.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="audio file, directory (recursive), https:// URL, or - for paths on stdin",
    )
    run.add_argument(
        "-m",
        "--model",
        action="append",
        metavar="MODEL[:VARIANT]",
        help="model to run (repeatable), e.g. vocals, instrumental:high_quality",
    )
    run.add_argument(
        "-f",
        "--format",
        action="append",
        metavar="FMT",
        help="output format (repeatable; default wav)",
    )
    run.add_argument("-o", "--out", required=True, metavar="DIR", help="output directory")
    run.add_argument(
        "--provider",
        choices=PROVIDERS,
        default="audioshake",
        help="service: audioshake (Tasks API, default), legacy (Jobs API), musicai",
    )
    run.add_argument(
        "--api",
        choices=("tasks", "legacy"),
        help="AudioShake API generation: tasks (default) or legacy (= --provider legacy)",
    )
    run.add_argument("--workflow", metavar="SLUG", help="Music.AI workflow (--provider musicai)")
    run.add_argument(
        "--webhook-listen",
        metavar="HOST:PORT",
        help="receive task deliveries on HOST:PORT; polling drops to a slow safety poll",
    )
    run.add_argument(
        "--webhook-url",
        metavar="PUBLIC_BASE_URL",
        help="public base URL that reaches --webhook-listen (registered for the run)",
    )
    run.add_argument(
        "--webhook-no-register",
        action="store_true",
        help="do not call POST /webhooks: print the URL to set in the dashboard instead",
    )
    run.add_argument("--residual", action="store_true", help="also produce <model>_residual")
    run.add_argument("--language", metavar="L", help="language for transcription/alignment")
    run.add_argument(
        "--concurrency",
        type=int,
        default=4,
        metavar="N",
        help="uploads at once (downloads: 2N; default 4)",
    )
    run.add_argument(
        "--max-in-flight",
        type=int,
        default=1000,
        metavar="N",
        help="tasks waited on at once (default 1000)",
    )
    journal = run.add_mutually_exclusive_group()
    journal.add_argument(
        "--journal", metavar="PATH", help="resume journal (default OUT/.audioshake-journal.sqlite)"
    )
    journal.add_argument(
        "--no-journal", action="store_true", help="do not keep a journal (a re-run starts over)"
    )
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="give items a failed earlier run recorded a new task (billed again)",
    )
    run.add_argument("--api-key", help=f"API key (default: ${ENV_API_KEY})")
    run.add_argument("--base-url", help="API base URL (default: $AUDIOSHAKE_BASE_URL or the API)")
    run.add_argument(
        "--emulator",
        action="store_true",
        help="start the embedded emulator and run against it (no key needed)",
    )
    run.add_argument(
        "--emulator-delay",
        type=float,
        default=0.5,
        metavar="S",
        help="emulated processing time per target (default 0.5)",
    )
    run.add_argument("--timeout", type=float, metavar="S", help="give up on a task after S seconds")
    run.add_argument(
        "--rate-limit",
        type=float,
        default=60.0,
        metavar="R",
        help="API requests per second at most (default 60, the account limit)",
    )
    run.add_argument("--json", action="store_true", help="print one JSON summary at the end")
    run.add_argument("--quiet", action="store_true", help="no progress display")

    models = commands.add_parser("models", help="list the models available to the account")
    models.add_argument("--api-key")
    models.add_argument("--base-url")
    models.add_argument("--emulator", action="store_true")

    commands.add_parser("emulator", help="run the local AudioShake emulator", add_help=False)

    migrate = commands.add_parser(
        "migrate",
        help="convert legacy Jobs API requests (JSON) into Tasks API requests",
        description="Read a JSON list of legacy POST /job bodies and print the equivalent "
        "POST /tasks bodies, grouped by asset, as JSON; notes (dropped fields, callbacks to "
        "register as webhooks, splits) go to stderr. Exit 1 if a job could not be converted.",
    )
    migrate.add_argument("file", metavar="FILE.json", help="legacy job requests (- for stdin)")
    return parser


def parse_targets(
    models: Sequence[str], formats: Sequence[str] | None, *, residual: bool, language: str | None
) -> list[Target]:
    """``-m vocals:high_quality -f wav -f mp3`` -> Target list, checked locally."""
    chosen_formats = tuple(dict.fromkeys(formats or ["wav"]))
    targets: list[Target] = []
    seen: set[tuple[str, str | None]] = set()
    for spec in models:
        model, _, variant = spec.partition(":")
        model = model.strip()
        if not model:
            raise UsageError(f"bad model {spec!r}: expected MODEL or MODEL:VARIANT")
        key = (model, variant or None)
        if key in seen:
            continue
        seen.add(key)
        targets.append(
            Target(
                model,
                chosen_formats,
                residual=True if residual else None,
                variant=variant or None,
                language=language,
            )
        )
    if len(targets) > MAX_TARGETS_PER_TASK:
        raise UsageError(
            f"{len(targets)} models requested: a task takes at most {MAX_TARGETS_PER_TASK} targets"
        )
    return targets


def check_against_catalog(targets: Sequence[Target], catalog: Sequence[Model]) -> None:
    """Unknown model, gated model, or a format the model cannot produce: a usage error."""
    by_id = {model.id: model for model in catalog}
    for target in targets:
        model = by_id.get(target.model)
        if model is None:
            known = ", ".join(sorted(by_id)) or "none"
            raise UsageError(f"unknown model {target.model!r} (available: {known})")
        if not model.enabled:
            raise UsageError(f"model {target.model!r} needs access: request it from AudioShake")
        if model.output_formats:
            bad = [f for f in target.formats if f not in model.output_formats]
            if bad:
                raise UsageError(
                    f"model {target.model!r} cannot output {', '.join(bad)} "
                    f"(it offers: {', '.join(model.output_formats)})"
                )


def check_out_dir(out: str) -> pathlib.Path:
    """Create the output directory if needed and make sure it is writable."""
    path = pathlib.Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output directory {out!r}: {exc.strerror}") from None
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"output directory {out!r} is not writable")
    return path


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
async def _display(tracker: ProgressTracker, *, quiet: bool, stream: TextIO) -> AsyncIterator[None]:
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


@contextlib.asynccontextmanager
async def _api(args: argparse.Namespace, delay: float = 0.5) -> AsyncIterator[tuple[str, str]]:
    """(base URL, key): the embedded emulator's, or the configured ones."""
    if args.emulator:
        try:
            from .emulator import Emulator
        except ImportError as exc:
            raise UsageError(
                f"the emulator needs extra packages: pip install "
                f"'audioshake-async[emulator]' ({exc})"
            ) from None
        async with Emulator(delay=delay) as emulator:
            yield emulator.base_url, emulator.api_key
        return
    key = args.api_key or os.environ.get(ENV_API_KEY)
    if not key:
        raise UsageError(f"no API key: set {ENV_API_KEY}, pass --api-key, or use --emulator")
    yield args.base_url or os.environ.get("AUDIOSHAKE_BASE_URL") or "", key


@contextlib.asynccontextmanager
async def _audioshake_provider(
    args: argparse.Namespace, targets: Sequence[Target]
) -> AsyncIterator[BatchProvider]:
    """The Tasks API (or its emulator), with the targets checked against ``GET /models``."""
    async with (
        _api(args, args.emulator_delay) as (base_url, key),
        AudioShake(key, base_url or None, rate_limit=args.rate_limit) as client,
    ):
        try:
            catalog = await client.models.list()
        except errors.AuthenticationError:
            raise UsageError("the API key was refused (401)") from None
        check_against_catalog(targets, catalog)
        yield AudioShakeProvider(client)


def _open_provider(
    args: argparse.Namespace, targets: Sequence[Target]
) -> contextlib.AbstractAsyncContextManager[BatchProvider]:
    """The batch provider named by ``--provider``/``--api``, checked before any upload.

    Each provider module offers ``open_cli_provider(args, targets)``: an async context
    manager yielding a ready :class:`BatchProvider` (raising UsageError on bad flags).
    """
    if args.provider == "legacy":
        from .legacy import open_cli_provider as open_legacy

        return open_legacy(args, targets)
    if args.provider == "musicai":
        from .musicai import open_cli_provider as open_musicai

        return open_musicai(args, targets)
    return _audioshake_provider(args, targets)


@contextlib.asynccontextmanager
async def _webhooks(
    args: argparse.Namespace, provider: BatchProvider, err: TextIO
) -> AsyncIterator[WebhookReceiver | None]:
    """With --webhook-listen: serve a receiver and register it for the run (removed after)."""
    if not args.webhook_listen:
        if args.webhook_url or args.webhook_no_register:
            raise UsageError("--webhook-url and --webhook-no-register need --webhook-listen")
        yield None
        return
    if not isinstance(provider, AudioShakeProvider):
        raise UsageError("webhooks are available with the Tasks API only")
    host, _, port_text = args.webhook_listen.rpartition(":")
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"--webhook-listen takes HOST:PORT, got {args.webhook_listen!r}")
    if not args.webhook_no_register and not args.webhook_url:
        raise UsageError("--webhook-listen needs --webhook-url (or --webhook-no-register)")
    receiver = WebhookReceiver()
    async with receiver.serve(host.strip("[]"), int(port_text)) as local_url:
        public = receiver.url_for(args.webhook_url or local_url)
        if args.webhook_no_register:
            print(
                f"set this webhook URL in the AudioShake dashboard (Settings > Webhook URL): "
                f"{public}",
                file=err,
            )
            yield receiver
            return
        hook = await provider.client.webhooks.register(public)
        try:
            yield receiver
        finally:
            # Removed on every exit, Ctrl-C included: a stale registration would keep
            # receiving deliveries for a receiver that is gone.
            with anyio.CancelScope(shield=True):
                try:
                    await provider.client.webhooks.delete(hook.id)
                except errors.AudioShakeError as exc:
                    print(f"audioshake-async: could not remove webhook {hook.id}: {exc}", file=err)


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
    records: list[tuple[str, str, str | None, tuple[str, ...], str | None]] = attrs.Factory(list)

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
            files = tuple(str(p) for p in result.files)
            self.records.append((result.input, result.status, task_id, files, error))

    def write_json(self, out: TextIO, requests: dict[str, int]) -> None:
        """The ``--json`` summary, byte for byte ``json.dumps(summary, indent=2)``."""
        head: dict[str, Any] = {
            "items": self.items,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "api_requests": dict(sorted(requests.items())),
            "results": [],
        }
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


async def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.api == "legacy":
        args.provider = "legacy"
    if args.provider == "musicai":
        if not args.workflow:
            raise UsageError("--provider musicai needs --workflow SLUG")
        targets = [Target(args.workflow, ("auto",))]
    else:
        if not args.model:
            raise UsageError("give at least one model with -m/--model")
        targets = parse_targets(
            args.model, args.format, residual=args.residual, language=args.language
        )
    if args.concurrency < 1 or args.max_in_flight < 1:
        raise UsageError("--concurrency and --max-in-flight must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    out_dir = check_out_dir(args.out)
    journal: str | None = None
    if not args.no_journal:
        journal = args.journal or str(out_dir / ".audioshake-journal.sqlite")
    options = BatchOptions(
        upload_concurrency=args.concurrency,
        download_concurrency=2 * args.concurrency,
        max_in_flight=args.max_in_flight,
        task_timeout=args.timeout,
        retry_failed=args.retry_failed,
    )
    tracker = ProgressTracker()
    summary = RunSummary(keep_records=args.json)
    unreadable: dict[str, str] = {}

    def on_unreadable(path: str, exc: OSError) -> None:
        # Called from a worker thread; a plain dict store is atomic under the GIL.
        unreadable[path] = f"cannot read directory: {exc.strerror or exc}"

    async with (
        _open_provider(args, targets) as provider,
        _webhooks(args, provider, err) as receiver,
    ):
        if receiver is not None:
            options = attrs.evolve(options, webhooks=receiver)
        inputs = expand_inputs(args.inputs, exclude=[out_dir], on_unreadable=on_unreadable)
        async with _display(tracker, quiet=args.quiet or args.json, stream=err):
            batch = run_batch(
                provider,
                inputs,
                targets=targets,
                out_dir=out_dir,
                journal=journal,
                progress=tracker,
                options=options,
            )
            async with contextlib.aclosing(batch):
                async for result in batch:
                    tracker.record(result)
                    # The engine only sees "not a regular file"; the walk knows why.
                    reason = unreadable.pop(result.input, None) if not result.ok else None
                    summary.add(result, error=reason)
        requests = provider.request_counts()
    # Failures go to stderr in both modes: with --json, stdout stays one JSON document.
    for item, error in summary.failures:
        print(f"FAILED {item}: {error}", file=err)
    if args.json:
        summary.write_json(out, requests)
    else:
        print(
            f"{summary.done + summary.skipped} of {summary.items} items done, "
            f"{summary.failed} failed; outputs in {out_dir}",
            file=out,
        )
    return EXIT_ITEMS_FAILED if summary.failed else EXIT_OK


def _migrate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``migrate FILE.json``: the Tasks API requests on stdout (JSON), the notes on stderr."""
    from .migrate import migrate_jobs

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


async def _models(args: argparse.Namespace, out: TextIO) -> int:
    async with _api(args) as (base_url, key), AudioShake(key, base_url or None) as client:
        catalog = await client.models.list()
    for model in catalog:
        access = "" if model.enabled else "  (request access)"
        formats = ",".join(model.output_formats)
        print(f"{model.id:24} {formats:32} {model.credits_per_minute or '-'}{access}", file=out)
    return EXIT_OK


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Entry point of ``audioshake-async``; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    out, err = stdout or sys.stdout, stderr or sys.stderr
    if arguments and arguments[0] == "emulator":
        from .emulator.cli import main as emulator_main

        status: int = emulator_main(arguments[1:])
        return status
    parser = build_parser()
    try:
        args = parser.parse_args(arguments)
    except ArgumentsError as exc:
        print(f"audioshake-async: error: {exc}", file=err)
        print(f"try '{exc.prog} --help'", file=err)
        return EXIT_USAGE
    if args.command is None:
        print("audioshake-async: error: give a command: run, models, emulator or migrate", file=err)
        print("try 'audioshake-async --help'", file=err)
        return EXIT_USAGE
    try:
        if args.command == "migrate":
            return _migrate(args, out, err)
        if args.command == "run":
            return asyncio.run(_run(args, out, err))
        return asyncio.run(_models(args, out))
    except UsageError as exc:
        print(f"audioshake-async: error: {exc}", file=err)
        return EXIT_USAGE
    except errors.ValidationError as exc:
        print(f"audioshake-async: error: {exc}", file=err)
        return EXIT_USAGE
    except errors.ConfigurationError as exc:
        print(f"audioshake-async: error: {exc}", file=err)
        return EXIT_USAGE
    except errors.AudioShakeError as exc:
        print(f"audioshake-async: {type(exc).__name__}: {exc}", file=err)
        return EXIT_ITEMS_FAILED
    except KeyboardInterrupt:
        print("audioshake-async: interrupted; re-run the same command to resume", file=err)
        return 130
