"""Part files: one per writer, locked while written; killed writers' orphans swept, live kept."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import anyio
import pytest

from audioshake_async.core.download import fetch_to_file
from audioshake_async.core.files import write_json_atomic
from audioshake_async.core.parts import ORPHAN_AGE, open_part, part_path_for, sweep_orphans
from audioshake_async.core.transport import Transport

from ._servers import API_KEY, Blob, FakeAPI, FakeCDN, base_url, serve

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX lock semantics")

#: A writer in another process: creates its part file, writes, says where, then waits.
WRITER = """
import sys, pathlib, time
from audioshake_async.core.parts import open_part, part_path_for
path = part_path_for(pathlib.Path(sys.argv[1]))
handle = open_part(path)
handle.write(b"half of it")
handle.flush()
print(path, flush=True)
time.sleep(120)
"""


def age(path: pathlib.Path) -> None:
    """Make ``path`` look untouched for longer than ORPHAN_AGE."""
    old = time.time() - ORPHAN_AGE - 5
    os.utime(path, (old, old))


def parts_in(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


def test_each_writer_gets_its_own_part_file(tmp_path: pathlib.Path) -> None:
    destination = tmp_path / "vocals.wav"
    first, second = part_path_for(destination), part_path_for(destination)
    assert first != second
    assert first.name.startswith(f".vocals.wav.{os.getpid()}-") and first.suffix == ".part"
    # Never opens a file another writer made.
    with open_part(first), pytest.raises(FileExistsError):
        open_part(first)


def test_sweep_removes_unheld_old_parts_only(tmp_path: pathlib.Path) -> None:
    destination = tmp_path / "vocals.wav"
    held_path = part_path_for(destination)
    held = open_part(held_path)  # a live writer (its own open file, so its own lock)
    orphan = tmp_path / ".vocals.wav.999999-0badcafe.part"
    other = tmp_path / ".drums.wav.999999-0badcafe.part"  # another output's: swept too
    legacy = tmp_path / ".vocals.wav.part"  # the old name shared by every writer
    fresh = tmp_path / ".vocals.wav.999999-00000000.part"  # just created: maybe not locked yet
    foreign = tmp_path / ".browser-download.part"  # not ours: never touched
    for path in (orphan, other, legacy, fresh, foreign):
        path.write_bytes(b"x")
    for path in (held_path, orphan, other, legacy, foreign):
        age(path)
    try:
        assert sweep_orphans(destination) == 3
        assert parts_in(tmp_path) == sorted([held_path.name, fresh.name, foreign.name])
    finally:
        held.close()
    # Closed (the writer finished or died): now it is an orphan too.
    assert sweep_orphans(destination) == 1
    assert parts_in(tmp_path) == sorted([fresh.name, foreign.name])


def test_json_sidecars_also_use_a_part_file_of_their_own(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "result.json"
    assert write_json_atomic(target, {"a": 1})[0] == len(target.read_bytes())
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


@pytest.fixture
async def transport() -> AsyncIterator[Transport]:
    api = FakeAPI()
    async with serve(api.app) as api_server:
        t = Transport(
            base_url=base_url(api_server), auth_headers={"x-api-key": API_KEY}, rate_limit=None
        )
        try:
            yield t
        finally:
            await t.aclose()


async def test_a_live_writer_of_the_same_output_is_left_alone_and_a_killed_ones_part_is_swept(
    transport: Transport, tmp_path: pathlib.Path
) -> None:
    destination = tmp_path / "out" / "vocals.wav"
    destination.parent.mkdir()
    cdn = FakeCDN()
    cdn.blobs["v"] = Blob(b"RIFF" + bytes(range(256)) * 64)
    child = await anyio.open_process(
        [sys.executable, "-c", WRITER, str(destination)], stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        with anyio.fail_after(60):
            line = b""
            while not line.endswith(b"\n"):
                line += await child.stdout.receive()
        theirs = pathlib.Path(line.decode().strip())
        age(theirs)
        dead = destination.with_name(".vocals.wav.999999-0badcafe.part")  # a killed run's
        await anyio.to_thread.run_sync(dead.write_bytes, b"half")
        age(dead)
        async with serve(cdn.app) as server:
            done = await fetch_to_file(transport, cdn.link(server, "v"), destination)
        assert done.path.read_bytes() == cdn.blobs["v"].data
        # The dead run's part is swept; the other process is still writing: its file stays,
        # however old.
        assert parts_in(destination.parent) == [theirs.name]
        child.send_signal(signal.SIGKILL)
        await child.wait()
        # Killed: the operating system released its lock, so the next sweep removes it.
        assert sweep_orphans(destination) == 1
        assert sorted(p.name for p in destination.parent.iterdir()) == ["vocals.wav"]
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
