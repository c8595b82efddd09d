"""``client.batch`` / ``run_batch`` as a library user calls them: typed options, checked at the
call, an AsyncGenerator for ``contextlib.aclosing``, the caller's own errors unwrapped."""

from __future__ import annotations

import contextlib
import inspect
import pathlib
import subprocess
import sys
import textwrap
import typing
from collections.abc import AsyncIterator, Callable

import attrs
import pytest

from audioshake_async import AudioShake, Target, ValidationError
from audioshake_async.batch import BatchOptions, BatchOptionValues, run_batch
from audioshake_async.emulator import Emulator

from .conftest import fast_client

TARGETS = [Target("vocals", ["wav"])]
MakeWavs = Callable[..., list[pathlib.Path]]


def test_typed_options_list_every_batch_option() -> None:
    # The TypedDict is written out for type checkers; it must not drift from the options.
    hints = typing.get_type_hints(BatchOptionValues)
    assert set(hints) == {field.name for field in attrs.fields(BatchOptions)}
    assert BatchOptionValues.__total__ is False


async def test_a_misspelt_option_fails_at_the_call(
    emulator: Emulator, tmp_path: pathlib.Path
) -> None:
    async with fast_client(emulator) as client:
        with pytest.raises(TypeError, match="concurrency"):
            client.batch([], targets=TARGETS, out_dir=tmp_path, concurrency=4)  # type: ignore[call-arg]
        with pytest.raises(ValidationError, match="upload_concurrency"):
            client.batch([], targets=TARGETS, out_dir=tmp_path, upload_concurrency=0)
        with pytest.raises(ValidationError):
            client.batch([], targets=[], out_dir=tmp_path)
    # Nothing was sent: every check ran before any request.
    assert sum(emulator.stats()["requests"].values()) == 0


async def test_batch_is_an_async_generator_for_aclosing(
    emulator: Emulator, tmp_path: pathlib.Path, make_wavs: MakeWavs
) -> None:
    paths = make_wavs(3)
    async with fast_client(emulator) as client:
        batch = client.batch(paths, targets=TARGETS, out_dir=tmp_path / "o", upload_concurrency=1)
        assert inspect.isasyncgen(batch)
        async with contextlib.aclosing(batch):
            async for result in batch:
                assert result.ok
                break
    assert not list((tmp_path / "o").rglob("*.part"))


async def test_the_callers_iterator_error_reaches_the_caller_as_itself(
    emulator: Emulator, tmp_path: pathlib.Path, make_wavs: MakeWavs
) -> None:
    (first,) = make_wavs(1)

    class CatalogBroken(Exception):
        pass

    async def inputs() -> AsyncIterator[pathlib.Path]:
        yield first
        raise CatalogBroken("the database went away")

    seen = []
    async with fast_client(emulator) as client:
        with pytest.raises(CatalogBroken, match="database went away"):
            async for result in client.batch(inputs(), targets=TARGETS, out_dir=tmp_path / "o"):
                seen.append(result)
    # The item given before the failure was finished, not abandoned after it was billed.
    assert [r.status for r in seen] == ["done"]


async def test_a_plain_iterators_error_is_unwrapped_too(
    emulator: Emulator, tmp_path: pathlib.Path
) -> None:
    # A plain iterable is advanced in a worker thread: its error must come back unwrapped too.
    class Broken(Exception):
        pass

    def inputs() -> typing.Iterator[str]:
        raise Broken("no catalog")
        yield ""  # pragma: no cover

    async with AudioShake(emulator.api_key, emulator.base_url, rate_limit=None) as client:
        with pytest.raises(Broken):
            async for _ in run_batch(client, inputs(), targets=TARGETS, out_dir=tmp_path):
                pass  # pragma: no cover


def test_mypy_refuses_a_misspelt_option_and_accepts_aclosing(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("mypy")
    program = tmp_path / "user_code.py"
    program.write_text(
        textwrap.dedent(
            """
            import contextlib
            from audioshake_async import AudioShake, Target

            async def good(client: AudioShake) -> None:
                batch = client.batch(["a.wav"], targets=[Target("vocals", ["wav"])],
                                     out_dir="o", upload_concurrency=2, retry_failed=True)
                async with contextlib.aclosing(batch) as results:
                    async for result in results:
                        print(result.status)

            def bad(client: AudioShake) -> None:
                client.batch(["a.wav"], targets=[], out_dir="o", concurrency=4)
                client.batch(["a.wav"], targets=[], out_dir="o", upload_concurrency="4")
            """
        )
    )
    found = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(program)],
        capture_output=True,
        text=True,
        cwd=pathlib.Path(__file__).resolve().parent.parent,
        check=False,
    )
    lines = [line for line in found.stdout.splitlines() if "error:" in line]
    assert any('Unexpected keyword argument "concurrency"' in line for line in lines), found.stdout
    assert any('"upload_concurrency"' in line and '"str"' in line for line in lines), found.stdout
    assert len(lines) == 2, found.stdout


async def test_download_reports_progress_per_file(
    emulator: Emulator, tmp_path: pathlib.Path
) -> None:
    from .conftest import write_wav

    write_wav(tmp_path / "in.wav", seconds=1.0)
    seen: dict[str, list[tuple[int, int | None]]] = {}
    async with fast_client(emulator) as client:
        asset = await client.assets.upload(tmp_path / "in.wav")
        task = await client.tasks.create(
            asset_id=asset.id, targets=[Target("vocals", ["wav"]), Target("drums", ["wav"])]
        )
        task = await client.tasks.wait(task.id)
        files = await client.download(
            task,
            tmp_path / "out",
            progress=lambda name, got, total: seen.setdefault(name, []).append((got, total)),
        )
    assert sorted(seen) == sorted(p.name for p in files) == ["drums.wav", "vocals.wav"]
    for path in files:
        calls = seen[path.name]
        size = path.stat().st_size
        assert calls[-1] == (size, size), calls[-3:]
        assert [got for got, _ in calls] == sorted(got for got, _ in calls)


async def test_events_carry_a_timestamp_and_failures_their_error_class(
    emulator: Emulator, tmp_path: pathlib.Path, make_wavs: MakeWavs
) -> None:
    import time

    from audioshake_async.batch import BatchEvent, ItemFailed, ItemQueued

    (good,) = make_wavs(1)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    events: list[BatchEvent] = []
    started = time.time()
    async with fast_client(emulator) as client:
        async for _ in client.batch(
            [good, empty], targets=TARGETS, out_dir=tmp_path / "o", progress=events.append
        ):
            pass
    assert all(started <= event.at <= time.time() for event in events)
    stamps = [event.at for event in events]
    assert stamps == sorted(stamps)
    # The stamp is not part of what an event says.
    assert ItemQueued("a", at=1.0) == ItemQueued("a", at=2.0)
    (failed,) = [e for e in events if isinstance(e, ItemFailed)]
    assert failed.input == str(empty)
    assert (failed.error_type, failed.retryable) == ("ValidationError", False)
