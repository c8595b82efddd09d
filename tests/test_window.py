"""The flow rules of batch/window.py with plain numbers (no clock, no sleeps), and the gate."""

from __future__ import annotations

import math

import anyio
import pytest

from audioshake_async.batch.flow import Flow, Gate
from audioshake_async.batch.items import stem_of
from audioshake_async.batch.options import BatchOptions
from audioshake_async.batch.window import (
    HARD_CEILING,
    ConcurrencyController,
    PollBudget,
    WindowEstimator,
)

# --------------------------------------------------------------------------- window


def test_window_follows_littles_law() -> None:
    # 60 requests/s, 90% for creates, 2 requests per item: 27 items/s. Tasks of 180 s need
    # 27 x 180 = 4,860 in flight; with 25% headroom and the floor on top, a little more.
    window = WindowEstimator(60.0, create_share=0.9, floor=16, headroom=1.25)
    window.observe_cost(requests=2000, items=1000)
    for _ in range(200):
        window.observe_done(180.0)
    assert window.creation_rate() == pytest.approx(27.0)
    assert window.window() == math.ceil(27 * 180 * 1.25) + 16
    # URL inputs (one request each) need about twice the window for the same tasks.
    window.observe_cost(requests=1000, items=1000)
    assert window.window() == math.ceil(54 * 180 * 1.25) + 16


