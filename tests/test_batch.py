"""The batch engine against the emulator over real loopback HTTP."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator

import anyio
import pytest

from audioshake_async import AudioShake, Target, ValidationError
from audioshake_async.batch import (
    BatchEvent,
    BatchResult,
    FileWritten,
    FlowUpdate,
    ItemDone,
    ItemFailed,
    SqliteJournal,
    TargetDone,
    TaskCreated,
    Uploaded,
    targets_signature,
)
from audioshake_async.emulator import Emulator

from .conftest import FAST_RETRY, fast_client, write_wav

TARGETS = [Target("vocals", ["wav"]), Target("drums", ["wav"])]
MakeWavs = Callable[..., list[pathlib.Path]]


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def collect(
    client: AudioShake, inputs: object, out: pathlib.Path, **kwargs: object
) -> list[BatchResult]:
    results = []
    async for result in client.batch(
        inputs,
        targets=kwargs.pop("targets", TARGETS),  # type: ignore[arg-type]
        out_dir=out,
        **kwargs,
    ):  # type: ignore[arg-type]
        results.append(result)
    return results


def assert_outputs_match(emulator: Emulator, results: list[BatchResult]) -> None:
    """Every file of every result is byte-exact to what the emulator produced."""
    for result in results:
        assert result.task is not None, result
        digests = emulator.output_digests(result.task.id)
        assert sorted(p.name for p in result.files) == sorted(digests), result
        for path in result.files:
            assert path.parent == result.directory
            assert sha256(path) == digests[path.name], path


def write_journal(
    path: pathlib.Path, source: pathlib.Path, asset_id: str, *, token: str | None = None
) -> None:
    """A journal as an earlier run left it: the asset uploaded, and the create intent if given."""
    journal = SqliteJournal(path)
    stat = source.stat()
    signature = targets_signature(TARGETS)
    journal.reset(str(source), signature, stat.st_size, stat.st_mtime_ns, sha256(source))
    journal.record_asset(str(source), signature, asset_id, time.time(), None)
    if token is not None:
        journal.record_intent(str(source), signature, token)
    journal.close()


def final_files(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


async def test_batch_writes_every_stem_byte_exact(
    emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    inputs = make_wavs(6)
    # The default polling schedule: the first look comes after processing (instant here).
    async with AudioShake(emulator.api_key, emulator.base_url, retry=FAST_RETRY) as client:
        results = await collect(client, inputs, tmp_path / "out", journal=tmp_path / "j.sqlite")
    assert sorted(r.input for r in results) == sorted(map(str, inputs))
    assert all(r.status == "done" for r in results), results
    assert_outputs_match(emulator, results)
    for result in results:
        assert result.directory == tmp_path / "out" / pathlib.Path(result.input).stem
        assert {p.name for p in result.files} == {"vocals.wav", "drums.wav"}
    counts = client.request_counts
    assert counts["POST /assets"] == 6
    assert counts["POST /tasks"] == 6
    # One upload, one create, at most two polls and one download per output, per item.
    assert counts.get("GET /tasks/{id}", 0) + counts.get("GET /tasks", 0) <= 12
    assert counts["GET <download>"] == 12
    assert not list((tmp_path / "out").rglob(".*.part"))


async def test_inputs_with_the_same_stem_get_their_own_directories(
    client: AudioShake, tmp_path: pathlib.Path
) -> None:
    first, second = tmp_path / "a" / "song.wav", tmp_path / "b" / "song.wav"
    write_wav(first, seed=1)
    write_wav(second, seed=2)
    results = await collect(client, [first, second], tmp_path / "out")
    directories = {r.directory for r in results}
    assert directories == {tmp_path / "out" / "song", tmp_path / "out" / "song-2"}
    vocals = {sha256(d / "vocals.wav") for d in directories if d is not None}
    assert len(vocals) == 2, "one input overwrote the other"


async def test_rerun_skips_finished_items_without_new_requests(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    inputs = make_wavs(4)
    journal = tmp_path / "j.sqlite"
    await collect(client, inputs, tmp_path / "out", journal=journal)
    before = emulator.stats()
    again = await collect(client, inputs, tmp_path / "out", journal=journal)
    after = emulator.stats()
    assert [r.status for r in again] == ["skipped"] * 4
    assert after["tasks_created"] == before["tasks_created"] == 4
    assert after["assets_created"] == before["assets_created"] == 4
    assert {p.name for p in again[0].files} == {"vocals.wav", "drums.wav"}


async def test_missing_output_file_is_downloaded_again_without_new_task(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    inputs = make_wavs(2)
    journal = tmp_path / "j.sqlite"
    first = await collect(client, inputs, tmp_path / "out", journal=journal)
    lost = first[0].files[0]
    lost.unlink()
    again = await collect(client, inputs, tmp_path / "out", journal=journal)
    statuses = Counter(r.status for r in again)
    assert statuses == {"done": 1, "skipped": 1}
    assert lost.exists()
    assert emulator.stats()["tasks_created"] == 2
    assert_outputs_match(emulator, [r for r in again if r.status == "done"])


async def test_changed_input_is_processed_again(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    inputs = make_wavs(3)
    journal = tmp_path / "j.sqlite"
    await collect(client, inputs, tmp_path / "out", journal=journal)
    write_wav(inputs[1], seed=99, seconds=0.3)
    os.utime(inputs[2])  # touched, same content: not new work
    again = await collect(client, inputs, tmp_path / "out", journal=journal)
    by_input = {r.input: r.status for r in again}
    assert by_input == {
        str(inputs[0]): "skipped",
        str(inputs[1]): "done",
        str(inputs[2]): "skipped",
    }
    assert emulator.stats()["tasks_created"] == 4


async def test_failed_items_are_reported_and_never_stop_the_batch(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    good = make_wavs(3)
    missing = tmp_path / "in" / "missing.wav"
    unsupported = tmp_path / "in" / "notes.ogg"
    unsupported.write_bytes(b"OggS" + b"\0" * 100)
    empty = tmp_path / "in" / "empty.wav"
    empty.write_bytes(b"")
    events: list[BatchEvent] = []
    results = await collect(
        client,
        [good[0], missing, unsupported, good[1], empty, good[2]],
        tmp_path / "out",
        progress=events.append,
    )
    by_input = {pathlib.Path(r.input).name: r for r in results}
    assert len(results) == 6
    assert {n for n, r in by_input.items() if r.ok} == {p.name for p in good}
    assert "does not exist" in (by_input["missing.wav"].error or "")
    assert "unsupported file type" in (by_input["notes.ogg"].error or "")
    assert "empty" in (by_input["empty.wav"].error or "")
    failed_events = [e for e in events if isinstance(e, ItemFailed)]
    assert sorted(pathlib.Path(e.input).name for e in failed_events) == sorted(
        ["missing.wav", "notes.ogg", "empty.wav"]
    )
    assert emulator.stats()["tasks_created"] == 3


async def test_target_errors_fail_the_item_but_keep_completed_stems(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    emulator.configure(error_models=["drums"])
    results = await collect(client, make_wavs(2), tmp_path / "out")
    for result in results:
        assert result.status == "failed"
        assert "target drums failed" in (result.error or "")
        assert [p.name for p in result.files] == ["vocals.wav"]
        assert result.files[0].exists()


async def test_url_inputs_go_straight_to_task_creation(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    (source,) = make_wavs(1)
    asset = await client.assets.upload(source)
    assert asset.link is not None
    results = await collect(client, [asset.link], tmp_path / "out")
    assert results[0].status == "done", results[0]
    assert client.request_counts["POST /assets"] == 1  # only the setup upload
    assert_outputs_match(emulator, results)


async def test_events_describe_each_item(
    client: AudioShake, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    events: list[BatchEvent] = []
    (source,) = make_wavs(1)
    await collect(client, [source], tmp_path / "out", progress=events.append)
    kinds = [type(e) for e in events if not isinstance(e, FlowUpdate)]
    assert kinds.index(Uploaded) < kinds.index(TaskCreated) < kinds.index(TargetDone)
    assert kinds.index(TargetDone) < kinds.index(FileWritten) < kinds.index(ItemDone)
    assert kinds.count(FileWritten) == 2 and kinds[-1] is ItemDone
    # The run ends with its budget figures: one upload, one create, at least one refresh.
    final = events[-1]
    assert isinstance(final, FlowUpdate) and final.final
    assert (final.upload_requests, final.create_requests) == (1, 1)
    assert final.poll_requests >= 1 and final.processing_time is not None
    assert {e.model for e in events if isinstance(e, TargetDone)} == {"vocals", "drums"}


async def test_bad_targets_are_rejected_before_any_request(
    client: AudioShake, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    too_many = [Target(f"m{i}", ["wav"]) for i in range(21)]
    with pytest.raises(ValidationError, match="at most 20"):
        await collect(client, make_wavs(1), tmp_path / "out", targets=too_many)
    with pytest.raises(ValidationError, match="at least one target"):
        await collect(client, make_wavs(1), tmp_path / "out", targets=[])
    assert client.request_counts == {}


async def test_task_timeout_fails_the_item(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    emulator.configure(delay=30.0)
    results = await collect(client, make_wavs(2), tmp_path / "out", task_timeout=0.3)
    assert [r.status for r in results] == ["failed", "failed"]
    assert all("not done after" in (r.error or "") for r in results)


async def test_many_tasks_in_flight_are_refreshed_by_list_pages(
    emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    emulator.configure(delay=0.5)
    inputs = make_wavs(150)
    async with fast_client(
        emulator, rate_limit=5000.0, initial_interval=0.3, max_interval=0.5
    ) as fast:
        results = await collect(
            fast,
            inputs,
            tmp_path / "out",
            upload_concurrency=16,
            create_concurrency=16,
            download_concurrency=16,
        )
        counts = fast.request_counts
    assert all(r.ok for r in results)
    polls = counts.get("GET /tasks/{id}", 0) + counts.get("GET /tasks", 0)
    assert counts.get("GET /tasks", 0) > 0, counts
    assert polls < len(inputs), counts


async def test_early_break_cancels_cleanly_and_a_rerun_completes(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    inputs = make_wavs(12)
    journal = tmp_path / "j.sqlite"
    emulator.configure(delay=0.05)
    batch = client.batch(
        inputs, targets=TARGETS, out_dir=tmp_path / "out", journal=journal, upload_concurrency=2
    )
    async with contextlib.aclosing(batch):
        async for _ in batch:
            break
    for path in final_files(tmp_path / "out"):
        assert path.suffix == ".wav" and path.stat().st_size > 44
    rerun = await collect(client, inputs, tmp_path / "out", journal=journal)
    assert all(r.ok for r in rerun)
    stats = emulator.stats()
    assert stats["duplicate_metadata"] == {}
    assert stats["tasks_created"] == 12
    assert_outputs_match(emulator, [r for r in rerun if r.status == "done"])


async def test_fresh_asset_from_the_journal_is_reused(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    (source,) = make_wavs(1)
    journal_path = tmp_path / "j.sqlite"
    asset = await client.assets.upload(source)
    write_journal(journal_path, source, asset.id)
    results = await collect(client, [source], tmp_path / "out", journal=journal_path)
    assert results[0].status == "done"
    assert emulator.stats()["assets_created"] == 1
    assert results[0].task is not None and results[0].task.asset_id == asset.id


async def test_expired_asset_is_uploaded_again_once(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    (source,) = make_wavs(1)
    journal_path = tmp_path / "j.sqlite"
    asset = await client.assets.upload(source)
    emulator.expire_assets()
    write_journal(journal_path, source, asset.id)
    results = await collect(client, [source], tmp_path / "out", journal=journal_path)
    assert results[0].status == "done", results[0]
    assert emulator.stats()["assets_created"] == 2


async def test_intent_from_a_crashed_run_adopts_the_existing_task(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    (source,) = make_wavs(1)
    journal_path = tmp_path / "j.sqlite"
    asset = await client.assets.upload(source)
    token = "0123456789abcdef0123456789abcdef"
    # The crashed run got as far as POST /tasks but never saved the task id.
    await client.tasks.create(
        asset_id=asset.id, targets=TARGETS, metadata=json.dumps({"client_token": token})
    )
    write_journal(journal_path, source, asset.id, token=token)
    events: list[BatchEvent] = []
    results = await collect(
        client, [source], tmp_path / "out", journal=journal_path, progress=events.append
    )
    assert results[0].status == "done"
    assert emulator.stats()["tasks_created"] == 1
    assert [e.recovered for e in events if isinstance(e, TaskCreated)] == [True]


async def test_faults_everywhere_still_complete_every_item_exactly_once(
    emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    """200 items with 5xx, 429 bursts, dropped connections (also after creation), truncated
    downloads, stale snapshots and expired links: every output present and byte-exact, no task
    created twice, no key ever sent to the CDN."""
    inputs = make_wavs(200)
    emulator.configure(
        delay=0.05,
        jitter=0.05,
        fail_rate=0.05,
        drop_rate=0.02,
        drop_after_create_rate=0.02,
        # At 2% alone, about one run in 60 met no ambiguous creation at all: the counter makes
        # sure the case is exercised, the rate spreads more of it over the run.
        drop_after_create=3,
        truncate_rate=0.05,
        stale_rate=0.1,
        rate_limit_burst=25,
    )
    written = 0

    def on_event(event: BatchEvent) -> None:
        # Every 25 files, every link issued so far dies (downloads queued or under way meet a
        # 403) and a new burst of 429s starts.
        nonlocal written
        if isinstance(event, FileWritten):
            written += 1
            if written % 25 == 0:
                emulator.expire_links()
                emulator.configure(rate_limit_burst=10)

    async with fast_client(
        emulator, rate_limit=3000.0, initial_interval=0.05, max_interval=0.3
    ) as faulty:
        results = await collect(
            faulty,
            inputs,
            tmp_path / "out",
            journal=tmp_path / "j.sqlite",
            progress=on_event,
            upload_concurrency=8,
            download_concurrency=16,
        )
    failed = [r for r in results if not r.ok]
    assert not failed, [(r.input, r.error) for r in failed[:3]]
    assert len(results) == 200
    assert_outputs_match(emulator, results)
    stats = emulator.stats()
    assert stats["tasks_created"] == 200
    assert stats["duplicate_metadata"] == {}
    assert stats["cdn_key_leaks"] == 0
    for kind in ("fail", "drop", "drop_after_create", "truncate", "stale", "rate_limit_burst"):
        assert stats["faults"][kind] > 0, (kind, stats["faults"])
    assert stats["cdn_denied"] > 0  # expired links were met and refreshed


CHILD = """
import asyncio, sys
from audioshake_async import AudioShake, PollPolicy, RetryPolicy, Target
async def main():
    base_url, key, out, journal, *inputs = sys.argv[1:]
    async with AudioShake(key, base_url, rate_limit=2000.0,
                          retry=RetryPolicy(base_delay=0.01, max_delay=0.05),
                          poll=PollPolicy(initial_interval=0.05, max_interval=0.2)) as client:
        async for result in client.batch(inputs, targets=[Target("vocals", ["wav"]),
                                         Target("drums", ["wav"])], out_dir=out,
                                         journal=journal, upload_concurrency=2):
            print(result.status, result.input, flush=True)
