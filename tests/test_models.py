"""Models and the cattrs converter: round trips, documented bodies, tolerance of the unknown."""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import re
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audioshake_async import errors
from audioshake_async._convert import (
    camel_case,
    format_datetime,
    make_converter,
    parse_datetime,
    structure,
    unstructure,
)
from audioshake_async.models import (
    Asset,
    Model,
    ModelInput,
    Output,
    Target,
    TargetError,
    TargetResult,
    TargetStatus,
    Task,
    UsageMonth,
    Webhook,
)
from audioshake_async.tasks.wire import (
    parse_asset,
    parse_assets,
    parse_models,
    parse_task,
    parse_tasks,
    parse_usage,
)

SEEDS = pathlib.Path("/work/shared/api/seeds")
API_DOC = pathlib.Path("/work/shared/api/audioshake-api.md")

# --------------------------------------------------------------------------- strategies

text = st.text(max_size=12)
ident = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=25)
opt_text = st.none() | text
num = st.floats(allow_nan=False, allow_infinity=False, width=64)
opt_num = st.none() | num
opt_bool = st.none() | st.booleans()
str_tuple = st.lists(text, max_size=3).map(tuple)
# The service sends UTC with millisecond precision; that is what survives a round trip.
timestamps = st.datetimes(min_value=dt.datetime(1990, 1, 1), max_value=dt.datetime(2100, 1, 1)).map(
    lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000, tzinfo=dt.timezone.utc)
)
json_scalar = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | text | num
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)

targets = st.builds(
    Target,
    model=ident,
    formats=st.lists(ident, min_size=1, max_size=3).map(tuple),
    residual=opt_bool,
    variant=st.none() | ident,
    language=st.none() | ident,
    transcript_url=opt_text,
    transcript_asset_id=opt_text,
)
outputs = st.builds(Output, name=text, format=text, link=text)
target_errors = st.builds(
    TargetError,
    code=st.none() | st.integers(-1000, 1000) | num | text,
    message=opt_text,
)
statuses = st.sampled_from(["processing", "completed", "error", "failed", "queued"]) | ident
target_results = st.builds(
    TargetResult,
    id=ident,
    model=text,
    status=statuses,
    formats=str_tuple,
    output=st.lists(outputs, max_size=3).map(tuple),
    cost=opt_num,
    error=st.none() | target_errors,
    duration=opt_num,
    residual=opt_bool,
    variant=opt_text,
    language=opt_text,
    transcript_url=opt_text,
    transcript_asset_id=opt_text,
)
tasks = st.builds(
    Task,
    id=ident,
    targets=st.lists(target_results, max_size=4).map(tuple),
    created_at=st.none() | timestamps,
    completed_at=st.none() | timestamps,
    client_id=opt_text,
    cost=opt_num,
    asset_id=opt_text,
    url=opt_text,
    metadata=opt_text,
)
assets = st.builds(
    Asset, id=ident, format=opt_text, name=opt_text, link=opt_text, mime_type=opt_text
)
model_inputs = st.builds(
    ModelInput,
    id=ident,
    description=opt_text,
    required=opt_bool,
    task_fields=str_tuple,
    formats=st.dictionaries(text, str_tuple, max_size=3),
)
models = st.builds(
    Model,
    id=ident,
    name=opt_text,
    category=opt_text,
    description=opt_text,
    access=st.none() | st.sampled_from(["enabled", "request_access"]),
    credits_per_minute=opt_num,
    inputs=st.lists(model_inputs, max_size=2).map(tuple),
    output_formats=str_tuple,
    limits=st.dictionaries(text, json_value, max_size=3),
    supported_languages=str_tuple,
)
usage_months = st.builds(
    UsageMonth,
    month=text,
    total_targets=st.none() | st.integers(0, 10**9),
    total_minutes=st.none()
    | st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=0, max_value=10**9),
)
webhooks = st.builds(Webhook, id=ident, url=opt_text, created_at=st.none() | timestamps)

