"""Webhook deliveries: waiting without polling, and deliveries treated as hints only."""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import socket
import sys
from collections.abc import AsyncIterator, Callable
from subprocess import CompletedProcess

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from audioshake_async import AudioShake, PollPolicy, Target, Task
from audioshake_async.batch import BatchResult
from audioshake_async.emulator import Emulator
from audioshake_async.tasks.wire import parse_task
from audioshake_async.webhooks import WebhookReceiver

from .conftest import FAST_RETRY, write_wav

TARGETS = [Target("vocals", ["wav"]), Target("drums", ["wav"])]
MakeWavs = Callable[..., list[pathlib.Path]]
#: A polling schedule so slow that any completion in these tests must come from deliveries.
EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
NO_POLLING = PollPolicy(initial_interval=600.0, max_interval=600.0)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    hooks = WebhookReceiver()
    async with hooks.serve("127.0.0.1", 0):
        yield hooks


@pytest.fixture
async def registered(emulator: Emulator, receiver: WebhookReceiver) -> AsyncIterator[str]:
    async with AudioShake(emulator.api_key, emulator.base_url) as admin:
        hook = await admin.webhooks.register(receiver.url)
        yield hook.id


def make_client(emulator: Emulator) -> AudioShake:
    return AudioShake(
        emulator.api_key, emulator.base_url, retry=FAST_RETRY, rate_limit=5000.0, poll=NO_POLLING
    )


async def test_register_list_delete_round_trip(emulator: Emulator) -> None:
    async with make_client(emulator) as client:
        hook = await client.webhooks.register("https://example.org/hooks/abc")
        assert [w.url for w in await client.webhooks.list()] == ["https://example.org/hooks/abc"]
        await client.webhooks.delete(hook.id)
        assert await client.webhooks.list() == []


async def test_wait_resolves_from_deliveries_without_polling(
    emulator: Emulator, receiver: WebhookReceiver, registered: str, make_wavs: MakeWavs
) -> None:
    emulator.configure(delay=0.2)
    async with make_client(emulator) as client:
        asset = await client.assets.upload(make_wavs(1)[0])
        task = await client.tasks.create(asset_id=asset.id, targets=TARGETS)
        with anyio.fail_after(30):
            done = await client.tasks.wait(task.id, webhooks=receiver, safety_poll=600)
        assert done.is_done and done.succeeded
        gets = client.request_counts["GET /tasks/{id}"]
    # One initial read, then one confirmation per target delivery.
    assert gets <= 1 + len(TARGETS)
    assert receiver.stats.accepted == len(TARGETS)


async def test_a_task_finished_before_the_wait_is_found_by_one_get(
    emulator: Emulator, receiver: WebhookReceiver, make_wavs: MakeWavs
) -> None:
    async with make_client(emulator) as client:
        asset = await client.assets.upload(make_wavs(1)[0])
        task = await client.tasks.create(asset_id=asset.id, targets=TARGETS)
        await emulator.wait_for_task(task.id)
        done = await client.tasks.wait(task.id, webhooks=receiver, safety_poll=600)
        assert done.is_done
        assert client.request_counts["GET /tasks/{id}"] == 1


async def test_lost_deliveries_are_covered_by_the_safety_poll(
    emulator: Emulator, receiver: WebhookReceiver, registered: str, make_wavs: MakeWavs
) -> None:
    emulator.configure(delay=0.1, webhook_drop_rate=1.0)
    async with make_client(emulator) as client:
        asset = await client.assets.upload(make_wavs(1)[0])
        task = await client.tasks.create(asset_id=asset.id, targets=TARGETS)
        with anyio.fail_after(30):
            done = await client.tasks.wait(task.id, webhooks=receiver, safety_poll=0.3)
    assert done.is_done
    assert receiver.stats.accepted == 0


async def collect(
    client: AudioShake, inputs: list[pathlib.Path], out: pathlib.Path, **options: object
) -> list[BatchResult]:
    results = []
    async for result in client.batch(inputs, targets=TARGETS, out_dir=out, **options):  # type: ignore[arg-type]
        results.append(result)
    return results


