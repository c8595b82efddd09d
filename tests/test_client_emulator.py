"""The public ``AudioShake`` client against the real ``Emulator`` over loopback.

The happy path (upload, a task with several targets, wait, byte-exact download), the error
statuses as the emulator really answers them (401, 400, 404, 429), and every fault knob the
emulator has, each seen through the client: 5xx and dropped connections retried, truncated
downloads resumed, stale reads merged, latency past the client's timeout, expired links
refreshed. Faults are seeded (the ``emulator`` fixture's seed), so a run is reproducible.
"""

from __future__ import annotations

import contextlib
import hashlib
import pathlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from audioshake_async import AudioShake, PollPolicy, RetryPolicy, Target, Task, errors
from audioshake_async.core import sink as _sink
from audioshake_async.core.transport import Retry
from audioshake_async.emulator import Emulator

from .conftest import FAST_RETRY

#: Enough retries that a seeded fault rate of 0.3 never exhausts them (0.3**11 ~ 2e-6).
PATIENT_RETRY = RetryPolicy(max_retries=10, base_delay=0.005, max_delay=0.02)
FAST_POLL = PollPolicy(initial_interval=0.01, max_interval=0.05)
TARGETS = (
    Target("vocals", formats=("wav",)),
    Target("instrumental", formats=("wav",)),
    Target("drums", formats=("wav",)),
    Target("music_detection", formats=("json",)),
)
#: Generous guard against hangs; no test asserts how long anything took.
GUARD = 60


@contextlib.asynccontextmanager
async def make_client(emulator: Emulator, **kwargs: Any) -> AsyncIterator[AudioShake]:
    """A client of ``emulator`` with fast retries and polls unless told otherwise."""
    kwargs.setdefault("retry", FAST_RETRY)
    kwargs.setdefault("poll", FAST_POLL)
    kwargs.setdefault("rate_limit", None)
    key = kwargs.pop("api_key", emulator.api_key)
    async with AudioShake(key, emulator.base_url, **kwargs) as client:
        yield client


