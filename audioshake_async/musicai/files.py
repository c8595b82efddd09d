"""Output file names from result URLs and content types; the upload rule."""

from __future__ import annotations

import mimetypes
import os
from urllib.parse import unquote

from .. import errors
from ..models import DOCUMENTED_INPUT_EXTENSIONS

# --------------------------------------------------------------------------- file names


# Content types whose extension ``mimetypes`` gets wrong or does not know (``audio/x-wav``
# has no guess on some systems; ``audio/mpeg`` guesses ``.mp2`` on others).
_EXTENSIONS = {
    "audio/wav": "wav",
    "audio/wave": "wav",
    "audio/x-wav": "wav",
    "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/aiff": "aiff",
    "audio/x-aiff": "aiff",
    "audio/mp4": "m4a",
    "audio/x-m4a": "m4a",
    "audio/aac": "aac",
    "audio/ogg": "ogg",
    "audio/opus": "opus",
    "audio/midi": "mid",
    "audio/x-midi": "mid",
    "application/json": "json",
    "text/plain": "txt",
    "application/zip": "zip",
}

#: Common audio types the Tasks API does not document but a Music.AI workflow may take.
EXTRA_AUDIO_EXTENSIONS = frozenset({".opus", ".ogg", ".oga", ".wma", ".aifc", ".webm", ".mka"})


def extension_from_url(url: str) -> str | None:
    """The extension of the URL path's last segment (``.../vocals.wav?sig`` -> ``wav``), if any."""
    # Plain string cuts rather than urlsplit: this runs for every output of every job of every
    # list page the batch engine reads, and the URLs come from the API, not from a user.
    path = url.split("?", 1)[0].split("#", 1)[0]
    if "://" in path:
        path = path.split("://", 1)[1]
    if "/" not in path:
        return None
    last = path.rsplit("/", 1)[-1]
    if "%" in last:
        last = unquote(last)
    stem, dot, ext = last.rpartition(".")
    if dot and stem and 1 <= len(ext) <= 8 and ext.isalnum():
        return ext.lower()
    return None


def extension_from_content_type(content_type: str | None) -> str | None:
    """``audio/x-wav; charset=...`` -> ``wav``; None when unknown or generic."""
    if not content_type:
        return None
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in _EXTENSIONS:
        return _EXTENSIONS[kind]
    if kind == "application/octet-stream":
        return None
    guessed = mimetypes.guess_extension(kind)
    return guessed.lstrip(".") if guessed else None


def _content_type_for(name: str) -> str:
    ext = os.path.splitext(name.lower())[1]
    return (
        DOCUMENTED_INPUT_EXTENSIONS.get(ext)
        or mimetypes.guess_type(name)[0]
        or "application/octet-stream"
    )


def check_upload(filename: str, size: int) -> str:
    """Music.AI's rule for an upload: not empty. It documents no list of input types and no
    size cap (the workflow judges the file), so any type goes, with a guessed content type."""
    if size <= 0:
        raise errors.ValidationError(f"{filename!r} is empty")
    return _content_type_for(filename)