def test_window_grows_with_the_oldest_age_before_any_task_finished() -> None:
    window = WindowEstimator(60.0, floor=16)
    assert window.window(oldest_age=0.0) == 16
    sizes = [window.window(oldest_age=age) for age in (1.0, 10.0, 60.0, 120.0)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    # Once tasks finish, a longer-running one still keeps the window from shrinking below it.
    window.observe_done(30.0)
    assert window.window(oldest_age=120.0) == sizes[-1]
    assert window.window(oldest_age=5.0) < sizes[-1]


def test_window_respects_the_cap_and_the_ceiling() -> None:
    capped = WindowEstimator(60.0, cap=1000)
    capped.observe_done(3600.0)
    assert capped.window() == 1000
    free = WindowEstimator(60.0)
    free.observe_done(3600.0)
    assert free.window() == HARD_CEILING
    tiny = WindowEstimator(60.0, cap=3)
    assert tiny.window() == 3  # the floor never exceeds an explicit cap


def test_limit_signal_cuts_then_window_grows_back() -> None:
    window = WindowEstimator(60.0, cooldown=2.0)
    window.observe_done(100.0)
    full = window.window()
    assert window.signal_limit(in_flight=400, now=10.0)
    assert window.window() == 280  # 70% of what was in flight
    # Answers to requests sent before the cut do not cut again.
    assert not window.signal_limit(in_flight=280, now=11.0)
    assert window.window() == 280 and window.limit_signals == 1
    assert window.signal_limit(in_flight=280, now=12.5)
    assert window.window() == 196
    for _ in range(40):
        window.on_created()
    assert window.window() == 206  # additive: a quarter task per create
    for _ in range(4 * HARD_CEILING):
        window.on_created()
    assert window.window() == full and math.isinf(window.limit_cap)


def test_limit_signal_keeps_at_least_one() -> None:
    window = WindowEstimator(60.0, cooldown=0.0)
    for now in range(10):
        window.signal_limit(in_flight=1, now=float(now))
    assert window.window() == 1


# --------------------------------------------------------------------------- poll budget


def test_poll_budget_keeps_refreshes_within_the_share() -> None:
    budget = PollBudget(60.0, share=0.1)
    now, sent = 0.0, 0
    # A greedy poller that sends whenever allowed, for 100 simulated seconds.
    while now < 100.0:
        start = budget.ready_at(now)
        if start >= 100.0:
            break
        budget.charge(3, start, creating=True)
        sent += 3
        now = start
    assert sent <= 0.1 * 60 * 100 + 3
    assert sent >= 0.1 * 60 * 100 - 3


def test_sweep_interval_stretches_with_the_window_and_shrinks_after_creating() -> None:
    budget = PollBudget(60.0, share=0.1, idle_share=0.9, min_interval=1.0, max_interval=30.0)
    # 1,000 in flight = 10 pages: 10 / 6 per s; 5,000 = 50 pages: 8.3 s; capped at 30 s.
    assert budget.sweep_interval(10, creating=True) == pytest.approx(10 / 6)
    assert budget.sweep_interval(50, creating=True) == pytest.approx(50 / 6)
    assert budget.sweep_interval(1000, creating=True) == 30.0
    assert budget.sweep_interval(1, creating=True) == 1.0
    # Creating done: 90% of the budget, so the same sweep comes 9x sooner.
    assert budget.sweep_interval(500, creating=False) == pytest.approx(500 / 54)


def test_poll_budget_debt_relaxes_when_creating_ends() -> None:
    budget = PollBudget(60.0, share=0.1, idle_share=0.9)
    budget.charge(60, 0.0, creating=True)  # 60 requests at 6/s: free again at 10 s
    assert budget.ready_at(0.0) == pytest.approx(10.0)
    budget.relax(0.0)
    assert budget.ready_at(0.0) == pytest.approx(10.0 / 9)


def test_poll_budget_rejects_bad_shares() -> None:
    with pytest.raises(ValueError):
        PollBudget(60.0, share=0.0)


# --------------------------------------------------------------------------- concurrency


def drive(controller: ConcurrencyController, latency_at: dict[int, float], rounds: int) -> None:
    """``rounds`` rounds of completions whose latency depends on the limit in force."""
    for _ in range(rounds):
        for _ in range(controller.limit):
            controller.record(latency_at.get(controller.limit, latency_at[-1]), demand=True)


def test_concurrency_grows_while_latency_holds() -> None:
    # 0.5 s of added latency per request and room in the budget: latency is flat.
    controller = ConcurrencyController(4, 64)
    drive(controller, {-1: 0.5}, rounds=12)
    assert controller.limit > 16
    assert controller.limit <= 64


def test_concurrency_stops_where_latency_climbs() -> None:
    # A link that saturates at 8 at once: beyond it latency grows with the limit.
    controller = ConcurrencyController(4, 64)
    for _ in range(40):
        for _ in range(controller.limit):
            controller.record(0.5 * max(1.0, controller.limit / 8), demand=True)
    assert 6 <= controller.limit <= 16


def test_concurrency_needs_demand_and_halves_on_congestion() -> None:
    idle = ConcurrencyController(4, 64)
    for _ in range(100):
        idle.record(0.5, demand=False)
    assert idle.limit == 4
    busy = ConcurrencyController(4, 64)
    drive(busy, {-1: 0.5}, rounds=10)
    before = busy.limit
    assert busy.congested() == before // 2


def test_fixed_concurrency_never_moves() -> None:
    fixed = ConcurrencyController(4, 4, fixed=True)
    drive(fixed, {-1: 0.1}, rounds=5)
    assert fixed.congested() == 4 and fixed.limit == 4


async def test_a_shared_budget_plans_the_window_and_polls_on_this_process_share() -> None:
    # Four workers on one account's 60/s: each plans on 15/s, so the window, the poll budget
    # and the figures follow the share as workers join and leave (no clock, no I/O).
    share = [1.0]
    flow = Flow(BatchOptions(), 60.0, share=lambda: share[0], clock=lambda: 100.0)
    for _ in range(50):
        flow.task_done(120.0)
    alone = flow.current_window()
    share[0] = 0.25
    shared = flow.current_window()
    assert flow.planned_rate == 15.0 and flow.polls.rate == 15.0
    assert shared < alone / 3
    update = flow.update(final=True)
    assert update is not None and update.rate == 15.0 and update.workers == 4
    assert update.to_json()["workers"] == 4
    share[0] = 0.5  # two left: the others grow back
    assert flow.current_window() > shared
    share[0] = float("nan")  # a broken source of shares: plan on the whole budget
    assert flow.current_window() == alone


# --------------------------------------------------------------------------- gate


async def test_gate_resizes_while_tasks_wait() -> None:
    gate = Gate(1)
    entered: list[int] = []

    async def worker(index: int) -> None:
        await gate.acquire()
        entered.append(index)

    async with anyio.create_task_group() as group:
        for index in range(4):
            group.start_soon(worker, index)
        await anyio.wait_all_tasks_blocked()
        assert len(entered) == 1 and gate.held == 1 and gate.waiting == 3
        gate.resize(3)
        await anyio.wait_all_tasks_blocked()
        assert len(entered) == 3
        gate.resize(1)  # shrinking lets no one else in, even after a release
        gate.release()
        await anyio.wait_all_tasks_blocked()
        assert len(entered) == 3 and gate.held == 2
        gate.release()
        gate.release()
        await anyio.wait_all_tasks_blocked()
        assert len(entered) == 4 and gate.waiting == 0


# --------------------------------------------------------------------------- URL names


@pytest.mark.parametrize(
    ("url", "stem"),
    [
        ("https://cdn.example/a/Song%20Two.wav", "Song Two"),
        ("https://cdn.example/a/B%C3%A9b%C3%A9.mp3?sig=x", "Bébé"),
        ("https://cdn.example/a/Live%20%2F%20Demo.wav", "Live _ Demo"),
        ("https://cdn.example/a/..%2F..%2Fetc%2Fpasswd", None),
        ("https://cdn.example/a/%2E%2E", None),
        ("https://cdn.example/a/a%00b.wav#frag", "a_b"),
    ],
)
def test_url_dir_names_are_decoded_and_safe(url: str, stem: str | None) -> None:
    name = stem_of(url, True)
    if stem is None:
        assert name.startswith("url-")
    else:
        assert name == stem
    assert "/" not in name and "\x00" not in name and name not in (".", "..")
