"""Command-line parsing: flags to targets and options, checked before any request."""

from __future__ import annotations

import argparse
import os
import pathlib
from collections.abc import Sequence
from typing import Any, NoReturn

from .._version import __version__
from ..models import MAX_TARGETS_PER_TASK, Model, Target
from ..tasks import ENV_API_KEY

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


def add_target_options(parser: argparse.ArgumentParser) -> None:
    """The options that say what to make: models, formats, service (run and submit)."""
    parser.add_argument(
        "-m",
        "--model",
        action="append",
        metavar="MODEL[:VARIANT]",
        help="model to run (repeatable), e.g. vocals, instrumental:high_quality",
    )
    parser.add_argument(
        "-f",
        "--format",
        action="append",
        metavar="FMT",
        help="output format (repeatable; default wav)",
    )
    parser.add_argument(
        "--provider",
        choices=PROVIDERS,
        default="audioshake",
        help="service: audioshake (Tasks API, default), legacy (Jobs API), musicai",
    )
    parser.add_argument(
        "--api",
        choices=("tasks", "legacy"),
        help="AudioShake API generation: tasks (default) or legacy (= --provider legacy)",
    )
    parser.add_argument("--workflow", metavar="SLUG", help="Music.AI workflow (--provider musicai)")
    parser.add_argument("--residual", action="store_true", help="also produce <model>_residual")
    parser.add_argument("--language", metavar="L", help="language for transcription/alignment")


def add_s3_options(parser: argparse.ArgumentParser) -> None:
    """Where ``s3://`` inputs and outputs live, and how long a presigned input URL lasts."""
    parser.add_argument(
        "--s3-endpoint",
        metavar="URL",
        help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL or AWS); credentials from "
        "the standard AWS environment variables",
    )
    parser.add_argument(
        "--s3-url-lifetime",
        type=float,
        metavar="S",
        help="seconds a presigned s3:// input URL stays valid (default 43200: 12 h)",
    )


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

    add_cluster_commands(commands)

    models = commands.add_parser("models", help="list the models available to the account")
    models.add_argument("--api-key")
    models.add_argument("--base-url")
    models.add_argument("--emulator", action="store_true")
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


def add_cluster_commands(commands: Any) -> None:
    """Add ``submit``, ``worker``, ``status`` and ``audit`` to the subcommands."""
    sub = commands.add_parser(
        "submit",
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

    status = commands.add_parser("status", help="a batch's counts, workers alive and failures")
    _journal_options(status)
    status.add_argument("--json", action="store_true", help="print JSON")

    audit = commands.add_parser(
        "audit", help="list tasks of the account that share a client token (double billing)"
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


def add_transport_arguments(parser: argparse.ArgumentParser) -> None:
    """``--allow-insecure-http``: plain http to a remote host, for deliberate setups only."""
    parser.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow a plain http base URL on a remote host (the key then travels in clear text)",
    )


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(text: str) -> int:
    """``123``, ``64K``, ``500M``, ``8G`` (binary units) as bytes."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in _SIZE_UNITS else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500M, 8G)") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"a size must be positive, got {text!r}")
    return int(number * _SIZE_UNITS[unit])
