"""A deterministic DSP stand-in for AudioShake's models. This is NOT source separation.

The emulator must hand back *real* files (so clients can be tested end to end: download,
decode, compare lengths), not placeholders. Each model maps to a simple, documented filter,
so the outputs are valid audio with the input's length, channel count and sample rate, and
differ audibly between models:

=================  =============================================================
model              stand-in
=================  =============================================================
``vocals``         mid channel ``(L+R)/2`` copied to every channel
``instrumental``   side: ``input - mid`` (``(L-R)/2`` on L, ``(R-L)/2`` on R), so
                   ``vocals + instrumental == input``
``bass``           4th-order Butterworth-shaped low-pass at 200 Hz
``drums``          high-pass at 1.5 kHz, then onset emphasis (fast/slow envelope ratio)
``guitar``         band-pass 250 Hz - 2.5 kHz
``piano``          band-pass 100 Hz - 4 kHz
``strings``        band-pass 200 Hz - 3.5 kHz
``wind``           band-pass 500 Hz - 3 kHz
``other``          high-pass at 4 kHz
``dialogue``       band-pass 300 Hz - 3.4 kHz (speech band) of the mid channel
``music_fx``       ``input - dialogue``
``effects``        side channel high-passed at 3.4 kHz
=================  =============================================================

``residual`` is always ``input - stem``. Filters are zero-phase and applied in the frequency
domain (one FFT over the whole file), which is fast for the short files the emulator is
meant for. Variants (``high_quality``) use the same DSP; only their price differs.

``music_detection`` measures RMS energy over fixed one-second windows, maps it to a
confidence (-60 dBFS -> 0, -10 dBFS -> 1), and merges neighbouring windows on the same side
of 0.5 into segments covering the whole file. ``transcription``/``alignment`` need no audio
at all: see :mod:`.transcripts`.

Decoding: PCM WAV through the standard :mod:`wave` module; FLAC/AIFF through ``soundfile``
when it is installed. Encoding: WAV always; FLAC/AIFF with ``soundfile``; MP3/MP4 never, since
a file whose bytes lie about their format is worse than an honest error.

numpy is imported lazily so ``import audioshake_async.emulator`` works without it; the
first audio job then fails with :class:`MissingDependency`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import wave
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Signal = NDArray[np.float64]

INSTALL_HINT = "pip install 'audioshake-async[emulator]'"


class DspError(Exception):
    """A target cannot be produced; the message ends up in ``target.error.message``."""

    code = 500


class DecodeError(DspError):
    """The input cannot be decoded by the emulator."""

    code = 415


class EncodeError(DspError):
    """The requested output format cannot be produced by the emulator."""

    code = 501


class MissingDependency(DspError):
    """An optional dependency (numpy, soundfile) is needed and missing."""

    code = 501


@attrs.frozen
class AudioInfo:
    """What the emulator knows about a decodable input."""

    frames: int
    rate: int
    channels: int
    sampwidth: int

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.frames / self.rate if self.rate else 0.0


def have_soundfile() -> bool:
    """True when ``soundfile`` (libsndfile) can be imported."""
    return importlib.util.find_spec("soundfile") is not None


def require_numpy() -> None:
    """Raise a clear :class:`MissingDependency` when numpy is not installed."""
    if importlib.util.find_spec("numpy") is None:
        raise MissingDependency(f"the emulator needs numpy to process audio: {INSTALL_HINT}")


def _not_decodable(fmt: str) -> DecodeError:
    hint = "" if have_soundfile() else " (FLAC/AIFF need the soundfile package)"
    return DecodeError(f"emulator can only decode PCM WAV input{hint}; got {fmt or 'unknown'}")


# --- decoding ------------------------------------------------------------------------------
def probe(path: Path, fmt: str) -> AudioInfo:
    """Length, rate and channels of ``path`` without reading the samples."""
    if fmt == "wav":
        try:
            with wave.open(str(path), "rb") as wav:
                return AudioInfo(
                    wav.getnframes(), wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
                )
        except (wave.Error, EOFError) as exc:
            raise DecodeError(f"emulator can only decode PCM WAV input: {exc}") from exc
    if fmt in ("flac", "aiff") and have_soundfile():
        import soundfile

        try:
            info = soundfile.info(str(path))
        except RuntimeError as exc:
            raise DecodeError(f"cannot decode {fmt} input: {exc}") from exc
        width = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4}
        return AudioInfo(
            int(info.frames), int(info.samplerate), int(info.channels), width.get(info.subtype, 2)
        )
    raise _not_decodable(fmt)


def read_audio(path: Path, fmt: str) -> tuple[Signal, AudioInfo]:
    """Samples as float64 in ``[-1, 1]``, shape ``(frames, channels)``, and their info."""
    require_numpy()
    import numpy as np

    info = probe(path, fmt)
    if fmt != "wav":
        import soundfile

        data, _ = soundfile.read(str(path), dtype="float64", always_2d=True)
        return np.asarray(data, dtype=np.float64), info
    with wave.open(str(path), "rb") as wav:
        raw = wav.readframes(info.frames)
    width = info.sampwidth
    if width == 1:  # 8-bit WAV is unsigned
        ints = np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0
        scale = 128.0
    elif width == 2:
        ints = np.frombuffer(raw, dtype="<i2").astype(np.float64)
        scale = 32768.0
    elif width == 3:
        packed = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        wide = np.zeros((packed.shape[0], 4), dtype=np.uint8)
        wide[:, 1:] = packed  # shift left by 8 bits, then an arithmetic shift restores the sign
        ints = (wide.view("<i4").reshape(-1) >> 8).astype(np.float64)
        scale = 8388608.0
    elif width == 4:
        ints = np.frombuffer(raw, dtype="<i4").astype(np.float64)
        scale = 2147483648.0
    else:
        raise DecodeError(f"unsupported WAV sample width: {width} bytes")
    frames = ints.size // info.channels
    return ints[: frames * info.channels].reshape(frames, info.channels) / scale, info


# --- encoding ------------------------------------------------------------------------------
def check_encodable(fmt: str) -> None:
    """Raise :class:`EncodeError` unless the emulator can honestly write ``fmt``."""
    if fmt == "wav":
        return
    if fmt in ("flac", "aiff"):
        if not have_soundfile():
            raise EncodeError(
                f"emulator needs the soundfile package to encode {fmt}: {INSTALL_HINT}"
            )
        return
    raise EncodeError(f"emulator cannot encode {fmt}")


def write_audio(path: Path, data: Signal, info: AudioInfo, fmt: str) -> None:
    """Write ``data`` as ``fmt`` with the input's rate, channel count and sample width."""
    import numpy as np

    check_encodable(fmt)
    clipped = np.clip(data, -1.0, 1.0)
    if fmt != "wav":
        import soundfile

        # FLAC has no 32-bit integer PCM; 24-bit keeps the most precision it can.
        subtype = {1: "PCM_S8", 2: "PCM_16", 3: "PCM_24", 4: "PCM_32"}[info.sampwidth]
        if fmt == "flac" and info.sampwidth == 4:
            subtype = "PCM_24"
        if fmt == "flac" and info.sampwidth == 1:
            subtype = "PCM_S8"
        soundfile.write(str(path), clipped, info.rate, subtype=subtype, format=fmt.upper())
        return
    width = info.sampwidth
    if width == 1:
        raw = np.round(clipped * 127.0 + 128.0).astype(np.uint8).tobytes()
    elif width == 2:
        raw = np.round(clipped * 32767.0).astype("<i2").tobytes()
    elif width == 3:
        # C order before the byte view: the DSP can hand over a transposed (Fortran-order)
        # array, and numpy < 1.25 refuses to view one as bytes.
        ints = np.ascontiguousarray(np.round(clipped * 8388607.0).astype("<i4"))
        raw = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = np.round(clipped * 2147483647.0).astype("<i4").tobytes()
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(info.channels)
        wav.setsampwidth(width)
        wav.setframerate(info.rate)
        wav.writeframes(raw)


