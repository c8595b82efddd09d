"""Command-line parsing: flags to targets and options, checked before any request."""

from __future__ import annotations

import argparse
import fnmatch
import os
import pathlib
from collections.abc import Sequence
from typing import Any

from .._version import __version__
from ..models import MAX_TARGETS_PER_TASK, Model, Target
from .options import (
    PROVIDERS,
    ArgumentsError,
    UsageError,
    _exclude,
    _include,
    _Parser,
    _size,
    add_s3_options,
    add_target_options,
    add_transport_arguments,
    connection_options,
    diagnostics_options,
)

__all__ = [
    "EXIT_ITEMS_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "PROVIDERS",
    "ArgumentsError",
    "UsageError",
    "add_cluster_commands",
    "add_s3_options",
    "add_target_options",
    "add_transport_arguments",
    "build_parser",
    "check_against_catalog",
    "check_inputs_exist",
    "check_out_dir",
    "connection_options",
    "diagnostics_options",
    "parse_targets",
    "selected",
    "targets_from_args",
]

EXIT_OK = 0
EXIT_ITEMS_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``audioshake-async``; its errors raise :class:`ArgumentsError`."""
    parser = _Parser(
        prog="audioshake-async",
        description="Drive the AudioShake API from the command line: bulk stem separation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    diagnostics, connection = diagnostics_options(), connection_options()

    run = commands.add_parser(
        "run",
        parents=[connection, diagnostics],
        help="process files, directories or URLs into stems on disk",
        description="Upload inputs, create one task per input with every requested model, "
        "wait, and download the outputs to OUT/<input name>/<output>.<format>.",
    )
    run.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="audio file, directory (recursive), https:// URL, s3://bucket/key, "
        "s3://bucket/prefix/ (every input under it), or - for paths on stdin",
    )
    add_target_options(run)
    run.add_argument(
        "-o",
        "--out",
        required=True,
        metavar="DIR",
        help="output directory, or s3://bucket/prefix (needs --journal)",
    )
    add_s3_options(run)
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
    run.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help="uploads at once (downloads: 2N; default: adaptive from 4, downloads 8)",
    )
    run.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        metavar="N",
        help="tasks waited on at once, at most (default: sized from Little's law, up to 20000)",
    )
    journal = run.add_mutually_exclusive_group()
    journal.add_argument(
        "--journal",
        metavar="PATH|POSTGRESQL_URL",
        help="resume journal (default OUT/.audioshake-journal.sqlite); a postgresql:// URL "
        "makes the run a batch other workers can join",
    )
    journal.add_argument(
        "--no-journal", action="store_true", help="do not keep a journal (a re-run starts over)"
    )
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="give items a failed earlier run recorded a new task (billed again)",
    )
    run.add_argument(
        "--include",
        dest="filters",
        action="append",
        type=_include,
        metavar="GLOB",
        help="keep inputs whose path or name matches GLOB (repeatable; see --exclude)",
    )
    run.add_argument(
        "--exclude",
        dest="filters",
        action="append",
        type=_exclude,
        metavar="GLOB",
        help="leave out inputs matching GLOB; filters apply in order, the last match wins, "
        "and when the first is --include an input matching none is left out",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="say what would be uploaded, created, resumed or skipped; no request but the "
        "catalog check (GET /models)",
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
    add_transport_arguments(run)
    download = run.add_argument_group("download bounds (against a misbehaving server)")
    download.add_argument(
        "--max-download-size",
        dest="max_bytes",
        type=_size,
        metavar="BYTES",
        help="refuse an output larger than this (suffixes K, M, G; default 4G)",
    )
    download.add_argument(
        "--speed-limit",
        dest="low_speed_limit",
        type=float,
        metavar="BPS",
        help="with --speed-time: slower than BPS bytes/s is a stalled download (default 1024)",
    )
    download.add_argument(
        "--speed-time",
        dest="low_speed_time",
        type=float,
        metavar="S",
        help="seconds below --speed-limit before a download attempt is retried (default 60)",
    )
    run.add_argument("--json", action="store_true", help="print one JSON summary at the end")
    run.add_argument("--quiet", action="store_true", help="no progress display")

    run.add_argument(
        "--batch", metavar="NAME", help="batch name with a postgresql:// --journal (default: OUT)"
    )

    add_cluster_commands(commands, diagnostics)

    models = commands.add_parser(
        "models",
        parents=[connection, diagnostics],
        help="list the models available to the account",
    )
    models.add_argument("--json", action="store_true", help="print the catalog as JSON")
    add_transport_arguments(models)

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


def _journal_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--journal", required=True, metavar="POSTGRESQL_URL", help="postgresql://user@host/db"
    )
    parser.add_argument("--batch", required=True, metavar="NAME", help="the batch's name")


def _service_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key", help="API key (default: the service's environment variable)")
    parser.add_argument("--base-url", help="API base URL (default: the service's)")
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=60.0,
        metavar="R",
        help="API requests/s at most, for all the workers of the account together (60)",
    )


def add_cluster_commands(commands: Any, diagnostics: argparse.ArgumentParser) -> None:
    """Add ``submit``, ``worker``, ``status`` and ``audit`` to the subcommands (each takes the
    ``diagnostics`` parent: ``-v/--verbose`` and ``--debug``)."""
    sub = commands.add_parser(
        "submit",
        parents=[diagnostics],
        help="register a batch and its inputs in a PostgreSQL journal (idempotent)",
        description="Register the batch NAME (models, formats, output directory) and its "
        "inputs; submitting again adds only new inputs. Workers then process it.",
    )
    sub.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="file, directory, https:// URL, s3://bucket/key or s3://bucket/prefix/",
    )
    _journal_options(sub)
    add_target_options(sub)
    sub.add_argument(
        "-o",
        "--out",
        required=True,
        metavar="DIR",
        help="output directory every worker reaches, or s3://bucket/prefix",
    )
    add_s3_options(sub)
    _service_options(sub)

    worker = commands.add_parser(
        "worker",
        parents=[diagnostics],
        help="claim and process a batch's items until none is left (run it N times)",
        description="Exit 0 when the batch has nothing left (1 if items failed, 3 if a lease "
        "was lost: restart it); SIGTERM stops it cleanly, its leases released.",
    )
    _journal_options(worker)
    _service_options(worker)
    worker.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help="uploads at once (downloads: 2N; default: adaptive from 4, downloads 8)",
    )
    worker.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        metavar="N",
        help="tasks waited on at once, at most (default: sized from Little's law, up to 20000)",
    )
    worker.add_argument(
        "--lease", type=float, default=120.0, metavar="S", help="claim lease seconds (120)"
    )
    worker.add_argument(
        "--request-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds an API call may take (60); POST /tasks is sent only with this much "
        "lease left, plus a margin",
    )
    worker.add_argument("--timeout", type=float, metavar="S", help="give up on a task after S")
    worker.add_argument(
        "--local-rate-limit",
        action="store_true",
        help="enforce --rate-limit in this process only (default: one budget shared by every "
        "worker of the account, kept in the journal's database)",
    )
    worker.add_argument("--json", action="store_true", help="print one JSON summary at the end")
    worker.add_argument("--quiet", action="store_true", help="no progress display")

    status = commands.add_parser(
        "status", parents=[diagnostics], help="a batch's counts, workers alive and failures"
    )
    _journal_options(status)
    status.add_argument("--json", action="store_true", help="print JSON")

    audit = commands.add_parser(
        "audit",
        parents=[diagnostics],
        help="list tasks of the account that share a client token (double billing)",
    )
    _journal_options(audit)
    _service_options(audit)


def targets_from_args(args: argparse.Namespace) -> list[Target]:
    """The targets the options ask for (``--provider``/``--api`` settled first)."""
    if args.api == "legacy":
        args.provider = "legacy"
    if args.provider == "musicai":
        if not args.workflow:
            raise UsageError("--provider musicai needs --workflow SLUG")
        return [Target(args.workflow, ("auto",))]
    if not args.model:
        raise UsageError("give at least one model with -m/--model")
    return parse_targets(args.model, args.format, residual=args.residual, language=args.language)


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


def selected(path: str, filters: Sequence[tuple[str, str]] | None) -> bool:
    """Whether ``--include``/``--exclude`` keep ``path`` (matched whole and by its name)."""
    if not filters:
        return True
    name = path.rstrip("/").rsplit("/", 1)[-1]
    keep = filters[0][0] != "include"
    for action, pattern in filters:
        if fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(name, pattern):
            keep = action == "include"
    return keep


def check_inputs_exist(inputs: Sequence[str]) -> None:
    """A named input that does not exist is a usage error (exit 2), as in aws-cli."""
    for value in inputs:
        if value == "-" or "://" in value:
            continue
        if not os.path.lexists(value):
            raise UsageError(f"input {value!r} does not exist")


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