async def test_batch_of_300_is_driven_by_deliveries(
    emulator: Emulator,
    receiver: WebhookReceiver,
    registered: str,
    make_wavs: MakeWavs,
    tmp_path: pathlib.Path,
) -> None:
    emulator.configure(delay=0.3, jitter=0.3)
    inputs = make_wavs(300)
    async with make_client(emulator) as client:
        with anyio.fail_after(120):
            results = await collect(
                client,
                inputs,
                tmp_path / "out",
                webhooks=receiver,
                safety_poll=600.0,
                upload_concurrency=16,
                download_concurrency=16,
            )
        counts = client.request_counts
    assert all(r.ok for r in results) and len(results) == 300
    # Issue 15: at most 1.1 confirming reads per task (two deliveries each), counted by the
    # emulator: close deliveries are coalesced and reads due together ride on list pages.
    served = emulator.stats()["requests"]
    reads = served.get("GET /tasks/{id}", 0) + served.get("GET /tasks", 0)
    assert reads <= 1.1 * len(inputs), (served, counts, receiver.stats)
    for result in results:
        assert result.task is not None
        digests = emulator.output_digests(result.task.id)
        assert sorted(p.name for p in result.files) == sorted(digests)
        for path in result.files:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == digests[path.name], path


async def test_duplicated_reordered_and_lost_deliveries_still_complete(
    emulator: Emulator,
    receiver: WebhookReceiver,
    registered: str,
    make_wavs: MakeWavs,
    tmp_path: pathlib.Path,
) -> None:
    emulator.configure(
        delay=0.1,
        jitter=0.2,
        webhook_duplicate_rate=0.5,
        webhook_delay_jitter=0.3,
        webhook_drop_rate=0.3,
    )
    inputs = make_wavs(40)
    async with make_client(emulator) as client:
        with anyio.fail_after(60):
            results = await collect(
                client, inputs, tmp_path / "out", webhooks=receiver, safety_poll=0.5
            )
    assert all(r.ok for r in results) and len(results) == 40
    stats = emulator.stats()
    assert stats["faults"]["webhook_drop"] > 0 and stats["faults"]["webhook_duplicate"] > 0
    assert receiver.stats.duplicates > 0


async def post(url: str, body: bytes, content_type: str = "application/json") -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=io.BytesIO(body), headers={"Content-Type": content_type}
        ) as response,
    ):
        return response.status


async def test_forged_deliveries_are_rejected_or_ignored_and_download_nothing(
    emulator: Emulator,
    receiver: WebhookReceiver,
    make_wavs: MakeWavs,
    tmp_path: pathlib.Path,
) -> None:
    foreign_requests: list[str] = []

    async def record(request: web.Request) -> web.Response:
        foreign_requests.append(request.path)
        return web.Response(body=b"evil")

    foreign_app = web.Application()
    foreign_app.router.add_get("/{tail:.*}", record)
    async with (
        TestServer(foreign_app, host="127.0.0.1") as foreign,
        make_client(emulator) as client,
    ):
        asset = await client.assets.upload(make_wavs(1)[0])
        emulator.configure(delay=30.0)  # the real task stays processing
        task = await client.tasks.create(asset_id=asset.id, targets=TARGETS)
        forged = {
            "id": task.id,
            "createdAt": "2026-01-01T00:00:00Z",
            "clientId": "x",
            "targets": [
                {
                    "id": t.id,
                    "model": t.model,
                    "status": "completed",
                    "formats": ["wav"],
                    "output": [
                        {
                            "name": t.model,
                            "format": "wav",
                            "link": str(foreign.make_url(f"/{t.model}.wav")),
                        }
                    ],
                }
                for t in task.targets
            ],
        }
        body = json.dumps(forged).encode()
        wrong_token = receiver.url.rsplit("/", 1)[0] + "/" + "x" * 43
        assert await post(wrong_token, body) == 404
        assert await post(receiver.url, b"{not json") == 400
        assert await post(receiver.url, b"[1, 2, 3]") == 400
        assert await post(receiver.url, b"x" * (10 * 1024 * 1024)) == 413
        unknown = dict(forged, id="unknown-task")
        assert await post(receiver.url, json.dumps(unknown).encode()) == 200
        assert receiver.stats.rejected == 4

        async def deliver_forgery() -> None:
            await anyio.sleep(0.2)
            assert await post(receiver.url, body) == 200

        async with anyio.create_task_group() as group:
            group.start_soon(deliver_forgery)
            with pytest.raises(TimeoutError):
                await client.tasks.wait(task.id, timeout=1.0, webhooks=receiver, safety_poll=600)
        # The forgery woke the waiter, which confirmed with the API: still processing.
        assert client.request_counts["GET /tasks/{id}"] >= 2
    assert foreign_requests == []


