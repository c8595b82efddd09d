"""One machine, one journal: a second run is refused, a full disk is a clean stop.

The proofs run the real CLI in subprocesses against one emulator: two runs started at once on
one journal (the second refuses, nothing is billed twice), and a run whose files may not grow
past a limit (``RLIMIT_FSIZE``: writes fail with EFBIG, as on a full disk) followed by a
re-run that completes without creating any task twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import pickle
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest

from audioshake_async import AudioShake, JournalBusyError, JournalError, Target
from audioshake_async.batch import BatchEvent, BatchResult, FileWritten, OutputRecord, SqliteJournal
from audioshake_async.emulator import Emulator

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes and limits")

MakeWavs = Callable[..., list[pathlib.Path]]
TARGETS = [Target("vocals", ["wav"]), Target("drums", ["wav"])]
HOST = socket.gethostname()

#: Holds a journal open in another process until killed.
HOLDER = """
import sys, time
from audioshake_async.batch import SqliteJournal
journal = SqliteJournal(sys.argv[1])
print("ready", flush=True)
time.sleep(120)
"""


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lock_holder(journal: pathlib.Path) -> int:
    """The pid the journal's lock file names."""
    pid: int = json.loads(pathlib.Path(str(journal) + ".lock").read_text())["pid"]
    return pid


def cli(emulator: Emulator, inputs: pathlib.Path, out: pathlib.Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "audioshake_async",
        "run",
        str(inputs),
        "-m",
        "vocals",
        "-m",
        "drums",
        "-o",
        str(out),
        "--base-url",
        emulator.base_url,
        "--api-key",
        emulator.api_key,
        "--quiet",
        *extra,
    ]


def assert_exactly_once_and_byte_exact(emulator: Emulator, out: pathlib.Path, count: int) -> None:
    """One task per input, no token twice, every output as the emulator produced it."""
    stats = emulator.stats()
    assert stats["requests"]["POST /tasks"] == count, stats["requests"]
    assert stats["tasks_created"] == count
    assert stats["duplicate_metadata"] == {}
    tokens = [json.loads(t["metadata"])["client_token"] for t in emulator.tasks.values()]
    assert len(set(tokens)) == count
    for task_id, task in emulator.tasks.items():
        stem = pathlib.Path(json.loads(task["metadata"])["input"]).stem
        digests = emulator.output_digests(task_id)
        assert sorted(p.name for p in (out / stem).iterdir()) == sorted(digests)
        for name, digest in digests.items():
            assert sha256(out / stem / name) == digest, out / stem / name
    assert [p for p in out.rglob("*") if p.name.endswith(".part")] == []


# --------------------------------------------------------------------------- the lock


