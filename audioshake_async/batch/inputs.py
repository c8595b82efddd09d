"""Turning command-line inputs (files, directories, URLs, ``-``) into a lazy stream of items."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import AsyncGenerator, Callable, Collection, Generator, Iterable, Iterator
from typing import TextIO

import anyio.to_thread

from ..models import DOCUMENTED_INPUT_EXTENSIONS

__all__ = ["AUDIO_EXTENSIONS", "UnreadableHook", "expand_inputs"]

logger = logging.getLogger("audioshake_async.batch")

#: Media a directory walk picks up: the documented audio and video inputs (not transcripts).
AUDIO_EXTENSIONS = frozenset(
    ext
    for ext, mime in DOCUMENTED_INPUT_EXTENSIONS.items()
    if mime.startswith(("audio/", "video/"))
)

#: Paths handed over per worker-thread hop: few enough to keep the batch fed promptly, many
#: enough that the hop (tens of microseconds) is noise next to a walk of a large catalog.
CHUNK_SIZE = 256

#: Called (in a worker thread) with a directory that could not be listed and the error.
UnreadableHook = Callable[[str, OSError], None]

# Marks a point where paths collected so far must be handed over before the next step, which
# may block for an unbounded time (reading a pipe).
_FLUSH = object()


def _list_dir(directory: str, extensions: frozenset[str]) -> tuple[list[str], set[str], set[str]]:
    """(sorted names worth visiting, which of them are subdirectories, which are symlinks)."""
    names: list[str] = []
    subdirs: set[str] = set()
    links: set[str] = set()
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                subdirs.add(name)
            elif os.path.splitext(name)[1].lower() in extensions:
                if entry.is_symlink():
                    links.add(name)
            else:
                continue
            names.append(name)
    # One directory is sorted whole (stable order across runs, so stable output dirs): only
    # the kept names are held, ~70 bytes each, i.e. ~70 MB for a single 1M-entry directory.
    names.sort()
    return names, subdirs, links


def _seekable(stream: TextIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


class _Expansion:
    """The blocking half of :func:`expand_inputs`: runs in worker threads, one step at a time."""

    def __init__(
        self,
        exclude: Iterable[str | os.PathLike[str]],
        on_unreadable: UnreadableHook | None,
        extensions: frozenset[str],
    ) -> None:
        self.exclude = list(exclude)
        self.extensions = extensions
        self.excluded: frozenset[str] = frozenset()
        self.on_unreadable = on_unreadable
        # 16-byte digests of resolved paths, not the paths: ~80 bytes an entry with the set's
        # own overhead (~80 MB per million inputs) against ~130 for the path strings. A
        # collision (odds ~1e-26 at a million) would only drop one input as a duplicate.
        self.seen: set[bytes] = set()

    def first_time(self, kind: bytes, key: str) -> bool:
        """True the first time ``key`` (a resolved path or URL) is met in this expansion."""
        digest = hashlib.blake2b(kind + os.fsencode(key), digest_size=16).digest()
        if digest in self.seen:
            return False
        self.seen.add(digest)
        return True

    def run(self, args: list[str], stdin: TextIO | None) -> Iterator[object]:
        """Every input path or URL in order, with ``_FLUSH`` marks before blocking reads."""
        self.excluded = frozenset(os.path.realpath(p) for p in self.exclude)
        for arg in args:
            if arg == "-":
                yield from self.lines(stdin or sys.stdin)
            else:
                yield from self.expand(arg)

    def lines(self, stream: TextIO) -> Iterator[object]:
        """Paths read from ``stream``, one a line; blank lines and ``#`` comments skipped."""
        # A pipe (``find ... | audioshake-async run -``) may pause for as long as it likes:
        # what was read must reach the batch first. A file or in-memory text never blocks.
        may_block = not _seekable(stream)
        while True:
            if may_block:
                yield _FLUSH
            line = stream.readline()
            if not line:
                return
            line = line.strip()
            if line and not line.startswith("#"):
                yield from self.expand(line)

    def expand(self, arg: str) -> Iterator[str]:
        """One argument: a URL or s3:// location as is, a directory walked, else a file."""
        if arg.startswith(("https://", "http://", "s3://")):
            if self.first_time(b"u", arg):
                yield arg
        elif os.path.isdir(arg):
            yield from self.walk(arg, os.path.realpath(arg))
        elif self.first_time(b"f", os.path.realpath(arg)):
            # Missing or odd paths pass through too: the engine reports each as failed.
            yield arg

    def walk(self, directory: str, real: str) -> Iterator[str]:
        """Depth-first, sorted per directory; ``real`` is the resolved ``directory``."""
        if not self.first_time(b"d", real):
            return
        try:
            names, subdirs, links = _list_dir(directory, self.extensions)
        except OSError as exc:
            logger.warning("cannot read directory %r: %s", directory, exc.strerror or exc)
            if self.on_unreadable is not None:
                self.on_unreadable(directory, exc)
            # Handed on as an input: the engine reports it as a failed item (not a readable
            # file) and the walk goes on with the rest.
            yield directory
            return
        for name in names:
            path = os.path.join(directory, name)
            if name in subdirs:
                # Not a symlink, so its resolved path needs no system call.
                resolved = os.path.join(real, name)
                if resolved not in self.excluded:
                    yield from self.walk(path, resolved)
            else:
                resolved = os.path.realpath(path) if name in links else os.path.join(real, name)
                if self.first_time(b"f", resolved):
                    yield path


def _chunks(steps: Iterator[object], size: int) -> Generator[list[str], None, None]:
    chunk: list[str] = []
    for step in steps:
        if step is _FLUSH:
            if chunk:
                yield chunk
                chunk = []
            continue
        assert isinstance(step, str)
        chunk.append(step)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def expand_inputs(
    args: Iterable[str],
    stdin: TextIO | None = None,
    *,
    exclude: Iterable[str | os.PathLike[str]] = (),
    on_unreadable: UnreadableHook | None = None,
    extensions: Collection[str] = AUDIO_EXTENSIONS,
) -> AsyncGenerator[str, None]:
    """Files as given, directories walked recursively, URLs as is, ``-`` reads paths from stdin.

    An async generator, lazy and never blocking the event loop: directory listings, path
    resolution and stdin reads run in worker threads, up to :data:`CHUNK_SIZE` paths at a
    time. Directories in ``exclude`` (the output directory) are not walked, so stems never
    become inputs. Each file, directory and URL is produced once, however often it is reached
    (``dir dir/x.wav``, ``x.wav x.wav``, symlinks), judged by its resolved path. A directory
    that cannot be listed is logged, passed to ``on_unreadable`` and produced as an input, so
    the batch reports it as failed and goes on. A walk picks up files whose extension is in
    ``extensions`` (a provider's ``input_extensions``; by default the documented AudioShake
    audio and video inputs).
    """
    wanted = frozenset(ext.lower() for ext in extensions)
    expansion = _Expansion(exclude, on_unreadable, wanted)
    chunks = _chunks(expansion.run(list(args), stdin), CHUNK_SIZE)

    def pull() -> list[str] | None:
        return next(chunks, None)

    busy = False
    try:
        while True:
            busy = True
            # Abandoned on cancel: a read of an idle terminal must not hold up Ctrl-C.
            chunk = await anyio.to_thread.run_sync(pull, abandon_on_cancel=True)
            busy = False
            if chunk is None:
                return
            for path in chunk:
                yield path
    finally:
        if not busy:
            # Still running in an abandoned thread otherwise; it is dropped when that ends.
            chunks.close()
