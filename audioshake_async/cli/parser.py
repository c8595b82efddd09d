"""Command-line parsing: flags to targets and options, checked before any request."""

from __future__ import annotations

import argparse
import os
import pathlib
from collections.abc import Sequence
from typing import NoReturn

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