ALL_MODELS: dict[type[Any], st.SearchStrategy[Any]] = {
    Target: targets,
    Output: outputs,
    TargetError: target_errors,
    TargetResult: target_results,
    Task: tasks,
    Asset: assets,
    ModelInput: model_inputs,
    Model: models,
    UsageMonth: usage_months,
    Webhook: webhooks,
}


def test_every_public_model_has_a_strategy() -> None:
    import audioshake_async.models as module

    public = {obj for name in module.__all__ if attrs.has(obj := getattr(module, name))}
    assert public == set(ALL_MODELS)


@pytest.mark.parametrize("cls", list(ALL_MODELS), ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip_through_json(cls: type[Any], data: st.DataObject) -> None:
    original = data.draw(ALL_MODELS[cls])
    wire = json.loads(json.dumps(unstructure(original)))
    assert structure(wire, cls) == original


@settings(max_examples=40, deadline=None)
@given(task=tasks)
def test_unstructured_keys_are_camel_case_and_omit_none(task: Task) -> None:
    wire = unstructure(task)
    assert all(not re.search(r"_[a-z]", key) for key in wire)
    assert all(value is not None for value in wire.values())
    for target in wire["targets"]:
        assert all(value is not None for value in target.values())
        assert "transcript_url" not in target


def test_camel_case() -> None:
    assert camel_case("transcript_asset_id") == "transcriptAssetId"
    assert camel_case("id") == "id"
    assert camel_case("credits_per_minute") == "creditsPerMinute"


def test_fresh_converter_behaves_like_default() -> None:
    conv = make_converter()
    body = {"id": "x", "mimeType": "audio/mp3"}
    assert (
        conv.structure(body, Asset) == structure(body, Asset) == Asset("x", mime_type="audio/mp3")
    )


def test_datetime_parsing_and_formatting() -> None:
    parsed = parse_datetime("2026-03-25T03:16:17.442Z")
    assert parsed == dt.datetime(2026, 3, 25, 3, 16, 17, 442000, tzinfo=dt.timezone.utc)
    assert format_datetime(parsed) == "2026-03-25T03:16:17.442Z"
    # An offset is converted to UTC; a naive timestamp is taken as UTC.
    assert parse_datetime("2026-03-25T05:16:17+02:00") == dt.datetime(
        2026, 3, 25, 3, 16, 17, tzinfo=dt.timezone.utc
    )
    assert parse_datetime("2023-11-07T05:31:56").tzinfo is dt.timezone.utc
    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert (
        format_datetime(dt.datetime(2026, 1, 1, 2, 0, tzinfo=plus2)) == "2026-01-01T00:00:00.000Z"
    )


# --------------------------------------------------------------------------- documented bodies

TASK_SCHEMA_SAMPLE = {
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

WEBHOOK_EXAMPLE = {
    "id": "cmn5h1wv600edx8fgoboeeg06",
    "createdAt": "2026-03-25T03:16:17.442Z",
    "clientId": "cm4lousna0yurbk8ngu31n8bb",
    "assetId": "cmn5gz2s800xp01phe9v3bm5r",
    "targets": [
        {
            "id": "cmn5h1vsn010001pv1cjg2n4t",
            "model": "bass",
            "cost": 4,
            "formats": ["wav"],
            "status": "completed",
            "duration": 200.53,
            "output": [{"name": "bass", "format": "wav", "link": "https://cdn.audioshake.ai/..."}],
        },
        {
            "id": "cmn5h1vsn00zz01pv6xjn3hxd",
            "model": "drums",
            "formats": ["wav"],
            "status": "processing",
            "output": [],
        },
    ],
}

ASSET_UPLOAD = {
    "id": "cmkd41zsb019001pvdcdg13ec",
    "format": "mp3",
    "link": "https://cdn.audioshake.ai/.../sourcefile?...",
    "name": "test.mp3",
}
ASSET_LIST = [
    {"id": "cmkd41zsb019001pvdcdg13ec", "format": "mp3", "name": "lead_backing_test.mp3"},
    {"id": "cmkcy8d3j001401obey6pfreu", "format": "mp3", "name": "lead_backing_test.mp3"},
]
ASSET_GET = {
    "id": "cmkd41zsb019001pvdcdg13ec",
    "mimeType": "audio/mp3",
    "format": "mp3",
    "link": "https://cdn.audioshake.ai/.../sourcefile?...",
    "name": "lead_backing_test.mp3",
}
MODELS_ENVELOPE = {
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
                    },
                }
            ],
            "outputFormats": ["aiff", "wav", "flac", "mp3", "mp4"],
        }
    ]
}
USAGE = [{"month": "2024-05", "totalTargets": 123, "totalMinutes": "456.75"}]