def test_a_second_opener_is_refused_naming_the_holder(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "j.sqlite"
    first = SqliteJournal(path)
    with pytest.raises(JournalBusyError) as refused:
        SqliteJournal(path)  # in this process too: the lock is per open, not per process
    assert (refused.value.pid, refused.value.host) == (os.getpid(), HOST)
    assert f"journal in use by pid {os.getpid()} on host {HOST}" in str(refused.value)
    assert refused.value.step == "open" and refused.value.path == str(path)
    lock_file = pathlib.Path(str(path) + ".lock")
    assert lock_holder(path) == os.getpid()
    first.close()
    assert not lock_file.exists()
    again = SqliteJournal(path)  # released on close
    again.close()


def test_journal_errors_survive_pickling() -> None:
    busy = pickle.loads(pickle.dumps(JournalBusyError("/j", pid=7, host="h", since="then")))
    assert (busy.pid, busy.host, busy.path, str(busy)) == (
        7,
        "h",
        "/j",
        "journal in use by pid 7 on host h since then: /j",
    )
    failed = pickle.loads(pickle.dumps(JournalError("x", step="finish", source="/a", path="/j")))
    assert (failed.step, failed.source, failed.path, str(failed)) == ("finish", "/a", "/j", "x")


async def test_a_killed_holder_blocks_no_one(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "j.sqlite"
    holder = await anyio.open_process([sys.executable, "-c", HOLDER, str(path)])
    try:
        assert holder.stdout is not None
        with anyio.fail_after(60):
            assert (await holder.stdout.receive()).startswith(b"ready")
        with pytest.raises(JournalBusyError) as refused:
            SqliteJournal(path)
        assert refused.value.pid == holder.pid
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
    # The killed holder's lock file is still there, naming it; it no longer means anything.
    assert lock_holder(path) == holder.pid
    journal = SqliteJournal(path)
    assert lock_holder(path) == os.getpid()
    journal.close()


async def test_run_batch_refuses_a_journal_in_use_before_any_request(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    inputs = make_wavs(3)
    path = tmp_path / "j.sqlite"
    refusals: list[JournalBusyError] = []

    def meanwhile(event: BatchEvent) -> None:
        # While a batch runs on the journal *object*, nobody else may open its file.
        if not refusals:
            try:
                SqliteJournal(path).close()
            except JournalBusyError as exc:
                refusals.append(exc)

    held = SqliteJournal(path)
    try:
        results = [
            r
            async for r in client.batch(
                inputs, targets=TARGETS, out_dir=tmp_path / "out", journal=held, progress=meanwhile
            )
        ]
        assert all(r.ok for r in results)
        assert refusals and refusals[0].pid == os.getpid()
        before = dict(emulator.stats()["requests"])
        with pytest.raises(JournalBusyError):
            async for _ in client.batch(
                inputs, targets=TARGETS, out_dir=tmp_path / "out2", journal=path
            ):
                pass
        assert emulator.stats()["requests"] == before  # refused before any request
    finally:
        held.close()


# --------------------------------------------------------------------------- failures


def test_sqlite_failures_are_journal_errors_naming_step_and_input(tmp_path: pathlib.Path) -> None:
    journal = SqliteJournal(tmp_path / "j.sqlite")
    journal.reset("/in/a.wav", "sig", 1, 2, None)
    journal._db.execute("PRAGMA query_only=1")  # every write now fails, as on a full disk
    with pytest.raises(JournalError) as failed:
        journal.record_output("/in/a.wav", "sig", OutputRecord("vocals.wav", 3, None))
    assert (failed.value.step, failed.value.source) == ("record_output", "/in/a.wav")
    assert isinstance(failed.value.__cause__, sqlite3.OperationalError)
    assert "journal record_output of /in/a.wav failed" in str(failed.value)
    assert journal.lookup("/in/a.wav", "sig") is not None  # reads still work
    journal.close()


async def test_a_failing_journal_stops_the_batch_cleanly_and_a_rerun_completes(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    inputs = make_wavs(12)
    out, path = tmp_path / "out", tmp_path / "j.sqlite"
    journal = SqliteJournal(path)
    written = 0

    def break_journal(event: BatchEvent) -> None:
        nonlocal written
        if isinstance(event, FileWritten):
            written += 1
            if written == 4:
                with journal._lock:
                    journal._db.execute("PRAGMA query_only=1")

    results: list[BatchResult] = []
    with pytest.raises(JournalError) as stopped:
        async for result in client.batch(
            inputs,
            targets=TARGETS,
            out_dir=out,
            journal=journal,
            progress=break_journal,
            max_in_flight=3,
        ):
            results.append(result)
    journal.close()
    assert stopped.value.step and stopped.value.source
    assert len(results) < len(inputs)  # no input admitted after the failure
    unfinished = [r for r in results if not r.ok]
    assert unfinished and all("the batch stopped" in (r.error or "") for r in unfinished)
    assert len({r.input for r in results}) == len(results)
    # Whatever is under a final name is complete.
    known = {d for task_id in emulator.tasks for d in emulator.output_digests(task_id).values()}
    for file in out.rglob("*.wav"):
        assert sha256(file) in known
    rerun = [r async for r in client.batch(inputs, targets=TARGETS, out_dir=out, journal=path)]
    assert sorted(r.input for r in rerun) == sorted(map(str, inputs))
    assert all(r.ok for r in rerun), [r.error for r in rerun if not r.ok]
    assert_exactly_once_and_byte_exact(emulator, out, len(inputs))


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec
        import resource

        # Ignored, SIGXFSZ would kill the process: writes past the limit fail with EFBIG.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


async def test_cli_on_a_full_disk_stops_with_its_summary_and_a_rerun_completes(
    emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    """No file of the run may grow past 512 KiB: the outputs fit, the journal's WAL does not
    (a whole run of 16 inputs needs 1 to 1.5 MB of WAL with SQLite 3.40)."""
    count = 24
    make_wavs(count)
    out = tmp_path / "out"
    argv = cli(emulator, tmp_path / "in", out, "--max-in-flight", "4")
    full = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            argv, capture_output=True, text=True, preexec_fn=_limit_file_size(512 << 10)
        )
    )
    assert full.returncode == 1, full.stderr[-3000:]
    stopped = [line for line in full.stderr.splitlines() if line.startswith("STOPPED: journal ")]
    assert len(stopped) == 1 and " of " in stopped[0] and "re-run" in stopped[0], full.stderr
    assert "Traceback" not in full.stderr
    summary = full.stdout.strip().splitlines()[-1]
    assert f" of {count} items" not in summary and "items done" in summary, summary
    assert emulator.stats()["requests"]["POST /tasks"] < count

    again = await anyio.run_process(argv, check=False)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    assert f"{count} of {count} items done, 0 failed" in again.stdout.decode()
    assert_exactly_once_and_byte_exact(emulator, out, count)


async def test_two_cli_runs_at_once_on_one_journal_never_bill_twice(
    emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    count = 24
    make_wavs(count)
    # Processing takes a while, so whichever run takes the journal still holds it when the
    # other one reaches it.
    emulator.configure(delay=3.0)
    out = tmp_path / "out"
    argv = cli(emulator, tmp_path / "in", out)
    runs = await anyio.to_thread.run_sync(
        lambda: [
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
    )
    try:
        ended = [
            await anyio.to_thread.run_sync(lambda p=p: p.communicate(timeout=120)) for p in runs
        ]
    finally:
        for run in runs:
            with contextlib.suppress(ProcessLookupError):
                run.kill()
    codes = [run.returncode for run in runs]
    assert sorted(codes) == [0, 2], (codes, [e[1][-2000:] for e in ended])
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    refusal = ended[loser][1].strip().splitlines()
    assert len(refusal) == 1, refusal
    assert f"journal in use by pid {runs[winner].pid} on host {HOST}" in refusal[0]
    assert f"{count} of {count} items done, 0 failed" in ended[winner][0]
    assert emulator.stats()["requests"]["GET /models"] == 1  # the refused run sent nothing
    assert_exactly_once_and_byte_exact(emulator, out, count)
    assert not (out / ".audioshake-journal.sqlite.lock").exists()