def digests(directory: pathlib.Path) -> dict[str, str]:
    """sha256 of every file in ``directory``, keyed by name (as ``output_digests`` keys them)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


async def process(client: AudioShake, source: pathlib.Path) -> Task:
    """Upload ``source``, create a task with every target of ``TARGETS``, wait for it."""
    asset = await client.assets.upload(source)
    task = await client.tasks.create(asset_id=asset.id, targets=TARGETS)
    return await client.tasks.wait(task.id, timeout=GUARD)


def faults(emulator: Emulator) -> dict[str, int]:
    counts: dict[str, int] = emulator.stats()["faults"]
    return counts


# --------------------------------------------------------------------------- happy path


async def test_upload_task_wait_download_byte_exact(
    emulator: Emulator, make_wavs: Callable[..., list[pathlib.Path]], tmp_path: pathlib.Path
) -> None:
    (source,) = make_wavs(1)
    with anyio.fail_after(GUARD):
        async with make_client(emulator) as client:
            asset = await client.assets.upload(source)
            assert asset.name == source.name and asset.format == "wav"
            created = await client.tasks.create(
                asset_id=asset.id, targets=TARGETS, metadata="job-1"
            )
            assert created.asset_id == asset.id and not created.is_done
            task = await client.tasks.wait(created.id, timeout=GUARD, raise_on_error=True)
            paths = await client.download(task, tmp_path / "out", checksum=True)
    assert task.succeeded and [t.model for t in task.targets] == [t.model for t in TARGETS]
    expected = emulator.output_digests(task.id)
    assert sorted(p.name for p in paths) == sorted(expected)
    assert len(expected) == len(TARGETS)
    assert digests(tmp_path / "out") == expected  # no .part file left either
    stats = emulator.stats()
    assert stats["assets_created"] == 1 and stats["tasks_created"] == 1
    assert stats["cdn_key_leaks"] == 0  # the CDN never saw the API key


# --------------------------------------------------------------------------- error statuses


async def test_wrong_key_is_an_authentication_error(emulator: Emulator) -> None:
    async with make_client(emulator, api_key="not-the-key") as client:
        with pytest.raises(errors.AuthenticationError) as info:
            await client.models.list()
    assert info.value.status == 401
    assert emulator.stats()["responses"] == {"401": 1}  # not retried


async def test_bad_requests_the_emulator_refuses(
    emulator: Emulator, make_wavs: Callable[..., list[pathlib.Path]]
) -> None:
    """What the client cannot know locally (the catalog) gets a real 400 from the emulator."""
    (source,) = make_wavs(1)
    async with make_client(emulator) as client:
        asset = await client.assets.upload(source)
        with pytest.raises(errors.BadRequestError, match="unknown model"):
            await client.tasks.create(asset_id=asset.id, targets=[Target("kazoo")])
        with pytest.raises(errors.BadRequestError, match="does not support format"):
            await client.tasks.create(asset_id=asset.id, targets=[Target("vocals", ("json",))])
        # More than 20 targets: the client refuses locally, so send it raw to see the 400.
        with pytest.raises(errors.ValidationError):
            await client.tasks.create(
                asset_id=asset.id, targets=[Target("vocals", variant=str(i)) for i in range(21)]
            )
        body = {"assetId": asset.id, "targets": [{"model": "vocals", "formats": ["wav"]}] * 21}
        with pytest.raises(errors.BadRequestError, match="more than 20"):
            await client.transport.request(
                "POST", "/tasks", json_body=body, retry=Retry.BEFORE_SEND
            )
    assert emulator.stats()["tasks_created"] == 0
    assert emulator.stats()["responses"]["400"] == 3


async def test_unknown_ids_are_not_found(emulator: Emulator) -> None:
    async with make_client(emulator) as client:
        with pytest.raises(errors.NotFoundError, match="Cannot find task"):
            await client.tasks.get("no-such-task")
        with pytest.raises(errors.NotFoundError, match="Cannot find asset"):
            await client.assets.get("no-such-asset")


async def test_rate_limit_burst_is_retried_with_the_client_limiter_off(
    emulator: Emulator,
) -> None:
    emulator.configure(rate_limit_burst=3)
    async with make_client(emulator, rate_limit=None) as client:
        models = await client.models.list()
        assert client.request_counts["GET /models"] == 4
    assert "vocals" in [m.id for m in models]
    assert faults(emulator)["rate_limit_burst"] == 3


async def test_rate_limit_bucket_is_retried_after_retry_after(emulator: Emulator) -> None:
    """The emulator's own token bucket, with no client-side limiter to keep under it."""
    emulator.configure(rate_limit=50.0, rate_limit_capacity=5.0, retry_after=0.1)
    with anyio.fail_after(GUARD):
        async with make_client(emulator, rate_limit=None, retry=PATIENT_RETRY) as client:
            results: list[int] = []

            async def one() -> None:
                results.append(len(await client.models.list()))

            async with anyio.create_task_group() as group:
                for _ in range(20):
                    group.start_soon(one)
            sent = client.request_counts["GET /models"]
    assert len(results) == 20
    assert faults(emulator)["rate_limited"] >= 1 and sent > 20


async def test_rate_limit_without_retries_raises(emulator: Emulator) -> None:
    emulator.configure(rate_limit_burst=1, retry_after=2.5)
    no_retry = RetryPolicy(max_retries=0)
    async with make_client(emulator, rate_limit=None, retry=no_retry) as client:
        with pytest.raises(errors.RateLimitError) as info:
            await client.models.list()
        assert client.request_counts["GET /models"] == 1
    assert info.value.status == 429 and info.value.retry_after == 2.5


# --------------------------------------------------------------------------- fault knobs


@pytest.mark.parametrize("knob", ["fail_rate", "drop_rate"])
async def test_5xx_and_dropped_connections_are_retried(
    emulator: Emulator,
    make_wavs: Callable[..., list[pathlib.Path]],
    tmp_path: pathlib.Path,
    knob: str,
) -> None:
    """Every retryable route fails now and then; the whole flow still gets through.

    ``POST /tasks`` is left out: it is never retried once sent (no idempotency key), which
    ``test_create_is_not_retried_after_a_drop`` covers.
    """
    (source,) = make_wavs(1)
    routes = ["GET /models", "POST /assets", "GET /tasks/{id}"]
    emulator.configure(**{knob: 0.3}, fault_routes=routes)
    with anyio.fail_after(GUARD):
        async with make_client(emulator, retry=PATIENT_RETRY) as client:
            for _ in range(10):
                await client.models.list()
            task = await process(client, source)
            await client.download(task, tmp_path / "out")
    kind = "fail" if knob == "fail_rate" else "drop"
    assert faults(emulator)[kind] >= 1
    assert digests(tmp_path / "out") == emulator.output_digests(task.id)


