"""The AudioShake client: resources, waiting, pagination, sessions, and secrecy of the key."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pathlib
import re
import traceback
import warnings
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import anyio
import pytest

from audioshake_async import (
    AudioShake,
    PollPolicy,
    RetryPolicy,
    Target,
    TargetResult,
    Task,
    errors,
)

from ._servers import (
    API_KEY,
    Blob,
    FakeAPI,
    FakeCDN,
    Seen,
    api_client,
    base_url,
    canned_app,
    free_port,
    serve,
    task_json,
)

TINY_POLL = PollPolicy(initial_interval=0.001, max_interval=0.005, multiplier=1.5, jitter=0.0)


@contextlib.asynccontextmanager
async def canned_client(
    routes: dict[str, tuple[int, Any]], **kwargs: Any
) -> AsyncIterator[tuple[AudioShake, list[Seen]]]:
    """A client of a loopback server answering ``routes`` with fixed JSON."""
    kwargs.setdefault("retry", RetryPolicy(max_retries=2, base_delay=0.001, max_delay=0.002))
    seen: list[Seen] = []
    async with (
        serve(canned_app(routes, seen)) as server,
        AudioShake(API_KEY, base_url(server), **kwargs) as client,
    ):
        yield client, seen


def no_secret(text: str) -> None:
    assert API_KEY not in text
    assert API_KEY[-10:] not in text


# --------------------------------------------------------------------------- configuration


def test_api_key_and_base_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUDIOSHAKE_API_KEY", raising=False)
    monkeypatch.delenv("AUDIOSHAKE_BASE_URL", raising=False)
    with pytest.raises(errors.ConfigurationError, match="AUDIOSHAKE_API_KEY"):
        AudioShake()
    with pytest.raises(errors.ConfigurationError):
        AudioShake("   ")
    monkeypatch.setenv("AUDIOSHAKE_API_KEY", API_KEY)
    assert AudioShake().base_url == "https://api.audioshake.ai"
    monkeypatch.setenv("AUDIOSHAKE_BASE_URL", "http://127.0.0.1:9/")
    client = AudioShake()
    assert client.base_url == "http://127.0.0.1:9"
    no_secret(repr(client))
    no_secret(repr(client.transport))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0},
        {"timeout": float("inf")},
        {"max_retries": -1},
        {"rate_limit": 0},
        {"base_url": "ftp://x"},
    ],
)
def test_bad_configuration(kwargs: dict[str, Any]) -> None:
    with pytest.raises(errors.ConfigurationError):
        AudioShake(API_KEY, **kwargs)


def test_retry_policy_from_max_retries() -> None:
    assert AudioShake(API_KEY, max_retries=7).transport.retry.max_retries == 7
    assert AudioShake(API_KEY, rate_limit=None).transport.limiter is None


# --------------------------------------------------------------------------- plain JSON endpoints


async def test_models_statistics_and_assets() -> None:
    routes = {
        "GET /models": (
            200,
            {"models": [{"id": "vocals", "creditsPerMinute": 1.5, "futureField": 1}]},
        ),
        "GET /tasks/statistics": (
            200,
            [{"month": "2024-05", "totalTargets": 4, "totalMinutes": "12.25"}],
        ),
        "GET /assets": (200, [{"id": "a1", "format": "mp3", "name": "x.mp3"}]),
        "GET /assets/a1": (
            200,
            {"id": "a1", "mimeType": "audio/mp3", "link": "https://cdn/x?sig=1"},
        ),
    }
    async with canned_client(routes) as (client, seen):
        (model,) = await client.models.list()
        (usage,) = await client.tasks.statistics()
        (listed,) = await client.assets.list()
        got = await client.assets.get("a1")
        with pytest.raises(errors.ValidationError):
            await client.tasks.statistics("distribution")
        routes["GET /tasks/statistics"] = (200, [{"model": "vocals", "count": 3}])
        distribution = await client.tasks.distribution()
        routes["GET /tasks/statistics"] = (200, {"not": "a list"})
        with pytest.raises(errors.ResponseParseError):
            await client.tasks.distribution()
    assert model.id == "vocals" and model.credits_per_minute == 1.5
    assert usage.total_minutes == Decimal("12.25") and usage.total_targets == 4
    assert distribution == [{"model": "vocals", "count": 3}]
    assert listed.name == "x.mp3" and got.mime_type == "audio/mp3"
    assert [(s.method, s.path, s.query) for s in seen] == [
        ("GET", "/models", {}),
        ("GET", "/tasks/statistics", {"name": "usage"}),
        ("GET", "/assets", {}),
        ("GET", "/assets/a1", {}),
        ("GET", "/tasks/statistics", {"name": "distribution"}),
        ("GET", "/tasks/statistics", {"name": "distribution"}),
    ]
    assert all(s.headers["x-api-key"] == API_KEY for s in seen)
    assert all(s.headers["Accept"] == "application/json" for s in seen)


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (
            400,
            {"statusCode": 400, "error": "Bad Request", "message": "bad"},
            errors.BadRequestError,
        ),
        (
            400,
            {"statusCode": 400, "error": "Bad Request", "message": "Insufficient credits"},
            errors.InsufficientCreditsError,
        ),
        (401, {"message": "Invalid API key"}, errors.AuthenticationError),
        (403, {"message": "Model requires access"}, errors.PermissionDeniedError),
        (
            404,
            {"statusCode": 404, "error": "Not Found", "message": "Cannot find asset"},
            errors.NotFoundError,
        ),
        (413, {"message": "too large"}, errors.PayloadTooLargeError),
        (422, {"message": "nope"}, errors.UnprocessableEntityError),
    ],
)
async def test_4xx_mapping(status: int, body: dict[str, Any], cls: type) -> None:
    async with canned_client({"GET /assets/a1": (status, body)}) as (client, seen):
        with pytest.raises(cls) as info:
            await client.assets.get("a1")
    assert type(info.value) is cls
    assert info.value.status == status and info.value.message == body["message"]
    assert len(seen) == 1  # 4xx is never retried
    no_secret(str(info.value) + repr(info.value))


async def test_non_json_5xx_after_retries() -> None:
    async with canned_client({"GET /models": (502, "<html>Bad Gateway</html>")}) as (
        client,
        seen,
    ):
        with pytest.raises(errors.ServerError) as info:
            await client.models.list()
    assert info.value.message == "<html>Bad Gateway</html>"
    assert len(seen) == 3


async def test_webhooks_inferred_api() -> None:
    routes = {
        "POST /webhooks": (200, {"id": "w1", "url": "https://me/hook"}),
        "GET /webhooks": (200, [{"id": "w1"}]),
        "DELETE /webhooks/w1": (204, None),
    }
    async with canned_client(routes) as (client, seen):
        hook = await client.webhooks.register("https://me/hook")
        listed = await client.webhooks.list()
        await client.webhooks.delete("w1")
        with pytest.raises(errors.ValidationError):
            await client.webhooks.register("ftp://me/hook")
    assert hook.url == "https://me/hook" and [w.id for w in listed] == ["w1"]
    assert [(s.method, s.path) for s in seen] == [
        ("POST", "/webhooks"),
        ("GET", "/webhooks"),
        ("DELETE", "/webhooks/w1"),
    ]
    assert seen[0].body == b'{"url":"https://me/hook"}'


@pytest.mark.parametrize("bad", ["", "  ", "a/b", "..", "."])
async def test_ids_are_checked_before_any_request(bad: str) -> None:
    async with canned_client({}) as (client, seen):
        with pytest.raises(errors.ValidationError):
            await client.tasks.get(bad)
        with pytest.raises(errors.ValidationError):
            await client.assets.get(bad)
        with pytest.raises(errors.ValidationError):
            await client.webhooks.delete(bad)
    assert seen == []


# --------------------------------------------------------------------------- tasks


async def test_create_sends_the_documented_body() -> None:
    api = FakeAPI()
    async with api_client(api) as client:
        task = await client.tasks.create(
            asset_id="asset1",
            targets=[Target("vocals", ["wav"]), Target("instrumental", "mp3", variant="hq")],
            metadata='{"row": 7}',
        )
        with pytest.raises(errors.ValidationError):
            await client.tasks.create(targets=[Target("vocals")])  # no source
    assert api.created == [
        {
            "assetId": "asset1",
            "targets": [
                {"model": "vocals", "formats": ["wav"]},
                {"model": "instrumental", "formats": ["mp3"], "variant": "hq"},
            ],
            "metadata": '{"row": 7}',
        }
    ]
    assert task.metadata == '{"row": 7}' and len(task.targets) == 2 and not task.is_done
    assert len(api.requests("POST", "/tasks")) == 1


async def test_create_is_not_retried_after_a_drop() -> None:
    api = FakeAPI()
    api.faults["POST /tasks"] = ["drop"]
    async with api_client(api) as client:
        with pytest.raises(errors.AmbiguousRequestError) as info:
            await client.tasks.create(url="https://x.test/a.wav", targets=[Target("vocals")])
    assert len(api.requests("POST", "/tasks")) == 1
    assert client.request_counts["POST /tasks"] == 1
    no_secret(str(info.value) + repr(info.value))


async def test_list_walks_every_page_and_dedupes_shifted_items() -> None:
    api = FakeAPI()
    api.task_list = [task_json(f"old{i:02d}") for i in range(25)]
    arrivals = iter(range(100))

    def new_task_arrives() -> None:
        # Newest first: each new task pushes every older one a place further down.
        api.task_list.insert(0, task_json(f"new{next(arrivals)}"))

    api.after_list = new_task_arrives
    async with api_client(api) as client:
        ids = [task.id async for task in client.tasks.list(page_size=10)]
    assert len(ids) == len(set(ids))
    assert {i for i in ids if i.startswith("old")} == {f"old{i:02d}" for i in range(25)}
    skips = [(s.query["skip"], s.query["take"]) for s in api.requests("GET", "/tasks")]
    assert skips[:3] == [("0", "10"), ("10", "10"), ("20", "10")]
    # Pages ended with a short one.
    assert len(api.task_list) - int(skips[-1][0]) < 10


async def test_list_limit_and_find_by_metadata() -> None:
    api = FakeAPI()
    api.task_list = [task_json(f"t{i}", metadata=f"row-{i}") for i in range(30)]
    async with api_client(api) as client:
        first = [t.id async for t in client.tasks.list(page_size=10, limit=12)]
        found = await client.tasks.find_by_metadata("row-17")
        missing = await client.tasks.find_by_metadata("row-999")
        with pytest.raises(errors.ValidationError):
            _ = [t async for t in client.tasks.list(page_size=101)]
    assert first == [f"t{i}" for i in range(12)]
    assert found is not None and found.id == "t17"
    assert missing is None


def _snapshot(*statuses: str) -> dict[str, Any]:
    return task_json(
        "t1",
        *[
            (f"m{i}", status, [(f"m{i}", "wav")] if status == "completed" else [])
            for i, status in enumerate(statuses)
        ],
    )


async def test_wait_polls_until_every_target_is_terminal() -> None:
    api = FakeAPI()
    api.scripts["t1"] = [
        _snapshot("processing", "processing"),
        _snapshot("completed", "processing"),  # first target done: not enough
        _snapshot("processing", "processing"),  # stale (e.g. a lagging replica)
        _snapshot("completed", "error"),
    ]
    updates: list[Task] = []
    async with api_client(api, poll=TINY_POLL) as client:
        task = await client.tasks.wait("t1", on_update=updates.append)
    assert [t.status for t in task.targets] == ["completed", "error"]
    assert task.is_done and not task.succeeded
    assert len(api.requests("GET", "/tasks/t1")) == 4
    assert [[t.status for t in u.targets] for u in updates] == [
        ["processing", "processing"],
        ["completed", "processing"],
        ["completed", "processing"],  # the stale snapshot never un-finished m0
        ["completed", "error"],
    ]
    assert task.failed_targets[0].error is not None
    assert task.failed_targets[0].error.message == "m1 failed"


async def test_wait_raise_on_error() -> None:
    api = FakeAPI()
    api.scripts["t1"] = [_snapshot("processing", "completed"), _snapshot("failed", "completed")]
    async with api_client(api, poll=TINY_POLL) as client:
        with pytest.raises(errors.TaskFailedError) as info:
            await client.tasks.wait("t1", raise_on_error=True)
    assert info.value.task.id == "t1"
    assert [t.model for t in info.value.task.failed_targets] == ["m0"]
    assert "m0" in str(info.value)


async def test_wait_timeout_carries_the_last_snapshot() -> None:
    api = FakeAPI()
    api.scripts["t1"] = [_snapshot("processing", "completed")]
    async with api_client(api, poll=TINY_POLL) as client:
        with pytest.raises(errors.TaskTimeoutError) as info:
            await client.tasks.wait("t1", timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert info.value.task_id == "t1"
    assert info.value.task is not None
    assert [t.status for t in info.value.task.targets] == ["processing", "completed"]
    assert len(api.requests("GET", "/tasks/t1")) >= 2


@pytest.mark.parametrize("hang_on", [1, 2], ids=["first-read", "later-read"])
async def test_wait_timeout_bounds_a_read_that_hangs(hang_on: int) -> None:
    """A GET hanging far past the wait's deadline still ends in TaskTimeoutError, on time.

    The request timeout (60 s) is far longer than the wait's: the read in progress is what the
    deadline has to cut short, and the error is the wait's, not the transport's.
    """
    api = FakeAPI()
    api.scripts["t1"] = [_snapshot("processing", "completed")]
    # FakeAPI keys faults by route template; a float delays that request by so many seconds.
    api.faults["GET /tasks/{id}"] = [0.0] * (hang_on - 1) + [30.0]
    with anyio.fail_after(10):
        async with api_client(api, poll=TINY_POLL) as client:
            with pytest.raises(errors.TaskTimeoutError) as info:
                await client.tasks.wait("t1", timeout=0.5)
    assert not isinstance(info.value, errors.APITimeoutError)
    assert info.value.task_id == "t1"
    assert len(api.requests("GET", "/tasks/t1")) == hang_on
    if hang_on == 1:
        assert info.value.task is None  # no read ever finished
    else:
        assert info.value.task is not None
        assert [t.status for t in info.value.task.targets] == ["processing", "completed"]


async def test_wait_on_a_finished_task_sends_nothing() -> None:
    api = FakeAPI()
    done = Task("t1", (TargetResult("a", status="completed"),))
    async with api_client(api, poll=TINY_POLL) as client:
        assert await client.tasks.wait(done) is done
    assert api.seen == []


# --------------------------------------------------------------------------- sessions


async def test_injected_session_is_left_open() -> None:
    api = FakeAPI()
    async with serve(api.app) as server, aiohttp.ClientSession() as session:
        async with AudioShake(API_KEY, base_url(server), session=session) as client:
            await client.models.list()
            assert client.transport.session is session
        assert not session.closed
        # Still usable by its owner.
        async with session.get(f"{base_url(server)}/models") as response:
            assert response.status == 401  # no key: the client's headers were per request


async def test_owned_session_is_closed_on_exit_without_warnings() -> None:
    api = FakeAPI()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with serve(api.app) as server:
            async with AudioShake(API_KEY, base_url(server)) as client:
                await client.models.list()
                session = client.transport.session
            assert session.closed
            unused = AudioShake(API_KEY, base_url(server))  # never opens a session
            del unused
            gc.collect()
    assert not [w for w in caught if "nclosed" in str(w.message)]
    with pytest.raises(errors.ConfigurationError):
        await client.models.list()


# --------------------------------------------------------------------------- secrecy of the key


async def test_full_flow_never_logs_the_key(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    api, cdn = FakeAPI(), FakeCDN()
    song = tmp_path / "song.wav"
    song.write_bytes(os.urandom(200_000))
    stems = {"vocals": os.urandom(300_000), "instrumental": os.urandom(300_000)}
    caplog.set_level(logging.DEBUG)
    async with serve(cdn.app) as cdn_server, api_client(api, poll=TINY_POLL) as client:
        for name, content in stems.items():
            cdn.blobs[f"{name}.wav"] = Blob(content, cuts=[100_000])  # one resume each
        api.link_for = lambda task_id, name, fmt: cdn.link(cdn_server, f"{name}.{fmt}", "SIGX")
        api.faults["GET /tasks/{id}"] = [503]
        asset = await client.assets.upload(song)
        task = await client.tasks.create(
            asset_id=asset.id, targets=[Target("vocals"), Target("instrumental")]
        )
        api.scripts[task.id] = [
            task_json(task.id, ("vocals", "processing", []), ("instrumental", "processing", [])),
            task_json(
                task.id,
                ("vocals", "completed", [("vocals", "wav")]),
                ("instrumental", "completed", [("instrumental", "wav")]),
            ),
        ]
        task = await client.tasks.wait(task.id)
        paths = await client.download(task, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["instrumental.wav", "vocals.wav"]
    assert (tmp_path / "out" / "vocals.wav").read_bytes() == stems["vocals"]
    # The flow really logged (requests, a retry, resumed downloads) ...
    text = "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.args!r} {r.exc_text or ''}"
        for r in caplog.records
    )
    assert "retrying GET" in text and "/tasks/" in text
    assert caplog.records and any(r.levelno == logging.DEBUG for r in caplog.records)
    # ... and never the key, nor a link signature.
    no_secret(text)
    # (The loopback servers' own access logs name the full URL; the client's records do not.)
    client_text = "\n".join(
        f"{r.getMessage()} {r.args!r}" for r in caplog.records if r.name.startswith("audioshake")
    )
    assert "/files/vocals.wav" in client_text and "SIGX" not in client_text
    # The API saw the key on every request, the CDN on none.
    assert api.seen and all(s.headers.get("x-api-key") == API_KEY for s in api.seen)
    assert len(cdn.seen) == 4
    assert all("x-api-key" not in s.headers for s in cdn.seen)


def _everything(exc: BaseException) -> str:
    return (
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        + repr(exc)
        + str(vars(exc))
    )


async def test_key_absent_from_errors_401_5xx_connection_timeout() -> None:
    api = FakeAPI(api_key="another-key")
    api.faults["GET /tasks/{id}"] = [0.5] * 3  # slow: times out
    async with serve(api.app) as server:
        fast = RetryPolicy(max_retries=1, base_delay=0.001, max_delay=0.002)
        async with AudioShake(API_KEY, base_url(server), retry=fast, timeout=0.1) as client:
            with pytest.raises(errors.AuthenticationError) as auth:
                await client.models.list()
            api.faults["GET /assets"] = [500, 500]
            with pytest.raises(errors.ServerError) as server_error:
                await client.assets.list()
            with pytest.raises(errors.APITimeoutError) as timeout:
                await client.tasks.get("t1")
        async with AudioShake(API_KEY, f"http://127.0.0.1:{free_port()}", retry=fast) as client:
            with pytest.raises(errors.APIConnectionError) as refused:
                await client.models.list()
    for info in (auth, server_error, timeout, refused):
        no_secret(_everything(info.value))
        assert re.search(r"(GET|http)", str(info.value))


async def test_download_into_an_unwritable_destination(tmp_path: pathlib.Path) -> None:
    """A local error (the destination is a file) surfaces as an error of this package."""
    api, cdn = FakeAPI(), FakeCDN()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    async with serve(cdn.app) as cdn_server, api_client(api) as client:
        cdn.blobs["vocals.wav"] = Blob(b"abc")
        api.link_for = lambda task_id, name, fmt: cdn.link(cdn_server, f"{name}.{fmt}")
        api.scripts["t1"] = [task_json("t1", ("vocals", "completed", [("vocals", "wav")]))]
        with pytest.raises(errors.DownloadError, match="1 of 1 outputs failed"):
            await client.download("t1", blocker / "stems")


async def test_refresh_keeps_each_output_its_own_link(tmp_path: pathlib.Path) -> None:
    api, cdn = FakeAPI(), FakeCDN()
    async with serve(cdn.app) as cdn_server, api_client(api) as client:
        cdn.blobs["t1-std"] = Blob(b"standard", tokens={"fresh"})
        cdn.blobs["t1-hq"] = Blob(b"high quality", tokens={"fresh"})

        def link_for(task_id: str, name: str, fmt: str) -> str:
            raise AssertionError("links are given explicitly")

        api.link_for = link_for
        token = "stale"

        def snapshot() -> dict[str, Any]:
            body = task_json("t1", ("vocals", "completed", []), ("vocals_hq", "completed", []))
            body["targets"][0]["output"] = [
                {"name": "vocals", "format": "wav", "link": cdn.link(cdn_server, "t1-std", token)}
            ]
            body["targets"][1]["output"] = [
                {"name": "vocals", "format": "wav", "link": cdn.link(cdn_server, "t1-hq", token)}
            ]
            return body

        api.scripts["t1"] = [snapshot()]
        task = await client.tasks.get("t1")
        token = "fresh"
        api.scripts["t1"] = [snapshot()]
        paths = await client.download(task, tmp_path)
    assert sorted(p.read_bytes() for p in paths) == [b"high quality", b"standard"]