def _json_blocks(text_: str) -> list[Any]:
    """Every ```json fenced block of a document that parses as JSON."""
    blocks = []
    for match in re.finditer(r"```json\n(.*?)```", text_, re.S):
        try:
            blocks.append(json.loads(match.group(1)))
        except ValueError:
            continue
    return blocks


def _seed_json_objects(path: pathlib.Path) -> list[Any]:
    """Every top-level JSON object or array embedded in a seed page."""
    raw = path.read_text()
    decoder = json.JSONDecoder()
    found = []
    index = 0
    while index < len(raw):
        if raw[index] in "{[":
            try:
                value, end = decoder.raw_decode(raw, index)
            except ValueError:
                index += 1
                continue
            found.append(value)
            index = end
        else:
            index += 1
    return found


def test_task_schema_sample_parses_every_field() -> None:
    task = parse_task(TASK_SCHEMA_SAMPLE)
    assert task.created_at == dt.datetime(2023, 11, 7, 5, 31, 56, tzinfo=dt.timezone.utc)
    assert task.completed_at == task.created_at
    assert (task.client_id, task.cost, task.asset_id, task.url, task.metadata) == (
        "<string>",
        123,
        "<string>",
        "<string>",
        "<string>",
    )
    (target,) = task.targets
    assert target.status == "processing" and not target.is_terminal
    assert target.output == (Output("<string>", "<string>", "<string>"),)
    assert target.error == TargetError(123, "<string>")
    assert target.residual is True
    assert target.transcript_url == target.transcript_asset_id == "<string>"
    assert (target.cost, target.duration, target.language) == (123, 123, "<string>")


def test_webhook_example_parses_as_partial_task() -> None:
    task = parse_task(WEBHOOK_EXAMPLE)
    assert task.id == "cmn5h1wv600edx8fgoboeeg06"
    assert task.created_at == dt.datetime(2026, 3, 25, 3, 16, 17, 442000, tzinfo=dt.timezone.utc)
    assert task.completed_at is None and task.cost is None and task.metadata is None
    bass, drums = task.targets
    assert bass.is_completed and bass.cost == 4 and bass.duration == pytest.approx(200.53)
    assert bass.output[0].filename == "bass.wav"
    assert drums.status == "processing" and drums.output == () and drums.cost is None
    # The first target is finished, the task is not: done means every target.
    assert not task.is_done and not task.succeeded
    assert task.outputs == bass.output


def test_asset_bodies_parse() -> None:
    uploaded = parse_asset(ASSET_UPLOAD)
    assert uploaded == Asset(
        "cmkd41zsb019001pvdcdg13ec", "mp3", "test.mp3", ASSET_UPLOAD["link"], None
    )
    listed = parse_assets(ASSET_LIST)
    assert [a.id for a in listed] == ["cmkd41zsb019001pvdcdg13ec", "cmkcy8d3j001401obey6pfreu"]
    assert all(a.link is None for a in listed)
    got = parse_asset(ASSET_GET)
    assert got.mime_type == "audio/mp3" and got.link == ASSET_GET["link"]


def test_models_envelope_parses() -> None:
    (model,) = parse_models(MODELS_ENVELOPE)
    assert model.id == "bass" and model.enabled and model.credits_per_minute == 1
    assert model.inputs[0].task_fields == ("url", "assetId")
    assert model.inputs[0].formats["video"] == ("mp4", "mov")
    assert model.output_formats == ("aiff", "wav", "flac", "mp3", "mp4")
    assert model.limits == {} and model.supported_languages == ()
    gated = parse_models({"models": [{"id": "multi_voice", "access": "request_access"}]})
    assert not gated[0].enabled and gated[0].credits_per_minute is None


