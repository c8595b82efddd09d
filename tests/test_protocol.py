"""The I/O-free protocol: errors, Retry-After, retry maths, validation, file names, merging."""

from __future__ import annotations

import datetime as dt
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audioshake_async import errors
from audioshake_async.core.files import safe_filename
from audioshake_async.core.http import (
    PollPolicy,
    RetryPolicy,
    decode_body,
    error_for_status,
    is_retryable_status,
    normalize_base_url,
    parse_retry_after,
    redact_url,
    same_origin,
)
from audioshake_async.models import Output, Target, TargetResult, Task, merge_task_snapshot
from audioshake_async.tasks.wire import (
    build_create_task_body,
    content_type_for,
    validate_page,
    validate_targets,
    validate_upload,
)

NOW = dt.datetime(2026, 3, 25, 12, 0, 0, tzinfo=dt.timezone.utc)

# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (
            400,
            {"statusCode": 400, "error": "Bad Request", "message": "bad targets"},
            errors.BadRequestError,
        ),
        (
            400,
            {"statusCode": 400, "error": "Bad Request", "message": "Insufficient credits"},
            errors.InsufficientCreditsError,
        ),
        (401, {"message": "Unauthorized"}, errors.AuthenticationError),
        (403, {"message": "Forbidden"}, errors.PermissionDeniedError),
        (
            404,
            {"statusCode": 404, "error": "Not Found", "message": "Cannot find asset"},
            errors.NotFoundError,
        ),
        (413, "Request Entity Too Large", errors.PayloadTooLargeError),
        (422, {"message": "Unprocessable"}, errors.UnprocessableEntityError),
        (429, {"message": "Too Many Requests"}, errors.RateLimitError),
        (500, {"message": "boom"}, errors.ServerError),
        (502, "<html>Bad Gateway</html>", errors.ServerError),
        (503, "", errors.ServerError),
        (599, None, errors.ServerError),
        (418, {"message": "teapot"}, errors.APIError),
    ],
)
def test_error_for_status_maps_each_status(status: int, body: object, cls: type) -> None:
    exc = error_for_status(status, body, method="GET", url="https://api.example/x?sig=SECRET")
    assert type(exc) is cls
    assert exc.status == status
    assert "SECRET" not in str(exc) and "SECRET" not in repr(exc)
    assert exc.url == "https://api.example/x"


def test_insufficient_credits_is_a_bad_request_and_case_insensitive() -> None:
    exc = error_for_status(400, {"message": "INSUFFICIENT CREDITS for this task"})
    assert isinstance(exc, errors.InsufficientCreditsError)
    assert isinstance(exc, errors.BadRequestError)
    # Same text on another status is not the credits error.
    assert type(error_for_status(403, {"message": "Insufficient credits"})) is (
        errors.PermissionDeniedError
    )


def test_error_message_fields() -> None:
    exc = error_for_status(
        404,
        {"statusCode": 404, "error": "Not Found", "message": "Cannot find asset"},
        method="GET",
        url="https://api.audioshake.ai/assets/abc",
    )
    assert exc.error == "Not Found" and exc.message == "Cannot find asset"
    assert str(exc) == "404 Not Found: Cannot find asset (GET https://api.audioshake.ai/assets/abc)"
    assert repr(exc) == "NotFoundError(status=404, message='Cannot find asset')"


def test_non_json_and_empty_bodies() -> None:
    html = decode_body(b"<html><body>502 Bad Gateway</body></html>")
    assert html == "<html><body>502 Bad Gateway</body></html>"
    exc = error_for_status(502, html)
    assert exc.message == html and exc.error is None
    assert error_for_status(503, decode_body(b"")).message == "HTTP 503"
    assert error_for_status(500, "x" * 2000).message == "x" * 500
    assert decode_body(b'{"a": 1}') == {"a": 1}
    assert decode_body(b"\xff\xfe not utf8") == "\ufffd\ufffd not utf8"
    # A JSON body that is not an object has no fields: the status text is used.
    assert error_for_status(500, [1, 2]).message == "HTTP 500"


def test_api_error_pickles_without_body() -> None:
    exc = error_for_status(401, {"message": "bad key"}, method="GET", url="https://h/tasks")
    clone = pickle.loads(pickle.dumps(exc))
    assert type(clone) is errors.AuthenticationError
    assert (clone.status, clone.message, clone.url) == (401, "bad key", "https://h/tasks")


def test_retry_after_is_kept_on_the_error() -> None:
    assert error_for_status(429, {}, retry_after=3.0).retry_after == 3.0


