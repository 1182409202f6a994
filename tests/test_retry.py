"""RetryPolicy bounds, Retry-After parsing and the per-host pause shared by workers."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from archiver.retry import HostThrottle, RetryPolicy, parse_retry_after


def test_full_jitter_stays_within_the_exponential_bound() -> None:
    policy = RetryPolicy(attempts=10, base=0.5, cap=4.0, max_wait=120.0)
    for attempt in range(10):
        bound = min(4.0, 0.5 * 2**attempt)
        delays = [policy.delay(attempt) for _ in range(300)]
        assert all(0.0 <= d <= bound for d in delays)
        # full jitter: spread over the whole range, not pinned near the bound
        assert min(delays) < bound * 0.25
        assert max(delays) > bound * 0.75


def test_delay_never_exceeds_cap_even_for_late_attempts() -> None:
    policy = RetryPolicy(base=1.0, cap=2.5)
    assert all(policy.delay(attempt) <= 2.5 for attempt in range(20, 60) for _ in range(20))


def test_retry_after_wins_over_jitter() -> None:
    policy = RetryPolicy(base=0.01, cap=0.05, max_wait=120.0)
    assert policy.delay(0, retry_after=7.0) == 7.0  # above `cap`: the server knows best
    assert policy.delay(5, retry_after=0.0) == 0.0
    assert policy.delay(0, retry_after=-3.0) == 0.0


def test_retry_after_is_capped_by_max_wait() -> None:
    policy = RetryPolicy(max_wait=10.0)
    assert policy.delay(0, retry_after=3600.0) == 10.0
    assert policy.delay(0, retry_after=float("inf")) == 10.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("0", 0.0), ("5", 5.0), (" 120 ", 120.0), ("86400", 86400.0)],
)
def test_parse_retry_after_seconds(header: str, seconds: float) -> None:
    assert parse_retry_after(header) == seconds


def test_parse_retry_after_http_date_in_the_future() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    parsed = parse_retry_after(format_datetime(when, usegmt=True))
    assert parsed is not None
    assert 25.0 <= parsed <= 31.0


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize(
    "header", [None, "", "   ", "soon", "-5", "1e3", "later, please", "Wed, 99 Foo 2015"]
)
def test_parse_retry_after_junk_is_none(header: str | None) -> None:
    assert parse_retry_after(header) is None


@pytest.mark.parametrize("header", ["²", "1²", "①"])
def test_parse_retry_after_unicode_digit_junk_is_none(header: str) -> None:
    assert parse_retry_after(header) is None


async def test_throttle_makes_other_waiters_wait() -> None:
    throttle = HostThrottle()
    throttle.pause("api.example", 0.2)
    started = time.monotonic()
    finished: list[float] = []

    async def waiter() -> None:
        await throttle.wait("api.example")
        finished.append(time.monotonic() - started)

    await asyncio.gather(waiter(), waiter())
    assert len(finished) == 2
    assert all(elapsed >= 0.15 for elapsed in finished)
    assert all(elapsed < 5 for elapsed in finished)


async def test_throttle_is_per_host() -> None:
    throttle = HostThrottle()
    throttle.pause("slow.example", 30.0)
    started = time.monotonic()
    await asyncio.wait_for(throttle.wait("fast.example"), timeout=5)
    assert time.monotonic() - started < 1.0


async def test_throttle_pause_never_shortens_an_existing_pause() -> None:
    throttle = HostThrottle()
    throttle.pause("h", 0.25)
    throttle.pause("h", 0.01)
    started = time.monotonic()
    await throttle.wait("h")
    assert time.monotonic() - started >= 0.2


async def test_throttle_pause_during_a_wait_extends_it() -> None:
    throttle = HostThrottle()
    throttle.pause("h", 0.05)
    started = time.monotonic()
    task = asyncio.create_task(throttle.wait("h"))
    await asyncio.sleep(0.02)
    throttle.pause("h", 0.2)  # another worker was told to back off meanwhile
    await task
    assert time.monotonic() - started >= 0.2


async def test_throttle_without_pause_does_not_wait() -> None:
    started = time.monotonic()
    await HostThrottle().wait("h")
    assert time.monotonic() - started < 0.5