def test_usage_minutes_string_is_decimal() -> None:
    (row,) = parse_usage(USAGE)
    assert row == UsageMonth("2024-05", 123, Decimal("456.75"))
    assert isinstance(row.total_minutes, Decimal)
    assert unstructure(row)["totalMinutes"] == "456.75"
    with pytest.raises(errors.ResponseParseError):
        parse_usage([{"month": "2024-05", "totalMinutes": "lots"}])


def test_error_body_example_is_json() -> None:
    from audioshake_async.core.http import error_for_status

    body = {"statusCode": 400, "error": "Bad Request", "message": "Insufficient credits"}
    exc = error_for_status(400, body)
    assert isinstance(exc, errors.InsufficientCreditsError)
    assert (exc.status, exc.error, exc.message) == (400, "Bad Request", "Insufficient credits")


def test_documented_examples_in_reference_parse() -> None:
    """Every JSON example in sections 0-5 of the reference parses as what it documents."""
    doc = API_DOC.read_text()
    sections = doc.split("## 6. Legacy Jobs API")[0]
    blocks = _json_blocks(sections)
    kinds: list[str] = []
    for block in blocks:
        if isinstance(block, dict) and "models" in block:
            assert parse_models(block)[0].id == "bass"
            kinds.append("models")
        elif isinstance(block, dict) and "statusCode" in block:
            kinds.append("error")
        elif isinstance(block, dict) and "targets" in block and "id" in block:
            assert parse_task(block).targets
            kinds.append("task")
        elif isinstance(block, dict) and "targets" in block:
            kinds.append("request")  # create-task request bodies: checked in test_protocol
        elif isinstance(block, dict) and "id" in block:
            assert parse_asset(block).format == "mp3"
            kinds.append("asset")
        elif isinstance(block, list) and block and "totalMinutes" in block[0]:
            # The schema sample says "<string>": a placeholder, not a number.
            with pytest.raises(errors.ResponseParseError):
                parse_usage(block)
            kinds.append("usage")
        elif isinstance(block, list) and block and "format" in block[0]:
            assert len(parse_assets(block)) == 2
            kinds.append("assets")
        else:
            kinds.append("other")
    for kind in ("models", "error", "task", "request", "asset", "usage", "assets"):
        assert kind in kinds, f"no {kind} example found in the reference"
    assert kinds.count("task") >= 2  # schema sample and webhook payload


@pytest.mark.parametrize("seed", ["001_*", "003_*"])
def test_seed_examples_parse(seed: str) -> None:
    (path,) = SEEDS.glob(seed)
    objects = _seed_json_objects(path)
    assert objects
    parsed = 0
    for obj in objects:
        if isinstance(obj, dict) and "targets" in obj and "id" in obj:
            task = parse_task(obj)
            assert task.targets[0].output[0].name == "<string>"
            parsed += 1
        elif isinstance(obj, dict) and "targets" in obj:
            from audioshake_async.tasks.wire import build_create_task_body

            request = [Target(t["model"], t["formats"]) for t in obj["targets"]]
            body = build_create_task_body(targets=request, asset_id=obj["assetId"])
            assert body == obj
            parsed += 1
        elif isinstance(obj, dict) and "statusCode" in obj:
            assert obj["message"] == "Insufficient credits"
            parsed += 1
        elif isinstance(obj, dict) and "id" in obj:
            assert parse_asset(obj).id == "cmkd41zsb019001pvdcdg13ec"
            parsed += 1
        elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
            assert len(parse_assets(obj)) == 2
            parsed += 1
    assert parsed >= 3


# --------------------------------------------------------------------------- tolerance