asyncio.run(main())
"""


async def test_sigkill_mid_batch_then_rerun_completes_without_duplicates(
    emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    inputs = [str(p) for p in make_wavs(30)]
    emulator.configure(delay=0.2, jitter=0.2)
    out, journal = tmp_path / "out", tmp_path / "j.sqlite"
    argv = [
        sys.executable,
        "-c",
        CHILD,
        emulator.base_url,
        emulator.api_key,
        str(out),
        str(journal),
        *inputs,
    ]
    child = await anyio.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finished = 0
    assert child.stdout is not None
    async with child.stdout:
        buffer = b""
        with anyio.fail_after(60):
            while finished < 8:
                buffer += await child.stdout.receive()
                finished = buffer.count(b"\n")
    child.send_signal(signal.SIGKILL)
    await child.wait()
    assert child.returncode == -signal.SIGKILL
    # Whatever is under a final name is complete (atomic renames).
    tasks = {t["id"]: t for t in emulator.tasks.values()}
    known = {d for task_id in tasks for d in emulator.output_digests(task_id).values()}
    for path in final_files(out):
        assert sha256(path) in known, f"partial or foreign file {path}"

    rerun = await anyio.run_process(argv[: -len(inputs)] + inputs, check=False)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    lines = rerun.stdout.decode().split()
    assert lines.count("done") + lines.count("skipped") == len(inputs)
    stats = emulator.stats()
    assert stats["duplicate_metadata"] == {}
    assert stats["tasks_created"] == len(inputs)
    assert stats["assets_created"] == len(inputs)
    for task_id in emulator.tasks:
        stem = pathlib.Path(json.loads(emulator.task(task_id)["metadata"])["input"]).stem
        for name, digest in emulator.output_digests(task_id).items():
            assert sha256(out / stem / name) == digest


# --- inputs listed twice, tasks gone, tasks unreadable, deep token searches --------------------


async def test_the_same_input_twice_is_processed_once(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    (source,) = make_wavs(1)
    results = await collect(client, [source, str(source)], tmp_path / "out")
    assert sorted(r.status for r in results) == ["done", "skipped"]
    skipped = next(r for r in results if r.status == "skipped")
    assert "already in this batch" in (skipped.error or "")
    assert emulator.stats()["tasks_created"] == 1
    assert [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".part")] == []


async def test_a_task_gone_from_the_service_is_created_again_on_resume(
    make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    """A rerun whose journal names tasks (and assets) the service no longer has recreates them."""
    inputs = make_wavs(2)
    out, journal = tmp_path / "out", tmp_path / "j.sqlite"
    async with (
        Emulator(delay=0.0, rate_limit=None, seed=1) as first,
        fast_client(first) as client,
    ):
        assert all(r.ok for r in await collect(client, inputs, out, journal=journal))
    (out / inputs[0].stem / "vocals.wav").unlink()  # the rerun has work left for item 0
    async with Emulator(delay=0.0, rate_limit=None, seed=2) as second:
        async with fast_client(second) as client:
            results = await collect(client, inputs, out, journal=journal)
        stats = second.stats()
    assert {pathlib.Path(r.input).name: r.status for r in results} == {
        inputs[0].name: "done",
        inputs[1].name: "skipped",
    }
    assert stats["tasks_created"] == 1 and stats["requests"]["POST /assets"] == 1
    assert (out / inputs[0].stem / "vocals.wav").stat().st_size > 44


async def test_a_task_that_cannot_be_read_fails_its_item_instead_of_waiting_forever(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    emulator.configure(delay=60.0, fail_rate=1.0, fault_routes=["GET /tasks/{id}", "GET /tasks"])
    with anyio.fail_after(60):
        results = await collect(
            client, make_wavs(1), tmp_path / "out", unreachable_timeout=0.5, list_refresh=False
        )
    assert results[0].status == "failed"
    assert "could not be read" in (results[0].error or "")


async def test_a_token_search_reaches_back_to_the_intent_time(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    """The crashed run's task sits below many newer tasks: found by age, not a page count."""
    (source,) = make_wavs(1)
    journal_path = tmp_path / "j.sqlite"
    asset = await client.assets.upload(source)
    token = "fedcba9876543210fedcba9876543210"
    write_journal(journal_path, source, asset.id, token=token)
    await client.tasks.create(
        asset_id=asset.id, targets=TARGETS, metadata=json.dumps({"client_token": token})
    )
    for _ in range(150):  # another user of the account, after the crash
        await client.tasks.create(asset_id=asset.id, targets=TARGETS[:1])
    results = await collect(
        client, [source], tmp_path / "out", journal=journal_path, reconcile_pages=1
    )
    assert results[0].status == "done"
    assert emulator.stats()["tasks_created"] == 151  # adopted, not created again


