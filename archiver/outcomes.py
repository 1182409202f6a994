"""The records a sync produces and hands on: failures, item outcomes, the run summary.

Frozen and free of I/O, so the pipeline, the report and the CLI share them without
importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Failure:
    """An item that is not archived, and why; retried by the next run."""

    item_id: str
    reason: str
    asset: str | None = None


@dataclass(frozen=True)
class ItemOutcome:
    """One item finished, one way or the other."""

    item_id: str
    folder: str
    ok: bool
    files: int
    fetched_bytes: int
    failure: Failure | None = None


@dataclass(frozen=True)
class RunSummary:
    """What a run did; the exit code is derived from it."""

    started: str
    ended: str
    listed: int
    new_items: int
    files: int
    fetched_bytes: int
    elapsed: float
    failures: tuple[Failure, ...]
    total_complete: int
    list_requests: int
    interrupted: bool = False
    listing_error: str | None = None
    fatal_error: str | None = None
    fatal_exit_code: int | None = None

    @property
    def exit_code(self) -> int:
        if self.fatal_exit_code is not None:
            return self.fatal_exit_code
        if self.interrupted:
            return 130
        return 1 if self.failures or self.listing_error else 0

    def as_report(self) -> dict[str, Any]:
        """The JSON run report cron jobs and `status` read."""
        return {
            "started": self.started,
            "ended": self.ended,
            "exit_code": self.exit_code,
            "elapsed": round(self.elapsed, 3),
            "listed": self.listed,
            "new": self.new_items,
            "files": self.files,
            "bytes": self.fetched_bytes,
            "complete": self.total_complete,
            "failed": len(self.failures),
            "list_requests": self.list_requests,
            "interrupted": self.interrupted,
            "listing_error": self.listing_error,
            "error": self.fatal_error,
            "failures": [
                {"id": f.item_id, "asset": f.asset, "reason": f.reason} for f in self.failures
            ],
        }


class ProgressSink(Protocol):
    """Where the pipeline reports progress (report.py draws bars or log lines)."""

    def listed(self, count: int) -> None: ...
    def queued(self, items: int, files: int) -> None: ...
    def file_done(self, size: int) -> None: ...
    def item_done(self, outcome: ItemOutcome) -> None: ...
