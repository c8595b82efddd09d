"""Local file names and atomic writes: what a server-sent name may become on disk."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from ..models import Output

_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")


def safe_filename(name: str, fmt: str | None = None, *, fallback: str = "output") -> str:
    """A file name that stays inside its directory, whatever the server sent.

    Path separators, ``..``, control and reserved characters are replaced; an empty or dotted
    result becomes ``fallback``. ``fmt`` is appended as the extension.
    """
    text = unicodedata.normalize("NFC", name or "")
    text = _UNSAFE_CHARS.sub("_", text).strip().strip(".").strip()
    if not text or set(text) <= {"_", "."}:
        text = fallback
    text = text[:150]
    if fmt:
        ext = _UNSAFE_CHARS.sub("_", fmt).strip(". ") or "bin"
        text = f"{text}.{ext[:16]}"
    return text


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
            name = safe_filename(f"{base}_{counter}", fmt)
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
    part = path.with_name(f".{path.name}.part")
    try:
        with open(part, "wb") as handle:
            handle.write(raw)
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    return len(raw), hashlib.sha256(raw).hexdigest()
