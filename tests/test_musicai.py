"""Music.AI: the client, the batch provider and the CLI against the local Music.AI emulator.

Everything runs over loopback HTTP(S) with real servers: the API on one port, the signed
storage host on another (so the transport's origin rule is exercised for real).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import pathlib
import threading
import wave
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from audioshake_async import (
    AmbiguousRequestError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    NotFoundError,
    PollPolicy,
    RetryPolicy,
    ServerError,
    Target,
    TaskTimeoutError,
    ValidationError,
)
from audioshake_async.batch import ItemSkipped, TaskCreated, run_batch
from audioshake_async.cli import main
from audioshake_async.core.sink import DiskWriter
from audioshake_async.emulator.musicai import MusicAIEmulator, MusicAIWorkflow
from audioshake_async.musicai import (
    FAILED,
    METADATA_KEY,
    SUCCEEDED,
    JobFailedError,
    MusicAI,
    MusicAIProvider,
    extension_from_content_type,
    extension_from_url,
    parse_job,
)

from .conftest import write_wav

FAST_RETRY = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.02)
FAST_POLL = PollPolicy(initial_interval=0.01, max_interval=0.05)
STEMS = [Target("stems", ("auto",))]
#: A distinctive key: searched for in logs and error messages.
SECRET = "mai-key-ZEBRA-81f0c2d7"


@pytest.fixture
async def emu() -> AsyncIterator[MusicAIEmulator]:
    async with MusicAIEmulator(api_key=SECRET, delay=0.0, seed=7) as emulator:
        yield emulator


def make_client(emulator: MusicAIEmulator, **kwargs: Any) -> MusicAI:
    kwargs.setdefault("retry", FAST_RETRY)
    kwargs.setdefault("poll", FAST_POLL)
    kwargs.setdefault("rate_limit", None)
    return MusicAI(emulator.api_key, emulator.base_url, **kwargs)


@pytest.fixture
async def client(emu: MusicAIEmulator) -> AsyncIterator[MusicAI]:
    async with make_client(emu) as shared:
        yield shared


@pytest.fixture
def wav(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "song.wav"
    write_wav(path, seconds=0.5, rate=8000)
    return path


def frames(path: pathlib.Path) -> tuple[int, int, int]:
    with wave.open(str(path), "rb") as handle:
        return handle.getnframes(), handle.getframerate(), handle.getnchannels()


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def run_job(client: MusicAI, path: pathlib.Path, workflow: str = "stems", **create: Any):
    url = await client.upload(path)
    job_id = await client.jobs.create(path.stem, workflow, {"inputUrl": url}, **create)
    return await client.jobs.wait(job_id)


# --------------------------------------------------------------------------- parsing


def test_parse_job_tolerates_the_older_shapes() -> None:
    job = parse_job(
        {
            "id": "j1",
            "status": "succeeded",
            "workflow": {"id": "w1", "name": "Stems"},
            "metadata": None,
            "result": {"vocals": "https://cdn/x/vocals.wav?sig=1", "bpm": "64", "n": 3},
            "batchName": None,
            "createdAt": "2022-12-07T19:21:42.170Z",
            "startedAt": None,
            "unknownField": 1,
        }
    )
    assert job.status == SUCCEEDED and job.workflow == "Stems" and job.metadata == {}
    assert job.files == {"vocals": "https://cdn/x/vocals.wav?sig=1"}
    assert job.values == {"bpm": "64", "n": 3}
    assert job.created_at is not None and job.created_at.year == 2022 and job.started_at is None


def test_extensions_from_url_path_or_content_type() -> None:
    assert extension_from_url("https://h/a/Kick%20drum.WAV?x=1.mp3") == "wav"
    assert extension_from_url("https://h/a/vocals?sig=a.b") is None
    assert extension_from_url("https://h/a/.hidden") is None
    assert extension_from_content_type("audio/x-wav; charset=binary") == "wav"
    assert extension_from_content_type("audio/mpeg") == "mp3"
    assert extension_from_content_type("application/octet-stream") is None


def test_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUSICAI_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="MUSICAI_API_KEY"):
        MusicAI()
    monkeypatch.setenv("MUSICAI_API_KEY", "k")
    monkeypatch.setenv("MUSICAI_BASE_URL", "http://127.0.0.1:9/v1/")
    assert MusicAI().base_url == "http://127.0.0.1:9/v1"


# --------------------------------------------------------------------------- endpoints


async def test_upload_create_wait_download(
    client: MusicAI, emu: MusicAIEmulator, wav: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    url = await client.upload(wav)
    assert emu.upload_info(url) == {
        "size": len(wav.read_bytes()),  # noqa: ASYNC240 - a small local file
        "sha256": sha256(wav),
        "content_type": "audio/wav",
    }
    job_id = await client.jobs.create(
        "my song", "stems", {"inputUrl": url}, metadata={"user": 123, "dry": False}
    )
    job = await client.jobs.wait(job_id)
    assert (job.status, job.name, job.workflow, job.metadata) == (
        SUCCEEDED,
        "my song",
        "stems",
        {"user": 123, "dry": False},
    )
    assert job.workflow_params == {"inputUrl": url}
    assert job.created_at is not None and job.completed_at is not None
    saved = await client.download(job, tmp_path / "out")
    assert sorted(p.name for p in saved.files.values()) == ["accompaniment.wav", "vocals.wav"]
    for key, path in saved.files.items():
        assert path.read_bytes() == emu.output_path(job_id, key).read_bytes()
        assert frames(path) == frames(wav)
    assert saved.result_json == tmp_path / "out" / "result.json"
    assert json.loads(saved.result_json.read_text()) == {"bpm": "120"} == saved.values
    assert not list((tmp_path / "out").glob(".*"))  # no part file left behind


async def test_download_reports_progress_per_file(
    client: MusicAI, wav: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    job = await run_job(client, wav)
    seen: dict[str, list[tuple[int, int | None]]] = {}
    saved = await client.download(
        job,
        tmp_path / "out",
        progress=lambda name, got, total: seen.setdefault(name, []).append((got, total)),
    )
    # The same (file name, received, total) calls as AudioShake.download makes; result.json
    # is written locally, not downloaded, so it reports nothing.
    names = sorted(p.name for p in saved.files.values())
    assert sorted(seen) == names == ["accompaniment.wav", "vocals.wav"]
    for path in saved.files.values():
        calls = seen[path.name]
        size = path.stat().st_size
        assert calls[-1] == (size, size), calls[-3:]
        assert [got for got, _ in calls] == sorted(got for got, _ in calls)


async def test_every_other_endpoint(client: MusicAI, emu: MusicAIEmulator) -> None:
    app = await client.application()
    assert app.name == "Emulated application" and app.id
    workflows = await client.workflows.list(page_size=2)
    assert [w.slug for w in workflows] == ["stems", "stem-suite", "beat-detection"]
    assert emu.stats()["requests"]["GET /workflow"] == 2  # pages of 2 until a short one
    job_id = await client.jobs.create("x", "beat-detection", {"inputUrl": "https://example.com/a"})
    assert await client.jobs.status(job_id) in ("QUEUED", "STARTED", "FAILED")
    assert (await client.jobs.get(job_id)).id == job_id
    await client.jobs.delete(job_id)
    with pytest.raises(NotFoundError):
        await client.jobs.get(job_id)
    with pytest.raises(BadRequestError):
        await client.jobs.get("not-an-id!")
    with pytest.raises(ValidationError):
        await client.jobs.get("../etc")
    with pytest.raises(NotFoundError, match="not found"):
        await client.jobs.create("x", "no-such-workflow", {"inputUrl": "https://e/a"})
    with pytest.raises(ValidationError):
        await client.jobs.create("x", "stems", {"inputUrl": "u"}, metadata={"a": [1]})


@pytest.mark.parametrize("envelope", [False, True], ids=["bare-array", "jobs-envelope"])
async def test_list_pages_with_repeated_filters(
    client: MusicAI, emu: MusicAIEmulator, wav: pathlib.Path, envelope: bool
) -> None:
    emu.configure(list_envelope=envelope)
    url = await client.upload(wav)
    created = [await client.jobs.create(f"s{i}", "stems", {"inputUrl": url}) for i in range(4)]
    emu.configure(fail_rate=1.0)
    created += [
        await client.jobs.create(f"b{i}", "beat-detection", {"inputUrl": url}) for i in range(3)
    ]
    await emu.wait_idle()
    found = [
        job.id
        async for job in client.jobs.list(
            status=["SUCCEEDED", "FAILED"], workflow=["stems", "beat-detection"], page_size=2
        )
    ]
    assert sorted(found) == sorted(created)
    pages = [q for route, q, _ in emu.request_log if route == "GET /job"]
    assert len(pages) == 4  # 2 + 2 + 2 + 1: stops at the short page
    assert [v for k, v in pages[0] if k in ("status", "workflow")] == [
        "SUCCEEDED",
        "FAILED",
        "stems",
        "beat-detection",
    ]
    assert [dict(q)["page"] for q in pages] == ["0", "1", "2", "3"]
    failed = [job async for job in client.jobs.list(status="FAILED")]
    assert {j.workflow for j in failed} == {"beat-detection"} and len(failed) == 3
    assert [job async for job in client.jobs.list(batch_name="nightly")] == []
    assert ("batchName", "nightly") in emu.request_log[-1][1]


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("code", ["BAD_INPUT", "TIMEOUT", "INTERNAL_ERROR"])
async def test_failed_jobs_carry_documented_codes(
    client: MusicAI, emu: MusicAIEmulator, wav: pathlib.Path, tmp_path: pathlib.Path, code: str
) -> None:
    emu.configure(fail_rate=1.0, fail_code=code)
    job = await run_job(client, wav)
    assert job.status == FAILED and job.result is None
    assert job.error is not None and job.error.code == code and job.error.title
    with pytest.raises(JobFailedError) as caught:
        await client.jobs.wait(job.id, raise_on_error=True)
    assert caught.value.code == code
    assert caught.value.retryable == (code != "BAD_INPUT")
    with pytest.raises(JobFailedError):
        await client.download(job, tmp_path / "never")


async def test_natural_failures(client: MusicAI, tmp_path: pathlib.Path) -> None:
    # Nothing was PUT to the upload URL.
    data = await client.transport.request("GET", "/upload")
    job_id = await client.jobs.create("x", "stems", {"inputUrl": data["downloadUrl"]})
    job = await client.jobs.wait(job_id)
    assert job.error is not None and job.error.code == "BAD_INPUT"
    # Not audio.
    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    job = await run_job(client, text)
    assert job.error is not None and job.error.code == "BAD_INPUT"
    # An input the service cannot reach.
    job_id = await client.jobs.create("x", "stems", {"inputUrl": "https://unreachable.invalid/a"})
    job = await client.jobs.wait(job_id)
    assert job.error is not None and job.error.code == "TIMEOUT"


async def test_wait_times_out_with_the_last_snapshot(client: MusicAI, emu: MusicAIEmulator) -> None:
    emu.configure(delay=30.0)
    job_id = await client.jobs.create("x", "stems", {"inputUrl": "http://127.0.0.1:9/a.wav"})
    with pytest.raises(TaskTimeoutError):
        await client.jobs.wait(job_id, timeout=0.05)


# --------------------------------------------------------------------------- transport rules


async def test_gets_are_retried_and_post_job_never_after_sending(
    client: MusicAI, emu: MusicAIEmulator
) -> None:
    emu.configure(rate_limit_burst=2, retry_after=0.01)
    await client.application()
    assert emu.stats()["requests"]["GET /application"] == 3  # two 429s honoured, then 200
    emu.configure(http_fail_rate=1.0, fault_routes=frozenset({"GET /workflow"}))
    with pytest.raises(ServerError):
        await client.workflows.list()
    assert emu.stats()["requests"]["GET /workflow"] == 1 + FAST_RETRY.max_retries
    emu.configure(fault_routes=frozenset({"POST /job"}))
    with pytest.raises(ServerError):
        await client.jobs.create("x", "stems", {"inputUrl": "https://e/a"})
    assert emu.stats()["requests"]["POST /job"] == 1  # a 5xx after sending: no retry
    emu.configure(http_fail_rate=0.0, rate_limit_burst=1)
    await client.jobs.create("x", "stems", {"inputUrl": "https://e/a"})  # 429: safe to retry
    assert emu.stats()["requests"]["POST /job"] == 3
    emu.configure(drop_after_create=1)
    with pytest.raises(AmbiguousRequestError):
        await client.jobs.create("y", "stems", {"inputUrl": "https://e/a"})
    assert emu.stats()["requests"]["POST /job"] == 4
    assert emu.stats()["jobs_created"] == 2


async def test_failed_upload_put_is_resent_with_a_fresh_body(
    client: MusicAI, emu: MusicAIEmulator, wav: pathlib.Path
) -> None:
    emu.configure(put_failures=2)
    url = await client.upload(wav)
    info = emu.upload_info(url)
    assert info is not None and info["sha256"] == sha256(wav)
    assert emu.stats()["storage_requests"]["PUT"] == 3


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_upload_streams_a_large_file_in_constant_memory(
    client: MusicAI, emu: MusicAIEmulator, tmp_path: pathlib.Path
) -> None:
    size = 160 << 20
    big = tmp_path / "big.wav"
    with open(big, "wb") as handle:  # noqa: ASYNC230 - no data is written
        handle.truncate(size)  # sparse: reads as zeros without touching the disk
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_kib())
            stop.wait(0.002)

    await client.application()  # session and imports warmed up before the baseline
    baseline = _rss_kib()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        url = await client.upload(big)
    finally:
        stop.set()
        sampler.join()
    growth_mib = (peak[0] - baseline) / 1024
    # Client and emulator share this process; together they hold a few MiB, not the file.
    assert growth_mib < 40, f"RSS grew by {growth_mib:.1f} MiB for a {size >> 20} MiB upload"
    zeros = hashlib.sha256()
    block = bytes(1 << 20)
    for _ in range(size >> 20):
        zeros.update(block)
    assert emu.upload_info(url) == {
        "size": size,
        "sha256": zeros.hexdigest(),
        "content_type": "audio/wav",
    }


async def test_key_only_to_the_api_origin_and_raw(
    client: MusicAI, emu: MusicAIEmulator, wav: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    job = await run_job(client, wav)
    await client.download(job, tmp_path / "out")
    stats = emu.stats()
    assert stats["storage_requests"] == {"PUT": 1, "GET": 2}
    assert stats["storage_key_headers"] == {} and stats["storage_api_key_seen"] == 0
    assert all("Authorization" in headers for _, _, headers in emu.request_log)
    assert stats["auth_failures"] == 0
    async with MusicAI(f"Bearer {SECRET}", emu.base_url, retry=FAST_RETRY) as bearer:
        with pytest.raises(AuthenticationError):
            await bearer.application()


async def test_key_and_signatures_stay_out_of_logs_and_errors(
    emu: MusicAIEmulator,
    wav: pathlib.Path,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="audioshake_async")
    texts: list[str] = []
    async with make_client(emu) as client:
        job = await run_job(client, wav)
        await client.download(job, tmp_path / "out")
        emu.configure(rate_limit_burst=1, retry_after=0.01)
        await client.jobs.get(job.id)  # a retry is logged with the URL
        with pytest.raises(NotFoundError) as missing:
            await client.jobs.get("00000000-0000-4000-8000-000000000000")
        texts += [str(missing.value), repr(missing.value)]
        emu.expire_links()
        with pytest.raises(JobFailedError):
            await client.download(parse_job({**emu.job(job.id), "status": "FAILED"}), tmp_path)
        stale = await client.outputs(job)
        with contextlib.suppress(Exception):
            from audioshake_async.core.download import fetch_to_file

            await fetch_to_file(client.transport, stale[0].link, tmp_path / "x.wav")
    wrong = MusicAI("mai-key-ZEBRA-wrong-0000", emu.base_url, retry=FAST_RETRY)
    async with wrong:
        with pytest.raises(AuthenticationError) as refused:
            await wrong.application()
    texts += [str(refused.value), repr(refused.value), repr(wrong), repr(wrong.transport)]
    logged = caplog.text + "\n".join(texts)
    assert "ZEBRA" not in logged
    assert "sig=" not in logged and "expires=" not in logged
    assert "GET" in caplog.text  # the debug log did record the requests


# --------------------------------------------------------------------------- downloads


async def test_download_names_extensions_refresh_and_values(
    tmp_path: pathlib.Path, wav: pathlib.Path
) -> None:
    odd = MusicAIWorkflow(
        "odd",
        "Odd names",
        outputs=(("Kick drum", "drums"), ("../escape", "vocals"), ("result", "bass")),
        values=("bpm",),
    )
    async with (
        MusicAIEmulator(delay=0.0, workflows=[odd], result_extensions=False) as emu,
        make_client(emu) as client,
    ):
        url = await client.upload(wav)
        link_target = await client.transport.request("GET", "/upload")
        job_id = await client.jobs.create(
            "odd", "odd", {"inputUrl": url}, copy_results_to={"result": link_target["uploadUrl"]}
        )
        job = await client.jobs.wait(job_id)
        assert job.values == {"bpm": "120", "result": "[custom storage]"}
        assert emu.upload_info(link_target["uploadUrl"]) is not None  # the copy was PUT there
        emu.expire_links()  # the job in hand now holds refused URLs: refreshed via GET /job/{id}
        before = emu.stats()["requests"]["GET /job/{id}"]
        saved = await client.download(job, tmp_path / "out")
        assert emu.stats()["storage_denied"] >= 2
        assert emu.stats()["requests"]["GET /job/{id}"] > before
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["Kick drum.wav", "_escape.wav", "result.json"]
    assert {k: p.name for k, p in saved.files.items()} == {
        "Kick drum": "Kick drum.wav",
        "../escape": "_escape.wav",
    }
    assert json.loads((tmp_path / "out" / "result.json").read_text()) == job.values
    assert not (tmp_path / "escape.wav").exists()


async def test_download_rejects_unfinished_jobs(client: MusicAI, emu: MusicAIEmulator) -> None:
    emu.configure(delay=30.0)
    job_id = await client.jobs.create("x", "stems", {"inputUrl": "http://127.0.0.1:9/a.wav"})
    with pytest.raises(ValidationError, match="no results yet"):
        await client.download(job_id, "unused")


# --------------------------------------------------------------------------- provider listing


@pytest.mark.parametrize("order", ["oldest", "newest"])
async def test_provider_pages_newest_first_whatever_the_server_order(
    client: MusicAI, emu: MusicAIEmulator, order: str
) -> None:
    emu.configure(list_order=order, delay=30.0)
    created = [
        await client.jobs.create(f"j{i}", "beat-detection", {"inputUrl": "https://e/a"})
        for i in range(23)
    ]
    await client.jobs.create("other", "stems", {"inputUrl": "https://e/a"})  # filtered out
    provider = MusicAIProvider(client, workflow="beat-detection")
    newest = list(reversed(created))
    for take in (2, 5, 23, 30):
        for skip in range(0, 26, take):
            page = await provider.newest_jobs(skip=skip, take=take)
            assert [j.id for j in page] == newest[skip : skip + take], (take, skip)
    tasks = await provider.page(skip=0, take=100)
    assert [t.id for t in tasks] == newest
    assert tasks[0].targets[0].model == "beat-detection" and not tasks[0].is_done


async def test_provider_maps_jobs_onto_tasks(
    client: MusicAI, emu: MusicAIEmulator, wav: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    provider = MusicAIProvider(client, workflow="stems")
    source = await provider.upload(wav, "ignored", lambda sent, total: None)
    metadata = json.dumps({"client_token": "tok", "input": "song.wav"})
    task = await provider.create(source=source, url=None, targets=STEMS, metadata=metadata)
    assert emu.job(task.id)["metadata"] == {METADATA_KEY: metadata}
    assert emu.job(task.id)["name"] == "song.wav"
    await emu.wait_idle()
    task = await provider.get(task.id)
    assert task.is_done and task.succeeded and task.metadata == metadata
    assert [(o.name, o.format) for o in task.outputs] == [
        ("vocals", "wav"),
        ("accompaniment", "wav"),
        ("result", "json"),
    ]
    writer = await DiskWriter.open(tmp_path / "result.json", checksum=True)
    written = await provider.fetch_output(task, task.outputs[2], writer)
    assert written.location == str(tmp_path / "result.json")
    assert json.loads((tmp_path / "result.json").read_text()) == {"bpm": "120"}
    assert written.sha256 == sha256(tmp_path / "result.json")
    assert await provider.find_upload("anything") is None
    emu.configure(fail_rate=1.0, fail_code="BAD_INPUT")
    failed = await provider.create(source=source, url=None, targets=STEMS, metadata="{}")
    await emu.wait_idle()
    failed = await provider.get(failed.id)
    assert failed.failed_targets and failed.failed_targets[0].error is not None
    assert "BAD_INPUT" in (failed.failed_targets[0].error.message or "")
    with pytest.raises(ValidationError):
        await provider.create(source=source, url=None, targets=STEMS * 2, metadata="{}")


# --------------------------------------------------------------------------- batch engine


async def collect(provider: MusicAIProvider, inputs: list[pathlib.Path], out: pathlib.Path, **kw):
    results = []
    async for result in run_batch(provider, inputs, targets=STEMS, out_dir=out, **kw):
        results.append(result)
    return results


def make_inputs(tmp_path: pathlib.Path, count: int) -> list[pathlib.Path]:
    paths = [tmp_path / "in" / f"track{i}.wav" for i in range(count)]
    for i, path in enumerate(paths):
        write_wav(path, seconds=0.25, rate=8000, seed=i)
    return paths


@pytest.mark.parametrize("order", ["oldest", "newest"])
async def test_batch_with_journal_resume_and_reconciliation(
    emu: MusicAIEmulator, tmp_path: pathlib.Path, order: str
) -> None:
    emu.configure(list_order=order, delay=0.02)
    inputs = make_inputs(tmp_path, 5)
    journal, out = tmp_path / "journal.sqlite", tmp_path / "out"
    events: list[Any] = []
    async with make_client(emu) as client:
        provider = MusicAIProvider(client, workflow="stems")
        # The second job is created, then its answer is lost: found again by its token.
        emu.configure(drop_after_create=1)
        batch = run_batch(
            provider,
            inputs,
            targets=STEMS,
            out_dir=out,
            journal=journal,
            progress=events.append,
            poll=FAST_POLL,
            upload_concurrency=1,
            create_concurrency=1,
        )
        first = []
        async with contextlib.aclosing(batch):
            async for result in batch:
                first.append(result)
                if len(first) == 2:
                    break  # interrupted mid-batch
        rest = await collect(provider, inputs, out, journal=journal, poll=FAST_POLL)
        again = await collect(provider, inputs, out, journal=journal, poll=FAST_POLL)
    assert all(r.status == "done" for r in first), [r.error for r in first]
    assert sorted(r.status for r in rest).count("failed") == 0
    assert [r.status for r in again] == ["skipped"] * 5
    stats = emu.stats()
    assert stats["duplicate_jobs"] == 0
    assert stats["jobs_created"] == len(stats["jobs_per_metadata"]) == 5
    assert [e.recovered for e in events if isinstance(e, TaskCreated)].count(True) == 1
    for path in inputs:
        directory = out / path.stem
        assert sorted(p.name for p in directory.iterdir()) == [
            "accompaniment.wav",
            "result.json",
            "vocals.wav",
        ]
        assert frames(directory / "vocals.wav") == frames(path)
        assert json.loads((directory / "result.json").read_text()) == {"bpm": "120"}


async def test_batch_reports_failed_jobs_and_carries_on(
    emu: MusicAIEmulator, tmp_path: pathlib.Path
) -> None:
    inputs = make_inputs(tmp_path, 3)
    (tmp_path / "in" / "bad.wav").write_text("not audio")
    inputs.append(tmp_path / "in" / "bad.wav")
    events: list[Any] = []
    async with make_client(emu) as client:
        results = await collect(
            MusicAIProvider(client, workflow="stems"),
            inputs,
            tmp_path / "out",
            poll=FAST_POLL,
            progress=events.append,
        )
    status = {pathlib.Path(r.input).name: r.status for r in results}
    assert status == {
        "track0.wav": "done",
        "track1.wav": "done",
        "track2.wav": "done",
        "bad.wav": "failed",
    }
    (bad,) = [r for r in results if r.status == "failed"]
    assert bad.error is not None and "BAD_INPUT" in bad.error
    assert not any(isinstance(e, ItemSkipped) for e in events)


# --------------------------------------------------------------------------- TLS and the SDK


async def test_tls_mode_serves_our_client_and_the_official_sdk(
    tmp_path: pathlib.Path, wav: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with MusicAIEmulator(delay=0.0, tls=True) as emu:
        assert emu.base_url.startswith("https://") and emu.storage_url.startswith("https://")
        connector = aiohttp.TCPConnector(ssl=emu.client_ssl_context())
        async with aiohttp.ClientSession(connector=connector) as session:
            async with make_client(emu, session=session) as client:
                job = await run_job(client, wav)
                saved = await client.download(job, tmp_path / "ours")
            assert not session.closed  # an injected session is left to its owner
        sdk = pytest.importorskip("musicai_sdk")
        assert emu.ca_path is not None
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emu.ca_path))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

        def official() -> dict[str, str]:
            peer = sdk.MusicAiClient(api_key=emu.api_key, job_monitor_interval=0.01, timeout=10)
            peer.base_url = emu.base_url
            url = peer.upload_file(str(wav))
            created = peer.add_job("sdk", "stems", {"inputUrl": url})
            done = peer.wait_for_job_completion(created["id"])
            assert done["status"] == SUCCEEDED
            result: dict[str, str] = peer.download_job_results(done, str(tmp_path / "sdk"))
            return result

        files = await asyncio.to_thread(official)
        assert emu.stats()["storage_key_headers"] == {}
    assert sorted(files) == sorted(saved.files)
    for key, path in saved.files.items():
        assert sha256(pathlib.Path(files[key])) == sha256(path)


# --------------------------------------------------------------------------- CLI


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_cli_run_with_the_emulator(tmp_path: pathlib.Path) -> None:
    inputs = make_inputs(tmp_path, 2)
    status, out, err = run_cli(
        "run",
        "--provider",
        "musicai",
        "--workflow",
        "stems",
        "--emulator",
        "--emulator-delay",
        "0",
        *map(str, inputs),
        "-o",
        str(tmp_path / "out"),
        "--json",
    )
    assert status == 0, err
    summary = json.loads(out)
    assert (summary["done"], summary["failed"]) == (2, 0)
    assert summary["api_requests"]["POST /job"] == 2
    for path in inputs:
        assert frames(tmp_path / "out" / path.stem / "accompaniment.wav") == frames(path)


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (["--emulator", "--workflow", "nope"], {}, "unknown workflow 'nope' (available: "),
        (["--workflow", "stems"], {}, "no API key: set MUSICAI_API_KEY"),
        (["--emulator"], {}, "--provider musicai needs --workflow"),
    ],
)
def test_cli_usage_errors_before_any_upload(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    monkeypatch.delenv("MUSICAI_API_KEY", raising=False)
    (wav_path,) = make_inputs(tmp_path, 1)
    status, _, err = run_cli(
        "run", "--provider", "musicai", *extra, str(wav_path), "-o", str(tmp_path / "o")
    )
    assert status == 2, err
    assert message in err


def test_cli_refused_key_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    (wav_path,) = make_inputs(tmp_path, 1)

    async def scenario() -> tuple[int, str, str]:
        async with MusicAIEmulator(delay=0.0) as emu:
            return await asyncio.to_thread(
                run_cli,
                "run",
                "--provider",
                "musicai",
                "--workflow",
                "stems",
                "--api-key",
                "wrong",
                "--base-url",
                emu.base_url,
                str(wav_path),
                "-o",
                str(tmp_path / "o"),
            )

    status, _, err = asyncio.run(scenario())
    assert status == 2 and "refused (401)" in err


# --------------------------------------------------------------------------- the seam


def make_opus(tmp_path: pathlib.Path) -> pathlib.Path:
    """An ``.opus`` input: a type Music.AI takes (it documents no list) and Tasks does not."""
    wav = tmp_path / "src" / "song.wav"
    write_wav(wav, seconds=0.25, rate=8000, seed=7)
    opus = tmp_path / "in" / "song.opus"
    opus.parent.mkdir(parents=True, exist_ok=True)
    # The services judge the content; the extension is what the client-side checks look at.
    opus.write_bytes(wav.read_bytes())
    return opus


async def test_an_opus_batch_completes_on_musicai_and_is_refused_by_tasks_first(
    emu: MusicAIEmulator, tmp_path: pathlib.Path
) -> None:
    opus = make_opus(tmp_path)
    async with make_client(emu) as client:
        provider = MusicAIProvider(client, workflow="stems")
        [result] = await collect(provider, [opus], tmp_path / "out")
    assert result.status == "done", result.error
    assert (tmp_path / "out" / "song" / "accompaniment.wav").exists()

    # The Tasks API does not document .opus: refused by the provider's own check, no request.
    from audioshake_async import AudioShake, Target
    from audioshake_async.emulator import Emulator

    async with (
        Emulator(delay=0) as tasks_emu,
        AudioShake(tasks_emu.api_key, tasks_emu.base_url) as tasks_client,
    ):
        batch = tasks_client.batch(
            [opus], targets=[Target("vocals", ["wav"])], out_dir=tmp_path / "tasks-out"
        )
        [refused] = [r async for r in batch]
        assert tasks_client.request_counts == {}
    assert refused.status == "failed"
    assert "unsupported file type" in (refused.error or "")


def test_cli_musicai_walks_and_completes_an_opus_input(tmp_path: pathlib.Path) -> None:
    opus = make_opus(tmp_path)
    common = ["--emulator", "--emulator-delay", "0", str(opus.parent), "--json"]
    status, out, err = run_cli(
        "run", "--provider", "musicai", "--workflow", "stems", *common, "-o", str(tmp_path / "m")
    )
    assert status == 0, err
    assert (json.loads(out)["done"], json.loads(out)["failed"]) == (1, 0)
    # A Tasks run of the same directory does not pick the file up: nothing to do, no upload.
    status, out, err = run_cli("run", "-m", "vocals", *common, "-o", str(tmp_path / "t"))
    summary = json.loads(out)
    assert (status, summary["items"]) == (0, 0), err
    assert "POST /assets" not in summary["api_requests"]
