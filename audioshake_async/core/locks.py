"""Advisory file locks that the operating system releases when their holder dies.

A lock is held on an open file descriptor, not on a name: closing the descriptor or ending the
process (``kill -9`` included) releases it, so a lock file left behind by a crash never blocks
anyone. POSIX: ``flock``, which also works between machines on NFS (Linux emulates it there with
byte-range locks). Windows: ``msvcrt.locking`` of one byte.
"""

from __future__ import annotations

import os
import sys

__all__ = ["try_lock"]

if sys.platform == "win32":
    import msvcrt

    # Windows byte-range locks are mandatory: the locked byte lies far past anything written,
    # so other processes can still read what the holder wrote at the start of the file.
    _LOCK_OFFSET = 1 << 20

    def _locking(fd: int, mode: int) -> None:
        position = os.lseek(fd, 0, os.SEEK_CUR)
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, mode, 1)
        finally:
            os.lseek(fd, position, os.SEEK_SET)

    def try_lock(fd: int) -> bool:
        """Take the exclusive lock of ``fd`` without waiting; False when another holds it."""
        try:
            _locking(fd, msvcrt.LK_NBLCK)
        except OSError:  # EACCES or EDEADLOCK: held by another handle
            return False
        return True

else:
    import fcntl

    def try_lock(fd: int) -> bool:
        """Take the exclusive lock of ``fd`` without waiting; False when another holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
