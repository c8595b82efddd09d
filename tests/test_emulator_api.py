"""Emulator API: documented examples replayed (shape conformance), validation, auth, errors.

The client library is not used here on purpose: requests are raw aiohttp, so these tests
pin the emulator's wire behaviour independently of the client.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from audioshake_async.emulator import Emulator
from audioshake_async.emulator.dsp import have_soundfile
from audioshake_async.emulator.testing import upload_file, write_wav

# --- documented examples (audioshake-api.md §1-§4, seeds 001 and 003) -------------------------
DOC_TASK: dict[str, Any] = {
    "id": "<string>",
    "createdAt": "2023-11-07T05:31:56Z",
    "completedAt": "2023-11-07T05:31:56Z",
    "clientId": "<string>",
    "cost": 123,
    "assetId": "<string>",
    "url": "<string>",
    "metadata": "<string>",
    "targets": [
        {
            "id": "<string>",
            "model": "<string>",
            "status": "processing",
            "formats": ["<string>"],
            "output": [{"name": "<string>", "format": "<string>", "link": "<string>"}],
            "cost": 123,
            "error": {"code": 123, "message": "<string>"},
            "duration": 123,
            "residual": True,
            "language": "<string>",
            "transcriptUrl": "<string>",
            "transcriptAssetId": "<string>",
        }
    ],
}
#: Documented as optional/conditional: one source field, metadata only when sent; target
#: cost/duration/error only once terminal, echo fields only when sent.
TASK_OPTIONAL = {"assetId", "url", "metadata"}
TARGET_OPTIONAL = {
    "cost",
    "error",
    "duration",
    "residual",
    "language",
    "transcriptUrl",
    "transcriptAssetId",
}
NULLABLE = {"completedAt", "url"}

DOC_ASSET_UPLOAD = {
    "id": "cmkd41zsb019001pvdcdg13ec",
    "format": "mp3",
    "link": "https://cdn.audioshake.ai/.../sourcefile?...",
    "name": "test.mp3",
}
DOC_ASSET_LIST = [{"id": "cmkd41zsb019001pvdcdg13ec", "format": "mp3", "name": "x.mp3"}]
DOC_ASSET_GET = {
    "id": "cmkd41zsb019001pvdcdg13ec",
    "mimeType": "audio/mp3",
    "format": "mp3",
    "link": "https://cdn.audioshake.ai/.../sourcefile?...",
    "name": "lead_backing_test.mp3",
}
DOC_MODELS = {
    "models": [
        {
            "id": "bass",
            "name": "Bass",
            "category": "instrumentStemSeparation",
            "description": "Low-end bass sources (electric bass, double bass, bass synth).",
            "access": "enabled",
            "creditsPerMinute": 1,
            "inputs": [
                {
                    "id": "media",
                    "description": "Source audio or video file",
                    "required": True,
                    "taskFields": ["url", "assetId"],
                    "formats": {
                        "audio": ["wav", "aiff", "flac", "mp3", "aac", "m4a"],
                        "video": ["mp4", "mov"],
                        # [INFER] alignment's transcript input: /supported-format lists
                        # "Text: JSON, TXT" as input formats; the key name is ours.
                        "text": ["json", "txt"],
                    },
                }
            ],
            "outputFormats": ["aiff", "wav", "flac", "mp3", "mp4"],
            # Documented prose: present only when a model has constraints / for languages.
            "limits": {"maxInputDurationSeconds": 10800},
            "supportedLanguages": ["en"],
        }
    ]
}
MODEL_OPTIONAL = {"creditsPerMinute", "limits", "supportedLanguages", "audio", "video", "text"}
DOC_USAGE = [{"month": "<string>", "totalTargets": 123, "totalMinutes": "<string>"}]
DOC_INSUFFICIENT = {"statusCode": 400, "error": "Bad Request", "message": "Insufficient credits"}
DOC_NO_ASSET = {"statusCode": 404, "error": "Not Found", "message": "Cannot find asset"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def assert_shape(
    actual: Any, documented: Any, optional: set[str] = frozenset(), path: str = "$"
) -> None:
    """``actual`` has the documented keys and types: no undocumented key, no missing
    required key, same JSON type everywhere (nullable fields may be null)."""
    name = path.rsplit(".", 1)[-1]
    if actual is None and name in NULLABLE:
        return
    assert _kind(actual) == _kind(documented), f"{path}: {_kind(actual)} != {_kind(documented)}"
    if isinstance(documented, dict):
        extra = set(actual) - set(documented)
        assert not extra, f"{path}: undocumented keys {sorted(extra)}"
        missing = set(documented) - set(actual) - optional
        assert not missing, f"{path}: missing keys {sorted(missing)}"
        for key, value in actual.items():
            sub_optional = optional
            if key == "targets":
                sub_optional = TARGET_OPTIONAL
            elif key == "models":
                sub_optional = MODEL_OPTIONAL
            assert_shape(value, documented[key], sub_optional, f"{path}.{key}")
    elif isinstance(documented, list) and documented:
        for i, item in enumerate(actual):
            assert_shape(item, documented[0], optional, f"{path}[{i}]")


# --- fixtures --------------------------------------------------------------------------------
@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(delay=0.0, rate_limit=None, seed=11) as emulator:
        yield emulator


@pytest.fixture
async def http(emu: Emulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"x-api-key": emu.api_key}) as session:
        yield session


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    return write_wav(tmp_path / "song.wav", 0.5, rate=8000)


@pytest.fixture
def wav_bytes(wav: Path) -> bytes:
    return wav.read_bytes()


@pytest.fixture
async def asset(emu: Emulator, http: aiohttp.ClientSession, wav: Path) -> dict[str, Any]:
    return await upload_file(http, emu.base_url, wav)


async def call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, url, json=body) as resp:
        if resp.status == 204:
            return resp.status, None
        return resp.status, await resp.json()


# --- conformance table -----------------------------------------------------------------------
CREATE_EXAMPLES = {
    # seed 001, "Separate vocals and instrumental"
    "vocals+instrumental": {
        "assetId": "{asset}",
        "targets": [
            {"model": "vocals", "formats": ["wav"]},
            {"model": "instrumental", "formats": ["wav"]},
        ],
    },
    # seed 001, "Transcribe lyrics"
    "transcription-json": {
        "assetId": "{asset}",
        "targets": [{"model": "transcription", "formats": ["json"]}],
    },
    # /faq, alignment with an existing transcript
    "alignment-transcriptUrl": {
        "assetId": "{asset}",
        "targets": [
            {
                "model": "alignment",
                "formats": ["json"],
                "transcriptUrl": "https://example.com/lyrics.txt",
            }
        ],
    },
    # /getting-started, URL source
    "url-source": {
        "url": "https://demos.audioshake.ai/demo-assets/shakeitup.mp3",
        "targets": [
            {"model": "vocals", "formats": ["wav"]},
            {"model": "instrumental", "formats": ["wav"]},
        ],
    },
}


def _fill(body: dict[str, Any], asset_id: str) -> dict[str, Any]:
    out = copy.deepcopy(body)
    if out.get("assetId") == "{asset}":
        out["assetId"] = asset_id
    return out


@pytest.mark.parametrize("example", sorted(CREATE_EXAMPLES))
async def test_create_examples_conform(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any], example: str
) -> None:
    body = _fill(CREATE_EXAMPLES[example], asset["id"])
    status, task = await call(http, "POST", f"{emu.base_url}/tasks", body)
    assert status == 200
    assert_shape(task, DOC_TASK, TASK_OPTIONAL)
    # Documented: every target begins in processing, no outputs, task not complete.
    assert [t["status"] for t in task["targets"]] == ["processing"] * len(body["targets"])
    assert all(t["output"] == [] for t in task["targets"])
    assert task["completedAt"] is None
    assert ("url" in task) == ("url" in body) and ("assetId" in task) == ("assetId" in body)
    assert task["id"].startswith("c") and len(task["id"]) == 25
    assert task["createdAt"].endswith("Z") and len(task["createdAt"]) == 24
    # Once terminal (completed or error), the task still conforms, get and list alike.
    done = await emu.wait_for_task(task["id"], 10)
    assert_shape(done, DOC_TASK, TASK_OPTIONAL)
    status, got = await call(http, "GET", f"{emu.base_url}/tasks/{task['id']}")
    assert status == 200
    assert_shape(got, DOC_TASK, TASK_OPTIONAL)
    assert got["completedAt"] is not None
    status, listed = await call(http, "GET", f"{emu.base_url}/tasks")
    assert status == 200 and isinstance(listed, list)
    assert_shape(listed, [DOC_TASK], TASK_OPTIONAL)


async def test_example_outcomes(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any]
) -> None:
    """What each documented example ends as in the emulator (errors are honest)."""
    outcomes = {}
    for name, body in CREATE_EXAMPLES.items():
        _, task = await call(http, "POST", f"{emu.base_url}/tasks", _fill(body, asset["id"]))
        done = await emu.wait_for_task(task["id"], 10)
        outcomes[name] = [
            (t["status"], t.get("error", {}).get("message", "")) for t in done["targets"]
        ]
    assert outcomes["vocals+instrumental"] == [("completed", ""), ("completed", "")]
    assert outcomes["transcription-json"] == [("completed", "")]
    # The emulator never fetches the internet: external URLs end in a clear error.
    ((status, message),) = outcomes["alignment-transcriptUrl"]
    assert status == "error" and "loopback" in message
    assert all(s == "error" and "loopback" in m for s, m in outcomes["url-source"])


async def test_asset_examples_conform(
    emu: Emulator, http: aiohttp.ClientSession, wav: Path
) -> None:
    uploaded = await upload_file(http, emu.base_url, wav, filename="test.wav")
    assert_shape(uploaded, DOC_ASSET_UPLOAD)
    assert uploaded["name"] == "test.wav" and uploaded["format"] == "wav"
    assert uploaded["link"].startswith(emu.cdn_url + "/files/")
    status, listed = await call(http, "GET", f"{emu.base_url}/assets")
    assert status == 200
    assert_shape(listed, DOC_ASSET_LIST)
    assert [a["id"] for a in listed] == [uploaded["id"]]
    status, got = await call(http, "GET", f"{emu.base_url}/assets/{uploaded['id']}")
    assert status == 200
    assert_shape(got, DOC_ASSET_GET)
    assert got["mimeType"] == "audio/wav"
    # The documented mp3 example: format from the extension, mimeType as sent.
    mp3 = wav.with_name("x.mp3")
    mp3.write_bytes(b"ID3 not really an mp3")
    uploaded = await upload_file(http, emu.base_url, mp3, content_type="audio/mp3")
    status, got = await call(http, "GET", f"{emu.base_url}/assets/{uploaded['id']}")
    assert (got["format"], got["mimeType"], got["name"]) == ("mp3", "audio/mp3", "x.mp3")


async def test_models_conform(emu: Emulator, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, "GET", f"{emu.base_url}/models")
    assert status == 200
    assert_shape(body, DOC_MODELS)
    models = {m["id"]: m for m in body["models"]}
    expected = {
        "vocals", "instrumental", "drums", "bass", "guitar", "piano", "strings", "wind",
        "other", "dialogue", "effects", "music_fx", "music_detection", "transcription",
        "alignment", "multi_voice",
    }  # fmt: skip
    assert expected <= set(models)
    media = DOC_MODELS["models"][0]["inputs"][0]
    assert models["bass"]["inputs"][0]["formats"] == {
        k: v for k, v in media["formats"].items() if k != "text"
    }
    assert models["music_detection"]["outputFormats"] == ["json", "txt"]
    assert models["alignment"]["outputFormats"] == ["json", "srt", "txt"]
    # Only what the emulator can write is listed: no mp3/mp4 that would end in "error".
    writable = ["aiff", "wav", "flac"] if have_soundfile() else ["wav"]
    assert models["vocals"]["outputFormats"] == writable
    assert models["bass"]["outputFormats"] == writable
    assert models["dialogue"]["creditsPerMinute"] == 1.5
    gated = models["multi_voice"]
    assert gated["access"] == "request_access" and "creditsPerMinute" not in gated


async def test_statistics_conform(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any]
) -> None:
    body = _fill(CREATE_EXAMPLES["vocals+instrumental"], asset["id"])
    _, task = await call(http, "POST", f"{emu.base_url}/tasks", body)
    await emu.wait_for_task(task["id"])
    status, usage = await call(http, "GET", f"{emu.base_url}/tasks/statistics?name=usage")
    assert status == 200
    assert_shape(usage, DOC_USAGE)
    assert usage[0]["totalTargets"] == 2
    assert isinstance(usage[0]["totalMinutes"], str)
    assert float(usage[0]["totalMinutes"]) == pytest.approx(2 * 0.5 / 60, abs=0.01)
    status, default = await call(http, "GET", f"{emu.base_url}/tasks/statistics")
    assert (status, default) == (200, usage)
    status, dist = await call(http, "GET", f"{emu.base_url}/tasks/statistics?name=distribution")
    assert status == 200 and {d["model"] for d in dist} == {"vocals", "instrumental"}
    status, err = await call(http, "GET", f"{emu.base_url}/tasks/statistics?name=nope")
    assert status == 400 and err["statusCode"] == 400


async def test_documented_error_bodies(
    emu: Emulator, http: aiohttp.ClientSession, wav_bytes: bytes, asset: dict[str, Any]
) -> None:
    body = {
        "assetId": "cdoesnotexist000000000000",
        "targets": [{"model": "bass", "formats": ["wav"]}],
    }
    assert await call(http, "POST", f"{emu.base_url}/tasks", body) == (404, DOC_NO_ASSET)
    assert await call(http, "GET", f"{emu.base_url}/assets/nope") == (404, DOC_NO_ASSET)
    emu.configure(credits=0)
    form = aiohttp.FormData()
    form.add_field("file", wav_bytes, filename="a.wav", content_type="audio/wav")
    async with http.post(f"{emu.base_url}/assets", data=form) as resp:
        assert (resp.status, await resp.json()) == (400, DOC_INSUFFICIENT)
    body["assetId"] = asset["id"]
    assert await call(http, "POST", f"{emu.base_url}/tasks", body) == (400, DOC_INSUFFICIENT)


async def test_credits_are_charged(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any]
) -> None:
    emu.configure(credits=2.0)
    body = {"assetId": asset["id"], "targets": [{"model": "dialogue", "formats": ["wav"]}]}
    _, task = await call(http, "POST", f"{emu.base_url}/tasks", body)
    done = await emu.wait_for_task(task["id"])
    assert done["cost"] == 1.5 and done["targets"][0]["cost"] == 1.5
    assert emu.stats()["credits_remaining"] == pytest.approx(0.5)
    _, task = await call(http, "POST", f"{emu.base_url}/tasks", body)  # balance still > 0
    await emu.wait_for_task(task["id"])
    status, err = await call(http, "POST", f"{emu.base_url}/tasks", body)
    assert (status, err["message"]) == (400, "Insufficient credits")


# --- validation table ------------------------------------------------------------------------
def _target(model: str = "vocals", formats: Any = ("wav",), **extra: Any) -> dict[str, Any]:
    return {"model": model, "formats": list(formats), **extra}


VALIDATION = [
    ("both url and assetId", {"url": "https://x.test/a.wav", "assetId": "{asset}"}, 400,
     "exactly one"),
    ("neither url nor assetId", {"assetId": None}, 400, "exactly one"),
    ("zero targets", {"targets": []}, 400, "fewer than 1"),
    ("21 targets", {"targets": [_target()] * 21}, 400, "more than 20"),
    ("targets not array", {"targets": "vocals"}, 400, "must be array"),
    ("missing targets", {"targets": None}, 400, "required property 'targets'"),
    ("unknown model", {"targets": [_target("kazoo")]}, 400, "unknown model 'kazoo'"),
    ("missing model", {"targets": [{"formats": ["wav"]}]}, 400, "required property 'model'"),
    ("missing formats", {"targets": [{"model": "vocals"}]}, 400, "required property 'formats'"),
    ("empty formats", {"targets": [_target(formats=())]}, 400, "fewer than 1"),
    ("bad format for model", {"targets": [_target("music_detection", ["wav"])]}, 400,
     "does not support format 'wav'"),
    ("json for audio model", {"targets": [_target("vocals", ["json"])]}, 400,
     "does not support format 'json'"),
    ("unknown variant", {"targets": [_target(variant="ultra")]}, 400, "no variant 'ultra'"),
    ("residual not bool", {"targets": [_target(residual="yes")]}, 400, "must be boolean"),
    ("metadata 4097 chars", {"metadata": "m" * 4097}, 400, "more than 4096"),
    ("metadata not string", {"metadata": {"a": 1}}, 400, "must be string"),
    ("ftp url", {"assetId": None, "url": "ftp://x.test/a.wav"}, 400, "http or https"),
    ("gated model", {"targets": [_target("multi_voice", variant="two_speaker")]}, 403,
     "requires access"),
    ("unknown asset", {"assetId": "cnope"}, 404, "Cannot find asset"),
    ("unknown transcript asset",
     {"targets": [_target("alignment", ["json"], transcriptAssetId="cnope")]}, 404,
     "Cannot find asset"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "status", "needle"),
    [pytest.param(c, s, n, id=i) for i, c, s, n in VALIDATION],
)
async def test_create_validation(
    emu: Emulator,
    http: aiohttp.ClientSession,
    asset: dict[str, Any],
    change: dict[str, Any],
    status: int,
    needle: str,
) -> None:
    body: dict[str, Any] = {"assetId": asset["id"], "targets": [_target()]}
    for key, value in change.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = asset["id"] if value == "{asset}" else value
    got_status, err = await call(http, "POST", f"{emu.base_url}/tasks", body)
    assert got_status == status, err
    assert set(err) == {"statusCode", "error", "message"}
    assert err["statusCode"] == status and needle in err["message"]
    assert emu.stats()["tasks_created"] == 0


async def test_create_accepts_boundaries_and_extras(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any]
) -> None:
    body = {
        "assetId": asset["id"],
        "targets": [_target()] * 20,
        "metadata": "m" * 4096,
        "callbackUrl": "https://ignored.test/hook",  # undocumented: tolerated and ignored
    }
    status, task = await call(http, "POST", f"{emu.base_url}/tasks", body)
    assert status == 200 and len(task["targets"]) == 20 and task["metadata"] == "m" * 4096
    status, _ = await call(
        http,
        "POST",
        f"{emu.base_url}/tasks",
        {"assetId": asset["id"], "targets": [_target(variant="high_quality", residual=True)]},
    )
    assert status == 200


@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"", "application/json", 400),
        (b"[]", "application/json", 400),
        (b"assetId=x", "application/x-www-form-urlencoded", 415),
    ],
)
async def test_create_rejects_non_json(
    emu: Emulator, http: aiohttp.ClientSession, raw: bytes, content_type: str, status: int
) -> None:
    async with http.post(
        f"{emu.base_url}/tasks", data=raw, headers={"Content-Type": content_type}
    ) as resp:
        assert resp.status == status
        assert (await resp.json())["statusCode"] == status


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("take=0", "take must be >= 1"),
        ("take=101", "take must be <= 100"),
        ("take=abc", "take must be integer"),
        ("skip=-1", "skip must be >= 0"),
        ("skip=1.5", "skip must be integer"),
    ],
)
async def test_list_validation(
    emu: Emulator, http: aiohttp.ClientSession, query: str, needle: str
) -> None:
    status, err = await call(http, "GET", f"{emu.base_url}/tasks?{query}")
    assert status == 400 and needle in err["message"]


async def test_list_pagination_newest_first(
    emu: Emulator, http: aiohttp.ClientSession, asset: dict[str, Any]
) -> None:
    ids = []
    for i in range(13):
        body = {"assetId": asset["id"], "targets": [_target()], "metadata": f"job-{i}"}
        ids.append((await call(http, "POST", f"{emu.base_url}/tasks", body))[1]["id"])
    newest_first = ids[::-1]
    _, page = await call(http, "GET", f"{emu.base_url}/tasks")
    assert [t["id"] for t in page] == newest_first[:10]  # documented default take=10
    _, page = await call(http, "GET", f"{emu.base_url}/tasks?skip=10&take=10")
    assert [t["id"] for t in page] == newest_first[10:]
    _, page = await call(http, "GET", f"{emu.base_url}/tasks?skip=2&take=3")
    assert [t["id"] for t in page] == newest_first[2:5]
    _, page = await call(http, "GET", f"{emu.base_url}/tasks?skip=100")
    assert page == []


# --- auth and routing ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers", [{}, {"x-api-key": "wrong"}, {"Authorization": "Bearer emulator-key"}]
)
@pytest.mark.parametrize("route", ["GET /tasks", "GET /models", "POST /tasks", "GET /assets/x"])
async def test_unauthorized(emu: Emulator, headers: dict[str, str], route: str) -> None:
    method, path = route.split()
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, emu.base_url + path, headers=headers, json={} if method == "POST" else None
        ) as resp,
    ):
        assert resp.status == 401
        assert await resp.json() == {
            "statusCode": 401,
            "error": "Unauthorized",
            "message": "Invalid API key",
        }


async def test_api_key_can_rotate(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.configure(api_key="rotated")
    assert (await call(http, "GET", f"{emu.base_url}/models"))[0] == 401
    assert emu.api_key == "rotated"


async def test_not_found_bodies(emu: Emulator, http: aiohttp.ClientSession) -> None:
    assert await call(http, "GET", f"{emu.base_url}/tasks/cnope") == (
        404,
        {"statusCode": 404, "error": "Not Found", "message": "Cannot find task"},
    )
    status, err = await call(http, "GET", f"{emu.base_url}/nothing/here")
    assert status == 404 and err["error"] == "Not Found"
    status, err = await call(http, "PUT", f"{emu.base_url}/assets")  # documented unsupported
    assert status == 405 and err["statusCode"] == 405


# --- webhooks CRUD ([INFER] shape) -----------------------------------------------------------
async def test_webhook_crud(emu: Emulator, http: aiohttp.ClientSession) -> None:
    status, hook = await call(
        http, "POST", f"{emu.base_url}/webhooks", {"url": "http://127.0.0.1:9/h"}
    )
    assert status == 200 and set(hook) == {"id", "url", "createdAt"}
    assert (await call(http, "GET", f"{emu.base_url}/webhooks")) == (200, [hook])
    status, err = await call(http, "POST", f"{emu.base_url}/webhooks", {"url": "not a url"})
    assert status == 400
    status, err = await call(http, "POST", f"{emu.base_url}/webhooks", {})
    assert status == 400
    assert (await call(http, "DELETE", f"{emu.base_url}/webhooks/{hook['id']}")) == (204, None)
    status, err = await call(http, "DELETE", f"{emu.base_url}/webhooks/{hook['id']}")
    assert (status, err["message"]) == (404, "Cannot find webhook")
    assert (await call(http, "GET", f"{emu.base_url}/webhooks")) == (200, [])


# --- assets ----------------------------------------------------------------------------------
async def test_upload_without_file_field(emu: Emulator, http: aiohttp.ClientSession) -> None:
    form = aiohttp.FormData()
    form.add_field("other", "value")
    form.add_field("file", "a text field named file, not a file")
    async with http.post(f"{emu.base_url}/assets", data=form) as resp:
        assert resp.status == 400
        assert "'file'" in (await resp.json())["message"]
    async with http.post(f"{emu.base_url}/assets", json={"file": "x"}) as resp:
        assert resp.status == 400
    form = aiohttp.FormData()
    form.add_field("file", b"abc", filename="notes.exe", content_type="application/x-msdownload")
    async with http.post(f"{emu.base_url}/assets", data=form) as resp:
        assert resp.status == 400 and "Unsupported file format" in (await resp.json())["message"]
    assert emu.stats()["assets_created"] == 0


async def test_upload_keeps_bytes_and_weird_names(
    emu: Emulator, http: aiohttp.ClientSession, wav_bytes: bytes
) -> None:
    form = aiohttp.FormData(quote_fields=False)  # raw UTF-8 filename, as browsers send it
    form.add_field("comment", "ignored")
    form.add_field("file", wav_bytes, filename="dir/Song (live) é.wav", content_type="audio/wav")
    async with http.post(f"{emu.base_url}/assets", data=form) as resp:
        assert resp.status == 200
        uploaded = await resp.json()
    assert uploaded["name"] == "Song (live) é.wav"
    async with aiohttp.ClientSession() as cdn, cdn.get(uploaded["link"]) as resp:
        assert resp.status == 200 and await resp.read() == wav_bytes
    assert emu.stats()["bytes_uploaded"] == len(wav_bytes)


async def test_asset_expiry(emu: Emulator, http: aiohttp.ClientSession, wav: Path) -> None:
    uploaded = await upload_file(http, emu.base_url, wav)
    link = uploaded["link"]
    async with aiohttp.ClientSession() as cdn:
        async with cdn.get(link) as resp:
            assert resp.status == 200
        async with http.post(f"{emu.base_url}/_emulator/expire-assets") as resp:
            assert (await resp.json()) == {"expired": 1}
        async with cdn.get(link) as resp:  # source gone from the CDN too
            assert resp.status == 404 and b"NoSuchKey" in await resp.read()
    assert await call(http, "GET", f"{emu.base_url}/assets/{uploaded['id']}") == (404, DOC_NO_ASSET)
    assert (await call(http, "GET", f"{emu.base_url}/assets")) == (200, [])
    body = {"assetId": uploaded["id"], "targets": [_target()]}
    assert await call(http, "POST", f"{emu.base_url}/tasks", body) == (404, DOC_NO_ASSET)
    # Expired files are deleted, not just hidden.
    assert not list((emu.workdir / "assets").rglob("*.wav"))


async def test_asset_ttl_knob(emu: Emulator, http: aiohttp.ClientSession, wav: Path) -> None:
    emu.configure(asset_ttl=0)
    uploaded = await upload_file(http, emu.base_url, wav)
    assert (await call(http, "GET", f"{emu.base_url}/assets/{uploaded['id']}"))[0] == 404


# --- introspection ---------------------------------------------------------------------------
async def test_stats_counters(
    emu: Emulator, http: aiohttp.ClientSession, wav: Path, wav_bytes: bytes
) -> None:
    uploaded = await upload_file(http, emu.base_url, wav)
    for meta in ("a", "b", "a", None):
        body: dict[str, Any] = {"assetId": uploaded["id"], "targets": [_target(), _target("bass")]}
        if meta is not None:
            body["metadata"] = meta
        await call(http, "POST", f"{emu.base_url}/tasks", body)
    await call(http, "GET", f"{emu.base_url}/tasks/cnope")
    await call(http, "GET", f"{emu.base_url}/tasks/cnope2")
    # No key needed for introspection.
    async with (
        aiohttp.ClientSession() as plain,
        plain.get(f"{emu.base_url}/_emulator/stats") as resp,
    ):
        assert resp.status == 200
        stats = await resp.json()
    assert stats["requests"] == {"POST /assets": 1, "POST /tasks": 4, "GET /tasks/{id}": 2}
    assert stats["responses"] == {"200": 5, "404": 2}
    assert stats["tasks_created"] == 4 and stats["targets_created"] == 8
    assert stats["assets_created"] == 1 and stats["bytes_uploaded"] == len(wav_bytes)
    assert stats["tasks_by_metadata"] == {"a": 2, "b": 1}
    assert stats["duplicate_metadata"] == {"a": 2}
    assert set(stats["faults"]) >= {"fail", "drop", "drop_after_create", "truncate", "stale"}
    assert not any(stats["faults"].values())


async def test_config_endpoint(emu: Emulator, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{emu.base_url}/_emulator/config") as resp:
        assert (await resp.json())["delay"] == 0.0
    async with http.post(
        f"{emu.base_url}/_emulator/config", json={"delay": 1.5, "error_models": ["bass"]}
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["error_models"] == ["bass"]
    assert emu.config.delay == 1.5 and emu.config.error_models == frozenset({"bass"})
    for bad in ({"nope": 1}, {"fail_rate": 2}, {"port": 1234}, ["delay"]):
        async with http.post(f"{emu.base_url}/_emulator/config", json=bad) as resp:
            assert resp.status == 400, bad
            assert (await resp.json())["statusCode"] == 400
