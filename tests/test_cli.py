"""The ``audioshake-async`` command: the README's main job, exit codes, usage errors."""

from __future__ import annotations

import io
import json
import pathlib
import re
import subprocess
import sys
import wave
from typing import Any

import anyio
import pytest

from audioshake_async.batch import BatchResult
from audioshake_async.cli import RunSummary, main
from audioshake_async.emulator import Emulator

from .conftest import write_wav

ROOT = pathlib.Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "examples" / "audio"


def run_cli(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    if stdin is not None:
        original = sys.stdin
        sys.stdin = io.StringIO(stdin)
    try:
        status = main(list(argv), stdout=out, stderr=err)
    finally:
        if stdin is not None:
            sys.stdin = original
    return status, out.getvalue(), err.getvalue()


def run_emulated(
    *inputs: str | pathlib.Path,
    out: pathlib.Path,
    models: tuple[str, ...] = ("vocals",),
    flags: tuple[str, ...] = ("--quiet",),
    stdin: str | None = None,
) -> tuple[int, str, str]:
    """``run --emulator`` over ``inputs`` into ``out``, targets finishing at once."""
    argv = ["run", "--emulator", *map(str, inputs)]
    for model in models:
        argv += ["-m", model]
    return run_cli(*argv, "-o", str(out), "--emulator-delay", "0", *flags, stdin=stdin)


def frames(path: pathlib.Path) -> tuple[int, int, int]:
    with wave.open(str(path), "rb") as handle:
        return handle.getnframes(), handle.getframerate(), handle.getnchannels()


def test_main_job_writes_real_stems_for_the_sample_audio(tmp_path: pathlib.Path) -> None:
    samples = sorted(SAMPLES.glob("*.wav"))
    assert samples, "examples/audio holds the sample audio"
    status, out, err = run_emulated(
        SAMPLES, out=tmp_path / "stems", models=("vocals", "instrumental")
    )
    assert status == 0, err
    n = len(samples)
    assert f"{n} of {n} items finished: {n} done, 0 skipped, 0 failed" in out
    for sample in samples:
        for stem in ("vocals", "instrumental"):
            path = tmp_path / "stems" / sample.stem / f"{stem}.wav"
            assert frames(path) == frames(sample), path


def test_json_summary_and_resume(tmp_path: pathlib.Path) -> None:
    def run() -> tuple[int, str, str]:
        return run_emulated(SAMPLES, out=tmp_path / "o", models=("drums",), flags=("--json",))

    status, out, _ = run()
    summary = json.loads(out)
    assert status == 0
    assert summary["done"] == summary["items"] == len(list(SAMPLES.glob("*.wav")))
    assert summary["api_requests"]["POST /tasks"] == summary["items"]
    assert all(pathlib.Path(f).exists() for r in summary["results"] for f in r["files"])
    # The budget figures: the window, the time in flight, the shares of the budget.
    flow = summary["flow"]
    assert flow["create_share"] > 0 and flow["upload_share"] > 0 and flow["poll_share"] > 0
    assert flow["peak_window"] >= flow["peak_in_flight"] >= 1
    assert flow["processing_time_s"] is not None and flow["rate_per_s"] > 0
    # A second run against a new emulator: the journal says everything is done.
    status, out, _ = run()
    again = json.loads(out)
    assert status == 0 and again["skipped"] == again["items"]
    assert "POST /assets" not in again["api_requests"]


@pytest.mark.parametrize("json_summary", [False, True])
def test_a_failed_item_gives_exit_1_and_is_listed(
    tmp_path: pathlib.Path, json_summary: bool
) -> None:
    good = tmp_path / "in" / "good.wav"
    write_wav(good)
    bad = tmp_path / "in" / "bad.wav"
    bad.write_bytes(b"")
    flags = ("--quiet", "--json") if json_summary else ("--quiet",)
    status, out, err = run_emulated(good, bad, out=tmp_path / "o", flags=flags)
    assert status == 1
    if json_summary:
        summary = json.loads(out)
        assert (summary["done"], summary["failed"]) == (1, 1)
    else:
        assert "2 of 2 items finished: 1 done, 0 skipped, 1 failed" in out
    assert f"FAILED {bad}" in err and "empty" in err


def test_paths_from_stdin(tmp_path: pathlib.Path) -> None:
    paths = [tmp_path / f"s{i}.wav" for i in range(2)]
    for i, path in enumerate(paths):
        write_wav(path, seed=i)
    status, out, _ = run_emulated("-", out=tmp_path / "o", stdin="\n".join(map(str, paths)) + "\n")
    assert status == 0
    assert "2 of 2 items finished: 2 done" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-m", "vocals"], "no API key"),
        (["--emulator", "-m", "nonsense"], "unknown model 'nonsense'"),
        (["--emulator", "-m", "vocals", "-f", "docx"], "cannot output docx"),
        (["--emulator", "-m", "music_detection", "-f", "wav"], "cannot output wav"),
        (["--emulator", "-m", "multi_voice"], "needs access"),
        (["--emulator", *[a for i in range(21) for a in ("-m", f"m{i}")]], "at most 20"),
        (["--emulator"], "at least one model"),
        (["--emulator", "-m", "vocals", "--concurrency", "0"], "at least 1"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    monkeypatch.delenv("AUDIOSHAKE_API_KEY", raising=False)
    source = tmp_path / "in.wav"
    write_wav(source)
    status, _out, err = run_cli("run", str(source), "-o", str(tmp_path / "o"), *argv)
    assert status == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "in").exists()


def test_unusable_output_directory_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    status, _, err = run_cli(
        "run", "--emulator", str(blocker), "-m", "vocals", "-o", str(blocker / "out")
    )
    assert status == 2
    assert "cannot create output directory" in err


async def test_bad_model_is_refused_before_any_upload(
    emulator: Emulator, tmp_path: pathlib.Path
) -> None:
    source = tmp_path / "in.wav"
    write_wav(source)
    result = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "audioshake_async",
            "run",
            str(source),
            "-m",
            "nonsense",
            "-o",
            str(tmp_path / "o"),
            "--base-url",
            emulator.base_url,
            "--api-key",
            emulator.api_key,
        ],
        check=False,
    )
    assert result.returncode == 2
    assert b"unknown model" in result.stderr
    stats = emulator.stats()
    assert stats["assets_created"] == 0 and stats["tasks_created"] == 0
    assert stats["requests"] == {"GET /models": 1}


