"""The batch's flow control against the emulator: the window grows from Little's law, shrinks
on a concurrency limit (429 on create) without failing items, polling keeps to its share of a
token-bucket limit, inputs are hashed from the bytes uploaded. No timed assertions: every bound
below holds however slow the machine is."""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Callable

import anyio

from audioshake_async import AudioShake, PollPolicy, RetryPolicy, Target
from audioshake_async.batch import BatchResult, FlowUpdate, SqliteJournal
from audioshake_async.batch.journal import journal_key
from audioshake_async.batch.window import MIN_WINDOW
from audioshake_async.emulator import Emulator

from .conftest import FAST_RETRY

MakeWavs = Callable[..., list[pathlib.Path]]
TARGETS = [Target("vocals", ["wav"])]


async def run(
    client: AudioShake, inputs: list[pathlib.Path], out: pathlib.Path, **options: object
) -> tuple[list[BatchResult], list[FlowUpdate]]:
    results: list[BatchResult] = []
    updates: list[FlowUpdate] = []

    def on_event(event: object) -> None:
        if isinstance(event, FlowUpdate):
            updates.append(event)

    async for result in client.batch(
        inputs,
        targets=TARGETS,
        out_dir=out,
        progress=on_event,
        **options,  # type: ignore[arg-type]
    ):
        results.append(result)
    return results, updates


async def test_window_grows_from_littles_law_and_an_explicit_cap_holds(
    emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    # Tasks that take 2-3 s at 60 requests/s: Little's law asks for far more than the floor.
    emulator.configure(delay=2.0, jitter=1.0)
    inputs = make_wavs(60)
    poll = PollPolicy(initial_interval=0.2, max_interval=1.0)
    async with AudioShake(
        emulator.api_key, emulator.base_url, retry=FAST_RETRY, rate_limit=60.0, poll=poll
    ) as client:
        with anyio.fail_after(120):
            results, updates = await run(client, inputs, tmp_path / "adaptive")
        with anyio.fail_after(120):
            # Fewer inputs: 8 at a time of 2-3 s tasks is slow by design, and 24 show the cap.
            capped, capped_updates = await run(
                client, inputs[:24], tmp_path / "capped", max_in_flight=8, journal=None
            )
    assert all(r.status == "done" for r in results) and len(results) == 60
    assert all(r.status == "done" for r in capped) and len(capped) == 24
    first, final = updates[0], updates[-1]
    assert final.final and first.window == MIN_WINDOW
    assert final.peak_window > MIN_WINDOW and final.peak_in_flight > MIN_WINDOW
    assert final.processing_time is not None and final.processing_time >= 2.0
    assert (final.upload_requests, final.create_requests) == (60, 60)
    # The explicit cap is a cap: never more admitted at once.
    assert capped_updates[-1].peak_in_flight <= 8
    assert max(u.window for u in capped_updates) <= 8


async def test_a_concurrency_limit_shrinks_the_window_instead_of_failing_items(
    emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    # The service takes at most 2 tasks at a time; everything beyond answers 429. The
    # transport retries a 429 once itself (pausing the limiter); then the engine hears of it.
    # Tasks last 2 s, so even a slow machine has a third create waiting while 2 run.
    emulator.configure(delay=2.0, max_active_tasks=2, retry_after=0.05)
    inputs = make_wavs(16)
    poll = PollPolicy(initial_interval=0.05, max_interval=0.2)
    retry = RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.05)
    async with AudioShake(
        emulator.api_key, emulator.base_url, retry=retry, rate_limit=2000.0, poll=poll
    ) as client:
        with anyio.fail_after(120):
            results, updates = await run(client, inputs, tmp_path / "out")
        counts = client.request_counts
    assert [r.status for r in results] == ["done"] * 16, [r.error for r in results]
    final = updates[-1]
    assert final.limit_signals >= 1
    # Shrunk below the floor it otherwise never leaves, and the creates backed off too.
    assert final.window < MIN_WINDOW
    stats = emulator.stats()
    assert stats["tasks_created"] == 16  # nothing billed twice
    assert counts["POST /tasks"] > 16  # the 429s happened


async def test_polling_keeps_to_its_share_under_a_token_bucket(
    emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    # The documented limit on both sides: the emulator's bucket and the client's limiter.
    emulator.configure(delay=1.0, jitter=2.0, rate_limit=60.0)
    inputs = make_wavs(120)
    poll = PollPolicy(initial_interval=0.1, max_interval=1.0)
    async with AudioShake(
        emulator.api_key, emulator.base_url, retry=FAST_RETRY, rate_limit=60.0, poll=poll
    ) as client:
        with anyio.fail_after(180):
            results, updates = await run(client, inputs, tmp_path / "out", poll_share=0.1)
    assert all(r.status == "done" for r in results) and len(results) == 120
    final = updates[-1]
    assert final.poll_requests > 0
    # While creates waited, refreshes spent at most 10% of the rate over the time elapsed
    # (plus one sweep's worth of pages, the most one step may overdraw).
    creating = [u for u in updates if u.create_requests < 120]
    assert creating
    for update in creating:
        sweep = update.in_flight // 100 + 3
        assert update.poll_requests <= 0.1 * 60.0 * update.elapsed + sweep, update


async def test_inputs_are_hashed_from_the_bytes_uploaded(
    emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    inputs = make_wavs(3)
    journal = tmp_path / "journal.sqlite"
    async with AudioShake(emulator.api_key, emulator.base_url, retry=FAST_RETRY) as client:
        results, _ = await run(client, inputs, tmp_path / "out", journal=journal)
        provider = client.batch_provider()
        key = journal_key(provider, provider.check_targets(TARGETS))
    assert all(r.status == "done" for r in results)
    store = SqliteJournal(journal)
    try:
        for path in inputs:
            record = store.lookup(str(path), key)
            assert record is not None and record.asset_id
            assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    finally:
        store.close()


class _SilentListing:
    """A shared listing whose leader never records anything (dead, or cut off)."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.pages = 0

    async def page(self, *, skip: int, take: int) -> list[object]:
        self.pages += 1
        return []

    async def find_token(self, token: str) -> None:
        return None


async def test_a_shared_listing_that_stays_silent_falls_back_to_single_reads(
    emulator: Emulator, make_wavs: MakeWavs, tmp_path: pathlib.Path
) -> None:
    # New tasks wait `grace` for the leader to list them; past it each is read by itself, so
    # a batch never hangs on a listing that stopped (and reads nothing before the grace).
    emulator.configure(delay=0.0)
    inputs = make_wavs(6)
    listing = _SilentListing(grace=0.5)
    poll = PollPolicy(initial_interval=0.1, max_interval=0.5)
    async with AudioShake(
        emulator.api_key, emulator.base_url, retry=FAST_RETRY, rate_limit=60.0, poll=poll
    ) as client:
        with anyio.fail_after(60):
            results, _ = await run(client, inputs, tmp_path / "out", listing=listing)
    assert [r.status for r in results] == ["done"] * 6
    assert listing.pages > 0
    reads = emulator.stats()["requests"].get("GET /tasks/{id}", 0)
    assert reads >= 6  # each new task once, at least