def test_journal_keys_keep_providers_apart() -> None:
    from audioshake_async.batch.engine import journal_key
    from audioshake_async.legacy import LegacyProvider
    from audioshake_async.musicai import MusicAIProvider
    from audioshake_async.tasks import AudioShakeProvider

    tasks_api, legacy, musicai = AudioShakeProvider, LegacyProvider, MusicAIProvider
    # The Tasks API keeps the bare signature: journals written before providers existed.
    assert journal_key(tasks_api, TARGETS) == targets_signature(TARGETS)  # type: ignore[arg-type]
    keys = {journal_key(p, TARGETS) for p in (tasks_api, legacy, musicai)}  # type: ignore[arg-type]
    assert len(keys) == 3


def test_a_completed_target_missing_a_format_is_a_problem() -> None:
    from audioshake_async import Output, TargetResult, Task
    from audioshake_async.batch.items import missing_formats as _missing_formats

    task = Task(
        "t",
        (
            TargetResult(
                "a", "vocals", "completed", ("wav", "mp3"), (Output("vocals", "wav", "x"),)
            ),
            TargetResult("b", "drums", "completed", ("wav",), ()),
            TargetResult("c", "bass", "error", ("wav",), ()),
            TargetResult("d", "stems", "completed", ("auto",), ()),
        ),
    )
    assert _missing_formats(task) == [
        "target vocals completed without its mp3 output",
        "target drums completed without its wav output",
    ]


