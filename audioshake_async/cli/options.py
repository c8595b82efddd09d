"""Option groups shared by the subcommands (service, diagnostics, targets, S3, transport
bounds) and the parser class whose errors are one line, not argparse's usage block."""

from __future__ import annotations

import argparse
from typing import NoReturn

from ..tasks import ENV_API_KEY

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


def diagnostics_options() -> _Parser:
    """``-v/--verbose`` and ``--debug``: a parent parser any subcommand can include."""
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("diagnostics")
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log retries, backoff waits, rate-limit pauses, link refreshes, token lookups",
    )
    group.add_argument(
        "--debug", action="store_true", help="also log every request (route, status, time)"
    )
    return parent


def connection_options() -> _Parser:
    """``--api-key``, ``--base-url``, ``--emulator``: shared by every command that calls a
    service (run, models, and commands added later)."""
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("service")
    group.add_argument("--api-key", help=f"API key (default: ${ENV_API_KEY})")
    group.add_argument("--base-url", help="API base URL (default: $AUDIOSHAKE_BASE_URL or the API)")
    group.add_argument(
        "--emulator",
        action="store_true",
        help="start the embedded emulator and run against it (no key needed)",
    )
    return parent


def _include(pattern: str) -> tuple[str, str]:
    return ("include", pattern)


def _exclude(pattern: str) -> tuple[str, str]:
    return ("exclude", pattern)


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