async def test_refused_key_is_a_usage_error(emulator: Emulator, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "in.wav"
    write_wav(source)
    result = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "audioshake_async",
            "run",
            str(source),
            "-m",
            "vocals",
            "-o",
            str(tmp_path / "o"),
            "--base-url",
            emulator.base_url,
            "--api-key",
            "wrong-key",
        ],
        check=False,
    )
    assert result.returncode == 2
    assert b"refused" in result.stderr and b"wrong-key" not in result.stderr


def test_module_entry_point_prints_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "audioshake_async", "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("audioshake-async ")


@pytest.mark.parametrize(
    ("argv", "message", "hint"),
    [
        (["run", "x.wav", "-m", "vocals"], "the following arguments are required: -o/--out", "run"),
        (["run", "x.wav", "-o", "o", "--concurrency", "many"], "invalid int value", "run"),
        (["run", "x.wav", "-o", "o", "--provider", "nope"], "invalid choice: 'nope'", "run"),
        (["frobnicate"], "invalid choice: 'frobnicate'", ""),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag", ""),
        ([], "give a command", ""),
    ],
)
def test_argument_errors_are_one_line_and_a_hint(argv: list[str], message: str, hint: str) -> None:
    status, out, err = run_cli(*argv)
    assert status == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("audioshake-async: error: ") and message in lines[0]
    assert lines[1] == f"try '{' '.join(['audioshake-async', hint]).strip()} --help'"


