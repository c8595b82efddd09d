"""One process per SQLite journal, and SQLite's failures as typed :class:`JournalError` s.

Two runs on one journal would each find an item without its task and each create it: billed
twice. The first to open a journal locks the sidecar file ``<journal>.lock`` for as long as the
journal is open and writes who it is there (pid, host, start time); any other opener, in this
process or another, is refused at once with :class:`~audioshake_async.errors.JournalBusyError`
naming the holder. The lock is the operating system's (``core.locks``): it dies with its
holder, however the holder exits, so a lock file left by ``kill -9`` blocks no one (its content
is only informative, and overwritten by the next holder).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import IO, Concatenate, ParamSpec, Protocol, TypeVar

from ..core.locks import try_lock
from ..errors import JournalBusyError, JournalError

__all__ = ["JournalLock", "journal_step"]

P = ParamSpec("P")
R = TypeVar("R")

#: Tries at locking a lock file that its last holder removed or replaced meanwhile.
_ATTEMPTS = 10


class JournalLock:
    """The held lock of one journal; :meth:`release` (or the holder's exit) frees it."""

    def __init__(self, journal_path: str) -> None:
        self.path = journal_path + ".lock"
        self._handle: IO[bytes] | None = None
        try:
            self._handle = self._acquire(journal_path)
        except OSError as exc:
            raise JournalError(
                f"cannot lock the journal: {exc.strerror or exc} ({self.path})",
                step="open",
                path=journal_path,
            ) from None

    def _acquire(self, journal_path: str) -> IO[bytes]:
        for _ in range(_ATTEMPTS):
            handle = open(self.path, "a+b", buffering=0)  # noqa: SIM115 - held until release
            try:
                if not try_lock(handle.fileno()):
                    raise _busy(journal_path, handle)
                if _still_named(handle, self.path):
                    handle.truncate(0)
                    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": started}
                    handle.write(json.dumps(holder).encode() + b"\n")
                    return handle
            except BaseException:
                handle.close()
                raise
            # The holder before us removed the file as we opened it: lock the current one.
            handle.close()
        raise OSError(f"the lock file kept changing over {_ATTEMPTS} attempts")

    def release(self) -> None:
        """Free the lock; idempotent."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        if sys.platform != "win32":
            # Removed while still held, so no opener can lock the file being removed and
            # believe it holds the journal (an opener that locked it meanwhile re-checks).
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        handle.close()


def _still_named(handle: IO[bytes], path: str) -> bool:
    """Whether ``path`` is still the file ``handle`` locked (not removed by a releasing holder)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _busy(journal_path: str, handle: IO[bytes]) -> JournalBusyError:
    """The refusal, naming the holder as its lock file says (it may be mid-way writing it)."""
    holder: dict[str, object] = {}
    for _ in range(20):
        handle.seek(0)
        with contextlib.suppress(ValueError):
            holder = json.loads(handle.read(4096) or b"null") or {}
        if holder:
            break
        time.sleep(0.01)
    pid, host, since = holder.get("pid"), holder.get("host"), holder.get("since")
    return JournalBusyError(
        journal_path,
        pid=pid if isinstance(pid, int) else None,
        host=host if isinstance(host, str) else None,
        since=since if isinstance(since, str) else "",
    )


class _Located(Protocol):
    path: str


S = TypeVar("S", bound=_Located)


def journal_step(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Turn the SQLite errors of a journal method into a :class:`JournalError`.

    The error names the step (the method) and the input (its first argument), so a disk that
    fills up mid-batch is reported as ``record_output of /in/a.wav``, not as a bare
    ``sqlite3.OperationalError``.
    """
    step = "open" if method.__name__ == "__init__" else method.__name__

    @functools.wraps(method)
    def guarded(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            first = args[0] if args and step != "open" else None
            source = first if isinstance(first, str) else None
            path = getattr(self, "path", "")
            item = f" of {source}" if source else ""
            raise JournalError(
                f"journal {step}{item} failed: {exc} ({path})", step=step, source=source, path=path
            ) from exc

    return guarded
