"""Backoff policy, Retry-After parsing and the per-host pause shared by all workers.

Both the API client and the asset downloader retry; they share these rules so that
a `Retry-After` from one host slows every worker talking to it, not only one.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; a server's Retry-After wins, up to `max_wait`."""

    attempts: int = 5
    base: float = 0.5
    cap: float = 30.0
    max_wait: float = 120.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_wait)
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HostThrottle:
    """Per-host 'not before' times: one worker told to wait holds back all of them."""

    def __init__(self) -> None:
        self._not_before: dict[str, float] = {}

    def pause(self, host: str, seconds: float) -> None:
        until = time.monotonic() + seconds
        self._not_before[host] = max(until, self._not_before.get(host, 0.0))

    async def wait(self, host: str) -> None:
        while (delay := self._not_before.get(host, 0.0) - time.monotonic()) > 0:
            await asyncio.sleep(delay)


class RetryBudget:
    """Retries left for the whole run, so a sick CDN fails fast instead of for hours."""

    def __init__(self, retries: int = 500) -> None:
        self.left = retries

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True