def test_the_same_input_twice_is_processed_once(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "in" / "a.wav"
    write_wav(source)
    write_wav(tmp_path / "in" / "b.wav", seed=1)
    status, out, err = run_emulated(
        tmp_path / "in", source, source, out=tmp_path / "o", flags=("--json",)
    )
    assert status == 0, err
    summary = json.loads(out)
    assert summary["items"] == 2 and summary["api_requests"]["POST /tasks"] == 2
    assert sorted(r["input"] for r in summary["results"]) == sorted(
        [str(source), str(tmp_path / "in" / "b.wav")]
    )


def test_unreadable_subdirectory_is_a_failed_item_with_its_reason(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audioshake_async.batch import inputs

    write_wav(tmp_path / "in" / "a" / "good.wav")
    write_wav(tmp_path / "in" / "z" / "also.wav", seed=1)
    locked = tmp_path / "in" / "locked"
    locked.mkdir()
    real_list_dir = inputs._list_dir

    def list_dir(path: str, extensions: frozenset[str]) -> Any:
        # chmod does not stop root: refuse the listing the way the kernel would.
        if path == str(locked):
            raise PermissionError(13, "Permission denied", path)
        return real_list_dir(path, extensions)

    monkeypatch.setattr(inputs, "_list_dir", list_dir)
    status, out, err = run_emulated(tmp_path / "in", out=tmp_path / "o")
    assert status == 1
    assert "3 of 3 items finished: 2 done, 0 skipped, 1 failed" in out
    assert f"FAILED {locked}: cannot read directory: Permission denied" in err
    assert "Traceback" not in err


def test_json_summary_is_plain_json_dumps_output() -> None:
    summary = RunSummary(keep_records=True)
    summary.add(BatchResult("a.wav", "done", None, (pathlib.Path("o/a/vocals.wav"),)))
    summary.add(BatchResult('we"ird\n.wav', "failed", None, (), "empty\nfile"))
    summary.add(BatchResult("b.wav", "skipped", None, (), None))
    stream = io.StringIO()
    summary.write_json(stream, {"POST /tasks": 2, "GET /models": 1})
    expected = {
        "items": 3,
        "done": 1,
        "skipped": 1,
        "failed": 1,
        "api_requests": {"GET /models": 1, "POST /tasks": 2},
        "results": [
            {
                "input": "a.wav",
                "status": "done",
                "task_id": None,
                "files": ["o/a/vocals.wav"],
                "error": None,
            },
            {
                "input": 'we"ird\n.wav',
                "status": "failed",
                "task_id": None,
                "files": [],
                "error": "empty\nfile",
            },
            {"input": "b.wav", "status": "skipped", "task_id": None, "files": [], "error": None},
        ],
    }
    assert stream.getvalue() == json.dumps(expected, indent=2) + "\n"
    empty = io.StringIO()
    RunSummary(keep_records=True).write_json(empty, {})
    assert (
        empty.getvalue()
        == json.dumps(
            {"items": 0, "done": 0, "skipped": 0, "failed": 0, "api_requests": {}, "results": []},
            indent=2,
        )
        + "\n"
    )
    # Without --json only the failures are kept, not a record per item.
    listing = RunSummary(keep_records=False)
    listing.add(BatchResult("a.wav", "done"))
    listing.add(BatchResult("b.wav", "failed", error="boom"))
    assert listing.records == [] and listing.failures == [("b.wav", "boom")]


def test_a_terminal_gets_the_live_progress_display(tmp_path: pathlib.Path) -> None:
    """stderr on a real pseudo-terminal: the rich live line, counting items and tasks."""
    import os
    import pty

    master, slave = pty.openpty()
    command = [sys.executable, "-m", "audioshake_async", "run", "--emulator", str(SAMPLES)]
    command += ["-m", "vocals", "-o", str(tmp_path / "stems"), "--emulator-delay", "0.3"]
    command += ["--debug"]
    env = {**os.environ, "COLUMNS": "200", "TERM": "xterm"}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    screen = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(master)
    assert child.wait(timeout=60) == 0
    assert child.stdout is not None
    child.stdout.close()
    text = screen.decode(errors="replace")
    samples = len(list(SAMPLES.glob("*.wav")))
    tail = text[-3000:]
    # One bar per phase, each counting items against the stable denominator.
    for phase in ("uploading", "processing", "downloading"):
        assert re.search(rf"{phase}\s.*{samples}/{samples}\b", text), (phase, tail)
    assert "tasks in flight" in text and "elapsed 0:00:" in text and "ETA" in text, tail
    assert re.search(r"\d+ files [\d.]+ (B|KiB|MiB)", text), tail
    # The summary line says what the display said.
    assert f"{samples} of {samples} items finished: {samples} done, 0 skipped" in text, tail
    assert "\x1b[" in text  # drawn as a live display, not printed as plain lines
    # --debug records are printed above the bars, never through a bar's line.
    logged = [line for line in text.splitlines() if "-> 200" in line]
    assert logged, tail
    assert all("━" not in line for line in logged), logged[:3]


def test_tasks_in_flight_count_resumed_and_recreated_tasks_once() -> None:
    from audioshake_async.batch import ItemDone, ItemFailed, TaskCreated
    from audioshake_async.cli import ProgressTracker

    tracker = ProgressTracker()
    tracker(TaskCreated("a.wav", "t1", resumed=True))  # from the journal of an earlier run
    tracker(TaskCreated("b.wav", "t2"))
    tracker(TaskCreated("a.wav", "t3"))  # t1 was gone: created again
    assert "2 tasks in flight" in tracker.line()
    tracker(ItemDone("a.wav", ()))
    tracker(ItemFailed("b.wav", "boom"))
    assert "0 tasks in flight" in tracker.line()
