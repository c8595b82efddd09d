"""Turning command-line inputs (files, directories, URLs, ``-``) into a lazy stream of items."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

from ..models import DOCUMENTED_INPUT_EXTENSIONS

__all__ = ["AUDIO_EXTENSIONS", "expand_inputs"]

#: Media a directory walk picks up: the documented audio and video inputs (not transcripts).
AUDIO_EXTENSIONS = frozenset(
    ext
    for ext, mime in DOCUMENTED_INPUT_EXTENSIONS.items()
    if mime.startswith(("audio/", "video/"))
)


def _walk(directory: str, excluded: frozenset[str]) -> Iterator[str]:
    # Sorted and depth-first, so runs see inputs in the same order (stable output dirs).
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        raise FileNotFoundError(f"cannot read directory {directory!r}: {exc.strerror}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            if os.path.realpath(entry.path) not in excluded:
                yield from _walk(entry.path, excluded)
        elif os.path.splitext(entry.name)[1].lower() in AUDIO_EXTENSIONS:
            yield entry.path


def expand_inputs(
    args: Iterable[str],
    stdin: TextIO | None = None,
    *,
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> Iterator[str]:
    """Files as given, directories walked recursively, URLs as is, ``-`` reads paths from stdin.

    Lazy: a directory of a million files is walked as the batch consumes it. Directories in
    ``exclude`` (the output directory) are not walked, so stems never become inputs.
    """
    excluded = frozenset(os.path.realpath(p) for p in exclude)
    for arg in args:
        if arg == "-":
            for line in stdin or sys.stdin:
                line = line.strip()
                if line and not line.startswith("#"):
                    yield from expand_inputs([line], exclude=exclude)
        elif arg.startswith(("https://", "http://")):
            yield arg
        elif os.path.isdir(arg):
            yield from _walk(arg, excluded)
        else:
            yield arg
