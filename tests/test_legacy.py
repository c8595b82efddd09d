"""The legacy Jobs API: client, composite-task provider, batch and CLI, over loopback.

Everything runs against :class:`~audioshake_async.emulator.legacy.LegacyEmulator` (a real HTTP
server with real DSP outputs on a separate CDN port); nothing depends on wall-clock timing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import pathlib
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from audioshake_async import PollPolicy, Target, errors, legacy
from audioshake_async.batch import BatchResult, run_batch
from audioshake_async.cli import main
from audioshake_async.emulator.legacy import LegacyEmulator
from audioshake_async.legacy import (
    Job,
    LegacyClient,
    LegacyProvider,
    composite_task,
    parse_job,
    split_task_id,
    target_status,
)
from audioshake_async.legacy import client as legacy_client

from ._servers import base_url, serve
from .conftest import FAST_RETRY, write_wav

#: Distinctive: searched for in logs, reprs and exception messages.
TOKEN = "legacy-SECRET-7c1e-token"
FAST_POLL = PollPolicy(initial_interval=0.02, max_interval=0.1)
SAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples" / "audio"
MakeWavs = Callable[..., list[pathlib.Path]]


def quiet_client(emu: LegacyEmulator, **kwargs: Any) -> LegacyClient:
    """A client of ``emu`` with fast retries and polls (the deprecation warning silenced)."""
    kwargs.setdefault("retry", FAST_RETRY)
    kwargs.setdefault("poll", FAST_POLL)
    kwargs.setdefault("rate_limit", 2000.0)
    token = kwargs.pop("token", emu.token)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return LegacyClient(token, emu.base_url, **kwargs)


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
async def emu() -> AsyncIterator[LegacyEmulator]:
    async with LegacyEmulator(token=TOKEN, delay=0.0, seed=7) as emulator:
        yield emulator


@pytest.fixture
async def client(emu: LegacyEmulator) -> AsyncIterator[LegacyClient]:
    async with quiet_client(emu) as shared:
        yield shared


@pytest.fixture
def wav(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "song.wav"
    write_wav(path)
    return path


@contextlib.asynccontextmanager
async def callback_receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback endpoint recording every callback body it receives."""
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serve(app) as server:
        yield base_url(server) + "/hook", received