# --- filters -------------------------------------------------------------------------------
def _spectral(x: Signal, rate: int, gain: Callable[[Signal], Signal]) -> Signal:
    """Zero-phase filter: multiply the spectrum by ``gain(frequencies)``."""
    import numpy as np

    n = x.shape[0]
    if n == 0:
        empty: Signal = np.zeros_like(x)
        return empty
    spectrum = np.fft.rfft(x, axis=0)
    freqs: Signal = np.fft.rfftfreq(n, 1.0 / rate).astype(np.float64)
    spectrum *= gain(freqs)[:, None]
    out: Signal = np.fft.irfft(spectrum, n=n, axis=0)
    return out


def _lowpass_gain(cutoff: float, order: int = 4) -> Callable[[Signal], Signal]:
    import numpy as np

    def gain(f: Signal) -> Signal:
        out: Signal = 1.0 / np.sqrt(1.0 + (f / cutoff) ** (2 * order))
        return out

    return gain


def _highpass_gain(cutoff: float, order: int = 4) -> Callable[[Signal], Signal]:
    import numpy as np

    def gain(f: Signal) -> Signal:
        safe = np.maximum(f, 1e-9)
        out: Signal = 1.0 / np.sqrt(1.0 + (cutoff / safe) ** (2 * order))
        out[f == 0] = 0.0
        return out

    return gain


