"""The ``transcription``/``alignment`` stand-in: words spread evenly over the duration.

The emulator cannot understand speech, so it emits the word ``emulated`` every half second
(or, for ``alignment`` with a transcript, the transcript's own words) spread evenly over the
input's duration, as JSON (the observed shape), SubRip or plain text. Needs no numpy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .dsp import DecodeError, EncodeError

PLACEHOLDER_WORD = "emulated"
WORDS_PER_LINE = 6


def parse_transcript(text: str, fmt: str) -> list[list[str]]:
    """Lines of words from a ``.txt`` or ``.json`` transcript given for alignment.

    JSON is accepted as the output shape (``{"lines": [{"text"|"words"}]}``), as
    ``{"text": "..."}`` or as a list of strings; the input schema is undocumented ([INFER]).
    """
    if fmt == "json":
        try:
            doc: Any = json.loads(text)
        except ValueError as exc:
            raise DecodeError(f"transcript is not valid JSON: {exc}") from exc
        lines: list[str] = []
        if isinstance(doc, dict) and isinstance(doc.get("lines"), list):
            for line in doc["lines"]:
                if isinstance(line, dict) and isinstance(line.get("words"), list):
                    lines.append(" ".join(str(w.get("text", "")) for w in line["words"]))
                elif isinstance(line, dict):
                    lines.append(str(line.get("text", "")))
                else:
                    lines.append(str(line))
        elif isinstance(doc, dict) and isinstance(doc.get("text"), str):
            lines = doc["text"].splitlines()
        elif isinstance(doc, list) and all(isinstance(v, str) for v in doc):
            lines = list(doc)
        else:
            raise DecodeError("unsupported transcript JSON shape")
    else:
        lines = text.splitlines()
    words = [line.split() for line in lines]
    return [w for w in words if w]


def transcript_document(
    duration: float, language: str | None, lines: list[list[str]] | None
) -> dict[str, Any]:
    """The observed transcription JSON shape, with words spread evenly over ``duration``."""
    if not lines:
        count = max(1, int(duration // 0.5))
        words = [PLACEHOLDER_WORD] * count
        lines = [words[i : i + WORDS_PER_LINE] for i in range(0, count, WORDS_PER_LINE)]
    total = sum(len(line) for line in lines)
    slot = duration / total if total else 0.0
    index = 0
    out_lines: list[dict[str, Any]] = []
    for line in lines:
        words_json = []
        for word in line:
            start = index * slot
            words_json.append(
                {
                    "text": word,
                    "start": round(start, 3),
                    "end": round(start + 0.8 * slot, 3),
                    "confidence": 0.5,
                }
            )
            index += 1
        out_lines.append({"text": " ".join(line), "words": words_json})
    return {
        "text": "\n".join(line["text"] for line in out_lines),
        "lines": out_lines,
        "metadata": {"language": language or "en"},
    }


def _srt_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{millis:03d}"


def transcript_srt(doc: dict[str, Any]) -> str:
    """SubRip: one cue per line, from its first word's start to its last word's end."""
    cues = []
    for number, line in enumerate(doc["lines"], start=1):
        words = line["words"]
        start = words[0]["start"] if words else 0.0
        end = words[-1]["end"] if words else start
        cues.append(f"{number}\n{_srt_time(start)} --> {_srt_time(end)}\n{line['text']}\n")
    return "\n".join(cues)


def transcript_txt(doc: dict[str, Any]) -> str:
    """Plain text: one transcript line per line."""
    return "".join(f"{line['text']}\n" for line in doc["lines"])


def render_transcript(
    model: str,
    duration: float,
    language: str | None,
    lines: list[list[str]] | None,
    fmt: str,
    out_dir: Path,
) -> list[tuple[str, Path]]:
    """Write ``<model>.<json|srt|txt>``. Runs in a worker thread; needs no numpy."""
    doc = transcript_document(duration, language, lines)
    if fmt == "json":
        text = json.dumps(doc)
    elif fmt == "srt":
        text = transcript_srt(doc)
    elif fmt == "txt":
        text = transcript_txt(doc)
    else:
        raise EncodeError(f"{model} cannot produce {fmt}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{model}.{fmt}"
    path.write_text(text, encoding="utf-8")
    return [(model, path)]
