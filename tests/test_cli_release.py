"""CLI behaviour a release needs: usage errors up front, dry runs, filters, diagnostics."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import pathlib
import pickle
import re
import subprocess
import sys
from collections.abc import AsyncIterator

import anyio
import pytest
from aiohttp import web

from audioshake_async import AudioShake, errors
from audioshake_async.cli import main
from audioshake_async.cli.dryrun import plan_item
from audioshake_async.cli.parser import selected
from audioshake_async.core.http import error_for_status
from audioshake_async.emulator import Emulator

from ._servers import base_url, serve
from .conftest import FAST_RETRY, write_wav


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


async def on(emulator: Emulator, *argv: str) -> tuple[int, str, str]:
    """``run`` against ``emulator`` in a child process, as a user runs it; the emulator serves
    on this test's loop, so its counters are ours to read."""
    command = [sys.executable, "-m", "audioshake_async", "run", *argv, "--quiet"]
    command += ["--base-url", emulator.base_url, "--api-key", emulator.api_key]
    with anyio.fail_after(90):
        done = await anyio.run_process(command, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_a_missing_input_is_a_usage_error(emulator: Emulator, tmp_path: pathlib.Path) -> None:
    out_dir = str(tmp_path / "o")
    status, _, err = await on(emulator, str(tmp_path / "nope.wav"), "-m", "vocals", "-o", out_dir)
    assert status == 2
    assert "input" in err and "nope.wav" in err and "does not exist" in err
    assert sum(emulator.stats()["requests"].values()) == 0


def test_emulator_without_its_extra_is_refused_before_any_upload(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "numpy" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    write_wav(tmp_path / "a.wav")
    for provider in ("audioshake", "legacy"):
        status, _, err = cli(
            "run", "--emulator", "--provider", provider, str(tmp_path / "a.wav"),
            "-m", "vocals", "-o", str(tmp_path / "o"), "--quiet",
        )  # fmt: skip
        assert status == 2, err
        assert "pip install 'audioshake-async[emulator]'" in err and "numpy" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.wav"))


def test_filters_apply_in_order_and_last_match_wins() -> None:
    assert selected("a/b.wav", None)
    assert not selected("a/b.wav", [("exclude", "*.wav")])
    assert selected("a/b.wav", [("exclude", "*"), ("include", "b.*")])
    # A leading --include selects: what matches no filter is left out.
    assert not selected("a/c.flac", [("include", "*.wav")])
    assert selected("a/c.wav", [("include", "*.wav"), ("exclude", "a/b*")])
    assert not selected("a/b.wav", [("include", "*.wav"), ("exclude", "a/b*")])


async def test_include_exclude_select_inputs(emulator: Emulator, tmp_path: pathlib.Path) -> None:
    for name in ("keep1.wav", "keep2.wav", "skip.wav"):
        write_wav(tmp_path / "in" / name)
    status, out, err = await on(
        emulator, str(tmp_path / "in"), "-m", "vocals", "-o", str(tmp_path / "o"),
        "--exclude", "skip*",
    )  # fmt: skip
    assert status == 0, err
    assert "2 of 2 items finished: 2 done" in out
    assert "1 inputs left out by --include/--exclude" in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if p.is_dir()) == ["keep1", "keep2"]


async def test_dry_run_reads_the_journal_and_sends_only_the_catalog_check(
    emulator: Emulator, tmp_path: pathlib.Path
) -> None:
    write_wav(tmp_path / "in" / "old.wav")
    out_dir = str(tmp_path / "o")
    status, _, err = await on(emulator, str(tmp_path / "in"), "-m", "vocals", "-o", out_dir)
    assert status == 0, err
    write_wav(tmp_path / "in" / "new.wav", seed=3)
    before = dict(emulator.stats()["requests"])
    status, out, err = await on(
        emulator, str(tmp_path / "in"), "-m", "vocals", "-o", out_dir, "--dry-run"
    )
    assert status == 0, err
    lines = out.splitlines()
    assert any(line.startswith("skip (done)") and line.endswith("old.wav") for line in lines)
    assert any(line.startswith("upload+create") and line.endswith("new.wav") for line in lines)
    assert lines[-1] == "dry run, nothing sent: 1 skip, 1 upload+create"
    after = emulator.stats()["requests"]
    sent = {route: after[route] - before.get(route, 0) for route in after}
    assert {route for route, count in sent.items() if count} == {"GET /models"}
    assert not (tmp_path / "o" / "new").exists()


def test_plan_item_covers_every_entry_point() -> None:
    from audioshake_async.batch import ItemRecord

    def plan(record: ItemRecord | None, **kw: object) -> str:
        options: dict[str, object] = {
            "size": 10, "mtime_ns": 5, "asset_max_age": 100.0, "retry_failed": False, "now": 1000.0,
        }  # fmt: skip
        options.update(kw)
        return plan_item(record, **options)  # type: ignore[arg-type]

    base = ItemRecord("s", "t", size=10, mtime_ns=5)
    assert plan(None) == "upload+create"
    assert plan(ItemRecord("s", "t", size=11, mtime_ns=5)).startswith("upload+create (changed")
    assert plan(ItemRecord("s", "t", size=10, mtime_ns=5, status="done")) == "skip (done)"
    resumed = ItemRecord("s", "t", size=10, mtime_ns=5, task_id="T", status="failed")
    assert plan(resumed) == "resume task T"
    assert plan(resumed, retry_failed=True) == "upload+create"
    fresh = ItemRecord("s", "t", size=10, mtime_ns=5, asset_id="A", asset_uploaded_at=950.0)
    assert plan(fresh) == "create (reusing asset A)"
    assert plan(fresh, now=2000.0) == "upload+create"
    assert plan(ItemRecord("s", "t", size=10, mtime_ns=5, token="k")).startswith("look up")
    assert plan(base) == "upload+create"


def test_models_json_lists_only_what_the_emulator_can_write(tmp_path: pathlib.Path) -> None:
    status, out, _ = cli("models", "--emulator", "--json")
    assert status == 0
    models = {m["id"]: m for m in json.loads(out)}
    assert "mp3" not in models["vocals"]["output_formats"]
    assert "wav" in models["vocals"]["output_formats"]
    # So an mp3 request is refused up front instead of ending every target in error.
    write_wav(tmp_path / "x.wav")
    status, _, err = cli(
        "run", "--emulator", str(tmp_path / "x.wav"), "-m", "vocals", "-f", "mp3",
        "-o", str(tmp_path / "o"),
    )  # fmt: skip
    assert status == 2 and "cannot output mp3" in err, err


async def test_verbose_shows_retries_and_rate_limit_pauses(
    emulator: Emulator, tmp_path: pathlib.Path
) -> None:
    write_wav(tmp_path / "a.wav")
    emulator.configure(rate_limit_burst=1)
    status, _, err = await on(
        emulator, str(tmp_path / "a.wav"), "-m", "vocals", "-o", str(tmp_path / "o2"), "-v"
    )
    assert status == 0, err
    assert "rate limited (429)" in err and "retrying GET" in err, err
    # Without -v the same run is silent.
    emulator.configure(rate_limit_burst=1)
    status, _, err = await on(
        emulator, str(tmp_path / "a.wav"), "-m", "vocals", "-o", str(tmp_path / "o3")
    )
    assert status == 0 and "retrying" not in err


def test_verbose_logging_lasts_for_the_command_only() -> None:
    # main() may run inside a longer-lived process: its handler and level leave with it.
    package_logger = logging.getLogger("audioshake_async")
    before = (list(package_logger.handlers), package_logger.level)
    status, _, err = cli("models", "--emulator", "--debug")
    assert status == 0 and "/models -> 200" in err, err
    assert (list(package_logger.handlers), package_logger.level) == before


async def test_log_records_carry_structured_fields(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.configure(rate_limit_burst=1)
    caplog.set_level(logging.DEBUG, logger="audioshake_async")
    async with AudioShake(emulator.api_key, emulator.base_url, retry=FAST_RETRY) as client:
        await client.models.list()
    retry = next(r for r in caplog.records if r.getMessage().startswith("retrying"))
    assert (retry.route, retry.attempt, retry.status) == ("GET /models", 1, 429)  # type: ignore[attr-defined]
    assert retry.delay >= 0 and retry.reason == "HTTP 429"  # type: ignore[attr-defined]
    answered = [r for r in caplog.records if "-> 200" in r.getMessage()]
    assert answered and answered[-1].route == "GET /models"  # type: ignore[attr-defined]


def test_audioshake_log_env_switch_turns_on_a_handler() -> None:
    code = "import logging, audioshake_async; logging.getLogger('audioshake_async.x').debug('hi')"
    env = {**os.environ, "AUDIOSHAKE_LOG": "debug", "PYTHONPATH": os.getcwd()}
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "DEBUG audioshake_async.x: hi" in found.stderr
    env["AUDIOSHAKE_LOG"] = ""
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert quiet.stderr == ""


@pytest.fixture
async def failing_api() -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {"statusCode": 500, "error": "Internal", "message": "boom"},
            status=500,
            headers={"x-request-id": "req-123", "Set-Cookie": "session=secret"},
        )

    app = web.Application()
    app.router.add_get("/models", handler)
    async with serve(app) as server:
        yield base_url(server)


async def test_errors_carry_request_id_and_redacted_headers_and_pickle(failing_api: str) -> None:
    async with AudioShake("sk-test-key", failing_api, retry=FAST_RETRY) as client:
        with pytest.raises(errors.ServerError) as caught:
            await client.models.list()
    error = caught.value
    assert error.request_id == "req-123" and "req-123" in str(error)
    assert error.headers["Set-Cookie"] == "<redacted>"
    assert "secret" not in repr(error.headers) and "sk-test-key" not in str(error)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is errors.ServerError
    assert (again.status, again.message, again.request_id, again.headers, again.url) == (
        error.status, error.message, error.request_id, error.headers, error.url,
    )  # fmt: skip


def test_every_error_survives_pickling_with_its_fields() -> None:
    from audioshake_async import Task

    api = error_for_status(429, {"message": "slow"}, method="GET", url="http://h/x?sig=1",
                           retry_after=2.0, headers={"request-id": "r9"})  # fmt: skip
    assert pickle.loads(pickle.dumps(api)).retry_after == 2.0
    assert pickle.loads(pickle.dumps(api)).request_id == "r9"
    conn = errors.AmbiguousRequestError("no answer", method="POST", url="http://h/tasks")
    back = pickle.loads(pickle.dumps(conn))
    assert (type(back), back.method, back.url, str(back)) == (
        errors.AmbiguousRequestError, "POST", "http://h/tasks", str(conn),
    )  # fmt: skip
    timeout = pickle.loads(pickle.dumps(errors.TaskTimeoutError("t1", 5.0)))
    assert (timeout.task_id, timeout.timeout, str(timeout)) == (
        "t1",
        5.0,
        "task t1 not done after 5 s",
    )
    task = Task(id="t2", targets=())
    failed = pickle.loads(pickle.dumps(errors.TaskFailedError(task)))
    assert failed.task.id == "t2"


def test_readme_synopsis_names_every_option_of_every_command() -> None:
    import argparse

    from audioshake_async.cli.parser import build_parser

    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    synopsis = readme.split("## The command line", 1)[1].split("```", 2)[1]
    commands = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    missing = []
    for name, sub in commands.choices.items():
        lines = [line for line in synopsis.splitlines() if line.strip()]
        start = next(
            (i for i, line in enumerate(lines) if line.startswith(f"audioshake-async {name}")),
            None,
        )
        assert start is not None, f"{name} is not in the README's synopsis"
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("audioshake-async")),
            len(lines),
        )
        block = "\n".join(lines[start:end])
        for action in sub._actions:
            flags = [f for f in action.option_strings if f not in ("-h", "--help")]
            shown = [f for f in flags if re.search(re.escape(f) + r"(?![\w-])", block)]
            if flags and not shown:
                missing.append(f"{name} {flags[-1]}")
    assert missing == []
