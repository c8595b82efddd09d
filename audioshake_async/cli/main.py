"""The ``audioshake-async`` entry point: dispatch, exit statuses, one-line errors."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence
from typing import TextIO

from .. import errors
from .parser import EXIT_ITEMS_FAILED, EXIT_USAGE, ArgumentsError, UsageError, build_parser
from .run import migrate_command, models_command, run_command


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
    try:
        if args.command == "migrate":
            return migrate_command(args, out, err)
        if args.command == "run":
            return asyncio.run(run_command(args, out, err))
        if args.command in ("submit", "worker", "status", "audit"):
            from .cluster import cluster_command

            return asyncio.run(cluster_command(args, out, err))
        return asyncio.run(models_command(args, out))
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
        return 130


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
    import logging
    import os

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