@contextlib.asynccontextmanager
async def file_server(path: pathlib.Path) -> AsyncIterator[str]:
    """Serves ``path`` on loopback; yields its URL."""

    async def get(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get(f"/media/{path.name}", get)
    async with serve(app) as server:
        yield f"{base_url(server)}/media/{path.name}"


# --------------------------------------------------------------------------- client


async def test_upload_job_wait_download_usage(
    emu: LegacyEmulator, client: LegacyClient, wav: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    asset = await client.upload(wav)
    assert asset.format == "wav" and asset.file_type == "audio/wav" and asset.id
    job = await client.create_job(asset.id, "vocals", "wav")
    # Unwrapped from {"job": ...}; a new job is "queued" (seed 002).
    assert job.status == "queued" and job.model == "vocals" and job.format == "wav"
    assert job.asset_id == asset.id and not job.is_terminal
    done = await client.wait(job.id, timeout=30)
    assert done.is_completed and done.status == "completed"
    assert [o.name for o in done.output_assets] == ["vocals.wav"]
    assert [(o.name, o.format) for o in done.outputs] == [("vocals", "wav")]
    files = await client.download(done, tmp_path / "out")
    assert [p.name for p in files] == ["vocals.wav"]
    assert sha256(files[0]) == emu.output_digests(job.id)["vocals.wav"]
    usage = await client.usage()
    assert usage.client_id and usage.usage[0].total_jobs == 1
    assert isinstance(usage.usage[0].total_minutes, float)
    stats = emu.stats()
    assert stats["bytes_uploaded"] == wav.stat().st_size  # noqa: ASYNC240 - a small local file
    assert stats["requests"]["POST /upload"] == 1
    assert stats["requests"]["POST /job"] == 1
    assert client.request_counts["POST /job"] == 1


async def test_download_reports_progress_per_file(
    client: LegacyClient, wav: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    asset = await client.upload(wav)
    done = await client.wait((await client.create_job(asset.id, "vocals", "wav")).id, timeout=30)
    seen: dict[str, list[tuple[int, int | None]]] = {}
    files = await client.download(
        done,
        tmp_path / "out",
        progress=lambda name, got, total: seen.setdefault(name, []).append((got, total)),
    )
    # The same (file name, received, total) calls as AudioShake.download makes.
    assert sorted(seen) == [p.name for p in files] == ["vocals.wav"]
    size = files[0].stat().st_size
    calls = seen["vocals.wav"]
    assert calls[-1] == (size, size), calls[-3:]
    assert [got for got, _ in calls] == sorted(got for got, _ in calls)


async def test_upload_link_and_a_job_on_it(
    emu: LegacyEmulator, client: LegacyClient, wav: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    with pytest.raises(errors.ValidationError):
        await client.upload_link("ftp://example.com/song.wav")
    async with file_server(wav) as url:
        asset = await client.upload_link(url, name="song")
        assert (asset.name, asset.format, asset.link) == ("song", "wav", url)
        job = await client.wait(await client.create_job(asset.id, "drums", "wav"), timeout=30)
        assert job.is_completed
        files = await client.download(job.id, tmp_path / "o")
    assert sha256(files[0]) == emu.output_digests(job.id)["drums.wav"]


async def test_statuses_callbacks_and_failures(
    emu: LegacyEmulator, client: LegacyClient, wav: pathlib.Path
) -> None:
    emu.configure(delay=0.2, error_models={"drums"}, initial_status="created")
    asset = await client.upload(wav)
    async with callback_receiver() as (hook_url, received):
        ok = await client.create_job(asset.id, "vocals", "wav", callback_url=hook_url)
        bad = await client.create_job(asset.id, "drums", "wav", callback_url=hook_url)
        assert ok.status == bad.status == "created" and ok.callback_url == hook_url
        ok = await client.wait(ok.id, timeout=30)
        bad = await client.wait(bad.id, timeout=30)
        await emu.wait_idle()
    assert ok.is_completed and bad.is_failed and bad.status == "failed"
    assert "error_models" in (bad.failure_message or "")
    assert bad.outputs == ()
    # Each job posted every change of state, in order, in the {"job": ...} envelope.
    by_job: dict[str, list[str]] = {}
    for body in received:
        job = LegacyClient.parse_callback(json.dumps(body))
        by_job.setdefault(job.id, []).append(job.status)
    assert by_job == {ok.id: ["processing", "completed"], bad.id: ["processing", "failed"]}
    final = LegacyClient.parse_callback(json.dumps(received[-1]).encode())
    assert final.is_terminal
    assert emu.stats()["callbacks"]["deliveries_succeeded"] == 4
    with pytest.raises(errors.TaskFailedError, match="drums"):
        await client.wait(bad.id, raise_on_error=True)
    emu.configure(failure_status="error")
    assert (await client.get_job(bad.id)).status == "error"


async def test_brief_404_after_creation_is_tolerated(
    emu: LegacyEmulator, client: LegacyClient, wav: pathlib.Path
) -> None:
    emu.configure(not_found_reads=2)
    asset = await client.upload(wav)
    job = await client.create_job(asset.id, "vocals", "wav")
    done = await client.wait(job.id, timeout=30)
    assert done.is_completed
    assert emu.stats()["not_found_served"] == 2
    job = await client.create_job(asset.id, "bass", "wav")
    with pytest.raises(errors.NotFoundError):
        await client.get_job(job.id)  # a single read does not hide the 404
    async with quiet_client(emu, not_found_retries=0) as impatient:
        with pytest.raises(errors.NotFoundError):
            await impatient.wait(job.id)


async def test_errors_401_404_400(
    emu: LegacyEmulator, client: LegacyClient, wav: pathlib.Path
) -> None:
    async with quiet_client(emu, token="wrong-token") as stranger:
        with pytest.raises(errors.AuthenticationError) as refused:
            await stranger.usage()
    assert refused.value.status == 401 and "Bearer" in refused.value.message
    with pytest.raises(errors.NotFoundError):
        await client.get_job("cnosuchjob")
    with pytest.raises(errors.NotFoundError, match="Cannot find asset"):
        await client.create_job("cnosuchasset", "vocals", "wav")
    asset = await client.upload(wav)
    with pytest.raises(errors.BadRequestError, match="unknown model"):
        await client.create_job(asset.id, "kazoo", "wav")
    with pytest.raises(errors.BadRequestError, match="does not support"):
        await client.create_job(asset.id, "music_detection", "wav")
    with pytest.raises(errors.ValidationError):
        await client.create_job(asset.id, "vocals", "wav", name="drums")
    with pytest.raises(errors.ValidationError):
        await client.upload(wav.parent / "missing.wav")
    assert emu.stats()["jobs_created"] == 0


async def test_create_job_is_never_retried_once_sent(
    emu: LegacyEmulator, client: LegacyClient, wav: pathlib.Path
) -> None:
    asset = await client.upload(wav)
    emu.script("POST /job", "drop_after")
    with pytest.raises(errors.AmbiguousRequestError):
        await client.create_job(asset.id, "vocals", "wav")
    assert emu.stats()["jobs_created"] == 1  # it did take effect: a retry would bill twice
    emu.script("POST /job", "503")
    with pytest.raises(errors.ServerError):
        await client.create_job(asset.id, "vocals", "wav")
    emu.script("POST /job", "429")  # refused unprocessed: safe to retry (Retry-After: 0)
    await client.create_job(asset.id, "vocals", "wav")
    assert client.request_counts["POST /job"] == 4
    emu.script("GET /job/{id}", "503", "drop")  # reads are retried
    job = await client.create_job(asset.id, "drums", "wav")
    assert (await client.get_job(job.id)).id == job.id


async def test_output_variants_are_parsed(
    emu: LegacyEmulator, client: LegacyClient, wav: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    asset = await client.upload(wav)
    for variant in ("stemAssets", "nested"):
        emu.configure(output_key=variant)
        job = await client.wait(await client.create_job(asset.id, "bass", "wav"), timeout=30)
        raw = emu.job(job.id)
        assert "outputAssets" not in raw
        assert [o.name for o in job.output_assets] == ["bass.wav"], variant
        files = await client.download(job, tmp_path / variant)
        assert sha256(files[0]) == emu.output_digests(job.id)["bass.wav"]


def test_parse_job_is_defensive() -> None:
    job = parse_job(
        {
            "job": {
                "id": "j1",
                "status": "COMPLETED",
                "stemMetadata": {"name": "vocals", "format": "wav"},
                "createdAt": "yesterday",
                "statusInfo": "fine",
                "sourceAsset": {
                    "id": "a1",
                    "stemAssets": [
                        {"name": "vocals.wav", "link": "https://cdn/x/vocals.wav?sig=1"},
                        {"link": "https://cdn/x/residual.wav?sig=2"},
                        {"format": "wav"},
                    ],
                },
            }
        }
    )
    assert job.is_completed and job.model == "vocals" and job.created_at is None
    assert job.status_info is not None and job.status_info.message == "fine"
    assert [(o.name, o.format) for o in job.outputs] == [("vocals", "wav"), ("residual", "wav")]
    failed = parse_job({"id": "j2", "status": "error", "errorMessage": "boom"})
    assert failed.is_failed and failed.failure_message == "boom"
    assert parse_job({"id": "j3"}).status == "created"
    with pytest.raises(errors.ResponseParseError):
        parse_job(["not", "a", "job"])


def test_composite_task_mapping() -> None:
    assert [target_status(s) for s in ("created", "queued", "processing")] == ["processing"] * 3
    assert [target_status(s) for s in ("completed", "failed", "error")] == [
        "completed",
        "error",
        "error",
    ]
    done = parse_job(
        {
            "id": "ja",
            "status": "completed",
            "metadata": {"name": "vocals", "format": "wav", "clientToken": "tok"},
            "outputAssets": [{"name": "vocals.wav", "format": "wav", "link": "https://c/v"}],
        }
    )
    failed = Job("jb", status="failed", metadata={"name": "drums", "format": "wav"})
    task = composite_task([done, failed])
    assert task.id == "legacy:ja+jb" and split_task_id(task.id) == ["ja", "jb"]
    assert [(t.id, t.model, t.status) for t in task.targets] == [
        ("ja", "vocals", "completed"),
        ("jb", "drums", "error"),
    ]
    assert task.is_done and not task.succeeded
    assert json.loads(task.metadata or "") == {"client_token": "tok"}
    assert [o.filename for o in task.outputs] == ["vocals.wav"]
    with pytest.raises(errors.ValidationError):
        split_task_id("c123")


async def test_deprecation_warning_once(
    emu: LegacyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(legacy_client, "_DEPRECATION_WARNED", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = LegacyClient(TOKEN, emu.base_url)
        second = LegacyClient(TOKEN, emu.base_url)
    await first.aclose()
    await second.aclose()
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1
    assert legacy.MIGRATION_GUIDE_URL in str(deprecations[0].message)
    assert deprecations[0].filename == __file__  # points at the caller


async def test_configuration_and_session_ownership(
    emu: LegacyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(legacy.ENV_LEGACY_TOKEN, f"Bearer {TOKEN}")
    monkeypatch.setenv(legacy.ENV_LEGACY_BASE_URL, emu.base_url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        async with aiohttp.ClientSession() as session:
            async with LegacyClient(session=session) as injected:
                assert injected.base_url == emu.base_url
                assert (await injected.usage()).client_id  # "Bearer " prefix stripped
            assert not session.closed  # an injected session is left to its owner
        owned = LegacyClient()
        await owned.usage()
        session_of_owned = owned.transport.session
        await owned.aclose()
        assert session_of_owned.closed
        monkeypatch.delenv(legacy.ENV_LEGACY_TOKEN)
        monkeypatch.delenv(legacy.ENV_LEGACY_BASE_URL)
        with pytest.raises(errors.ConfigurationError, match=legacy.ENV_LEGACY_TOKEN):
            LegacyClient()
        assert LegacyClient("t").base_url == legacy.DEFAULT_LEGACY_BASE_URL


async def test_token_stays_off_the_cdn_logs_reprs_and_errors(
    emu: LegacyEmulator,
    wav: pathlib.Path,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="audioshake_async")
    raised: list[BaseException] = []
    async with quiet_client(emu) as client:
        emu.script("POST /upload", "503")  # a retry is logged
        asset = await client.upload(wav)
        job = await client.wait(await client.create_job(asset.id, "vocals", "wav"), timeout=30)
        emu.expire_links()  # the download sees a 403 and refreshes the link from the job
        await client.download(job, tmp_path / "o")
        for call in (client.get_job("cmissing"), client.create_job(asset.id, "kazoo", "wav")):
            try:
                await call
            except errors.AudioShakeError as exc:
                raised.append(exc)
        emu.script("POST /job", "drop_after")
        try:
            await client.create_job(asset.id, "vocals", "wav")
        except errors.AmbiguousRequestError as exc:
            raised.append(exc)
        texts = [repr(client), repr(client.transport), repr(LegacyProvider(client))]
    stats = emu.stats()
    assert stats["cdn_requests"] >= 2 and stats["cdn_key_leaks"] == 0, stats
    assert len(raised) == 3
    texts += [str(e) for e in raised] + [repr(e) for e in raised]
    assert "retrying" in caplog.text
    for text in [*texts, caplog.text]:
        assert TOKEN not in text
    # The detector works: a request that does carry the token to the CDN is counted.
    link = job.outputs[0].link
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with session.get(link, headers=headers) as response:
            await response.read()
    assert emu.stats()["cdn_key_leaks"] == 1


# --------------------------------------------------------------------------- provider + batch


async def collect(
    provider: LegacyProvider, inputs: Any, out: pathlib.Path, **kw: Any
) -> list[BatchResult]:
    targets = kw.pop("targets", [Target("vocals", ["wav"]), Target("drums", ["wav"])])
    return [
        result async for result in run_batch(provider, inputs, targets=targets, out_dir=out, **kw)
    ]


async def test_batch_on_legacy_jobs_and_resume(
    emu: LegacyEmulator, client: LegacyClient, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    emu.configure(not_found_reads=1)  # every new job 404s once: the provider waits it out
    inputs = make_wavs(3)
    journal = tmp_path / "journal.sqlite"
    provider = LegacyProvider(client, ledger=tmp_path / "ledger")
    results = await collect(provider, inputs, tmp_path / "out", journal=journal)
    assert sorted(r.status for r in results) == ["done"] * 3, results
    stats = emu.stats()
    assert stats["jobs_created"] == 6 and stats["duplicate_jobs"] == {}
    assert stats["not_found_served"] == 6
    for result in results:
        assert result.task is not None and result.task.id.startswith("legacy:")
        job_ids = split_task_id(result.task.id)
        assert len(job_ids) == 2
        digests: dict[str, str] = {}
        for job_id in job_ids:
            digests.update(emu.output_digests(job_id))
            assert emu.job(job_id)["metadata"]["clientToken"]  # the engine's token travels
        assert sorted(p.name for p in result.files) == ["drums.wav", "vocals.wav"]
        for path in result.files:
            assert sha256(path) == digests[path.name]
    again = await collect(LegacyProvider(client), inputs, tmp_path / "out", journal=journal)
    assert sorted(r.status for r in again) == ["skipped"] * 3
    assert emu.stats()["jobs_created"] == 6
    assert emu.stats()["requests"]["POST /upload"] == 3


async def test_batch_reports_a_failed_job_and_keeps_the_rest(
    emu: LegacyEmulator, client: LegacyClient, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    emu.configure(error_models={"drums"})
    results = await collect(LegacyProvider(client), make_wavs(2), tmp_path / "out")
    for result in results:
        assert result.status == "failed"
        assert result.error is not None and "target drums failed" in result.error
        assert [p.name for p in result.files] == ["vocals.wav"]


async def test_batch_url_input_and_formats_per_job(
    emu: LegacyEmulator, client: LegacyClient, wav: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    async with file_server(wav) as url:
        results = await collect(
            LegacyProvider(client),
            [url],
            tmp_path / "out",
            targets=[Target("vocals", ["wav", "flac"])],
        )
    assert [r.status for r in results] == ["done"]
    assert sorted(p.name for p in results[0].files) == ["vocals.flac", "vocals.wav"]
    stats = emu.stats()
    assert stats["jobs_created"] == 2 and stats["requests"]["POST /upload/link"] == 1


async def test_partial_create_failure_keeps_created_jobs(
    emu: LegacyEmulator, client: LegacyClient, wav: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # The second POST /job is dropped unanswered. The Jobs API has no listing to check
    # whether it took effect, so it is reported, never retried blindly (a retry could bill
    # twice); a rerun with the journal and ledger resumes it.
    emu.script("POST /job", "ok", "drop")
    results = await collect(LegacyProvider(client), [wav], tmp_path / "a")
    assert [r.status for r in results] == ["failed"], results
    assert "not retried" in (results[0].error or "")
    stats = emu.stats()
    assert stats["jobs_created"] == 1 and stats["duplicate_jobs"] == {}
    assert stats["requests"]["POST /job"] == 2
    # A definite refusal after a job exists: the finished job is still downloaded and the
    # refused one is reported as a failed target.
    emu.script("POST /job", "ok", "400")
    results = await collect(LegacyProvider(client), [wav], tmp_path / "b")
    assert results[0].status == "failed" and "refused" in (results[0].error or "")
    assert [p.name for p in results[0].files] == ["vocals.wav"]
    # Refused from the first job on: nothing was created, a plain error.
    emu.script("POST /job", "400")
    results = await collect(LegacyProvider(client), [wav], tmp_path / "c")
    assert results[0].status == "failed" and results[0].files == ()


async def test_ledger_survives_a_crash_during_create(
    emu: LegacyEmulator, client: LegacyClient, wav: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    asset = await client.upload(wav)
    ledger = tmp_path / "ledger"
    targets = [Target("vocals", ["wav"]), Target("drums", ["wav"]), Target("bass", ["wav"])]
    metadata = json.dumps({"client_token": "tok-1", "input": "song.wav"})
    emu.script("POST /job", "ok", "drop", "drop")
    with pytest.raises(errors.AmbiguousRequestError, match="1 created are kept"):
        await LegacyProvider(client, ledger=ledger).create(
            source=asset.id, url=None, targets=targets, metadata=metadata
        )
    # A new process (new provider, same ledger) resumes with the same token.
    task = await LegacyProvider(client, ledger=ledger).create(
        source=asset.id, url=None, targets=targets, metadata=metadata
    )
    stats = emu.stats()
    assert stats["jobs_created"] == 3 and stats["duplicate_jobs"] == {}
    assert [t.model for t in task.targets] == ["vocals", "drums", "bass"]
    assert json.loads(task.metadata or "") == {"client_token": "tok-1"}
    fresh = await LegacyProvider(client).get(task.id)
    assert fresh.id == task.id and [t.id for t in fresh.targets] == split_task_id(task.id)


# --------------------------------------------------------------------------- CLI


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_cli_run_api_legacy_on_the_emulator(tmp_path: pathlib.Path) -> None:
    samples = sorted(SAMPLES.glob("*.wav"))
    assert samples
    args = [
        "run",
        "--api",
        "legacy",
        "--emulator",
        str(SAMPLES),
        "-m",
        "vocals",
        "-m",
        "instrumental",
        "-f",
        "wav",
        "-f",
        "flac",
        "-o",
        str(tmp_path / "stems"),
        "--emulator-delay",
        "0",
        "--json",
    ]
    status, out, err = run_cli(*args)
    assert status == 0, err
    summary = json.loads(out)
    assert summary["done"] == len(samples)
    assert summary["api_requests"]["POST /job"] == 4 * len(samples)  # model x format
    for sample in samples:
        folder = tmp_path / "stems" / sample.stem
        names = sorted(p.name for p in folder.iterdir())
        assert names == ["instrumental.flac", "instrumental.wav", "vocals.flac", "vocals.wav"]
    assert (tmp_path / "stems" / ".audioshake-journal.sqlite.legacy-jobs").exists()
    status, out, _ = run_cli(*args)
    assert status == 0 and json.loads(out)["skipped"] == len(samples)


def test_cli_legacy_needs_a_token(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(legacy.ENV_LEGACY_TOKEN, raising=False)
    status, _, err = run_cli(
        "run", "--provider", "legacy", str(SAMPLES), "-m", "vocals", "-o", str(tmp_path / "o")
    )
    assert status == 2
    assert "no legacy token" in err and legacy.ENV_LEGACY_TOKEN in err


async def test_cli_refused_token_fails_before_any_upload(
    emu: LegacyEmulator, tmp_path: pathlib.Path
) -> None:
    argv = [
        "run",
        "--api",
        "legacy",
        "--base-url",
        emu.base_url,
        "--api-key",
        "not-the-token",
        str(SAMPLES),
        "-m",
        "vocals",
        "-o",
        str(tmp_path / "o"),
    ]
    status, _, err = await anyio.to_thread.run_sync(lambda: run_cli(*argv))
    assert status == 2 and "refused (401)" in err
    assert "not-the-token" not in err
    assert "POST /upload" not in emu.stats()["requests"]


async def test_cli_unknown_legacy_model_or_format_is_a_usage_error_before_any_request(
    emu: LegacyEmulator, tmp_path: pathlib.Path
) -> None:
    base = ["run", "--api", "legacy", "--base-url", emu.base_url, "--api-key", emu.token]
    cases = [
        (["-m", "nonsense"], "unknown model 'nonsense' for the legacy Jobs API"),
        (["-m", "transcription"], "cannot output wav"),  # the default format
        (["-m", "vocals", "-f", "srt"], "cannot output srt"),
    ]
    for extra, message in cases:
        argv = [*base, str(SAMPLES), *extra, "-o", str(tmp_path / "o")]
        status, out, err = await anyio.to_thread.run_sync(lambda argv=argv: run_cli(*argv))
        assert status == 2, err
        assert message in err and len(err.strip().splitlines()) == 1
        assert out == ""
    assert emu.stats()["requests"] == {}  # not even the token check


async def test_cli_leaves_the_deprecation_warning_to_library_code(
    emu: LegacyEmulator, wav: pathlib.Path, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(legacy_client, "_DEPRECATION_WARNED", False)
    argv = [
        "run",
        "--api",
        "legacy",
        "--base-url",
        emu.base_url,
        "--api-key",
        emu.token,
        str(wav),
        "-m",
        "vocals",
        "-o",
        str(tmp_path / "o"),
        "--quiet",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, _, err = await anyio.to_thread.run_sync(lambda: run_cli(*argv))
        assert status == 0, err
        assert not [w for w in caught if issubclass(w.category, DeprecationWarning)]
        assert legacy_client._DEPRECATION_WARNED is False
        later = LegacyClient(TOKEN, emu.base_url)  # library code, same process
    await later.aclose()
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1 and deprecations[0].filename == __file__
