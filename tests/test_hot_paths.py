"""The shortcuts taken on hot paths (found by the benchmarks) keep the results of the long way.

- the converter's ``X | None`` and ``tuple[X, ...]`` hooks (resolved once, not per value);
- ``Transport.is_api_url`` (a prefix test before any URL parsing) agrees with ``same_origin``;
- a download makes its directory only when missing, and closes + renames in one thread hop.
"""

from __future__ import annotations

import datetime as dt
import logging
import pathlib
from decimal import Decimal
from typing import Any

import anyio.to_thread
import pytest
from hypothesis import given
from hypothesis import strategies as st

from audioshake_async._convert import make_converter
from audioshake_async.core import download as _download
from audioshake_async.core.download import fetch_to_file
from audioshake_async.core.http import same_origin, structure_as
from audioshake_async.core.transport import Transport
from audioshake_async.models import Model, TargetError, UsageMonth
from audioshake_async.tasks.wire import parse_task

from ._servers import API_KEY, Blob, FakeAPI, FakeCDN, base_url, serve

TASK: dict[str, Any] = {
    "id": "t1",
    "createdAt": "2024-05-01T10:00:00.123Z",
    "completedAt": None,
    "cost": 2,
    "metadata": None,
    "targets": [
        {
            "id": "a",
            "model": "vocals",
            "status": "completed",
            "formats": ["wav", "mp3"],
            "output": [
                {"name": "vocals", "format": "wav", "link": "https://cdn/x.wav"},
                {"name": "vocals", "format": "mp3", "link": "https://cdn/x.mp3"},
            ],
            "cost": 1,
            "duration": 3.5,
            "residual": True,
            "variant": None,
        },
        {
            "id": "b",
            "model": "drums",
            "status": "error",
            "output": None,
            "error": {"code": 500, "message": "boom"},
        },
    ],
}


def test_task_with_optional_and_tuple_fields() -> None:
    task = parse_task(TASK)
    assert task.created_at == dt.datetime(2024, 5, 1, 10, 0, 0, 123000, tzinfo=dt.timezone.utc)
    assert task.completed_at is None and task.metadata is None and task.cost == 2.0
    first, second = task.targets
    assert first.formats == ("wav", "mp3") and isinstance(first.formats, tuple)
    assert [o.format for o in first.output] == ["wav", "mp3"]
    assert first.cost == 1.0 and isinstance(first.cost, float)
    assert first.residual is True and first.variant is None and first.error is None
    assert second.output == () and second.error == TargetError(500, "boom")
    assert task.outputs == first.output


def test_nested_tuples_dicts_and_decimals() -> None:
    model = structure_as(
        {
            "id": "vocals",
            "creditsPerMinute": "1.5",
            "outputFormats": ["wav"],
            "inputs": [{"id": "audio", "taskFields": ["url"], "formats": {"audio": ["wav"]}}],
        },
        Model,
        "model",
    )
    assert model.credits_per_minute == 1.5 and model.output_formats == ("wav",)
    assert model.inputs[0].task_fields == ("url",)
    assert model.inputs[0].formats == {"audio": ("wav",)}
    usage = structure_as({"month": "2024-05", "totalMinutes": "12.50"}, UsageMonth, "usage")
    assert usage.total_minutes == Decimal("12.50") and usage.total_targets is None


def test_shape_errors_still_raise() -> None:
    conv = make_converter()
    from audioshake_async.models import Task

    with pytest.raises(Exception):  # noqa: B017 (cattrs raises its own types)
        conv.structure({"id": "t", "targets": [{"model": "x"}]}, Task)  # target without id
    with pytest.raises(Exception):  # noqa: B017
        conv.structure({"id": "t", "targets": [{"id": "a", "output": [5]}]}, Task)


BASES = ["https://api.audioshake.ai", "http://127.0.0.1:8080", "https://Api.Example.com/v1"]
URLS = [
    "https://api.audioshake.ai/tasks/1",
    "https://api.audioshake.ai:443/tasks/1",
    "https://API.audioshake.ai/tasks",
    "http://api.audioshake.ai/tasks",
    "https://api.audioshake.ai.evil.com/x",
    "https://api.audioshake.ai@evil.com/x",
    "http://127.0.0.1:8080/files/a.wav?sig=1",
    "http://127.0.0.1:8081/files/a.wav",
    "http://127.0.0.1:8080@cdn:9/x",
    "https://api.example.com/v10/tasks",
    "https://api.example.com/v1/tasks",
    "https://cdn.example.com/v1/tasks",
]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("url", URLS)
def test_is_api_url_agrees_with_same_origin(base: str, url: str) -> None:
    transport = Transport(base_url=base, auth_headers={"x-api-key": "k"})
    assert transport.is_api_url(url) is same_origin(url, transport.base_url)
    assert transport.is_api_url(transport.url_for("/tasks/x"))


