"""Emulator processing: real output files, DSP stand-in properties, costs, errors, scale."""

from __future__ import annotations

import asyncio
import json
import struct
import wave
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from audioshake_async.emulator import Emulator, dsp
from audioshake_async.emulator.catalog import CATALOG
from audioshake_async.emulator.testing import upload_file, write_wav

AUDIO_MODELS = sorted(m.id for m in CATALOG.values() if m.is_audio and m.access == "enabled")


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(delay=0.0, rate_limit=None, seed=17) as emulator:
        yield emulator


@pytest.fixture
async def http(emu: Emulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"x-api-key": emu.api_key}) as session:
        yield session


async def run_task(
    emu: Emulator, http: aiohttp.ClientSession, source: dict[str, Any], *targets: dict[str, Any]
) -> dict[str, Any]:
    async with http.post(f"{emu.base_url}/tasks", json={**source, "targets": list(targets)}) as r:
        assert r.status == 200, await r.text()
        created = await r.json()
    return await emu.wait_for_task(created["id"], 20)


async def download(link: str, dest: Path) -> Path:
    async with aiohttp.ClientSession() as cdn, cdn.get(link) as resp:
        assert resp.status == 200
        data = await resp.read()
    await asyncio.to_thread(dest.write_bytes, data)
    return dest