# --------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": " 2.5 "}, 2.5),
        ({"retry-after": "3"}, 3.0),
        ({"Retry-After": "Wed, 25 Mar 2026 12:00:30 GMT"}, 30.0),
        ({"Retry-After": "Wed, 25 Mar 2026 11:59:00 GMT"}, 0.0),  # date in the past
        ({"Retry-After": "-5"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "nan"}, None),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "-20"}, 0.0),
        ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),  # ms wins
        ({"retry-after-ms": "junk", "Retry-After": "9"}, 9.0),  # bad ms falls back
        ({"retry-after-ms": "nan", "Retry-After": "4"}, 4.0),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, NOW) == expected


def test_parse_retry_after_naive_date_is_utc() -> None:
    # parsedate_to_datetime returns a naive datetime for "-0000".
    headers = {"Retry-After": "Wed, 25 Mar 2026 12:00:10 -0000"}
    assert parse_retry_after(headers, NOW) == 10.0


# --------------------------------------------------------------------------- retry maths


@given(
    attempt=st.integers(1, 40),
    fraction=st.floats(0.0, 1.0, exclude_max=True),
    base=st.floats(0.001, 5.0),
    cap=st.floats(0.01, 60.0),
)
def test_retry_delay_full_jitter_within_bounds(
    attempt: int, fraction: float, base: float, cap: float
) -> None:
    policy = RetryPolicy(base_delay=base, max_delay=cap)
    delay = policy.delay(attempt, fraction)
    ceiling = min(cap, base * 2 ** (attempt - 1))
    assert 0.0 <= delay <= ceiling
    assert delay == pytest.approx(ceiling * fraction)


def test_retry_delay_doubles_then_caps() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=3.0)
    # With the largest draw the delay is the ceiling itself.
    almost_one = 0.999999
    ceilings = [policy.delay(n, almost_one) for n in range(1, 7)]
    assert ceilings == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.0, 3.0], rel=1e-5)
    assert policy.delay(3, 0.0) == 0.0


def test_retry_after_overrides_backoff_and_is_capped() -> None:
    policy = RetryPolicy(base_delay=0.01, max_delay=0.05, max_retry_after=10.0)
    assert policy.delay(1, 0.5, retry_after=4.0) == 4.0
    assert policy.delay(1, 0.5, retry_after=500.0) == 10.0
    assert policy.delay(1, 0.5, retry_after=-3.0) == 0.0


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (408, True),
        (425, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (507, True),
        (501, False),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (413, False),
        (422, False),
        (200, False),
    ],
)
def test_retryable_statuses(status: int, retryable: bool) -> None:
    assert is_retryable_status(status) is retryable