def test_unknown_fields_are_ignored_everywhere() -> None:
    body = json.loads(json.dumps(WEBHOOK_EXAMPLE))
    body["brandNewField"] = {"nested": [1, 2]}
    body["targets"][0]["quality"] = "great"
    body["targets"][0]["output"][0]["sha256"] = "ab"
    assert parse_task(body) == parse_task(WEBHOOK_EXAMPLE)
    assert parse_asset({**ASSET_GET, "expiresAt": "tomorrow"}) == parse_asset(ASSET_GET)


def test_output_null_and_other_nulls_take_defaults() -> None:
    task = parse_task(
        {
            "id": "t",
            "targets": [
                {"id": "a", "status": "processing", "output": None, "formats": None, "model": None}
            ],
            "completedAt": None,
            "url": None,
        }
    )
    (target,) = task.targets
    assert target.output == () and target.formats == () and target.model == ""
    assert task.completed_at is None and task.url is None
    assert parse_task({"id": "t", "targets": None}).targets == ()


def test_unknown_status_is_kept_and_not_terminal() -> None:
    task = parse_task({"id": "t", "targets": [{"id": "a", "status": "queued"}]})
    assert task.targets[0].status == "queued"
    assert not task.targets[0].is_terminal and not task.is_done


def test_failed_is_an_error_status() -> None:
    task = parse_task(
        {
            "id": "t",
            "targets": [{"id": "a", "status": "failed"}, {"id": "b", "status": "completed"}],
        }
    )
    failed = task.targets[0]
    assert failed.is_terminal and failed.is_error and not failed.is_completed
    assert task.is_done and not task.succeeded
    assert task.failed_targets == (failed,)


def test_required_id_missing_is_a_parse_error() -> None:
    with pytest.raises(errors.ResponseParseError):
        parse_task({"targets": []})
    with pytest.raises(errors.ResponseParseError):
        parse_task(["not", "an", "object"])
    with pytest.raises(errors.ResponseParseError):
        parse_tasks({"unexpected": "envelope"})


def test_list_envelopes_are_accepted() -> None:
    assert [t.id for t in parse_tasks({"tasks": [{"id": "a"}]})] == ["a"]
    assert [a.id for a in parse_assets({"assets": [{"id": "b"}]})] == ["b"]
    with pytest.raises(errors.ResponseParseError):
        parse_models([{"id": "bass"}, "bogus"])


# --------------------------------------------------------------------------- done-ness


def _task(*statuses: str) -> Task:
    return Task("t", tuple(TargetResult(f"t{i}", status=s) for i, s in enumerate(statuses)))


@pytest.mark.parametrize(
    ("statuses", "done", "succeeded"),
    [
        (("completed",), True, True),
        (("completed", "processing"), False, False),
        (("processing", "completed"), False, False),  # never look only at targets[0]
        (("error", "processing"), False, False),
        (("completed", "error"), True, False),
        (("completed", "failed"), True, False),
        (("completed", "queued"), False, False),
        ((), False, False),  # a task without targets is not done
    ],
)
def test_done_only_when_every_target_terminal(
    statuses: tuple[str, ...], done: bool, succeeded: bool
) -> None:
    task = _task(*statuses)
    assert task.is_done is done
    assert task.succeeded is succeeded


def test_outputs_only_from_completed_targets() -> None:
    out = Output("vocals", "wav", "https://cdn/x")
    stale = Output("drums", "wav", "https://cdn/y")
    task = Task(
        "t",
        (
            TargetResult("a", status="completed", output=(out,)),
            TargetResult("b", status="error", output=(stale,)),
        ),
    )
    assert task.outputs == (out,)
    assert task.target("b") is task.targets[1]
    assert task.target("zzz") is None


def test_target_formats_accept_a_lone_string() -> None:
    assert Target("vocals", "wav").formats == ("wav",)
    assert Target("vocals", ["wav", "mp3"]).formats == ("wav", "mp3")
    assert Target("vocals").formats == ("wav",)


def test_target_status_enum_values() -> None:
    assert {s.value for s in TargetStatus} == {"processing", "completed", "error"}
    assert str(TargetStatus.COMPLETED) == "completed"
