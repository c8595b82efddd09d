"""Every example runs against the emulator without an API key; the web examples refuse path
traversal in the uploaded file's name and answer a file the API would refuse with 400."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import wave
from collections.abc import Iterator
from types import ModuleType

import pytest
from aiohttp.test_utils import TestClient, TestServer

from audioshake_async.emulator import Emulator

from .conftest import write_wav

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def examples(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("AUDIOSHAKE_API_KEY", raising=False)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield


def multipart(filename: str, content: bytes) -> tuple[bytes, dict[str, str]]:
    """A form body with ``filename`` written raw, as curl sends it (aiohttp's own client
    percent-encodes it, which would hide the slashes this test is about)."""
    boundary = "x-boundary-7f3a"
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + content + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def wav_bytes(tmp_path: pathlib.Path) -> bytes:
    write_wav(tmp_path / "src.wav")
    return (tmp_path / "src.wav").read_bytes()


@pytest.mark.parametrize("script", ["catalog.py", "pipeline.py"])
def test_batch_examples_run_on_the_emulator_without_a_key(
    script: str, tmp_path: pathlib.Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AUDIOSHAKE_API_KEY"}
    out = tmp_path / "stems"
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), str(EXAMPLES / "audio"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "using the local emulator" in done.stdout
    stems = sorted(out.rglob("vocals.wav"))
    assert len(stems) == len(list((EXAMPLES / "audio").glob("*.wav"))), stems
    with wave.open(str(stems[0])) as handle:
        assert handle.getnframes() > 0


def web_app() -> ModuleType:
    import web_app as module

    return module


@pytest.mark.usefixtures("examples")
async def test_web_app_keeps_uploads_inside_its_temp_dir(tmp_path: pathlib.Path) -> None:
    module = web_app()
    escape = tmp_path / "escaped.wav"
    # The name a hostile client sends: a relative path climbing to a file of its choosing.
    hostile = "../" * 12 + str(escape).lstrip("/")
    async with module.emulated_app() as app, TestClient(TestServer(app)) as http:
        body, headers = multipart(hostile, wav_bytes(tmp_path))
        response = await http.post("/separate", data=body, headers=headers)
        assert response.status == 200, await response.text()
        answer = await response.json()
        assert {t["status"] for t in answer["targets"]} == {"completed"}
        assert not escape.exists()

        body, headers = multipart("tool.exe", b"MZ\x90\x00")
        response = await http.post("/separate", data=body, headers=headers)
        assert response.status == 400, await response.text()
        assert "error" in await response.json()

        for bad in ("..", ".hidden.wav", "dir/"):
            body, headers = multipart(bad, b"x")
            assert (await http.post("/separate", data=body, headers=headers)).status == 400, bad


def test_safe_name_keeps_only_a_plain_last_component() -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        from fastapi_app import safe_name as fastapi_safe_name
        from web_app import safe_name
    finally:
        sys.path.remove(str(EXAMPLES))
    for check in (safe_name, fastapi_safe_name):
        assert check("../../../tmp/x.wav") == "x.wav"
        assert check("..\\..\\x.wav") == "x.wav"
        assert check("song.wav") == "song.wav"
        for bad in (None, "", "..", ".", ".env", "a/b/", "x\x00.wav", "x\n.wav"):
            assert check(bad) is None, bad


@pytest.mark.usefixtures("examples")
def test_fastapi_example_on_the_emulator_without_a_key(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("fastapi")
    import fastapi_app
    from fastapi.testclient import TestClient as FastAPIClient

    app = fastapi_app.create_app()
    mounts = [getattr(route, "path", "") for route in app.routes]
    assert "/audioshake/webhooks" in mounts  # the receiver is mounted
    escape = tmp_path / "escaped.wav"
    hostile = "../" * 12 + str(escape).lstrip("/")
    with FastAPIClient(app) as http:  # runs the lifespan: emulator + one shared client
        response = http.post("/separate", params={"filename": hostile}, content=wav_bytes(tmp_path))
        assert response.status_code == 200, response.text
        assert {t["status"] for t in response.json()["targets"]} == {"completed"}
        assert not escape.exists()
        response = http.post("/separate", params={"filename": "tool.exe"}, content=b"MZ")
        assert response.status_code == 400, response.text
        response = http.post("/separate", params={"filename": ".."}, content=b"x")
        assert response.status_code == 400


async def test_fastapi_example_waits_by_webhook_when_public(
    emulator: Emulator, tmp_path: pathlib.Path, examples: None
) -> None:
    pytest.importorskip("fastapi")
    import socket

    import fastapi_app
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    emulator.configure(delay=0.3)
    app = fastapi_app.create_app(emulator.api_key, emulator.base_url, f"http://127.0.0.1:{port}")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    import anyio
    import httpx

    async with anyio.create_task_group() as group:
        group.start_soon(server.serve)
        with anyio.fail_after(20):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to await
                await anyio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            response = await http.post(
                "/separate", params={"filename": "a.wav"}, content=wav_bytes(tmp_path)
            )
        server.should_exit = True
    assert response.status_code == 200, response.text
    stats = emulator.stats()
    assert stats["requests"].get("POST /webhooks") == 1
    assert stats["requests"].get("DELETE /webhooks/{id}") == 1  # removed at shutdown
    assert stats["webhooks"]["deliveries_succeeded"] >= 1