@given(
    scheme=st.sampled_from(["http", "https"]),
    host=st.sampled_from(["api.audioshake.ai", "API.AUDIOSHAKE.AI", "cdn.audioshake.ai"]),
    port=st.sampled_from(["", ":443", ":80", ":8443"]),
    path=st.text("abc/?#@:.", max_size=12),
)
def test_is_api_url_agrees_with_same_origin_generated(
    scheme: str, host: str, port: str, path: str
) -> None:
    transport = Transport(base_url="https://api.audioshake.ai", auth_headers={"x-api-key": "k"})
    url = f"{scheme}://{host}{port}/{path}"
    try:
        expected = same_origin(url, transport.base_url)
    except ValueError:
        return
    assert transport.is_api_url(url) is expected


async def test_download_makes_a_missing_directory_and_reuses_an_existing_one(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hops: list[str] = []
    real = anyio.to_thread.run_sync

    async def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__name__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(_download.anyio.to_thread, "run_sync", counting)
    cdn = FakeCDN()
    cdn.blobs["a"] = Blob(b"first")
    cdn.blobs["b"] = Blob(b"second")
    api = FakeAPI()
    async with serve(api.app) as api_server, serve(cdn.app) as server:
        transport = Transport(
            base_url=base_url(api_server), auth_headers={"x-api-key": API_KEY}, rate_limit=None
        )
        try:
            out = tmp_path / "new" / "nested"
            await fetch_to_file(transport, cdn.link(server, "a"), out / "a.wav")
            first = list(hops)
            hops.clear()
            await fetch_to_file(transport, cdn.link(server, "b"), out / "b.wav")
        finally:
            await transport.aclose()
    assert (out / "a.wav").read_bytes() == b"first" and (out / "b.wav").read_bytes() == b"second"
    assert sorted(p.name for p in out.iterdir()) == ["a.wav", "b.wav"]
    # mkdir, the one write (a hop before the seam too, through run_in_executor), close + rename
    assert first == ["<lambda>", "_write", "_replace"]
    assert hops == ["_write", "_replace"]  # the directory exists: no mkdir hop


async def test_download_whose_rename_fails_leaves_no_part_file(tmp_path: pathlib.Path) -> None:
    cdn = FakeCDN()
    cdn.blobs["a"] = Blob(b"data")
    destination = tmp_path / "taken.wav"
    destination.mkdir()  # os.replace(file, directory) fails
    (destination / "inside").write_text("x")
    api = FakeAPI()
    async with serve(api.app) as api_server, serve(cdn.app) as server:
        transport = Transport(
            base_url=base_url(api_server), auth_headers={"x-api-key": API_KEY}, rate_limit=None
        )
        try:
            with pytest.raises(OSError):
                await fetch_to_file(transport, cdn.link(server, "a"), destination)
        finally:
            await transport.aclose()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.wav"]  # noqa: ASYNC240


async def test_request_debug_line_only_built_when_debug_is_on(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audioshake_async.core import transport as _transport

    redacted: list[str] = []
    real = _transport.redact_url
    monkeypatch.setattr(_transport, "redact_url", lambda url: redacted.append(url) or real(url))
    api = FakeAPI()
    async with serve(api.app) as server:
        transport = Transport(
            base_url=base_url(server), auth_headers={"x-api-key": API_KEY}, rate_limit=None
        )
        try:
            with caplog.at_level(logging.INFO, logger="audioshake_async"):
                await transport.request("GET", "/tasks", params={"take": 5})
            assert redacted == []
            with caplog.at_level(logging.DEBUG, logger="audioshake_async"):
                await transport.request("GET", "/tasks", params={"take": 5})
        finally:
            await transport.aclose()
    assert len(redacted) == 1
    assert any("/tasks -> 200" in r.getMessage() for r in caplog.records)


def test_emulator_upload_sweep_does_not_scan_live_assets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """Each upload sweeps expired assets; while none can have expired, nothing is scanned."""
    import random

    from audioshake_async.emulator.state import Asset, Store

    now = [1000.0]
    store = Store(random.Random(1), clock=lambda: now[0])
    checks = {"n": 0}
    real = Asset.expired

    def counting(self: Asset, at: float) -> bool:
        checks["n"] += 1
        return real(self, at)

    monkeypatch.setattr(Asset, "expired", counting)

    def asset(name: str, ttl: float) -> Asset:
        return Asset(name, f"{name}.wav", "wav", "audio/wav", tmp_path / name, 1, now[0],
                     now[0] + ttl, f"file-{name}")  # fmt: skip

    for index in range(200):
        store.add_asset(asset(f"a{index}", 100.0 + index))
        assert store.pop_expired_assets() == []
    assert checks["n"] == 0
    now[0] += 100.5  # a0 has expired, a1.. have not
    assert [a.id for a in store.pop_expired_assets()] == ["a0"]
    assert store.pop_expired_assets() == [] and len(store.assets) == 199
    checks["n"] = 0
    store.pop_expired_assets()
    assert checks["n"] == 0  # the watermark moved to a1's expiry
    assert store.expire_all_assets() == 199
    assert len(store.pop_expired_assets()) == 199 and store.assets == {}
    store.add_asset(asset("late", 5.0))
    now[0] += 5.0
    assert [a.id for a in store.pop_expired_assets()] == ["late"]
