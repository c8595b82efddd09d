"""The ``audioshake-async`` entry point: dispatch, exit statuses, one-line errors."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TextIO

from .. import errors
from ..core.logs import logging_to
from .display import log_handler
from .parser import EXIT_ITEMS_FAILED, EXIT_USAGE, ArgumentsError, UsageError, build_parser
from .run import migrate_command, models_command, run_command

#: Exit status after SIGTERM (128 + 15, what a shell reports for a process it terminated).
EXIT_TERMINATED = 128 + signal.SIGTERM
EXIT_INTERRUPTED = 128 + signal.SIGINT


class Terminated(Exception):
    """SIGTERM arrived; the command was cancelled and cleaned up like after Ctrl-C."""


async def _terminable(command: Coroutine[Any, Any, int]) -> int:
    """Run ``command`` with SIGTERM cancelling it the way Ctrl-C does.

    docker, Kubernetes and systemd stop a process with SIGTERM: without this the process dies
    at once, leaving its webhook registered and its part files behind. Cancelling the task runs
    every ``finally`` (the webhook is deleted, the journal closed) before the exit.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    received: list[int] = []

    def on_sigterm() -> None:
        received.append(signal.SIGTERM)
        if task is not None:
            task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        installed = True
    except (NotImplementedError, RuntimeError, ValueError):
        # Windows' loops, or not the main thread: SIGTERM keeps its default action.
        installed = False
    try:
        return await command
    except asyncio.CancelledError:
        if received:
            raise Terminated() from None
        raise
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGTERM)


def _level(args: argparse.Namespace) -> int | None:
    """``-v`` (info) or ``--debug`` (every request); None for neither."""
    if getattr(args, "debug", False):
        return logging.DEBUG
    if getattr(args, "verbose", False):
        return logging.INFO
    return None


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Entry point of ``audioshake-async``; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    out, err = stdout or sys.stdout, stderr or sys.stderr
    if arguments and arguments[0] == "emulator":
        from ..emulator.cli import main as emulator_main

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
        print(
            "audioshake-async: error: give a command: run, submit, worker, status, audit, "
            "models, emulator or migrate",
            file=err,
        )
        print("try 'audioshake-async --help'", file=err)
        return EXIT_USAGE
    level = _level(args)
    if level is None:
        return _dispatch(args, out, err, None)
    # Records go to stderr (above the live display) for this command only.
    with logging_to(log_handler(err), level) as logs:
        return _dispatch(args, out, err, logs)


def _dispatch(
    args: argparse.Namespace, out: TextIO, err: TextIO, logs: logging.Handler | None
) -> int:
    try:
        if args.command == "migrate":
            return migrate_command(args, out, err)
        if args.command == "run":
            return asyncio.run(_terminable(run_command(args, out, err, logs)))
        if args.command in ("submit", "worker", "status", "audit"):
            from .cluster import cluster_command

            return asyncio.run(cluster_command(args, out, err, logs))
        return asyncio.run(_terminable(models_command(args, out)))
    except UsageError as exc:
        print(f"audioshake-async: error: {exc}", file=err)
        return EXIT_USAGE
    except errors.ValidationError as exc:
        print(f"audioshake-async: error: {exc}", file=err)
        return EXIT_USAGE
    except errors.ConfigurationError as exc:
        print(f"audioshake-async: error: {exc}", file=err)
        return EXIT_USAGE
    except errors.JournalBusyError as exc:
        # Another run holds the journal: running beside it could bill the same work twice.
        print(f"audioshake-async: error: {exc}", file=err)
        return EXIT_USAGE
    except errors.AudioShakeError as exc:
        print(f"audioshake-async: {type(exc).__name__}: {exc}", file=err)
        return EXIT_ITEMS_FAILED
    except KeyboardInterrupt:
        print("audioshake-async: interrupted; re-run the same command to resume", file=err)
        return EXIT_INTERRUPTED
    except Terminated:
        print("audioshake-async: terminated; re-run the same command to resume", file=err)
        return EXIT_TERMINATED


def entry() -> None:
    """The console script and ``python -m audioshake_async``: run :func:`main`, then exit."""
    exit_process(main())


def exit_process(status: int) -> None:
    """Exit with ``status``; after S3 work, without interpreter finalization.

    obstore 0.12 (the S3 extra) can abort the interpreter while it finalizes after multipart
    uploads (SIGABRT, exit status 134, with every output already committed): a batch that
    succeeded must not report a crash. Once obstore is loaded, the streams are flushed and the
    process ends with ``os._exit``; the journal is closed by then (``run_batch`` closes it).
    """
    if "obstore" not in sys.modules:
        raise SystemExit(status)
    import os

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
