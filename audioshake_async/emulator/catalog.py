"""The model catalog served by ``GET /models`` and used to validate ``POST /tasks``.

Built from the reference (``audioshake-api.md`` §4): ids, descriptions, prices and limits of
the stem models are [DOC] (developer.audioshake.ai/models); dialogue/effects/music_fx,
music_detection, transcription/alignment and multi_voice come from older copies of the docs
[CODE]; the ``category`` of the non-instrument models and ``supportedLanguages`` are [INFER].
The response shape (``{"models": [...]}`` with ``id``, ``name``, ``category``,
``description``, ``access``, ``creditsPerMinute``, ``inputs``, ``outputFormats``,
``limits``) follows the documented ``GET /models`` example.

``outputFormats`` in the listing holds only the formats this emulator can write (WAV always;
FLAC and AIFF with soundfile): a client that trusts the catalog never asks for an mp3 that
would end in ``error``. Validation of ``POST /tasks`` still accepts every documented format
(as the service does), and a lossy one then ends its target in an honest ``error``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

AUDIO_OUTPUT_FORMATS = ("aiff", "wav", "flac", "mp3", "mp4")
MEDIA_INPUT_FORMATS: Mapping[str, list[str]] = {
    "audio": ["wav", "aiff", "flac", "mp3", "aac", "m4a"],
    "video": ["mp4", "mov"],
}
TEXT_INPUT_FORMATS: Mapping[str, list[str]] = {"text": ["json", "txt"]}

THREE_HOURS = 3 * 3600
ONE_HOUR = 3600

# [INFER] no supported-languages list was found; a plausible subset, only echoed back.
LANGUAGES = ("en", "es", "fr", "de", "it", "pt", "nl", "ja", "ko", "zh")


@attrs.frozen
class ModelSpec:
    """One model of the catalog, plus the emulator-only facts needed to process it."""

    id: str
    name: str
    category: str
    description: str
    credits_per_minute: float | None
    output_formats: tuple[str, ...] = AUDIO_OUTPUT_FORMATS
    max_duration: int = THREE_HOURS
    #: ``"audio"`` (stem separation), ``"detection"``, ``"transcript"``.
    kind: str = "audio"
    variants: Mapping[str, float] = attrs.field(factory=dict)  # variant -> credits/minute
    access: str = "enabled"
    accepts_transcript: bool = False
    languages: tuple[str, ...] = ()

    @property
    def is_audio(self) -> bool:
        """True when the model produces audio stems (and so supports ``residual``)."""
        return self.kind == "audio"

    def price(self, variant: str | None) -> float:
        """Credits per minute for ``variant`` (the base price when no variant)."""
        if variant is not None and variant in self.variants:
            return self.variants[variant]
        return self.credits_per_minute or 0.0

    def to_json(self, producible: Callable[[str], bool] = lambda fmt: True) -> dict[str, Any]:
        """The model as ``GET /models`` lists it, its output formats kept to ``producible``."""
        inputs: list[dict[str, Any]] = [
            {
                "id": "media",
                "description": "Source audio or video file",
                "required": True,
                "taskFields": ["url", "assetId"],
                "formats": {k: list(v) for k, v in MEDIA_INPUT_FORMATS.items()},
            }
        ]
        if self.accepts_transcript:
            inputs.append(
                {
                    "id": "transcript",
                    "description": "Existing transcript to align (optional)",
                    "required": False,
                    "taskFields": ["transcriptUrl", "transcriptAssetId"],
                    "formats": {k: list(v) for k, v in TEXT_INPUT_FORMATS.items()},
                }
            )
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "category": self.category,
            "description": self.description,
            "access": self.access,
        }
        # Documented: gated models "omit pricing".
        if self.access == "enabled" and self.credits_per_minute is not None:
            out["creditsPerMinute"] = self.credits_per_minute
        out["inputs"] = inputs
        formats = self.output_formats
        if self.is_audio:
            formats = tuple(f for f in formats if producible(f))
        out["outputFormats"] = list(formats)
        out["limits"] = {"maxInputDurationSeconds": self.max_duration}
        if self.languages:
            out["supportedLanguages"] = list(self.languages)
        return out


def _stem(model_id: str, name: str, description: str, **kw: Any) -> ModelSpec:
    return ModelSpec(model_id, name, "instrumentStemSeparation", description, 1.0, **kw)


MODELS: tuple[ModelSpec, ...] = (
    _stem(
        "vocals",
        "Vocals",
        "Extracts vocal elements from a mix. Supports the high_quality variant.",
        variants={"high_quality": 1.5},
    ),
    _stem(
        "instrumental",
        "Instrumental",
        "Generates an instrumental-only version by removing vocals. For best quality, use "
        "the high_quality variant.",
        variants={"high_quality": 1.5},
    ),
    _stem("drums", "Drums", "Isolates percussion and rhythmic elements."),
    _stem("bass", "Bass", "Low-end bass sources (electric bass, double bass, bass synth)."),
    _stem("guitar", "Guitar", "Isolates guitar stems (acoustic, electric, classical)."),
    _stem("piano", "Piano", "Extracts piano or keyboard instruments."),
    _stem(
        "strings",
        "Strings",
        "Isolates orchestral string instruments like violin, cello, and viola.",
    ),
    _stem("wind", "Wind", "Extracts wind instruments such as flute and saxophone."),
    _stem("other", "Other", "Captures remaining instrumentation after main stems are removed."),
    ModelSpec(
        "dialogue",
        "Dialogue",
        "postProduction",
        "Isolates dialogue from music and effects.",
        1.5,
    ),
    ModelSpec(
        "effects",
        "Effects",
        "postProduction",
        "Ambience, sound effects, environmental noise.",
        1.5,
    ),
    ModelSpec(
        "music_fx",
        "Music & Effects",
        "postProduction",
        "Background stem (music + effects, no dialogue).",
        1.5,
    ),
    ModelSpec(
        "music_detection",
        "Music Detection",
        "copyrightCompliance",
        "Detects where music is present in the media.",
        0.5,
        output_formats=("json", "txt"),
        kind="detection",
    ),
    ModelSpec(
        "transcription",
        "Lyrics Transcription",
        "lyricTranscription",
        "Transcribes lyrics or speech with word timings.",
        1.0,
        output_formats=("json", "srt", "txt"),
        max_duration=ONE_HOUR,
        kind="transcript",
        languages=LANGUAGES,
    ),
    ModelSpec(
        "alignment",
        "Lyrics Alignment",
        "lyricTranscription",
        "Aligns an existing transcript to the audio; transcribes when none is given.",
        1.0,
        output_formats=("json", "srt", "txt"),
        max_duration=ONE_HOUR,
        kind="transcript",
        accepts_transcript=True,
        languages=LANGUAGES,
    ),
    ModelSpec(
        "multi_voice",
        "Multi Voice",
        "speechSeparation",
        "Separates individual speakers (variants two_speaker, n_speaker).",
        None,
        max_duration=int(1.5 * ONE_HOUR),
        variants={"two_speaker": 10.0, "n_speaker": 10.0},
        access="request_access",
    ),
)

CATALOG: Mapping[str, ModelSpec] = {m.id: m for m in MODELS}


def models_json() -> dict[str, Any]:
    """The body of ``GET /models``: audio formats limited to those this emulator can write."""
    from .dsp import EncodeError, check_encodable

    def producible(fmt: str) -> bool:
        try:
            check_encodable(fmt)
        except EncodeError:
            return False
        return True

    return {"models": [m.to_json(producible) for m in MODELS]}


#: Content type per format/extension, for uploads without one and for CDN responses.
MIME_TYPES: Mapping[str, str] = {
    "wav": "audio/wav",
    "aiff": "audio/aiff",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "aac": "audio/aac",
    "m4a": "audio/mp4",
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "json": "application/json",
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip",
}

_EXTENSION_ALIASES = {"aif": "aiff", "wave": "wav"}
_MIME_TO_FORMAT = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/aiff": "aiff",
    "audio/x-aiff": "aiff",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/aac": "aac",
    "audio/mp4": "m4a",
    "audio/x-m4a": "m4a",
    "video/mp4": "mp4",
    "video/quicktime": "mov",
    "application/json": "json",
    "text/plain": "txt",
}
UPLOAD_FORMATS = frozenset(MIME_TYPES) - {"srt"}


def format_of(filename: str, content_type: str | None) -> str | None:
    """Upload format from the file extension, else from the part's Content-Type ([INFER])."""
    _, dot, ext = filename.rpartition(".")
    if dot:
        ext = _EXTENSION_ALIASES.get(ext.lower(), ext.lower())
        if ext in UPLOAD_FORMATS:
            return ext
    if content_type:
        return _MIME_TO_FORMAT.get(content_type.split(";")[0].strip().lower())
    return None
