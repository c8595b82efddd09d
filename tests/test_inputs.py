"""``expand_inputs``: order, exclusion, de-duplication, unreadable directories, stdin, threads."""

from __future__ import annotations

import io
import os
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from audioshake_async import AudioShake, Target
from audioshake_async.batch import inputs as inputs_module
from audioshake_async.batch import run_batch
from audioshake_async.batch.inputs import expand_inputs

from .conftest import write_wav


async def collect(*args: str, **kwargs: Any) -> list[str]:
    return [path async for path in expand_inputs(args, **kwargs)]


def touch(root: pathlib.Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


async def test_walk_is_sorted_depth_first_and_skips_hidden_others_and_excluded(
    tmp_path: pathlib.Path,
) -> None:
    touch(
        tmp_path,
        "b.wav",
        "a/z.mp3",
        "a/y.WAV",
        "c.txt",
        ".hidden.wav",
        ".cache/x.wav",
        "out/stem.wav",
    )
    found = await collect(str(tmp_path), exclude=[tmp_path / "out"])
    assert found == [str(tmp_path / n) for n in ("a/y.WAV", "a/z.mp3", "b.wav")]


async def test_same_path_given_twice_is_produced_once(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    touch(tmp_path, "d/x.wav", "d/y.wav", "z.wav")
    (tmp_path / "d" / "link.wav").symlink_to(tmp_path / "z.wav")
    monkeypatch.chdir(tmp_path)
    found = await collect(
        "d",
        "d/x.wav",
        "./d",
        "z.wav",
        str(tmp_path / "z.wav"),
        "https://h/a.wav",
        "https://h/a.wav",
    )
    # d/link.wav resolves to z.wav: reached first through the walk, so z.wav is a duplicate.
    assert found == ["d/link.wav", "d/x.wav", "d/y.wav", "https://h/a.wav"]
    # A file given before the directory holding it keeps its place; the walk skips it.
    assert await collect("d/y.wav", "d") == ["d/y.wav", "d/link.wav", "d/x.wav"]


async def test_unreadable_subdirectory_is_produced_and_the_walk_goes_on(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    touch(tmp_path, "a/1.wav", "locked/2.wav", "z/3.wav")
    locked = str(tmp_path / "locked")
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        # chmod does not stop root: refuse the listing the way the kernel would. os.scandir
        # is shared with everything else (an fd, a path): only this one is refused.
        if path == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)

    monkeypatch.setattr(inputs_module.os, "scandir", scandir)
    reported: list[tuple[str, str | None]] = []
    found = await collect(
        str(tmp_path), on_unreadable=lambda path, exc: reported.append((path, exc.strerror))
    )
    assert found == [str(tmp_path / "a" / "1.wav"), locked, str(tmp_path / "z" / "3.wav")]
    assert reported == [(locked, "Permission denied")]


async def test_unreadable_directory_becomes_a_failed_item(
    client: AudioShake, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_wav(tmp_path / "in" / "good.wav")
    (tmp_path / "in" / "locked").mkdir()
    locked = str(tmp_path / "in" / "locked")
    real_list_dir = inputs_module._list_dir

    def list_dir(path: str, extensions: frozenset[str]) -> Any:
        if path == locked:
            raise PermissionError(13, "Permission denied", path)
        return real_list_dir(path, extensions)

    monkeypatch.setattr(inputs_module, "_list_dir", list_dir)
    results = {
        r.input: r
        async for r in run_batch(
            client,
            expand_inputs([str(tmp_path / "in")]),
            targets=[Target("vocals", ("wav",))],
            out_dir=tmp_path / "out",
        )
    }
    assert results[str(tmp_path / "in" / "good.wav")].status == "done"
    assert results[locked].status == "failed"
    assert "not a regular file" in (results[locked].error or "")


async def test_stdin_is_read_in_a_worker_thread_in_order(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    touch(tmp_path, "d/b.wav", "d/a.wav", "x.wav")
    loop_thread = threading.get_ident()
    readers: set[int] = set()

    class Stream(io.StringIO):
        def readline(self, size: int | None = -1) -> str:
            readers.add(threading.get_ident())
            return super().readline(size)

    text = f"# a comment\n\n{tmp_path / 'x.wav'}\n  {tmp_path / 'd'}  \n{tmp_path / 'x.wav'}\n"
    found = await collect("-", stdin=Stream(text))
    assert found == [str(tmp_path / n) for n in ("x.wav", "d/a.wav", "d/b.wav")]
    assert readers and loop_thread not in readers


async def test_a_pipe_hands_over_each_line_before_reading_the_next(
    tmp_path: pathlib.Path,
) -> None:
    touch(tmp_path, "1.wav", "2.wav")
    release = threading.Event()

    class Pipe(io.StringIO):
        """Blocks on the second line until the first path has reached the consumer."""

        lines_read = 0

        def seekable(self) -> bool:
            return False

        def readline(self, size: int | None = -1) -> str:
            self.lines_read += 1
            if self.lines_read == 2:
                assert release.wait(30), "the first path was held back"
            return super().readline(size)

    stream = Pipe(f"{tmp_path / '1.wav'}\n{tmp_path / '2.wav'}\n")
    found: list[str] = []
    async for path in expand_inputs(["-"], stream):
        found.append(path)
        release.set()
    assert found == [str(tmp_path / "1.wav"), str(tmp_path / "2.wav")]


async def test_directory_listing_runs_off_the_event_loop(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    touch(tmp_path, *(f"t{i:04d}.wav" for i in range(600)))
    loop_thread = threading.get_ident()
    listers: set[int] = set()
    real_scandir = os.scandir

    def scandir(path: Any) -> Iterator[os.DirEntry[str]]:
        if path == str(tmp_path):  # os.scandir is shared: note only this walk
            listers.add(threading.get_ident())
        return real_scandir(path)

    monkeypatch.setattr(inputs_module.os, "scandir", scandir)
    found = await collect(str(tmp_path))
    assert found == [str(tmp_path / f"t{i:04d}.wav") for i in range(600)]
    assert listers and loop_thread not in listers


async def test_closing_early_is_clean(tmp_path: pathlib.Path) -> None:
    touch(tmp_path, *(f"t{i:04d}.wav" for i in range(600)))
    stream = expand_inputs([str(tmp_path)])
    first = await stream.__anext__()
    await stream.aclose()
    assert first == str(tmp_path / "t0000.wav")