def read_wav(path: Path) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Samples as int arrays (frames, channels) and (channels, sampwidth, rate)."""
    with wave.open(str(path), "rb") as w:
        params = (w.getnchannels(), w.getsampwidth(), w.getframerate())
        raw = w.readframes(w.getnframes())
    data, _ = dsp.read_audio(path, "wav")
    assert len(raw) == data.shape[0] * params[0] * params[1]
    return data, params


def outputs(task: dict[str, Any], index: int = 0) -> dict[str, str]:
    """``{"<name>.<format>": link}`` of one target."""
    return {f"{o['name']}.{o['format']}": o["link"] for o in task["targets"][index]["output"]}


# --- stems -----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", AUDIO_MODELS)
async def test_every_audio_model_writes_matching_wavs(
    emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path, model: str
) -> None:
    src = write_wav(tmp_path / "in.wav", 0.3, rate=11025, channels=2)
    asset = await upload_file(http, emu.base_url, src)
    task = await run_task(
        emu, http, {"assetId": asset["id"]}, {"model": model, "formats": ["wav"], "residual": True}
    )
    target = task["targets"][0]
    assert target["status"] == "completed", target
    assert set(outputs(task)) == {f"{model}.wav", f"{model}_residual.wav"}
    source, params = read_wav(src)
    stem, stem_params = read_wav(await download(outputs(task)[f"{model}.wav"], tmp_path / "s.wav"))
    rest, rest_params = read_wav(
        await download(outputs(task)[f"{model}_residual.wav"], tmp_path / "r.wav")
    )
    assert stem.shape == source.shape == rest.shape
    assert stem_params == params == rest_params
    assert np.abs(stem).max() > 1e-3, "stem is silent"
    # residual = input - stem, up to 16-bit rounding (and clipping, absent at this level).
    assert np.allclose(stem + rest, source, atol=3 / 32768)
    assert target["duration"] == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize(("channels", "sampwidth"), [(1, 1), (1, 2), (2, 3), (2, 4), (3, 2)])
async def test_sample_formats_preserved(
    emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path, channels: int, sampwidth: int
) -> None:
    src = write_wav(tmp_path / "in.wav", 0.2, rate=8000, channels=channels, sampwidth=sampwidth)
    asset = await upload_file(http, emu.base_url, src)
    task = await run_task(
        emu, http, {"assetId": asset["id"]}, {"model": "bass", "formats": ["wav"]}
    )
    out = await download(outputs(task)["bass.wav"], tmp_path / "bass.wav")
    with wave.open(str(src)) as a, wave.open(str(out)) as b:
        assert (a.getnchannels(), a.getsampwidth(), a.getframerate(), a.getnframes()) == (
            b.getnchannels(),
            b.getsampwidth(),
            b.getframerate(),
            b.getnframes(),
        )


async def test_vocals_plus_instrumental_is_the_mix(
    emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    src = Path(__file__).parent.parent / "examples" / "audio" / "wide_lead.wav"
    if not src.exists():
        src = write_wav(tmp_path / "in.wav", 0.5)
    asset = await upload_file(http, emu.base_url, src)
    task = await run_task(
        emu,
        http,
        {"assetId": asset["id"]},
        {"model": "vocals", "formats": ["wav"]},
        {"model": "instrumental", "formats": ["wav"]},
    )
    vocals, _ = read_wav(await download(outputs(task, 0)["vocals.wav"], tmp_path / "v.wav"))
    inst, _ = read_wav(await download(outputs(task, 1)["instrumental.wav"], tmp_path / "i.wav"))
    mix, _ = read_wav(src)
    assert np.allclose(vocals + inst, mix, atol=3 / 32768)
    # Mid is identical on both channels; side is anti-symmetric: the stems really differ.
    assert np.allclose(vocals[:, 0], vocals[:, 1])
    assert np.allclose(inst[:, 0], -inst[:, 1], atol=2 / 32768)
    assert np.abs(inst).max() > 0.05 and np.abs(vocals - inst).max() > 0.05


async def test_bass_is_low_passed(
    emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    rate = 8000
    t = np.arange(rate) / rate
    tone = 0.4 * np.sin(2 * np.pi * 100 * t) + 0.4 * np.sin(2 * np.pi * 2000 * t)
    src = tmp_path / "two-tones.wav"
    with wave.open(str(src), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.round(tone * 32767).astype("<i2").tobytes())
    asset = await upload_file(http, emu.base_url, src)
    task = await run_task(
        emu, http, {"assetId": asset["id"]}, {"model": "bass", "formats": ["wav"]}
    )
    bass, _ = read_wav(await download(outputs(task)["bass.wav"], tmp_path / "b.wav"))
    spectrum = np.abs(np.fft.rfft(bass[:, 0]))
    assert spectrum[100] > 100 * spectrum[2000]


# --- formats ---------------------------------------------------------------------------------
@pytest.fixture
async def asset(emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path) -> dict[str, Any]:
    return await upload_file(http, emu.base_url, write_wav(tmp_path / "in.wav", 0.4, rate=8000))


@pytest.mark.parametrize("fmt", ["mp3", "mp4"])
async def test_lossy_outputs_are_honest_errors(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any], fmt: str
) -> None:
    task = await run_task(
        emu, http, {"assetId": asset["id"]}, {"model": "drums", "formats": ["wav", fmt]}
    )
    target = task["targets"][0]
    assert target["status"] == "error" and target["output"] == []
    assert target["error"]["message"] == f"emulator cannot encode {fmt}"
    assert isinstance(target["error"]["code"], int) and "cost" not in target
    assert task["cost"] == 0


@pytest.mark.skipif(not dsp.have_soundfile(), reason="soundfile not installed")
@pytest.mark.parametrize("fmt", ["flac", "aiff"])
async def test_flac_aiff_with_soundfile(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any], tmp_path: Path, fmt: str
) -> None:
    import soundfile

    task = await run_task(
        emu, http, {"assetId": asset["id"]}, {"model": "vocals", "formats": ["wav", fmt]}
    )
    assert task["targets"][0]["status"] == "completed"
    assert set(outputs(task)) == {"vocals.wav", f"vocals.{fmt}"}
    out = await download(outputs(task)[f"vocals.{fmt}"], tmp_path / f"v.{fmt}")
    info = soundfile.info(str(out))
    assert (info.frames, info.samplerate, info.channels) == (3200, 8000, 2)
    assert info.format == fmt.upper()
    # FLAC input decodes too when soundfile is there.
    flac_asset = await upload_file(http, emu.base_url, out, content_type=f"audio/{fmt}")
    again = await run_task(
        emu, http, {"assetId": flac_asset["id"]}, {"model": "bass", "formats": ["wav"]}
    )
    assert again["targets"][0]["status"] == "completed"


async def test_flac_without_soundfile_errors(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any], monkeypatch: Any
) -> None:
    monkeypatch.setattr(dsp, "have_soundfile", lambda: False)
    task = await run_task(
        emu, http, {"assetId": asset["id"]}, {"model": "vocals", "formats": ["flac"]}
    )
    error = task["targets"][0]["error"]
    assert "soundfile" in error["message"] and "flac" in error["message"]


async def test_non_wav_inputs_error_clearly(
    emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(dsp, "have_soundfile", lambda: False)
    mp3 = tmp_path / "song.mp3"
    mp3.write_bytes(b"ID3" + bytes(500))
    float_wav = tmp_path / "float.wav"  # IEEE float WAV: not PCM
    fmt_chunk = struct.pack("<HHIIHH", 3, 1, 8000, 32000, 4, 32)
    data = bytes(400)
    float_wav.write_bytes(
        b"RIFF"
        + struct.pack("<I", 4 + 8 + len(fmt_chunk) + 8 + len(data))
        + b"WAVEfmt "
        + struct.pack("<I", len(fmt_chunk))
        + fmt_chunk
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"definitely not RIFF")
    flac = tmp_path / "song.flac"
    flac.write_bytes(b"fLaC" + bytes(100))
    for path in (mp3, float_wav, garbage, flac):
        asset = await upload_file(http, emu.base_url, path, content_type="application/octet-stream")
        task = await run_task(
            emu,
            http,
            {"assetId": asset["id"]},
            {"model": "vocals", "formats": ["wav"]},
            {"model": "transcription", "formats": ["json"]},
        )
        for target in task["targets"]:
            assert target["status"] == "error", path.name
            assert "emulator can only decode PCM WAV input" in target["error"]["message"]


# --- url sources -----------------------------------------------------------------------------
async def test_url_source_from_own_cdn_and_loopback(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any], tmp_path: Path
) -> None:
    task = await run_task(
        emu, http, {"url": asset["link"]}, {"model": "vocals", "formats": ["wav"]}
    )
    assert task["targets"][0]["status"] == "completed" and task["url"] == asset["link"]
    # Any loopback server works too (e.g. a test fixture serving files).
    src = write_wav(tmp_path / "served.wav", 0.2, rate=8000)
    app = web.Application()

    async def serve(request: web.Request) -> web.FileResponse:
        return web.FileResponse(src)

    app.router.add_get("/served.wav", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        task = await run_task(
            emu,
            http,
            {"url": f"http://localhost:{port}/served.wav"},
            {"model": "bass", "formats": ["wav"]},
            {"model": "music_detection", "formats": ["json"]},
        )
        assert [t["status"] for t in task["targets"]] == ["completed", "completed"]
        assert task["targets"][0]["duration"] == pytest.approx(0.2, abs=0.01)
        missing = await run_task(
            emu,
            http,
            {"url": f"http://127.0.0.1:{port}/missing.wav"},
            {"model": "bass", "formats": ["wav"]},
        )
        assert "HTTP 404" in missing["targets"][0]["error"]["message"]
    finally:
        await runner.cleanup()


async def test_external_url_not_fetched(emu: Emulator, http: aiohttp.ClientSession) -> None:
    task = await run_task(
        emu,
        http,
        {"url": "https://demos.audioshake.ai/demo-assets/shakeitup.mp3"},
        {"model": "vocals", "formats": ["wav"]},
    )
    error = task["targets"][0]["error"]
    assert task["targets"][0]["status"] == "error" and "POST /assets" in error["message"]


# --- text models -----------------------------------------------------------------------------
async def test_music_detection_outputs(
    emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    rate = 8000
    loud = 0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate)
    signal = np.concatenate([loud, np.zeros(2 * rate), loud[:rate]])
    src = tmp_path / "music-silence-music.wav"
    with wave.open(str(src), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.round(signal * 32767).astype("<i2").tobytes())
    asset = await upload_file(http, emu.base_url, src)
    task = await run_task(
        emu,
        http,
        {"assetId": asset["id"]},
        {"model": "music_detection", "formats": ["json", "txt"]},
    )
    assert task["targets"][0]["cost"] == 0.5  # 0.5 credits/min, one minute
    links = outputs(task)
    segments = json.loads(
        (await download(links["music_detection.json"], tmp_path / "m.json")).read_text()
    )
    assert [(s["start_time"], s["end_time"]) for s in segments] == [(0, 2), (2, 4), (4, 5)]
    assert segments[0]["confidence"] > 0.5 > segments[1]["confidence"]
    assert set(segments[0]) == {"start_time", "end_time", "confidence"}
    lines = (
        (await download(links["music_detection.txt"], tmp_path / "m.txt")).read_text().splitlines()
    )
    assert len(lines) == 3 and lines[0].split("\t")[:2] == ["0.000", "2.000"]


async def test_transcription_outputs(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any], tmp_path: Path
) -> None:
    task = await run_task(
        emu,
        http,
        {"assetId": asset["id"]},
        {"model": "transcription", "formats": ["json", "srt", "txt"], "language": "fr"},
    )
    links = outputs(task)
    doc = json.loads((await download(links["transcription.json"], tmp_path / "t.json")).read_text())
    assert set(doc) == {"text", "lines", "metadata"} and doc["metadata"] == {"language": "fr"}
    words = [w for line in doc["lines"] for w in line["words"]]
    assert words and all(set(w) == {"text", "start", "end", "confidence"} for w in words)
    assert {w["text"] for w in words} == {"emulated"}
    assert all(0 <= w["start"] < w["end"] <= 0.4 for w in words)
    srt = (await download(links["transcription.srt"], tmp_path / "t.srt")).read_text()
    assert srt.startswith("1\n00:00:00,000 --> 00:00:00,")
    txt = (await download(links["transcription.txt"], tmp_path / "t.txt")).read_text()
    assert txt.strip() == doc["text"]


async def test_alignment_uses_given_transcript(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any], tmp_path: Path
) -> None:
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text("hello shaky world\n\nsecond line here\n")
    transcript = await upload_file(http, emu.base_url, lyrics, content_type="text/plain")
    task = await run_task(
        emu,
        http,
        {"assetId": asset["id"]},
        {"model": "alignment", "formats": ["json"], "transcriptAssetId": transcript["id"]},
        # The transcript's own CDN link is a loopback URL, so it can be fetched as well.
        {"model": "alignment", "formats": ["txt"], "transcriptUrl": transcript["link"]},
        {"model": "alignment", "formats": ["txt"]},  # none given: transcribes (placeholder)
    )
    assert [t["status"] for t in task["targets"]] == ["completed"] * 3
    doc = json.loads(
        (await download(outputs(task, 0)["alignment.json"], tmp_path / "a.json")).read_text()
    )
    assert [line["text"] for line in doc["lines"]] == ["hello shaky world", "second line here"]
    txt = (await download(outputs(task, 1)["alignment.txt"], tmp_path / "a.txt")).read_text()
    assert txt == "hello shaky world\nsecond line here\n"
    auto = (await download(outputs(task, 2)["alignment.txt"], tmp_path / "b.txt")).read_text()
    assert "emulated" in auto
    assert task["targets"][0]["transcriptAssetId"] == transcript["id"]


# --- outcomes, costs, timing -----------------------------------------------------------------
async def test_cost_and_duration(
    emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    src = write_wav(tmp_path / "long.wav", 61.0, rate=1000, channels=1, sampwidth=1)
    asset = await upload_file(http, emu.base_url, src)
    task = await run_task(
        emu,
        http,
        {"assetId": asset["id"]},
        {"model": "vocals", "formats": ["wav"]},
        {"model": "vocals", "formats": ["wav"], "variant": "high_quality"},
        {"model": "dialogue", "formats": ["wav"]},
        {"model": "transcription", "formats": ["json"]},
    )
    costs = [t["cost"] for t in task["targets"]]
    assert costs == [2, 3, 3, 2]  # credits/min x ceil(61 s / 60)
    assert task["cost"] == 10
    assert all(t["duration"] == 61.0 for t in task["targets"])


async def test_duration_limit(emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    src = write_wav(tmp_path / "hour.wav", 3601.0, rate=50, channels=1, sampwidth=1)
    asset = await upload_file(http, emu.base_url, src)
    task = await run_task(
        emu,
        http,
        {"assetId": asset["id"]},
        {"model": "transcription", "formats": ["json"]},
        {"model": "bass", "formats": ["wav"]},  # 3 h limit: fine
    )
    assert task["targets"][0]["error"]["code"] == 413
    assert task["targets"][1]["status"] == "completed"


async def test_error_knobs(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any]
) -> None:
    emu.configure(error_models=["drums"])
    task = await run_task(
        emu,
        http,
        {"assetId": asset["id"]},
        {"model": "drums", "formats": ["wav"]},
        {"model": "bass", "formats": ["wav"]},
    )
    assert [t["status"] for t in task["targets"]] == ["error", "completed"]
    assert task["targets"][0]["error"]["code"] == 500
    assert task["completedAt"] is not None  # partial success still completes the task
    emu.configure(error_models=[], target_error_rate=0.5)
    task = await run_task(
        emu, http, {"assetId": asset["id"]}, *[{"model": "bass", "formats": ["wav"]}] * 20
    )
    statuses = [t["status"] for t in task["targets"]]
    assert 3 <= statuses.count("error") <= 17 and "completed" in statuses
    assert emu.stats()["targets"]["error"] == 1 + statuses.count("error")


async def test_delay_and_jitter(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any]
) -> None:
    emu.configure(delay=0.3, jitter=0.3)
    body = {"assetId": asset["id"], "targets": [{"model": "bass", "formats": ["wav"]}] * 4}
    async with http.post(f"{emu.base_url}/tasks", json=body) as resp:
        task = await resp.json()
    async with http.get(f"{emu.base_url}/tasks/{task['id']}") as resp:
        early = await resp.json()
    assert [t["status"] for t in early["targets"]] == ["processing"] * 4
    assert early["completedAt"] is None
    done = await emu.wait_for_task(task["id"], 10)
    seen_done = datetime.now(timezone.utc)

    def ts(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    # Bounds that hold however slow the machine is: no earlier than the delay, no later than
    # the moment the wait saw the task finished.
    elapsed = (ts(done["completedAt"]) - ts(done["createdAt"])).total_seconds()
    assert elapsed >= 0.3
    assert ts(done["completedAt"]) <= seen_done


async def test_partial_progress_visible(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any]
) -> None:
    """Targets finish independently: a snapshot can hold completed and processing ones."""
    body = {"assetId": asset["id"], "targets": [{"model": "bass", "formats": ["wav"]}] * 2}
    emu.configure(delay=0.0, jitter=1.0)
    seen: list[set[str]] = []
    async with http.post(f"{emu.base_url}/tasks", json=body) as resp:
        task_id = (await resp.json())["id"]
    while emu.task(task_id)["completedAt"] is None:
        seen.append({t["status"] for t in emu.task(task_id)["targets"]})
        await asyncio.sleep(0.005)
    assert {"completed", "processing"} in seen


async def test_many_tasks_share_cached_outputs(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any]
) -> None:
    body = {
        "assetId": asset["id"],
        "targets": [{"model": "vocals", "formats": ["wav"]}, {"model": "bass", "formats": ["wav"]}],
    }

    async def create(i: int) -> str:
        async with http.post(f"{emu.base_url}/tasks", json={**body, "metadata": str(i)}) as resp:
            assert resp.status == 200
            return str((await resp.json())["id"])

    ids = []
    for start in range(0, 1000, 100):
        ids += await asyncio.gather(*(create(i) for i in range(start, start + 100)))
    await emu.wait_idle(30)
    digests = {json.dumps(emu.output_digests(i), sort_keys=True) for i in ids}
    assert len(digests) == 1  # identical content...
    output_dirs = list((emu.workdir / "outputs").iterdir())
    assert len(output_dirs) == 2  # ...computed once per (asset, model, residual, format)
    stats = emu.stats()
    assert stats["targets"] == {"processing": 0, "completed": 2000, "error": 0}
    assert stats["duplicate_metadata"] == {}
