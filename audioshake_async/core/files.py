"""Local file names and atomic writes: what a server-sent name may become on disk."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any

from ..models import Output
from .parts import open_part, part_path_for

_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")

#: Longest file name written, in bytes of the file system's encoding. File systems allow 255;
#: the rest is room for the hidden part file's prefix and suffix (``.<name>.<tag>.part``).
MAX_NAME_BYTES = 200
#: Longest stem (before suffix and extension): 150, as when names were cut by characters, so
#: ASCII names, and the outputs an earlier run wrote, keep their names.
MAX_STEM_BYTES = 150


def _truncate_bytes(text: str, limit: int, encoding: str) -> str:
    """``text`` cut to at most ``limit`` encoded bytes, never inside a character."""
    raw = text.encode(encoding, errors="surrogateescape")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode(encoding, errors="ignore").rstrip(" .")


def safe_filename(
    name: str, fmt: str | None = None, *, fallback: str = "output", suffix: str = ""
) -> str:
    """A file name that stays inside its directory, whatever the server sent.

    Path separators, ``..``, control and reserved characters are replaced; an empty or dotted
    result becomes ``fallback``. ``fmt`` is appended as the extension, after ``suffix``. The
    name is cut to :data:`MAX_NAME_BYTES` bytes in the file system's encoding (not
    characters: 150 "é" are 300 bytes), keeping the suffix and the extension.
    """
    encoding = sys.getfilesystemencoding()
    text = unicodedata.normalize("NFC", name or "")
    text = _UNSAFE_CHARS.sub("_", text).strip().strip(".").strip()
    if not text or set(text) <= {"_", "."}:
        text = fallback
    tail = _UNSAFE_CHARS.sub("_", suffix)
    if fmt:
        ext = _UNSAFE_CHARS.sub("_", fmt).strip(". ") or "bin"
        tail += "." + _truncate_bytes(ext, 16, encoding)
    room = MAX_NAME_BYTES - len(tail.encode(encoding, errors="surrogateescape"))
    text = _truncate_bytes(text, max(min(room, MAX_STEM_BYTES), 16), encoding) or fallback
    return text + tail


def plan_output_paths(
    outputs: Sequence[Output], directory: pathlib.Path
) -> list[tuple[Output, pathlib.Path]]:
    """``<name>.<format>`` inside ``directory`` for each output, sanitized and de-duplicated."""
    used: set[str] = set()
    planned = []
    for output in outputs:
        base = safe_filename(output.name)
        fmt = output.format
        name = safe_filename(base, fmt)
        counter = 2
        while name.lower() in used:
            # The counter is a suffix kept through truncation: a long base cut back to itself
            # would loop forever.
            name = safe_filename(base, fmt, suffix=f"_{counter}")
            counter += 1
        used.add(name.lower())
        planned.append((output, directory / name))
    return planned


def json_bytes(data: Any) -> bytes:
    """``data`` as the JSON text an output file holds (indented, sorted keys, final newline)."""
    return (json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode()


def write_json_atomic(path: pathlib.Path, data: Any) -> tuple[int, str]:
    """Write ``data`` as JSON through a hidden temp file and a rename (runs in a thread);
    returns the size and SHA-256 of what was written."""
    raw = json_bytes(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own, as for downloads: two processes writing one file never share it.
    part = part_path_for(path)
    try:
        with open_part(part) as handle:
            handle.write(raw)
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    return len(raw), hashlib.sha256(raw).hexdigest()
