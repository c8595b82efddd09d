"""Sample inputs for the emulator: three short synthetic tracks, identical on every run.

Three 3.5 s, 44.1 kHz, 16-bit stereo WAVs built from a click-style drum kit, a bass line and a
melody, panned differently so that the DSP stand-in's stems (``vocals`` = mid,
``instrumental`` = side) differ audibly:

* ``pop_center.wav``   melody in the centre (ends up in ``vocals``), drums spread L/R;
* ``wide_lead.wav``    melody hard left, counter-melody hard right (mostly ``instrumental``);
* ``dialogue_bed.wav`` a vowel-like "voice" in the centre over a quiet, wide music bed.

A wheel carries no audio: ``audioshake-async emulator samples DIR`` writes these (about
1.8 MB), so the README's first command works from an installed package. Needs numpy (the
``[emulator]`` extra).
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SAMPLE_NAMES", "write_samples"]

SAMPLE_NAMES = ("dialogue_bed.wav", "pop_center.wav", "wide_lead.wav")
RATE = 44_100
SECONDS = 3.5
BPM = 120

Signal = Any  # numpy arrays; numpy's own generics add nothing to this generator


def _t() -> Signal:
    return np.arange(int(RATE * SECONDS)) / RATE


def _note(freq: float, start: float, length: float, harmonics: int = 3) -> Signal:
    """A plucked-ish tone with a fast attack and exponential decay."""
    t = _t()
    local = t - start
    env = np.where((local >= 0) & (local < length), np.exp(-3.0 * np.clip(local, 0, None)), 0.0)
    env *= np.clip(local / 0.005, 0, 1)  # 5 ms attack: no click at the onset
    tone = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, harmonics + 1))
    return env * tone


def drums(rng: np.random.Generator) -> tuple[Signal, Signal]:
    """Kick on every beat, hi-hat noise bursts on the off-beats (kick, hat)."""
    t = _t()
    kick = np.zeros_like(t)
    hat = np.zeros_like(t)
    beat = 60.0 / BPM
    noise = rng.standard_normal(t.size)
    for i in range(int(SECONDS / beat) + 1):
        start = i * beat
        local = t - start
        mask = (local >= 0) & (local < 0.25)
        # Pitch-dropping sine: the usual synthetic kick.
        kick[mask] += np.sin(2 * np.pi * (50 + 80 * np.exp(-local[mask] * 30)) * local[mask]) * (
            np.exp(-local[mask] * 12)
        )
        local = t - (start + beat / 2)
        mask = (local >= 0) & (local < 0.05)
        hat[mask] += noise[mask] * np.exp(-local[mask] * 80)
    hat = np.diff(hat, prepend=0.0)  # crude high-pass: hats are bright
    return kick, hat


def bass_line() -> Signal:
    """Root notes, one per beat."""
    notes = [55.0, 55.0, 73.42, 65.41, 55.0, 82.41, 73.42, 65.41]
    beat = 60.0 / BPM
    return sum(_note(f, i * beat, beat, harmonics=4) for i, f in enumerate(notes))


def melody(notes: list[float], step: float, offset: float = 0.0) -> Signal:
    """A sequence of tones every ``step`` seconds."""
    return sum(_note(f, offset + i * step, step * 1.5) for i, f in enumerate(notes))


def voice() -> Signal:
    """A vowel-ish tone: 140 Hz buzz shaped by two formants, syllable-gated."""
    t = _t()
    f0 = 140 + 10 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    # Harmonic k is weighted by how close k * 140 Hz lies to the formants at 700/1200 Hz.
    weights = [
        np.exp(-(((k * 140 - 700) / 300) ** 2)) + 0.5 * np.exp(-(((k * 140 - 1200) / 300) ** 2))
        for k in range(1, 30)
    ]
    buzz = sum(w * np.sin(k * phase) for k, w in enumerate(weights, start=1))
    gate = 0.5 * (1 + np.sign(np.sin(2 * np.pi * 2.5 * t + 0.3)))
    return buzz * gate


def pan(mono: Signal, position: float) -> Signal:
    """Constant-power pan, position in [-1 (left), 1 (right)]."""
    angle = (position + 1) * np.pi / 4
    return np.stack([mono * np.cos(angle), mono * np.sin(angle)], axis=1)


def write(path: Path, stereo: Signal) -> None:
    """Normalise to -1 dBFS peak and write 16-bit PCM."""
    peak = np.max(np.abs(stereo)) or 1.0
    scaled = stereo / peak * 10 ** (-1 / 20)
    pcm = np.round(scaled * 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(pcm.tobytes())


def write_samples(directory: str | Path) -> list[Path]:
    """Write the three sample files into ``directory`` (created if needed); their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240601)
    kick, hat = drums(rng)
    bass = bass_line()
    lead = melody([440.0, 493.88, 523.25, 587.33, 659.25, 587.33, 523.25], 0.5)
    counter = melody([329.63, 293.66, 261.63, 293.66, 329.63, 392.0, 329.63], 0.5, 0.25)

    pop = pan(kick, 0) + pan(hat, -0.6) + pan(hat * 0.7, 0.6) + pan(bass, 0) + pan(lead * 0.8, 0)
    write(out / "pop_center.wav", pop)

    wide = pan(kick, 0) + pan(hat, 0.3) + pan(bass, 0) + pan(lead, -1.0) + pan(counter, 1.0)
    write(out / "wide_lead.wav", wide)

    bed = pan(lead * 0.15, -0.8) + pan(counter * 0.15, 0.8) + pan(bass * 0.2, 0)
    write(out / "dialogue_bed.wav", pan(voice() * 0.6, 0) + bed)
    return [out / name for name in SAMPLE_NAMES]