def lowpass(x: Signal, rate: int, cutoff: float, order: int = 4) -> Signal:
    """Butterworth-magnitude low-pass."""
    return _spectral(x, rate, _lowpass_gain(cutoff, order))


def highpass(x: Signal, rate: int, cutoff: float, order: int = 4) -> Signal:
    """Butterworth-magnitude high-pass."""
    return _spectral(x, rate, _highpass_gain(cutoff, order))


def bandpass(x: Signal, rate: int, low: float, high: float, order: int = 4) -> Signal:
    """High-pass at ``low`` times low-pass at ``high``."""
    hp, lp = _highpass_gain(low, order), _lowpass_gain(high, order)

    def gain(f: Signal) -> Signal:
        return hp(f) * lp(f)

    return _spectral(x, rate, gain)


def _smooth(values: Signal, window: int) -> Signal:
    """Moving average along time via a cumulative sum (O(n) whatever the window)."""
    import numpy as np

    window = max(1, window)
    csum = np.cumsum(values, axis=0)
    out = np.empty_like(csum)
    head = min(window, csum.shape[0])
    out[:head] = csum[:head] / np.arange(1, head + 1)[:, None]
    out[head:] = (csum[head:] - csum[:-head]) / window
    return out


def _mid(x: Signal) -> Signal:
    import numpy as np

    mid: Signal = np.repeat(x.mean(axis=1, keepdims=True), x.shape[1], axis=1)
    return mid


def _drums(x: Signal, rate: int) -> Signal:
    import numpy as np

    hp = highpass(x, rate, 1500.0, order=2)
    env = np.abs(hp)
    fast = _smooth(env, int(0.005 * rate))
    slow = _smooth(env, int(0.060 * rate))
    onset = np.clip(fast / (slow + 1e-9) - 1.0, 0.0, 1.0)
    out: Signal = hp * (0.25 + 0.75 * onset)
    return out


