"""Issue 15: hostile servers and slow networks, one test (at least) per numbered item.

Each runs against a misbehaving server on loopback (tests/_hostile.py) or the emulator with a
fault knob, and fails on the code before the fix. No test asserts on speed: the time bounds
(``fail_after``) are far above what the fixed code needs and far below what the old code took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
from aiohttp import web

from audioshake_async import AudioShake, Output, PollPolicy, Target, errors
from audioshake_async.cli.parser import build_parser
from audioshake_async.cli.providers import client_settings
from audioshake_async.core.download import DownloadLimits, fetch_to_file
from audioshake_async.core.files import plan_output_paths, safe_filename
from audioshake_async.core.parts import part_path_for
from audioshake_async.emulator import Emulator
from audioshake_async.webhooks import WebhookReceiver

from ._hostile import CDNMode, MiB, Mode, deep_json, hostile_api, hostile_cdn, raw_server
from ._servers import API_KEY, FAST_RETRY, serve
from .conftest import write_wav

TARGETS = [Target("vocals", ["wav"]), Target("drums", ["wav"])]
NO_POLLING = PollPolicy(initial_interval=600.0, max_interval=600.0)


async def run_cli(*argv: str) -> tuple[int, str, str]:
    result = await anyio.run_process([sys.executable, "-m", "audioshake_async", *argv], check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def offline_client(**kwargs: Any) -> AudioShake:
    """A client whose API host does not exist: any API request would fail loudly."""
    kwargs.setdefault("retry", FAST_RETRY)
    return AudioShake(API_KEY, "http://127.0.0.1:9", **kwargs)


# --------------------------------------------------------------------------- 1. deep JSON


async def test_1_deeply_nested_answer_is_a_response_parse_error(emulator: Emulator) -> None:
    async with hostile_api(emulator.base_url) as (api, url):
        api.mode = Mode.DEEP
        async with AudioShake(emulator.api_key, url, retry=FAST_RETRY) as client:
            with pytest.raises(errors.ResponseParseError, match="nested"):
                await client.tasks.get("abc")


def test_1_receiver_answers_400_to_a_deeply_nested_delivery() -> None:
    receiver = WebhookReceiver(token="t" * 20)
    outcome = receiver.accept("t" * 20, deep_json())
    assert outcome.status == 400 and receiver.stats.rejected == 1


async def test_1_cli_lists_the_item_as_failed_without_a_traceback(
    emulator: Emulator, tmp_path: pathlib.Path
) -> None:
    emulator.configure(delay=30.0)  # the task is still running when it is read
    source = tmp_path / "in.wav"
    write_wav(source)
    async with hostile_api(emulator.base_url) as (api, url):
        api.mode = Mode.DEEP
        status, out, err = await run_cli(
            "run", str(source), "-m", "vocals", "-o", str(tmp_path / "o"), "--base-url", url,
            "--api-key", emulator.api_key, "--json", "--quiet",
        )  # fmt: skip
        assert api.count("GET", "/tasks/") >= 1
    assert status == 1, err
    assert "Traceback" not in err
    summary = json.loads(out)
    assert summary["failed"] == 1
    assert "nested" in json.dumps(summary["results"])


# --------------------------------------------------------------------------- 2. huge JSON


async def test_2_an_answer_over_the_cap_is_refused_while_reading(emulator: Emulator) -> None:
    async with hostile_api(emulator.base_url) as (api, url):
        api.mode = Mode.HUGE
        api.huge_bytes = 64 * MiB  # valid JSON, chunked: only counting can stop it
        async with AudioShake(emulator.api_key, url, retry=FAST_RETRY) as client:
            assert client.transport.max_json_bytes == 16 * MiB  # the documented default
            with pytest.raises(errors.ResponseParseError, match="larger than"):
                await client.tasks.get("abc")
        await asyncio.sleep(0.2)
        assert api.sent_bytes < api.huge_bytes  # the client stopped reading


async def test_2_a_declared_length_over_the_cap_is_refused_before_reading(
    emulator: Emulator,
) -> None:
    async with hostile_api(emulator.base_url) as (api, url):
        api.mode = Mode.HUGE_DECLARED
        api.huge_bytes = 8 * MiB
        async with AudioShake(
            emulator.api_key, url, retry=FAST_RETRY, max_json_bytes=1 * MiB
        ) as client:
            with pytest.raises(errors.ResponseParseError, match="larger than"):
                await client.tasks.get("abc")
    assert api.count("GET", "/tasks/") == 1  # not retried


# --------------------------------------------------------------------------- 3. unbounded


def leftovers(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


async def test_3_a_declared_size_over_the_limit_is_refused_and_not_retried(
    tmp_path: pathlib.Path,
) -> None:
    async with hostile_cdn() as (cdn, url), offline_client() as client:
        cdn.mode = CDNMode.HUGE_DECLARED  # 5 GiB
        with pytest.raises(errors.DownloadError, match="limit"):
            await fetch_to_file(client.transport, f"{url}/files/a.wav", tmp_path / "a.wav")
    assert len(cdn.received) == 1
    assert leftovers(tmp_path) == []


async def test_3_an_endless_body_stops_at_the_maximum(tmp_path: pathlib.Path) -> None:
    async with hostile_cdn() as (cdn, url), offline_client() as client:
        cdn.mode = CDNMode.ENDLESS
        with anyio.fail_after(60), pytest.raises(errors.DownloadError, match="limit"):
            await fetch_to_file(
                client.transport,
                f"{url}/files/a.wav",
                tmp_path / "a.wav",
                limits=DownloadLimits(max_bytes=4 * MiB),
            )
    assert len(cdn.received) == 1
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- 4. stalls


async def test_4_a_stalled_download_is_retried_within_the_low_speed_window(
    tmp_path: pathlib.Path,
) -> None:
    limits = DownloadLimits(low_speed_limit=100_000, low_speed_time=0.5)
    async with hostile_cdn() as (cdn, url), offline_client() as client:
        cdn.mode = CDNMode.STALL  # 64 KiB, then silence (the transfer read timeout is 300 s)
        # The bound is generous: 4 attempts of a 0.5 s window and short backoffs. The old
        # code waited the 300 s read timeout per attempt.
        with anyio.fail_after(60), pytest.raises(errors.DownloadError, match="stalled"):
            await fetch_to_file(
                client.transport, f"{url}/files/a.wav", tmp_path / "a.wav", limits=limits
            )
    assert len(cdn.received) == 1 + FAST_RETRY.max_retries  # each stall was one attempt
    assert leftovers(tmp_path) == []


def test_4_the_cli_exposes_the_download_bounds() -> None:
    args = build_parser().parse_args(
        ["run", "x.wav", "-m", "vocals", "-o", "o", "--speed-limit", "100", "--speed-time",
         "5", "--max-download-size", "2G"]
    )  # fmt: skip
    assert client_settings(args)["download_limits"] == DownloadLimits(2 << 30, 100.0, 5.0)
    defaults = build_parser().parse_args(["run", "x.wav", "-m", "vocals", "-o", "o"])
    assert "download_limits" not in client_settings(defaults)


# --------------------------------------------------------------------------- 5. webhooks


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    hooks = WebhookReceiver()
    async with hooks.serve("127.0.0.1", 0):
        yield hooks


@pytest.fixture
async def registered(emulator: Emulator, receiver: WebhookReceiver) -> AsyncIterator[None]:
    async with AudioShake(emulator.api_key, emulator.base_url) as admin:
        hook = await admin.webhooks.register(receiver.url)
        yield
        await admin.webhooks.delete(hook.id)


def hooked_client(emulator: Emulator) -> AudioShake:
    return AudioShake(
        emulator.api_key, emulator.base_url, retry=FAST_RETRY, rate_limit=5000.0, poll=NO_POLLING
    )


async def test_5_stale_confirming_reads_do_not_wait_for_the_safety_poll(
    emulator: Emulator,
    receiver: WebhookReceiver,
    registered: None,
    make_wavs: Callable[..., list[pathlib.Path]],
    tmp_path: pathlib.Path,
) -> None:
    emulator.configure(delay=0.2, jitter=0.2, stale_rate=0.3)
    inputs = make_wavs(30)
    async with hooked_client(emulator) as client:
        # safety_poll 600 s: one stale read followed by the safety interval would time out.
        with anyio.fail_after(60):
            results = [
                r
                async for r in client.batch(
                    inputs,
                    targets=TARGETS,
                    out_dir=tmp_path / "out",
                    webhooks=receiver,
                    safety_poll=600.0,
                    list_refresh=False,  # single reads: the ones the stale fault hits
                )
            ]
    assert len(results) == 30 and all(r.ok for r in results)
    assert emulator.stats()["faults"]["stale"] > 0


async def test_5_deliveries_of_one_task_are_confirmed_by_about_one_read(
    emulator: Emulator,
    receiver: WebhookReceiver,
    registered: None,
    make_wavs: Callable[..., list[pathlib.Path]],
    tmp_path: pathlib.Path,
) -> None:
    """Single GETs only (no list pages to hide the cost): two deliveries per task, and yet
    about one confirming read per task, because close deliveries are coalesced."""
    emulator.configure(delay=0.3, jitter=0.1)
    inputs = make_wavs(100)
    async with hooked_client(emulator) as client:
        with anyio.fail_after(120):
            results = [
                r
                async for r in client.batch(
                    inputs,
                    targets=TARGETS,
                    out_dir=tmp_path / "out",
                    webhooks=receiver,
                    safety_poll=600.0,
                    list_refresh=False,
                    upload_concurrency=16,
                )
            ]
    assert len(results) == 100 and all(r.ok for r in results)
    served = emulator.stats()["requests"]
    assert served.get("GET /tasks/{id}", 0) <= 1.1 * len(inputs), served
    assert receiver.stats.accepted >= len(inputs)  # deliveries did drive the batch


async def test_5_a_forged_early_delivery_does_not_hide_the_genuine_one(
    emulator: Emulator,
    receiver: WebhookReceiver,
    registered: None,
    make_wavs: Callable[..., list[pathlib.Path]],
) -> None:
    import aiohttp

    emulator.configure(delay=0.5)
    async with hooked_client(emulator) as client:
        asset = await client.assets.upload(make_wavs(1)[0])
        task = await client.tasks.create(asset_id=asset.id, targets=TARGETS)
        # Someone holding the URL announces completion early, with the real target ids.
        forged = {
            "id": task.id,
            "targets": [
                {"id": t.id, "model": t.model, "status": "completed", "formats": ["wav"]}
                for t in task.targets
            ],
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(receiver.url, json=forged) as answer,
        ):
            assert answer.status == 200
        with anyio.fail_after(40):  # the safety poll is 600 s
            done = await client.tasks.wait(task.id, webhooks=receiver, safety_poll=600)
    assert done.is_done and done.succeeded


def test_5_only_confirmed_changes_are_duplicates() -> None:
    from audioshake_async.tasks.wire import parse_task

    receiver = WebhookReceiver(token="k" * 20)
    woken: list[str] = []
    receiver.subscribe("t1", lambda task: woken.append(task.targets[0].status))
    body = json.dumps(
        {"id": "t1", "targets": [{"id": "a", "model": "vocals", "status": "completed"}]}
    ).encode()
    assert receiver.accept("k" * 20, body).result == "accepted"
    # Not confirmed yet (the read may have been stale, or the first one forged): wakes again.
    assert receiver.accept("k" * 20, body).result == "accepted"
    receiver.confirm(parse_task(json.loads(body)))
    assert receiver.accept("k" * 20, body).result == "duplicate"
    assert woken == ["completed", "completed"]


# --------------------------------------------------------------------------- 6. slowloris


async def test_6_the_standalone_receiver_bounds_slow_and_idle_connections() -> None:
    receiver = WebhookReceiver(read_timeout=0.5, body_timeout=0.5, max_connections=10)
    async with receiver.serve("127.0.0.1", 0) as base:
        port = int(base.rsplit(":", 1)[1])
        streams = []
        for _ in range(40):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /audioshake/webhooks/x HTTP/1.1\r\nHost: a\r\n")  # never ends
            streams.append((reader, writer))
        await asyncio.sleep(0.1)
        assert receiver.open_connections <= 10
        assert receiver.stats.refused_connections >= 30
        with anyio.fail_after(30):
            for reader, _ in streams:
                with contextlib.suppress(ConnectionError):
                    assert await reader.read() == b""  # closed by the server
        assert receiver.open_connections == 0 and receiver.stats.timeouts >= 1
        # A body at a few bytes a second: 408 once the body timeout is over.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST {receiver.path} HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n".encode()
        )
        with anyio.fail_after(30):
            answer = b""
            while not answer:
                writer.write(b"{")
                with anyio.move_on_after(0.2):
                    answer = await reader.read(100)
        assert answer.startswith(b"HTTP/1.1 408")
        writer.close()
        for _, writer in streams:
            writer.close()


# --------------------------------------------------------------------------- 7. chain


def reachable(error: BaseException) -> list[str]:
    """The reprs of everything reachable from ``error``: its chain and its attributes."""
    seen: list[str] = []
    todo: list[Any] = [error]
    visited: set[int] = set()
    while todo:
        node = todo.pop()
        if node is None or id(node) in visited:
            continue
        visited.add(id(node))
        seen.append(repr(node))
        if isinstance(node, BaseException):
            todo += [node.__cause__, node.__context__, *node.args]
        for value in getattr(node, "__dict__", {}).values():
            todo.append(value)
            if hasattr(value, "headers"):
                seen.append(repr(dict(value.headers)))
    return seen


MALFORMED = b"HTTP/1.1 200 OK\r\nContent-Length: not-a-number\r\n\r\n{}"


async def test_7_no_key_is_reachable_from_the_error_of_a_malformed_answer() -> None:
    async with raw_server(MALFORMED) as url, AudioShake(API_KEY, url, retry=FAST_RETRY) as client:
        with pytest.raises(errors.APIConnectionError) as caught:
            await client.tasks.get("abc")
        with pytest.raises(errors.AmbiguousRequestError) as ambiguous:
            await client.tasks.create(asset_id="a1", targets=TARGETS)
    for error in (caught.value, ambiguous.value):
        assert error.__context__ is None and error.__cause__ is None
        assert not any(API_KEY in text for text in reachable(error))


# --------------------------------------------------------------------------- 8. http


def test_8_plain_http_goes_to_loopback_only_unless_opted_in() -> None:
    with pytest.raises(errors.ConfigurationError, match="clear text"):
        AudioShake(API_KEY, "http://203.0.113.5")
    assert AudioShake(API_KEY, "http://203.0.113.5", allow_insecure_http=True).base_url
    for local in ("http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:1"):
        assert AudioShake(API_KEY, local).base_url == local
    with pytest.raises(errors.ConfigurationError, match="credentials") as caught:
        AudioShake(API_KEY, "https://user:hunter2@api.example.com")
    assert "hunter2" not in str(caught.value)
    args = build_parser().parse_args(["models", "--allow-insecure-http"])
    assert client_settings(args)["allow_insecure_http"] is True


# --------------------------------------------------------------------------- 9. sources


async def test_9_source_urls_are_https_without_credentials(client: AudioShake) -> None:
    for url in ("http://example.com/a.wav", "ftp://example.com/a.wav"):
        with pytest.raises(errors.ValidationError, match="https"):
            await client.tasks.create(url=url, targets=TARGETS)
    with pytest.raises(errors.ValidationError, match="credentials") as caught:
        await client.tasks.create(url="https://user:hunter2@example.com/a.wav", targets=TARGETS)
    assert "hunter2" not in str(caught.value)
    assert "POST /tasks" not in client.request_counts


async def test_9_the_cli_never_sends_or_echoes_a_credentialed_url(
    emulator: Emulator, tmp_path: pathlib.Path
) -> None:
    status, out, err = await run_cli(
        "run", "https://user:hunter2@example.com/a.wav", "-m", "vocals", "-o",
        str(tmp_path / "o"), "--base-url", emulator.base_url, "--api-key", emulator.api_key,
        "--json", "--quiet",
    )  # fmt: skip
    assert status == 1, err
    assert "hunter2" not in out + err
    assert json.loads(out)["failed"] == 1
    assert "POST /tasks" not in emulator.stats()["requests"]


# --------------------------------------------------------------------------- 10. key


def test_10_a_key_with_control_characters_is_refused_at_construction() -> None:
    for bad in ("sk-ab\rcd", "sk-ab\ncd", "sk-ab\x00cd"):
        with pytest.raises(errors.ConfigurationError, match="control") as caught:
            AudioShake(bad, "http://127.0.0.1:9")
        assert "sk-ab" not in str(caught.value)


async def test_10_the_cli_exits_2_with_one_line() -> None:
    status, _, err = await run_cli(
        "models", "--api-key", "sk-ab\ncd", "--base-url", "http://127.0.0.1:9"
    )
    assert status == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "control" in err


# --------------------------------------------------------------------------- 11. files


@pytest.mark.parametrize("change", ["vanished", "directory"])
async def test_11_a_file_that_becomes_unreadable_is_a_validation_error_never_retried(
    tmp_path: pathlib.Path, change: str
) -> None:
    source = tmp_path / "in.wav"
    write_wav(source)
    posts: list[str] = []

    async def assets(request: web.Request) -> web.Response:
        await request.read()
        posts.append(request.path)
        # After the first attempt the file goes away (or becomes a directory).
        source.unlink()
        if change == "directory":
            source.mkdir()
        return web.Response(status=503)

    app = web.Application()
    app.router.add_post("/assets", assets)
    async with serve(app) as server:
        url = str(server.make_url("")).rstrip("/")
        async with AudioShake(API_KEY, url, retry=FAST_RETRY) as client:
            with pytest.raises(errors.ValidationError):
                await client.assets.upload(source)
    assert posts == ["/assets"]  # the second attempt never left: a local fault


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
async def test_11_a_file_without_read_permission_is_refused_before_any_request(
    tmp_path: pathlib.Path,
) -> None:
    source = tmp_path / "in.wav"
    write_wav(source)
    source.chmod(0)
    async with offline_client() as client:
        with pytest.raises(errors.ValidationError, match="cannot be read"):
            await client.assets.upload(source)


# --------------------------------------------------------------------------- 12. names


def test_12_long_multibyte_names_are_cut_by_bytes_keeping_the_extension(
    tmp_path: pathlib.Path,
) -> None:
    name = safe_filename("é" * 150, "wav")
    assert name.endswith(".wav") and len(name.encode()) <= 200
    # The final name and its hidden part file both fit (255 bytes on common file systems).
    (tmp_path / name).write_bytes(b"x")
    part_path_for(tmp_path / name).write_bytes(b"x")  # .<name>.<pid>-<random>.part
    outputs = [Output(name="é" * 150, format="wav", link="https://x/1")] * 2
    planned = [path.name for _, path in plan_output_paths(outputs, tmp_path)]
    assert len(set(planned)) == 2 and planned[1].endswith("_2.wav")
    assert all(len(p.encode()) <= 200 for p in planned)


# --------------------------------------------------------------------------- 13. ids


async def test_13_ids_are_single_path_segments() -> None:
    async with offline_client() as client:
        for bad in ("abc?x=1", "abc#frag", "a/b", "..", "a%2Fb", "a b", "", "a\r\n"):
            with pytest.raises(errors.ValidationError, match="path segment"):
                await client.tasks.get(bad)
        # A well-formed id does reach the (absent) server.
        with pytest.raises(errors.APIConnectionError):
            await client.tasks.get("cm1abc-DEF_2.x")


# --------------------------------------------------------------------------- 14. redirects


async def test_14_a_redirect_to_the_api_host_never_carries_the_key(
    tmp_path: pathlib.Path,
) -> None:
    seen: list[str | None] = []

    async def file(request: web.Request) -> web.Response:
        seen.append(request.headers.get("x-api-key"))
        return web.Response(body=b"RIFF data")

    api_app = web.Application()
    api_app.router.add_get("/files/stem.wav", file)
    async with serve(api_app) as api, hostile_cdn() as (cdn, cdn_url):
        api_url = str(api.make_url("")).rstrip("/")
        cdn.mode = CDNMode.REDIRECT
        cdn.redirect_to = f"{api_url}/files/stem.wav"
        async with AudioShake(API_KEY, api_url, retry=FAST_RETRY) as client:
            done = await fetch_to_file(
                client.transport, f"{cdn_url}/files/a.wav", tmp_path / "a.wav"
            )
    assert done.path.read_bytes() == b"RIFF data"
    assert seen == [None]
    assert cdn.received[0].headers.get("x-api-key") is None
