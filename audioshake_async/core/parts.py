"""Hidden ``.part`` files: one per writer, locked while written, orphans of dead writers swept.

Two processes writing the same output must not share one temporary file (one rename would
fail, or one would rename the other's half-written bytes into place): each writer's name
carries its pid and a random suffix, ``.<name>.<pid>-<hex>.part``. The writer holds an advisory
lock on its part file until it closes it, so a sweep tells a live writer's file (locked) from
the leftover of a process that was killed (unlocked: the operating system released the lock).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import secrets
import sys
import time
from typing import IO

from .locks import try_lock

__all__ = ["ORPHAN_AGE", "open_part", "part_path_for", "sweep_once", "sweep_orphans"]

#: A part file is swept only when unlocked *and* untouched this long (seconds): the age covers
#: the instant between a writer creating its file and locking it.
ORPHAN_AGE = 60.0

_OURS = re.compile(r"\..+\.\d+-[0-9a-f]{8}\.part")
#: Directories swept by this process (forgotten wholesale past _SWEPT_MAX: a sweep is cheap).
_swept: set[str] = set()
_SWEPT_MAX = 4096


def part_path_for(destination: pathlib.Path) -> pathlib.Path:
    """A temporary name beside ``destination``, unique to this writer."""
    return destination.with_name(f".{destination.name}.{os.getpid()}-{secrets.token_hex(4)}.part")


def open_part(path: pathlib.Path) -> IO[bytes]:
    """Create ``path`` (never an existing file) and lock it for as long as it is open."""
    handle = open(path, "xb")  # noqa: SIM115 - the caller closes it
    if sys.platform != "win32":
        # Windows needs no lock: a file open in another process cannot be deleted there.
        try_lock(handle.fileno())
    return handle


def sweep_orphans(destination: pathlib.Path) -> int:
    """Delete the part files in ``destination``'s directory that no live writer holds.

    Any output's, named as :func:`part_path_for` names them, and ``destination``'s old-style
    ``.<name>.part`` (one name shared by every writer, before this module); another program's
    ``.part`` files are left alone. Returns how many were deleted. Never raises: a sweep is
    tidying, not part of the download.
    """
    legacy, removed, now = f".{destination.name}.part", 0, time.time()
    try:
        entries = list(os.scandir(destination.parent))
    except OSError:
        return 0
    for entry in entries:
        if not (_OURS.fullmatch(entry.name) or entry.name == legacy):
            continue
        with contextlib.suppress(OSError):
            if now - entry.stat(follow_symlinks=False).st_mtime >= ORPHAN_AGE and _remove_unheld(
                entry.path
            ):
                removed += 1
    return removed


def sweep_once(destination: pathlib.Path) -> None:
    """:func:`sweep_orphans` at this process's first output in each directory.

    Once per directory, not per file: a flat directory of n outputs is listed once, not n
    times. Orphans come from a killed run, and its re-run writes into the same directories.
    """
    directory = os.fspath(destination.parent)
    if directory in _swept:
        return
    if len(_swept) >= _SWEPT_MAX:
        _swept.clear()
    _swept.add(directory)
    sweep_orphans(destination)


def _remove_unheld(path: str) -> bool:
    if sys.platform == "win32":
        os.unlink(path)  # PermissionError while a writer has it open
        return True
    with open(path, "rb") as probe:
        if not try_lock(probe.fileno()):
            return False  # a live writer holds it
        os.unlink(path)
        return True