def separate(model: str, x: Signal, rate: int) -> Signal:
    """The stand-in stem of ``model`` for ``x`` (see the module docstring)."""
    if model == "vocals":
        return _mid(x)
    if model == "instrumental":
        out: Signal = x - _mid(x)
        return out
    if model == "bass":
        return lowpass(x, rate, 200.0)
    if model == "drums":
        return _drums(x, rate)
    if model == "guitar":
        return bandpass(x, rate, 250.0, 2500.0)
    if model == "piano":
        return bandpass(x, rate, 100.0, 4000.0)
    if model == "strings":
        return bandpass(x, rate, 200.0, 3500.0)
    if model == "wind":
        return bandpass(x, rate, 500.0, 3000.0)
    if model == "other":
        return highpass(x, rate, 4000.0)
    if model == "dialogue":
        return bandpass(_mid(x), rate, 300.0, 3400.0)
    if model == "music_fx":
        rest: Signal = x - bandpass(_mid(x), rate, 300.0, 3400.0)
        return rest
    if model == "effects":
        side: Signal = x - _mid(x)
        return highpass(side, rate, 3400.0)
    # Unknown audio models still get a deterministic, valid file.
    return _mid(x)


def render_stems(
    src: Path, src_fmt: str, model: str, residual: bool, fmt: str, out_dir: Path
) -> list[tuple[str, Path]]:
    """Decode ``src``, write ``<model>.<fmt>`` (and ``<model>_residual.<fmt>``) to ``out_dir``.

    Returns ``(output name, path)`` pairs. Runs in a worker thread.
    """
    check_encodable(fmt)
    require_numpy()
    x, info = read_audio(src, src_fmt)
    stem = separate(model, x, info.rate)
    out_dir.mkdir(parents=True, exist_ok=True)
    produced = [(model, out_dir / f"{model}.{fmt}")]
    write_audio(produced[0][1], stem, info, fmt)
    if residual:
        name = f"{model}_residual"
        produced.append((name, out_dir / f"{name}.{fmt}"))
        write_audio(produced[1][1], x - stem, info, fmt)
    return produced


# --- music detection -----------------------------------------------------------------------
def detect_music(x: Signal, rate: int, window: float = 1.0) -> list[dict[str, float]]:
    """Segments ``{start_time, end_time, confidence}`` covering the file (see module doc)."""
    import numpy as np

    frames = x.shape[0]
    step = max(1, round(window * rate))
    windows: list[tuple[float, float, float]] = []
    for start in range(0, frames, step):
        block = x[start : start + step]
        rms = float(np.sqrt(np.mean(np.square(block)))) if block.size else 0.0
        db = 20.0 * math.log10(rms + 1e-12)
        confidence = min(1.0, max(0.0, (db + 60.0) / 50.0))
        windows.append((start / rate, min(frames, start + step) / rate, confidence))
    segments: list[dict[str, float]] = []
    run: list[tuple[float, float, float]] = []
    for item in windows:
        if run and (run[-1][2] >= 0.5) != (item[2] >= 0.5):
            segments.append(_segment(run))
            run = []
        run.append(item)
    if run:
        segments.append(_segment(run))
    return segments


def _segment(run: Sequence[tuple[float, float, float]]) -> dict[str, float]:
    confidence = sum(c for _, _, c in run) / len(run)
    return {
        "start_time": round(run[0][0], 3),
        "end_time": round(run[-1][1], 3),
        "confidence": round(confidence, 3),
    }


def music_detection_txt(segments: Sequence[dict[str, float]]) -> str:
    """One ``start<TAB>end<TAB>confidence`` line per segment ([INFER] format)."""
    return "".join(
        f"{s['start_time']:.3f}\t{s['end_time']:.3f}\t{s['confidence']:.3f}\n" for s in segments
    )


def render_music_detection(
    src: Path, src_fmt: str, fmt: str, out_dir: Path
) -> list[tuple[str, Path]]:
    """Write ``music_detection.<json|txt>``. Runs in a worker thread."""
    if fmt not in ("json", "txt"):
        raise EncodeError(f"music_detection cannot produce {fmt}")
    require_numpy()
    x, info = read_audio(src, src_fmt)
    segments = detect_music(x, info.rate)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"music_detection.{fmt}"
    text = json.dumps(segments) if fmt == "json" else music_detection_txt(segments)
    path.write_text(text, encoding="utf-8")
    return [("music_detection", path)]
