"""Music.AI workflows: what a job produces, and the worker-thread code that produces it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import attrs

from .. import dsp


@attrs.frozen
class MusicAIWorkflow:
    """A workflow: file outputs (result key -> DSP stand-in model) and plain-value outputs."""

    slug: str
    name: str
    description: str = ""
    #: ``(result key, dsp model)``: each becomes a WAV file (``dsp.separate(model, ...)``).
    outputs: tuple[tuple[str, str], ...] = ()
    #: Plain values; ``"bpm"`` is the only kind the emulator computes.
    values: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """A stable id derived from the slug."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"musicai-emulator:{self.slug}"))

    def to_json(self, created: str) -> dict[str, Any]:
        """The workflow as ``GET /workflow`` lists it."""
        return {
            "id": self.id,
            "name": self.name,
            "slug": self.slug,
            "description": self.description,
            "createdAt": created,
            "updatedAt": created,
        }


DEFAULT_WORKFLOWS = (
    MusicAIWorkflow(
        "stems",
        "Vocals and accompaniment",
        "Separates vocals from the accompaniment and estimates the tempo.",
        (("vocals", "vocals"), ("accompaniment", "instrumental")),
        ("bpm",),
    ),
    MusicAIWorkflow(
        "stem-suite",
        "Stem separation suite",
        "Vocals, bass, drums and the rest; output names with spaces, as dashboards allow.",
        (
            ("vocals", "vocals"),
            ("Bass guitar", "bass"),
            ("Drum kit", "drums"),
            ("Other instruments", "other"),
        ),
    ),
    MusicAIWorkflow(
        "beat-detection", "Extract BPM", "Tempo only: a result without files.", (), ("bpm",)
    ),
)


def _sniff_format(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(12)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    return "unknown"


def estimate_bpm(x: Any, rate: int) -> str:
    """Tempo of the drums stand-in's onset envelope (autocorrelation, 60-200 BPM).

    Inputs shorter than 3 s give ``"120"``: too short to measure.
    """
    import numpy as np

    hop = max(1, rate // 100)  # a 100 Hz envelope
    drums = dsp.separate("drums", x, rate).mean(axis=1)
    frames = drums.shape[0] // hop
    if frames < 300:
        return "120"
    envelope = np.abs(drums[: frames * hop]).reshape(frames, hop).mean(axis=1)
    onset = np.maximum(np.diff(envelope), 0.0)
    onset = onset - onset.mean()
    size = 1 << (2 * onset.size - 1).bit_length()
    spectrum = np.fft.rfft(onset, size)
    correlation = np.fft.irfft(spectrum * np.conj(spectrum), size)[: onset.size]
    low, high = 30, 100  # lags of 200 and 60 BPM at 100 Hz
    lag = low + int(np.argmax(correlation[low : high + 1]))
    return str(round(6000 / lag))


def render_outputs(
    workflow: MusicAIWorkflow, src: Path, out_dir: Path
) -> tuple[list[Path], dict[str, str]]:
    """Worker-thread body: decode ``src`` once, write every file output, compute the values."""
    fmt = _sniff_format(src)
    if fmt == "unknown":
        raise dsp.DecodeError("the input is not an audio file the emulator decodes (WAV)")
    x, info = dsp.read_audio(src, fmt)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (_, model) in enumerate(workflow.outputs):
        path = out_dir / f"{index}.wav"
        dsp.write_audio(path, dsp.separate(model, x, info.rate), info, "wav")
        paths.append(path)
    values = {}
    for kind in workflow.values:
        values[kind] = estimate_bpm(x, info.rate) if kind == "bpm" else "0"
    return paths, values