def test_poll_policy_backs_off_with_bounded_jitter() -> None:
    policy = PollPolicy(initial_interval=1.0, max_interval=5.0, multiplier=2.0, jitter=0.1)
    assert [policy.interval(n, 0.5) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert policy.interval(1, 0.0) == pytest.approx(0.9)
    assert policy.interval(10, 1.0) == pytest.approx(5.5)
    assert PollPolicy(jitter=2.0).interval(1, 0.0) == 0.0  # never negative


# --------------------------------------------------------------------------- URLs


def test_redact_url_drops_query_fragment_and_userinfo() -> None:
    assert redact_url("https://cdn.audioshake.ai/a/b.wav?X-Amz-Signature=abc#frag") == (
        "https://cdn.audioshake.ai/a/b.wav"
    )
    assert redact_url("https://user:pw@host:8443/p?q=1") == "https://host:8443/p"
    assert redact_url("http://[::1") == "<invalid url>"


@pytest.mark.parametrize(
    ("url", "same"),
    [
        ("https://api.audioshake.ai/tasks", True),
        ("https://API.audioshake.ai:443/tasks", True),
        ("http://api.audioshake.ai/tasks", False),
        ("https://api.audioshake.ai:8443/tasks", False),
        ("https://cdn.audioshake.ai/x", False),
        ("https://api.audioshake.ai.evil.com/x", False),
    ],
)
def test_same_origin(url: str, same: bool) -> None:
    assert same_origin(url, "https://api.audioshake.ai") is same


def test_normalize_base_url() -> None:
    assert normalize_base_url(" https://api.audioshake.ai/ ") == "https://api.audioshake.ai"
    assert normalize_base_url("http://127.0.0.1:8080/prefix/") == "http://127.0.0.1:8080/prefix"
    for bad in ("api.audioshake.ai", "ftp://x", "https://", ""):
        with pytest.raises(errors.ConfigurationError):
            normalize_base_url(bad)


# --------------------------------------------------------------------------- validation

VOCALS = Target("vocals", ["wav"])


def _targets(n: int) -> list[Target]:
    return [Target(f"model{i}", ["wav"]) for i in range(n)]


def test_build_body_documented_examples() -> None:
    assert build_create_task_body(
        targets=[Target("vocals", ["wav"]), Target("instrumental", ["wav"])],
        asset_id="your_asset_id",
    ) == {
        "assetId": "your_asset_id",
        "targets": [
            {"model": "vocals", "formats": ["wav"]},
            {"model": "instrumental", "formats": ["wav"]},
        ],
    }
    assert build_create_task_body(
        targets=[Target("alignment", ["json"], transcript_url="https://example.com/lyrics.txt")],
        asset_id="your_asset_id",
    ) == {
        "assetId": "your_asset_id",
        "targets": [
            {
                "model": "alignment",
                "formats": ["json"],
                "transcriptUrl": "https://example.com/lyrics.txt",
            }
        ],
    }
    body = build_create_task_body(
        targets=[VOCALS],
        url="https://demos.audioshake.ai/demo-assets/shakeitup.mp3",
        metadata="m" * 4096,
        extra={"writeDestination": "s3://b/p"},
    )
    assert body["url"].endswith("shakeitup.mp3") and "assetId" not in body
    assert len(body["metadata"]) == 4096 and body["writeDestination"] == "s3://b/p"


def test_build_body_accepts_exactly_twenty_targets() -> None:
    assert len(build_create_task_body(targets=_targets(20), asset_id="a")["targets"]) == 20


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"targets": [VOCALS]}, "exactly one source"),
        ({"targets": [VOCALS], "asset_id": "a", "url": "https://x/y.wav"}, "exactly one source"),
        ({"targets": [VOCALS], "asset_id": "  "}, "empty"),
        ({"targets": [VOCALS], "url": "file:///etc/passwd"}, "https"),
        ({"targets": [VOCALS], "url": "ftp://h/x.wav?token=SECRET"}, "https"),
        ({"targets": [], "asset_id": "a"}, "at least one target"),
        ({"targets": _targets(21), "asset_id": "a"}, "at most 20"),
        ({"targets": [VOCALS], "asset_id": "a", "metadata": "m" * 4097}, "4097"),
        ({"targets": [VOCALS], "asset_id": "a", "metadata": {"k": 1}}, "string"),
        ({"targets": [Target("vocals", ["wav", "wav"])], "asset_id": "a"}, "repeats a format"),
        ({"targets": [VOCALS, Target("vocals", ["mp3"])], "asset_id": "a"}, "twice"),
        ({"targets": [Target("", ["wav"])], "asset_id": "a"}, "model name"),
        ({"targets": [Target("  ", ["wav"])], "asset_id": "a"}, "model name"),
        ({"targets": [Target("vocals", [])], "asset_id": "a"}, "format"),
        ({"targets": [Target("vocals", [""])], "asset_id": "a"}, "format"),
        ({"targets": ["vocals"], "asset_id": "a"}, "Target objects"),
        (
            {
                "targets": [
                    Target("alignment", ["json"], transcript_url="u", transcript_asset_id="v")
                ],
                "asset_id": "a",
            },
            "transcript",
        ),
    ],
)
def test_build_body_rejects(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(errors.ValidationError, match=match) as info:
        build_create_task_body(**kwargs)  # type: ignore[arg-type]
    assert "SECRET" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_validate_targets_variants_and_single_target() -> None:
    both = validate_targets(
        [Target("vocals", ["wav"]), Target("vocals", ["wav"], variant="high_quality")]
    )
    assert len(both) == 2
    assert validate_targets(VOCALS) == (VOCALS,)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "size", "max_bytes", "result"),
    [
        ("song.wav", 10, None, "audio/wav"),
        ("SONG.MP3", 10, None, "audio/mpeg"),
        ("clip.mov", 10, None, "video/quicktime"),
        ("lyrics.txt", 10, None, "text/plain"),
        ("song.aif", 10, None, "audio/aiff"),
        ("song.wav", 2 * 1024**3, None, "audio/wav"),  # exactly 2 GB is allowed
        ("song.wav", 2 * 1024**3 + 1, None, "over the"),
        ("song.wav", 101, 100, "over the"),
        ("song.wav", 0, None, "empty"),
        ("song.exe", 10, None, "unsupported"),
        ("song", 10, None, "unsupported"),
        ("song.wav.zip", 10, None, "unsupported"),
    ],
)
def test_validate_upload(name: str, size: int, max_bytes: int | None, result: str) -> None:
    kwargs = {} if max_bytes is None else {"max_bytes": max_bytes}
    if "/" in result:
        assert validate_upload(name, size, **kwargs) == result
        assert content_type_for(name) == result
    else:
        with pytest.raises(errors.ValidationError, match=result):
            validate_upload(name, size, **kwargs)


def test_validate_page() -> None:
    validate_page(0, 1)
    validate_page(500, 100)
    for skip, take in ((-1, 10), (0, 0), (0, 101)):
        with pytest.raises(errors.ValidationError):
            validate_page(skip, take)


