"""Unit tests of the DSP stand-in and pure helpers (no servers), plus the numpy-less path."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from audioshake_async.emulator import dsp, transcripts
from audioshake_async.emulator.state import billed_minutes, format_minutes, iso_timestamp
from audioshake_async.emulator.testing import write_wav

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("sampwidth", [1, 2, 3, 4])
def test_wav_roundtrip_all_widths(tmp_path: Path, sampwidth: int) -> None:
    src = write_wav(tmp_path / "in.wav", 0.05, rate=8000, channels=2, sampwidth=sampwidth)
    data, info = dsp.read_audio(src, "wav")
    assert data.shape == (400, 2) and info.sampwidth == sampwidth
    assert 0.3 < np.abs(data).max() <= 1.0
    out = tmp_path / "out.wav"
    dsp.write_audio(out, data, info, "wav")
    again, _ = dsp.read_audio(out, "wav")
    step = 2.0 / 2 ** (8 * sampwidth)
    assert np.abs(again - data).max() <= 2 * step


def test_probe_rejects_non_pcm(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(dsp.DecodeError, match="PCM WAV"):
        dsp.probe(bad, "wav")
    with pytest.raises(dsp.DecodeError, match="PCM WAV"):
        dsp.probe(bad, "mp3")


def test_filters_shape_spectra() -> None:
    rate = 8000
    t = np.arange(rate) / rate
    x = np.stack([np.sin(2 * np.pi * 100 * t) + np.sin(2 * np.pi * 3000 * t)] * 2, axis=1)

    def level(y: np.ndarray, freq: int) -> float:
        return float(np.abs(np.fft.rfft(y[:, 0]))[freq])

    low, high = dsp.lowpass(x, rate, 200), dsp.highpass(x, rate, 1000)
    assert level(low, 100) > 50 * level(low, 3000)
    assert level(high, 3000) > 50 * level(high, 100)
    band = dsp.bandpass(x, rate, 2000, 3500)
    assert level(band, 3000) > 20 * level(band, 100)
    assert dsp.separate("vocals", np.zeros((0, 2)), rate).shape == (0, 2)
    assert dsp.lowpass(np.zeros((0, 1)), rate, 100).shape == (0, 1)


def test_drums_emphasise_onsets() -> None:
    rate = 8000
    x = np.zeros((rate, 1))
    x[2000, 0], x[2001, 0] = 0.9, -0.9  # a sharp, broadband click
    x[5000:, 0] = 0.3 * np.sin(2 * np.pi * 2500 * np.arange(3000) / rate)  # steady tone
    drums = dsp.separate("drums", x, rate)
    assert np.abs(drums[2000:2100]).max() > np.abs(drums[6000:7000]).max()


def test_music_detection_segments() -> None:
    rate = 1000
    silence = np.zeros((3 * rate, 1))
    (segment,) = dsp.detect_music(silence, rate)
    assert segment == {"start_time": 0.0, "end_time": 3.0, "confidence": 0.0}
    assert dsp.music_detection_txt([segment]) == "0.000\t3.000\t0.000\n"
    assert dsp.detect_music(np.zeros((0, 1)), rate) == []


@pytest.mark.parametrize(
    ("text", "fmt", "lines"),
    [
        ("one two\n\n three \n", "txt", [["one", "two"], ["three"]]),
        (json.dumps({"text": "a b\nc"}), "json", [["a", "b"], ["c"]]),
        (json.dumps(["x y", "z"]), "json", [["x", "y"], ["z"]]),
        (json.dumps({"lines": [{"text": "p q"}, {"words": [{"text": "r"}]}]}), "json",
         [["p", "q"], ["r"]]),
    ],
)  # fmt: skip
def test_parse_transcript(text: str, fmt: str, lines: list[list[str]]) -> None:
    assert transcripts.parse_transcript(text, fmt) == lines


@pytest.mark.parametrize("bad", ["{nope", json.dumps({"foo": 1}), json.dumps([1, 2])])
def test_parse_transcript_rejects(bad: str) -> None:
    with pytest.raises(dsp.DecodeError):
        transcripts.parse_transcript(bad, "json")


def test_transcript_document_and_srt() -> None:
    doc = transcripts.transcript_document(4000.0, None, [["hello", "world"]])
    words = doc["lines"][0]["words"]
    assert [w["start"] for w in words] == [0.0, 2000.0]
    assert doc["metadata"] == {"language": "en"}
    srt = transcripts.transcript_srt(doc)
    assert srt == "1\n00:00:00,000 --> 01:00:00,000\nhello world\n"
    placeholder = transcripts.transcript_document(0.0, "de", None)
    assert placeholder["text"] == "emulated" and placeholder["lines"][0]["words"][0]["end"] == 0.0


def test_encodable_formats(monkeypatch: pytest.MonkeyPatch) -> None:
    dsp.check_encodable("wav")
    for fmt in ("mp3", "mp4", "ogg"):
        with pytest.raises(dsp.EncodeError, match=f"cannot encode {fmt}"):
            dsp.check_encodable(fmt)
    monkeypatch.setattr(dsp, "have_soundfile", lambda: False)
    with pytest.raises(dsp.EncodeError, match="soundfile"):
        dsp.check_encodable("flac")


def test_state_helpers() -> None:
    assert iso_timestamp(1774408577.442) == "2026-03-25T03:16:17.442Z"
    assert [billed_minutes(s) for s in (0.0, 0.5, 60.0, 60.01, 200.53)] == [0, 1, 1, 2, 4]
    assert [format_minutes(m) for m in (0, 12.5, 3.0, 1 / 3)] == ["0", "12.5", "3", "0.33"]


async def test_processing_without_numpy(tmp_path: Path) -> None:
    """numpy missing: stems fail with an install hint, text models still work."""
    script = tmp_path / "no_numpy.py"
    script.write_text(
        """
import asyncio, json, sys
sys.modules["numpy"] = None  # any "import numpy" now fails
import aiohttp
from pathlib import Path
from audioshake_async.emulator import Emulator
from audioshake_async.emulator.testing import upload_file, write_wav

async def main():
    async with Emulator(delay=0, rate_limit=None) as emu:
        async with aiohttp.ClientSession(headers={"x-api-key": emu.api_key}) as http:
            asset = await upload_file(http, emu.base_url, write_wav(Path(sys.argv[1]), 0.1))
            body = {"assetId": asset["id"], "targets": [
                {"model": "vocals", "formats": ["wav"]},
                {"model": "transcription", "formats": ["json"]}]}
            async with http.post(emu.base_url + "/tasks", json=body) as resp:
                task = await resp.json()
        done = await emu.wait_for_task(task["id"])
        print(json.dumps([[t["status"], t.get("error", {}).get("message")]
                          for t in done["targets"]]))

asyncio.run(main())
"""
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(tmp_path / "in.wav"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    (vocals_status, message), (text_status, _) = json.loads(out)
    assert vocals_status == "error" and "needs numpy" in message and "pip install" in message
    assert text_status == "completed"


def test_sample_wavs_are_small_and_valid() -> None:
    samples = sorted((ROOT / "examples" / "audio").glob("*.wav"))
    assert len(samples) == 3
    for path in samples:
        assert path.stat().st_size < 700_000
        with wave.open(str(path)) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 44100)
            assert 3.0 <= w.getnframes() / 44100 <= 4.0