async def test_create_is_not_retried_after_a_drop(
    emulator: Emulator, make_wavs: Callable[..., list[pathlib.Path]]
) -> None:
    (source,) = make_wavs(1)
    async with make_client(emulator) as client:
        asset = await client.assets.upload(source)
        emulator.configure(drop_rate=1.0, fault_routes=["POST /tasks"])
        with pytest.raises(errors.AmbiguousRequestError):
            await client.tasks.create(asset_id=asset.id, targets=TARGETS)
        assert client.request_counts["POST /tasks"] == 1


async def test_truncated_downloads_are_resumed(
    emulator: Emulator,
    make_wavs: Callable[..., list[pathlib.Path]],
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (source,) = make_wavs(1)
    restarts: list[int] = []
    real_restart = _sink.DiskWriter._restart

    def counting_restart(part: _sink.DiskWriter) -> None:
        restarts.append(part._size)
        real_restart(part)

    monkeypatch.setattr(_sink.DiskWriter, "_restart", counting_restart)
    with anyio.fail_after(GUARD):
        async with make_client(emulator, retry=PATIENT_RETRY) as client:
            task = await process(client, source)
            emulator.configure(truncate_rate=0.5)
            # One at a time: the seeded coin flips then fall on the same requests every run.
            await client.download(task, tmp_path / "out", concurrency=1, checksum=True)
    outputs = len(emulator.output_digests(task.id))
    assert faults(emulator)["truncate"] >= 1
    assert emulator.stats()["cdn_requests"] == outputs + faults(emulator)["truncate"]
    assert restarts == []  # each retry continued with Range, none started over
    assert digests(tmp_path / "out") == emulator.output_digests(task.id)


async def test_stale_reads_are_polled_through(
    emulator: Emulator, make_wavs: Callable[..., list[pathlib.Path]]
) -> None:
    """A read may answer the creation snapshot of a finished task; wait keeps polling."""
    (source,) = make_wavs(1)
    with anyio.fail_after(GUARD):
        async with make_client(emulator) as client:
            asset = await client.assets.upload(source)
            created = await client.tasks.create(asset_id=asset.id, targets=TARGETS)
            await emulator.wait_for_task(created.id)
            emulator.configure(stale_rate=1.0)
            stale = await client.tasks.get(created.id)
            assert not stale.is_done and stale.outputs == ()  # the creation snapshot
            emulator.configure(stale_rate=0.5)
            updates: list[Task] = []
            task = await client.tasks.wait(created.id, timeout=GUARD, on_update=updates.append)
            # A finished Task is not read again, so no stale answer can undo it.
            reads = client.request_counts["GET /tasks/{id}"]
            assert await client.tasks.wait(task, timeout=GUARD) is task
            assert client.request_counts["GET /tasks/{id}"] == reads
    assert task.succeeded and len(task.outputs) == len(TARGETS)
    assert [u.is_done for u in updates][-1] and not any(u.is_done for u in updates[:-1])
    assert faults(emulator)["stale"] >= 1


async def test_latency_past_the_client_timeout(emulator: Emulator) -> None:
    emulator.configure(latency=5.0, fault_routes=["GET /models"])
    with anyio.fail_after(GUARD):
        async with make_client(emulator, timeout=0.2, retry=RetryPolicy(max_retries=1)) as client:
            with pytest.raises(errors.APITimeoutError):
                await client.models.list()
            assert client.request_counts["GET /models"] == 2  # the timeout was retried once
            # Other routes are not slowed: the same client still works.
            with pytest.raises(errors.NotFoundError):
                await client.tasks.get("none")
    assert faults(emulator)["latency"] == 2


async def test_small_latency_within_the_timeout(emulator: Emulator) -> None:
    emulator.configure(latency=0.05)
    async with make_client(emulator, timeout=30.0) as client:
        assert await client.models.list()
    assert faults(emulator)["latency"] == 1


async def test_expired_links_are_refreshed(
    emulator: Emulator, make_wavs: Callable[..., list[pathlib.Path]], tmp_path: pathlib.Path
) -> None:
    (source,) = make_wavs(1)
    with anyio.fail_after(GUARD):
        async with make_client(emulator) as client:
            task = await process(client, source)
            reads = client.request_counts["GET /tasks/{id}"]
            emulator.expire_links()
            # ``task`` holds the links issued before expiry: every one of them is refused.
            await client.download(task, tmp_path / "out")
            refreshed = client.request_counts["GET /tasks/{id}"] - reads
    outputs = len(emulator.output_digests(task.id))
    assert emulator.stats()["cdn_denied"] == outputs
    assert refreshed == outputs  # one task read per output for a fresh link
    assert digests(tmp_path / "out") == emulator.output_digests(task.id)
