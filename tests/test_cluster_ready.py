"""dsdn cluster up waits for each member's /ready: a coordinator rebuilding from DA is waited for while it makes
progress, one that makes none fails the start after READY_TIMEOUT_S."""

from __future__ import annotations

import httpx
import pytest
import trio
import trio.testing

from deploy import cluster as launcher


def rebuilding(progress_until: float, ready_at: float) -> httpx.MockTransport:
    """/ready: 503 with rebuild progress (events applied growing until ``progress_until``), 200 from ``ready_at``."""

    def answer(request: httpx.Request) -> httpx.Response:
        now = trio.current_time()
        if now >= ready_at:
            return httpx.Response(200, json={"ready": True})
        events = int(min(now, progress_until) * 100)
        return httpx.Response(503, json={"ready": False, "reason": "rebuilding from DA", "progress": {
            "events_applied": events, "eta_s": 12.0, "logs": {"primary": {"cursor": events // 10}}}})

    return httpx.MockTransport(answer)


async def test_a_member_rebuilding_with_progress_is_waited_for_past_the_timeout(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "READY_TIMEOUT_S", 2.0)
    member = launcher.Member("coordinator", "c0", "http://c0.test", "/ready", [])
    said: list[str] = []
    async with httpx.AsyncClient(transport=rebuilding(progress_until=30.0, ready_at=25.0)) as http:
        await launcher._wait_ready(member, http, said.append)  # 25 s of a rebuild, past a 2 s timeout
    assert member.ready and trio.current_time() >= 25.0
    assert said and "rebuilding its state from DA" in said[0] and "ETA 12s" in said[0]


async def test_a_member_whose_rebuild_stalls_fails_the_start(autojump_clock: trio.testing.MockClock,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "READY_TIMEOUT_S", 2.0)
    member = launcher.Member("coordinator", "c0", "http://c0.test", "/ready", [])
    async with httpx.AsyncClient(transport=rebuilding(progress_until=5.0, ready_at=1e9)) as http:
        with pytest.raises(RuntimeError, match="not ready after 2s without progress"):
            await launcher._wait_ready(member, http, lambda line: None)
    assert 7.0 <= trio.current_time() < 8.0  # progress until 5 s, then 2 s without


async def test_a_caught_up_log_moving_or_a_cursor_going_back_and_forth_is_no_progress(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any change of (events, every cursor) counted: a caught-up log's cursor follows its head, events keep coming,
    a cursor may step back: a member that never got ready was waited for, for ever (the regression review's run).
    Only a log still catching up reading further than ever before counts."""
    monkeypatch.setattr(launcher, "READY_TIMEOUT_S", 2.0)

    def answer(request: httpx.Request) -> httpx.Response:
        now = int(trio.current_time() * 10)
        return httpx.Response(503, json={"ready": False, "progress": {"events_applied": now, "eta_s": None, "logs": {
            "primary": {"cursor": now, "caught_up": True}, "secondary/0": {"cursor": 10 + now % 2}, "x": []}}})

    member = launcher.Member("coordinator", "c0", "http://c0.test", "/ready", [])
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        with pytest.raises(RuntimeError, match="without progress"):
            await launcher._wait_ready(member, http, lambda line: None)
    assert trio.current_time() < 5.0