async def test_receiver_mounts_inside_a_users_app(emulator: Emulator, make_wavs: MakeWavs) -> None:
    receiver = WebhookReceiver()
    app = web.Application()

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/health", health)
    app.add_subapp("/hooks", receiver.app())
    emulator.configure(delay=0.1)
    async with TestServer(app, host="127.0.0.1") as server, make_client(emulator) as client:
        hook = await client.webhooks.register(receiver.url_for(str(server.make_url("/hooks"))))
        asset = await client.assets.upload(make_wavs(1)[0])
        task = await client.tasks.create(asset_id=asset.id, targets=TARGETS)
        with anyio.fail_after(30):
            done = await client.tasks.wait(task.id, webhooks=receiver, safety_poll=600)
        await client.webhooks.delete(hook.id)
    assert done.is_done and receiver.stats.accepted == len(TARGETS)


async def test_cli_registers_for_the_run_and_removes_it_after(
    emulator: Emulator, tmp_path: pathlib.Path
) -> None:
    emulator.configure(delay=0.2)
    with socket.socket() as probe:  # a free port for the CLI's receiver
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = await run_cli(
        emulator,
        tmp_path,
        "--webhook-listen",
        f"127.0.0.1:{port}",
        "--webhook-url",
        f"http://127.0.0.1:{port}",
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    stats = emulator.stats()
    assert stats["requests"].get("POST /webhooks") == 1
    assert stats["requests"].get("DELETE /webhooks/{id}") == 1
    assert stats["webhooks"]["deliveries_succeeded"] >= 1
    # Driven by the delivery, not by polls (the safety poll is minutes away).
    assert stats["requests"].get("GET /tasks/{id}", 0) <= 2
    async with make_client(emulator) as client:
        assert await client.webhooks.list() == []


async def test_cli_without_registration_prints_the_url_to_configure(
    emulator: Emulator, tmp_path: pathlib.Path
) -> None:
    emulator.configure(delay=0.0)
    result = await run_cli(
        emulator,
        tmp_path,
        "--webhook-listen",
        "127.0.0.1:0",
        "--webhook-url",
        "https://hooks.example.org",
        "--webhook-no-register",
        "--timeout",
        "1",
    )
    stderr = result.stderr.decode()
    assert "https://hooks.example.org/audioshake/webhooks/" in stderr
    assert "POST /webhooks" not in emulator.stats()["requests"]
    # No delivery reaches a receiver nobody registered; the read at the --timeout deadline
    # (not the 3-minute safety poll) still finds the finished task.
    assert result.returncode == 0, stderr[-2000:]
    assert (tmp_path / "o" / "in" / "vocals.wav").stat().st_size > 44


async def run_cli(
    emulator: Emulator, tmp_path: pathlib.Path, *argv: str
) -> CompletedProcess[bytes]:
    """``audioshake-async run in.wav -m vocals -o o ...`` on the emulator, in a child process."""
    source = tmp_path / "in.wav"
    write_wav(source)
    command = [sys.executable, "-m", "audioshake_async", "run", str(source), "-m", "vocals"]
    command += ["-o", str(tmp_path / "o"), "--quiet", "--base-url", emulator.base_url]
    command += ["--api-key", emulator.api_key, *argv]
    with anyio.fail_after(60):
        return await anyio.run_process(command, check=False)


# --- the receiver's core on plain data ---------------------------------------------------------


def delivery(task_id: str, *statuses: str) -> bytes:
    """A delivery body: one target per status, ids t0, t1, ..."""
    targets = [
        {"id": f"t{i}", "model": "vocals", "status": status, "formats": ["wav"]}
        for i, status in enumerate(statuses)
    ]
    return json.dumps({"id": task_id, "targets": targets}).encode()


def test_accept_dedupes_tolerates_reordering_and_ignores_stale_snapshots() -> None:
    receiver = WebhookReceiver(token="t" * 20)
    woken: list[list[str]] = []
    receiver.subscribe("task-1", lambda task: woken.append([t.status for t in task.targets]))
    token = receiver.path.rsplit("/", 1)[1]
    # The second target's delivery arrives first: both are news.
    assert receiver.accept(token, delivery("task-1", "processing", "completed")).result == (
        "accepted"
    )
    assert receiver.accept(token, delivery("task-1", "completed", "completed")).result == (
        "accepted"
    )
    # Once a read confirmed both, a repeat and a stale snapshot carry nothing new: nobody
    # is woken. (Before the confirmation a repeat still wakes: the read may have been stale.)
    receiver.confirm(parse_task(json.loads(delivery("task-1", "completed", "completed"))))
    assert receiver.accept(token, delivery("task-1", "completed", "completed")).result == (
        "duplicate"
    )
    assert receiver.accept(token, delivery("task-1", "processing", "processing")).result == (
        "duplicate"
    )
    assert woken == [["processing", "completed"], ["completed", "completed"]]
    assert (receiver.stats.accepted, receiver.stats.duplicates) == (2, 2)


def test_accept_rejects_bad_deliveries_without_waking_anyone() -> None:
    receiver = WebhookReceiver(token="s" * 20, max_body=1000)
    woken: list[object] = []
    receiver.add_listener(woken.append)
    token = "s" * 20
    cases = {
        ("x" * 20, delivery("task-1", "completed")): 404,
        (token, b"{"): 400,
        (token, b'"a string"'): 400,
        (token, json.dumps({"id": "task-1", "targets": []}).encode()): 422,
        (token, b" " * 1001): 413,
    }
    for (given, body), status in cases.items():
        assert receiver.accept(given, body).status == status
    assert woken == [] and receiver.stats.rejected == len(cases)


def test_a_delivery_before_the_wait_started_is_replayed_on_subscribe() -> None:
    receiver = WebhookReceiver(token="r" * 20)
    assert receiver.accept("r" * 20, delivery("early", "completed")).result == "accepted"
    woken: list[str] = []
    receiver.subscribe("early", lambda task: woken.append(task.id))
    assert woken == ["early"]


def test_rejections_never_log_the_body_or_the_token(caplog: pytest.LogCaptureFixture) -> None:
    receiver = WebhookReceiver(token="secret-token-0123456789")
    with caplog.at_level("DEBUG", logger="audioshake_async.webhooks"):
        receiver.accept("secret-token-0123456789", b'{"id": "PRIVATE-BODY"')
        receiver.accept("wrong-token-0123456789", b"{}")
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert len(caplog.records) == 2
    assert "PRIVATE-BODY" not in text and "secret-token" not in text
    assert "secret-token" not in repr(receiver)


# --- ASGI: FastAPI/Starlette mount, served by uvicorn over loopback ---------------------------


async def test_asgi_receiver_mounted_in_starlette_drives_a_wait(
    emulator: Emulator, make_wavs: MakeWavs
) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    routing = pytest.importorskip("starlette.routing")
    applications = pytest.importorskip("starlette.applications")
    receiver = WebhookReceiver()
    app = applications.Starlette(routes=[routing.Mount(receiver.path_prefix, receiver.asgi_app())])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    emulator.configure(delay=0.2)
    async with anyio.create_task_group() as group, make_client(emulator) as client:
        group.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 (uvicorn offers only this flag)
                await anyio.sleep(0.01)
        base = f"http://127.0.0.1:{port}"
        hook = await client.webhooks.register(receiver.url_for(base))
        asset = await client.assets.upload(make_wavs(1)[0])
        task = await client.tasks.create(asset_id=asset.id, targets=TARGETS)
        with anyio.fail_after(30):
            done = await client.tasks.wait(task.id, webhooks=receiver, safety_poll=600)
        gets = client.request_counts["GET /tasks/{id}"]
        # The same checks as the aiohttp route, through the ASGI adapter.
        wrong = f"{base}{receiver.path_prefix}/{'x' * 43}"
        assert await post(wrong, delivery(task.id, "completed")) == 404
        assert await post(receiver.url_for(base), b"x" * (2 << 20)) == 413
        assert await post(receiver.url_for(base), b"{oops") == 400
        async with aiohttp.ClientSession() as session, session.get(receiver.url_for(base)) as r:
            assert r.status == 405
        await client.webhooks.delete(hook.id)
        server.should_exit = True
    assert done.is_done and done.succeeded
    assert gets <= 1 + len(TARGETS)
    assert receiver.stats.accepted == len(TARGETS) and receiver.stats.rejected == 3


# --- examples/webhooks_app.py ------------------------------------------------------------------


async def test_webhooks_example_app_answers_from_deliveries(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = EXAMPLES
    monkeypatch.syspath_prepend(str(examples))
    import webhooks_app

    sample = sorted((examples / "audio").glob("*.wav"))[0]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    emulator.configure(delay=0.3)
    app = webhooks_app.make_app(
        f"http://127.0.0.1:{port}", emulator.api_key, emulator.base_url, safety_poll=600.0
    )
    async with TestServer(app, host="127.0.0.1", port=port) as server:
        assert emulator.stats()["requests"].get("POST /webhooks") == 1
        form = aiohttp.FormData()
        form.add_field("file", sample.read_bytes(), filename=sample.name)
        async with (
            aiohttp.ClientSession() as session,
            session.post(server.make_url("/separate"), data=form) as response,
        ):
            assert response.status == 200, await response.text()
            answer = await response.json()
    assert [t["status"] for t in answer["targets"]] == ["completed", "completed"]
    requests = emulator.stats()["requests"]
    assert requests.get("GET /tasks/{id}", 0) <= 3  # one initial read + one per delivery
    assert requests.get("DELETE /webhooks/{id}") == 1  # removed when the app stopped


async def test_a_delivery_during_a_read_is_not_lost(
    emulator: Emulator,
    receiver: WebhookReceiver,
    registered: str,
    make_wavs: MakeWavs,
    tmp_path: pathlib.Path,
) -> None:
    """The confirming read of delivery 1 is answered before delivery 2 arrives (a race that
    loaded machines hit): delivery 2 must cause another read, not wait for the safety poll."""
    from audioshake_async.batch import run_batch
    from audioshake_async.tasks import AudioShakeProvider

    second_delivery = anyio.Event()
    receiver.add_listener(lambda _: second_delivery.set() if receiver.stats.accepted >= 2 else None)

    first_read: list[Task] = []

    class SlowFirstRead(AudioShakeProvider):
        reads = 0

        async def get(self, task_id: str) -> Task:
            snapshot = await super().get(task_id)
            SlowFirstRead.reads += 1
            if SlowFirstRead.reads == 1:
                first_read.append(snapshot)
                await second_delivery.wait()  # answered with the state before delivery 2
            return snapshot

    # Targets finish far apart (seeded jitter), so read 1 sees only the first one done.
    emulator.configure(delay=0.05, jitter=1.0)
    targets = [Target("vocals", ["wav"]), Target("drums", ["wav"])]
    async with make_client(emulator) as client:
        provider = SlowFirstRead(client)
        with anyio.fail_after(30):
            results = [
                r
                async for r in run_batch(
                    provider,
                    make_wavs(1),
                    targets=targets,
                    out_dir=tmp_path / "out",
                    webhooks=receiver,
                    safety_poll=600.0,
                    list_refresh=False,
                    hint_coalesce=0.0,  # read at delivery 1, so the race can happen
                )
            ]
    assert [r.status for r in results] == ["done"]
    assert first_read and not first_read[0].is_done  # the race was really run
    assert SlowFirstRead.reads >= 2


async def test_a_delivery_sent_in_small_chunks_is_read_whole(receiver: WebhookReceiver) -> None:
    """A chunked body arrives in pieces: the aiohttp route must read them all, not the first."""
    body = delivery("chunked-task", *["completed"] * 20)
    woken: list[str] = []
    receiver.subscribe("chunked-task", lambda task: woken.append(task.id))

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 64):
            yield body[start : start + 64]
            await anyio.sleep(0.001)  # separate writes, so the server sees separate chunks

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            receiver.url, data=pieces(), headers={"Content-Type": "application/json"}
        ) as response,
    ):
        assert response.status == 200, await response.text()
        assert (await response.json())["status"] == "accepted"
    assert woken == ["chunked-task"]