def test_directory_names_for_many_inputs_with_one_stem(tmp_path: pathlib.Path) -> None:
    journal = SqliteJournal(tmp_path / "j.sqlite")
    names = [journal.claim_dir(f"/catalog/{i}/audio.wav", "audio") for i in range(3000)]
    assert len(set(names)) == 3000 and names[:3] == ["audio", "audio-2", "audio-3"]
    assert journal.claim_dir("/catalog/7/audio.wav", "audio") == names[7]  # stable
    assert journal.claim_dir("/other/audio-3.wav", "audio-3") == "audio-3-2"
    # The next suffix is remembered, so the 3001st name is found at the first try...
    (counter,) = journal._db.execute("SELECT next FROM stems WHERE stem='audio'").fetchone()
    assert counter == 3001
    # ...and a journal written before the counter existed still finds the first free name.
    journal._db.execute("DELETE FROM stems")
    assert journal.claim_dir("/catalog/new/audio.wav", "audio") == "audio-3001"
    assert journal.claim_dir("/catalog/newer/audio.wav", "audio") == "audio-3002"
    journal.close()


async def test_retry_failed_gives_a_failed_item_new_work_only_when_asked(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    (source,) = make_wavs(1)
    out, journal = tmp_path / "out", tmp_path / "j.sqlite"
    emulator.configure(error_models=["drums"])
    first = await collect(client, [source], out, journal=journal)
    assert first[0].status == "failed" and "drums" in (first[0].error or "")
    emulator.configure(error_models=[])
    # A plain rerun reads the failed task again: no new billing, the same failure.
    again = await collect(client, [source], out, journal=journal)
    assert again[0].status == "failed" and emulator.stats()["tasks_created"] == 1
    retried = await collect(client, [source], out, journal=journal, retry_failed=True)
    assert retried[0].status == "done", retried[0].error
    assert emulator.stats()["tasks_created"] == 2
    assert sorted(p.name for p in retried[0].files) == ["drums.wav", "vocals.wav"]


async def test_a_plain_generator_of_inputs_is_advanced_off_the_event_loop(
    client: AudioShake, emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    import threading

    loop_thread = threading.get_ident()
    threads: list[int] = []
    paths = make_wavs(3)

    def slow_source() -> Iterator[pathlib.Path]:  # stands for os.walk or a database cursor
        for path in paths:
            threads.append(threading.get_ident())
            yield path

    results = await collect(client, slow_source(), tmp_path / "out")
    assert sorted(r.status for r in results) == ["done"] * 3
    assert threads and loop_thread not in threads
