"""s3:// catalogs end to end: a bucket of inputs to a bucket of stems, against the emulator and
a real S3-compatible server (moto's) on loopback. Inputs go to the service as presigned URLs
(never uploaded: no POST /assets), outputs stream into multipart uploads."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys

import anyio
import pytest

from audioshake_async import AudioShake, Target
from audioshake_async.batch import BatchResult
from audioshake_async.emulator import Emulator

from ._s3 import S3Server
from .conftest import fast_client, write_wav

TARGETS = [Target("vocals", ["wav"]), Target("drums", ["wav"])]
#: Every SigV4 presigned URL carries it; finding it anywhere means the credential leaked.
SIGNATURE = "X-Amz-Signature"
EMULATOR_LOGGER = "audioshake_async.emulator"


def put_catalog(s3: S3Server, bucket: str, count: int, tmp: pathlib.Path, prefix: str) -> None:
    """``count`` distinct small WAVs under ``prefix`` (plus a file that is not audio)."""
    for i in range(count):
        path = tmp / f"src{i}.wav"
        write_wav(path, seed=i)
        s3.put(bucket, f"{prefix}track{i:04d}.wav", path.read_bytes())
    s3.put(bucket, f"{prefix}notes.txt", b"not audio")


async def collect(
    client: AudioShake, inputs: object, out: str, **kwargs: object
) -> list[BatchResult]:
    results = []
    async for result in client.batch(inputs, targets=TARGETS, out_dir=out, **kwargs):  # type: ignore[arg-type]
        results.append(result)
    return results


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_stems_in_bucket(
    emulator: Emulator, s3: S3Server, bucket: str, prefix: str, results: list[BatchResult]
) -> None:
    """Every output of every task is in the bucket under <prefix>/<stem>/, byte-exact."""
    for result in results:
        assert result.task is not None, result
        stem = result.input.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        digests = emulator.output_digests(result.task.id)
        base = f"{prefix}/{stem}" if prefix else stem
        assert sorted(result.locations) == sorted(f"s3://{bucket}/{base}/{n}" for n in digests)
        for name, digest in digests.items():
            assert sha256(s3.get(bucket, f"{base}/{name}")) == digest, (stem, name)


def journal_bytes(path: pathlib.Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


async def test_a_bucket_to_bucket_batch_with_faults_is_exact_and_leaks_no_signature(
    emulator: Emulator, s3: S3Server, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """110 objects with 5% 5xx, dropped create answers and 5% truncated downloads: every
    output byte-exact in the stems bucket, no task twice, no upload, no incomplete multipart
    upload, and the presigned URLs nowhere in the logs, the results or the journal."""
    count = 110
    src, dst = s3.bucket("catalog"), s3.bucket("stems")
    put_catalog(s3, src, count, tmp_path, "music/")
    emulator.configure(
        delay=0.05,
        jitter=0.05,
        fail_rate=0.05,
        drop_after_create_rate=0.02,
        drop_after_create=3,
        truncate_rate=0.05,
    )
    caplog.set_level(logging.DEBUG)
    journal = tmp_path / "j.sqlite"
    async with fast_client(emulator) as client:
        results = await collect(
            client, [f"s3://{src}/music/"], f"s3://{dst}/stems", journal=journal
        )
    assert [r for r in results if not r.ok] == []
    assert sorted(r.input for r in results) == [
        f"s3://{src}/music/track{i:04d}.wav" for i in range(count)
    ]
    assert_stems_in_bucket(emulator, s3, dst, "stems", results)
    stats = emulator.stats()
    assert stats["tasks_created"] == count
    assert stats["duplicate_metadata"] == {}
    assert stats["requests"].get("POST /assets", 0) == 0
    for kind in ("fail", "drop_after_create", "truncate"):
        assert stats["faults"][kind] > 0, (kind, stats["faults"])
    assert s3.incomplete_uploads(dst) == []
    # The service got presigned URLs; the task metadata names the s3:// URI instead.
    for task_id in emulator.tasks:
        task = emulator.task(task_id)
        assert SIGNATURE in task["url"]
        assert json.loads(task["metadata"])["input"].startswith(f"s3://{src}/music/")
    # The client's own logs (the S3 server's and the emulator's are the far side's business).
    ours = [
        r.getMessage()
        for r in caplog.records
        if r.name.split(".")[0] == "audioshake_async" and not r.name.startswith(EMULATOR_LOGGER)
    ]
    assert ours and not [line for line in ours if SIGNATURE in line]
    assert SIGNATURE not in repr(results)
    assert SIGNATURE.encode() not in journal_bytes(journal)

    # A rerun finds everything done: one HEAD per output, no task, nothing fetched again.
    cdn_before = emulator.stats()["cdn_requests"]
    async with fast_client(emulator) as client:
        again = await collect(client, [f"s3://{src}/music/"], f"s3://{dst}/stems", journal=journal)
    assert {r.status for r in again} == {"skipped"} and len(again) == count
    assert emulator.stats()["tasks_created"] == count
    assert emulator.stats()["cdn_requests"] == cdn_before


async def test_a_changed_object_is_processed_again_and_a_lost_stem_written_again(
    emulator: Emulator, s3: S3Server, tmp_path: pathlib.Path
) -> None:
    src, dst = s3.bucket("in"), s3.bucket("out")
    put_catalog(s3, src, 3, tmp_path, "")
    journal = tmp_path / "j.sqlite"
    inputs = [f"s3://{src}/"]
    async with fast_client(emulator) as client:
        first = await collect(client, inputs, f"s3://{dst}", journal=journal)
        assert all(r.status == "done" for r in first)
        changed = tmp_path / "changed.wav"
        write_wav(changed, seed=99)
        s3.put(src, "track0001.wav", changed.read_bytes())  # a new ETag
        s3.client.delete_object(Bucket=dst, Key="track0002/drums.wav")
        second = await collect(client, inputs, f"s3://{dst}", journal=journal)
    status = {r.input.rsplit("/", 1)[-1]: r.status for r in second}
    assert status == {"track0000.wav": "skipped", "track0001.wav": "done", "track0002.wav": "done"}
    # The changed object got a new task; the lost stem was downloaded again from its old task.
    assert emulator.stats()["tasks_created"] == 4
    assert_stems_in_bucket(emulator, s3, dst, "", [r for r in second if r.status == "done"])


async def test_single_objects_and_bad_inputs_fail_alone_before_any_request(
    emulator: Emulator, s3: S3Server, tmp_path: pathlib.Path
) -> None:
    src, dst = s3.bucket("in"), s3.bucket("out")
    put_catalog(s3, src, 1, tmp_path, "a/")
    s3.put(src, "a/empty.wav", b"")
    inputs = [
        f"s3://{src}/a/track0000.wav",
        f"s3://{src}/a/notes.txt",
        f"s3://{src}/a/missing.wav",
        f"s3://{src}/a/empty.wav",
    ]
    async with fast_client(emulator) as client:
        results = await collect(client, inputs, f"s3://{dst}/x/", journal=tmp_path / "j.sqlite")
    by_name = {r.input.rsplit("/", 1)[-1]: r for r in results}
    assert by_name["track0000.wav"].status == "done"
    assert "not an input type" in (by_name["notes.txt"].error or "")
    assert "no such object" in (by_name["missing.wav"].error or "")
    assert "empty" in (by_name["empty.wav"].error or "")
    assert emulator.stats()["tasks_created"] == 1
    assert s3.keys(dst) == ["x/track0000/drums.wav", "x/track0000/vocals.wav"]


def cli(s3: S3Server, emulator: Emulator, *args: str) -> tuple[list[str], dict[str, str]]:
    argv = [
        sys.executable,
        "-m",
        "audioshake_async",
        "run",
        *args,
        "-m",
        "vocals",
        "-m",
        "drums",
        "--base-url",
        emulator.base_url,
        "--api-key",
        emulator.api_key,
        "--s3-endpoint",
        s3.endpoint,
        "--rate-limit",
        "2000",
        "--quiet",
    ]
    env = {**os.environ, **s3.environment()}
    env.pop("AWS_ENDPOINT_URL", None)  # the flag alone points at the server
    return argv, env


async def test_sigkill_mid_batch_then_rerun_completes_without_duplicates(
    emulator: Emulator, s3: S3Server, tmp_path: pathlib.Path
) -> None:
    count = 24
    src, dst = s3.bucket("in"), s3.bucket("out")
    put_catalog(s3, src, count, tmp_path, "cat/")
    # Completions spread over ~3 s: the kill lands with most stems still to come.
    emulator.configure(delay=0.2, jitter=3.0)
    journal = tmp_path / "j.sqlite"
    argv, env = cli(
        s3, emulator, f"s3://{src}/cat/", "-o", f"s3://{dst}/stems", "--journal", str(journal)
    )
    child = await anyio.open_process(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with anyio.fail_after(60):
        while len(s3.keys(dst)) < 6:  # noqa: ASYNC110 (polling another process's bucket)
            await anyio.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    await child.wait()
    assert child.returncode == -signal.SIGKILL
    assert len(s3.keys(dst)) < 2 * count  # killed mid-batch, not after it
    # Whatever is under a final key is whole (a multipart upload completes atomically).
    known = {d for task_id in emulator.tasks for d in emulator.output_digests(task_id).values()}
    for key in s3.keys(dst):
        assert sha256(s3.get(dst, key)) in known, key

    rerun = await anyio.run_process([*argv, "--json"], env=env, check=False)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    summary = json.loads(rerun.stdout)
    assert summary["done"] + summary["skipped"] == count and summary["failed"] == 0
    assert summary["api_requests"].get("POST /assets", 0) == 0
    assert SIGNATURE not in rerun.stdout.decode() + rerun.stderr.decode()
    stats = emulator.stats()
    assert stats["duplicate_metadata"] == {}
    assert stats["tasks_created"] == count
    for task_id in emulator.tasks:
        stem = json.loads(emulator.task(task_id)["metadata"])["input"].rsplit("/", 1)[-1][:-4]
        for name, digest in emulator.output_digests(task_id).items():
            assert sha256(s3.get(dst, f"stems/{stem}/{name}")) == digest
    # Outputs shorter than a part go up in one PUT: even the kill left no incomplete upload.
    assert s3.incomplete_uploads(dst) == []


def test_the_cli_wants_a_local_journal_for_an_s3_output() -> None:
    from audioshake_async.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = ["run", "--emulator", "s3://bkt/in/", "-m", "vocals", "-o", "s3://bkt/out"]
    assert main(argv, stdout=out, stderr=err) == 2
    assert "--journal" in err.getvalue()
    bad = ["run", "--emulator", "x.wav", "-m", "vocals", "-o", "s3://b/o", "--no-journal"]
    assert main([*bad, "--s3-endpoint", "localhost:9000"], stdout=out, stderr=err) == 2
    assert "endpoint must be an http(s) URL" in err.getvalue()


async def test_postgres_workers_take_a_bucket_to_a_bucket(
    emulator: Emulator, s3: S3Server, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> None:
    """``submit`` lists the s3:// prefix once and stores the endpoint with the batch; two
    ``worker`` processes (no endpoint of their own) write every stem into the bucket."""
    pytest.importorskip("psycopg")
    dsn = request.getfixturevalue("pg_dsn")
    count = 8
    src, dst = s3.bucket("in"), s3.bucket("out")
    put_catalog(s3, src, count, tmp_path, "cat/")
    submit, env = cli(s3, emulator, f"s3://{src}/cat/", "-o", f"s3://{dst}/stems", "--journal", dsn)
    submit[submit.index("run")] = "submit"
    submit = [a for a in submit if a != "--quiet"] + ["--batch", "cat"]
    done = await anyio.run_process(submit, env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert f"{count} new input(s)".encode() in done.stderr  # notes.txt is not an input
    worker = [
        *submit[: submit.index("submit")],
        *("worker", "--journal", dsn, "--batch", "cat"),
        *("--api-key", emulator.api_key, "--base-url", emulator.base_url, "--quiet", "--json"),
    ]
    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            runs: list[subprocess.CompletedProcess[bytes]] = []

            async def one() -> None:
                runs.append(await anyio.run_process(worker, env=env, check=False))

            group.start_soon(one)
            group.start_soon(one)
    assert [r.returncode for r in runs] == [0, 0], [r.stderr.decode()[-1500:] for r in runs]
    assert sum(json.loads(r.stdout)["done"] for r in runs) == count
    stats = emulator.stats()
    assert stats["tasks_created"] == count and stats["duplicate_metadata"] == {}
    assert stats["requests"].get("POST /assets", 0) == 0
    for task_id in emulator.tasks:
        stem = json.loads(emulator.task(task_id)["metadata"])["input"].rsplit("/", 1)[-1][:-4]
        for name, digest in emulator.output_digests(task_id).items():
            assert sha256(s3.get(dst, f"stems/{stem}/{name}")) == digest
    assert len(s3.keys(dst)) == 2 * count
    assert s3.incomplete_uploads(dst) == []
    assert not any(SIGNATURE in r.stdout.decode() + r.stderr.decode() for r in runs)