# --------------------------------------------------------------------------- file names


@pytest.mark.parametrize(
    ("name", "fmt", "expected"),
    [
        ("vocals", "wav", "vocals.wav"),
        ("../../x", "wav", "_.._x.wav"),
        ("/etc/passwd", None, "_etc_passwd"),
        ("a/b", "wav", "a_b.wav"),
        ("..\\..\\win", "wav", "_.._win.wav"),
        ("C:\\Windows\\x", "wav", "C_Windows_x.wav"),
        ("nul\x00byte", "wav", "nul_byte.wav"),
        ("", "wav", "output.wav"),
        ("..", "wav", "output.wav"),
        (".", None, "output"),
        ("...", "wav", "output.wav"),
        (" / ", "wav", "output.wav"),
        (".hidden", "wav", "hidden.wav"),
        ("stem", "../wav", "stem._wav"),
        ("stem", "..", "stem.bin"),
        ("Ba\u0301ss", "wav", "B\u00e1ss.wav"),  # NFC-normalized
        ("воздух 🎵", "mp3", "воздух 🎵.mp3"),
    ],
)
def test_safe_filename(name: str, fmt: str | None, expected: str) -> None:
    assert safe_filename(name, fmt) == expected


@given(name=st.text(max_size=300), fmt=st.none() | st.text(max_size=30))
def test_safe_filename_is_always_one_harmless_component(name: str, fmt: str | None) -> None:
    result = safe_filename(name, fmt)
    assert result and "/" not in result and "\\" not in result and "\x00" not in result
    assert result not in (".", "..") and not result.startswith(".")
    assert len(result) <= 150 + 1 + 16


def test_safe_filename_fallback_and_length() -> None:
    assert safe_filename("", fallback="stem") == "stem"
    assert safe_filename("x" * 1000, "wav") == "x" * 150 + ".wav"


# --------------------------------------------------------------------------- merging


def _snap(*targets: tuple[str, str], completed_at: dt.datetime | None = None) -> Task:
    return Task(
        "task1",
        tuple(
            TargetResult(
                tid,
                status=status,
                output=(Output(tid, "wav", f"https://cdn/{tid}"),) if status == "completed" else (),
            )
            for tid, status in targets
        ),
        completed_at=completed_at,
    )


def test_stale_snapshot_never_unfinishes_a_target() -> None:
    newer = _snap(("a", "completed"), ("b", "processing"), completed_at=None)
    stale = _snap(("a", "processing"), ("b", "processing"))
    merged = merge_task_snapshot(newer, stale)
    assert merged.target("a") == newer.target("a")
    assert merged.target("a") is not None and merged.target("a").is_completed  # type: ignore[union-attr]
    assert merged.target("b") == stale.target("b")


def test_merge_keeps_error_and_completed_at() -> None:
    done_at = NOW
    old = _snap(("a", "error"), ("b", "completed"), completed_at=done_at)
    new = _snap(("a", "processing"), ("b", "processing"))
    merged = merge_task_snapshot(old, new)
    assert [t.status for t in merged.targets] == ["error", "completed"]
    assert merged.completed_at == done_at and merged.is_done


def test_merge_takes_newer_progress_and_fresh_links() -> None:
    old = _snap(("a", "processing"), ("b", "completed"))
    new = _snap(("a", "completed"), ("b", "completed"))
    new_b = new.target("b")
    assert new_b is not None
    merged = merge_task_snapshot(old, new)
    assert merged is new  # nothing stale: the new snapshot wins whole (fresh links)
    assert merged.target("b") is new_b


def test_merge_with_nothing_or_another_task() -> None:
    new = _snap(("a", "processing"))
    assert merge_task_snapshot(None, new) is new
    other = Task("other", (TargetResult("a", status="completed"),))
    assert merge_task_snapshot(other, new) is new


@given(
    old=st.lists(
        st.sampled_from(["processing", "completed", "error", "queued"]), min_size=1, max_size=5
    ),
    data=st.data(),
)
def test_merge_terminal_is_monotonic(old: list[str], data: st.DataObject) -> None:
    new = data.draw(
        st.lists(
            st.sampled_from(["processing", "completed", "error", "queued"]),
            min_size=len(old),
            max_size=len(old),
        )
    )
    before = _snap(*[(f"t{i}", s) for i, s in enumerate(old)])
    after = _snap(*[(f"t{i}", s) for i, s in enumerate(new)])
    merged = merge_task_snapshot(before, after)
    for was, now in zip(before.targets, merged.targets, strict=True):
        if was.is_terminal:
            assert now.is_terminal
    assert merged.is_done or not (before.is_done and after.is_done)
