"""The sync pipeline: lister → bounded queue of AssetJobs → workers → outcomes → summary.

This is the only module where the API client, the downloader, the layout and the
manifest meet. The lister runs ahead of the downloads by at most the queue size,
so memory stays flat whatever the size of the library.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from archiver import __version__
from archiver.api import PictoryClient
from archiver.download import AssetDownloader, AssetRequest, FetchedFile, part_path
from archiver.errors import ApiError, ArchiverError, AssetError, InvalidItemError
from archiver.layout import ArchiveLayout
from archiver.manifest import COMPLETE, Frontier, Manifest
from archiver.models import (
    VIDEO,
    Asset,
    Item,
    ItemKind,
    Secret,
    describe_id,
    parse_item,
    strip_query,
)
from archiver.retry import RetryPolicy

log = logging.getLogger("archiver")


@dataclass(frozen=True)
class AssetJob:
    """One file to fetch into an item's folder."""

    item: Item
    folder: str
    asset: Asset
    tracker: ItemTracker


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


@dataclass
class ItemTracker:
    """Assets of one item still in flight; the last to land writes metadata.json."""

    item: Item
    folder: str
    remaining: int
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)
    fetched_files: int = 0
    fetched_bytes: int = 0


@dataclass(frozen=True)
class RunSummary:
    """What a run did; the exit code is derived from it."""

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

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failures or self.listing_error else 0


class ProgressSink(Protocol):
    """Where the pipeline reports progress (report.py draws bars or log lines)."""

    def listed(self, count: int) -> None: ...
    def queued(self, items: int, files: int) -> None: ...
    def file_done(self, size: int) -> None: ...
    def item_done(self, outcome: ItemOutcome) -> None: ...


@dataclass(frozen=True)
class SyncOptions:
    """The values a sync needs, taken from Settings by the CLI."""

    dest: Path
    api_url: str
    api_key: Secret
    folder_template: str
    concurrency: int = 8
    queue_size: int = 64
    timeout: float = 60.0
    retries: int = 5
    full: bool = False
    kind: ItemKind = VIDEO


class Sync:
    """One sync run: owns the queue, the trackers and the counters."""

    def __init__(self, options: SyncOptions, manifest: Manifest, progress: ProgressSink) -> None:
        self.options = options
        self.kind = options.kind
        self.layout = ArchiveLayout(options.dest, options.folder_template)
        self.manifest = manifest
        self.progress = progress
        self.queue: asyncio.Queue[AssetJob | None] = asyncio.Queue(maxsize=options.queue_size)
        self.failures: list[Failure] = []
        self.seen: set[str] = set()
        self.listed = 0
        self.new_items = 0
        self.files = 0
        self.fetched_bytes = 0
        self.listing_error: str | None = None
        self.run_id = 0
        self.client: PictoryClient | None = None
        self.downloader: AssetDownloader | None = None

    async def run(self) -> RunSummary:
        """Run to the end, or until interrupted; a run-fatal error is recorded, then raised."""
        started = time.monotonic()
        self.run_id = self.manifest.start_run("sync --full" if self.options.full else "sync")
        interrupted = False
        fatal: ArchiverError | None = None
        try:
            await self._run_stages()
        except asyncio.CancelledError:
            interrupted = True
        except ArchiverError as exc:
            fatal = exc
        except BaseExceptionGroup as group:
            fatal = _first_error(group)
            if fatal is None:
                raise
        summary = RunSummary(
            listed=self.listed,
            new_items=self.new_items,
            files=self.files,
            fetched_bytes=self.fetched_bytes,
            elapsed=time.monotonic() - started,
            failures=tuple(self.failures),
            total_complete=self.manifest.counts()[COMPLETE],
            list_requests=self.client.requests_made if self.client else 0,
            interrupted=interrupted,
            listing_error=self.listing_error,
        )
        report = summary_report(summary)
        if fatal is not None:
            report["error"] = fatal.message
        self.manifest.finish_run(
            self.run_id, fatal.exit_code if fatal else summary.exit_code, report
        )
        if fatal is not None:
            raise fatal
        return summary

    async def _run_stages(self) -> None:
        retry = RetryPolicy(attempts=self.options.retries)
        options = self.options
        async with (
            PictoryClient(
                options.api_url, options.api_key, timeout=options.timeout, retry=retry
            ) as client,
            AssetDownloader(
                timeout=options.timeout, retry=retry, connections=options.concurrency
            ) as downloader,
        ):
            self.client, self.downloader = client, downloader
            async with asyncio.TaskGroup() as group:
                group.create_task(self._list_and_close())
                for _ in range(options.concurrency):
                    group.create_task(self._work())

    async def _list_and_close(self) -> None:
        await self._walk_listing()
        await self._queue_unfinished()
        for _ in range(self.options.concurrency):
            await self.queue.put(None)

    async def _walk_listing(self) -> None:
        """Page from the newest item down to the frontier (or the end with --full)."""
        assert self.client is not None
        frontier = self.manifest.frontier(self.kind.name)
        top: Item | None = None
        connected = False
        try:
            async for page in self.client.list_pages(self.kind):
                items = self._parse_page(page.items)
                known = self.manifest.states(self.kind.name, [item.id for item in items])
                for item in items:
                    if not self.options.full and _at_or_below(item, frontier, known):
                        connected = True
                        break
                    top = top or item
                    await self._consider(item, known.get(item.id))
                self.manifest.maybe_commit()
                if connected:
                    break
            else:
                connected = True
        except ApiError as exc:
            self.listing_error = exc.message
            log.error("listing stopped: %s", exc.message)
            return
        if connected and top is not None:
            self.manifest.set_frontier(self.kind.name, Frontier(top.id, top.created_iso))
        if connected and self.options.full:
            for item_id in self.manifest.mark_deleted_upstream(self.kind.name, self.run_id):
                log.info("no longer listed upstream (kept locally): %s", item_id)
        self.manifest.commit()

    def _parse_page(self, raw_items: tuple[Any, ...]) -> list[Item]:
        items = []
        for raw in raw_items:
            try:
                item = parse_item(raw, self.kind)
            except InvalidItemError as exc:
                self._invalid(raw, exc.message)
                continue
            if item.id in self.seen:
                continue
            self.seen.add(item.id)
            items.append(item)
        self.listed += len(raw_items)
        self.progress.listed(len(raw_items))
        return items

    def _invalid(self, raw: Any, reason: str) -> None:
        name = describe_id(raw)
        log.error("invalid item %s: %s", name, reason)
        self.failures.append(Failure(name, reason))
        if isinstance(raw, dict) and isinstance(raw.get("id"), str):
            self.manifest.record_invalid(self.kind.name, raw["id"], json.dumps(raw), reason)

    async def _consider(self, item: Item, state: str | None) -> None:
        """Record a listed item and queue whatever of it is not yet on disk."""
        folder = self.manifest.record_listed(
            self.kind.name,
            item.id,
            item.created_iso,
            self.layout.item_folder(item),
            json.dumps(item.raw, ensure_ascii=False),
            self.run_id,
        )
        if state == COMPLETE and not self.options.full:
            return
        await self._queue_item(item, folder, recheck=state == COMPLETE)

    async def _queue_unfinished(self) -> None:
        """Items left pending or failed by earlier runs and not listed this time."""
        for record in self.manifest.unfinished(self.kind.name, self.run_id):
            if record.id in self.seen:
                continue
            try:
                item = parse_item(json.loads(record.item_json), self.kind)
            except (InvalidItemError, ValueError):
                continue
            self.seen.add(item.id)
            await self._queue_item(item, record.folder, recheck=False)

    async def _queue_item(self, item: Item, folder: str, *, recheck: bool) -> None:
        todo: list[Asset] = []
        done: dict[str, dict[str, Any]] = {}
        for asset in item.assets:
            record = self.manifest.asset(self.kind.name, item.id, asset.role)
            path = self.layout.asset_path(folder, asset)
            if record and record.state == COMPLETE and _has_size(path, record.size):
                done[asset.role] = _file_entry(asset, record.size or 0, record.sha256 or "")
            else:
                todo.append(asset)
        if recheck and not todo:
            return
        if recheck:
            log.info("re-fetching missing or damaged files of %s", folder)
            self.manifest.mark_pending(self.kind.name, item.id, "files missing on disk")
        await asyncio.to_thread(self.layout.make_folder, folder)
        tracker = ItemTracker(item, folder, remaining=len(todo), files=done)
        self.progress.queued(1, len(todo))
        if not todo:
            await self._finish_item(tracker)
            return
        for asset in todo:
            await self.queue.put(AssetJob(item, folder, asset, tracker))

    async def _work(self) -> None:
        while (job := await self.queue.get()) is not None:
            try:
                await self._fetch(job)
            finally:
                self.queue.task_done()
        self.queue.task_done()

    async def _fetch(self, job: AssetJob) -> None:
        assert self.downloader is not None
        kind, item_id, role = self.kind.name, job.item.id, job.asset.role
        path = self.layout.asset_path(job.folder, job.asset)
        relative = f"{job.folder}/{job.asset.filename}"
        record = self.manifest.asset(kind, item_id, role)
        request = AssetRequest(
            url=job.asset.url,
            path=path,
            media=job.asset.media,
            validator=record.etag if record and part_path(path).exists() else None,
        )

        def remember(validator: str | None) -> None:
            self.manifest.mark_asset(
                kind,
                item_id,
                role,
                url=strip_query(job.asset.url),
                path=relative,
                state="partial",
                etag=validator,
            )

        tracker = job.tracker
        try:
            fetched = await self.downloader.fetch(request, remember)
        except AssetError as exc:
            self.manifest.mark_asset(
                kind,
                item_id,
                role,
                url=strip_query(job.asset.url),
                path=relative,
                state="failed",
                error=exc.message,
            )
            tracker.errors.append((role, exc.message))
        else:
            self._asset_landed(job, fetched, relative)
        tracker.remaining -= 1
        if tracker.remaining == 0:
            await self._finish_item(tracker)
        self.manifest.maybe_commit()

    def _asset_landed(self, job: AssetJob, fetched: FetchedFile, relative: str) -> None:
        tracker = job.tracker
        tracker.files[job.asset.role] = _file_entry(job.asset, fetched.size, fetched.sha256)
        tracker.fetched_files += 1
        tracker.fetched_bytes += fetched.fetched_bytes
        self.files += 1
        self.fetched_bytes += fetched.fetched_bytes
        self.progress.file_done(fetched.fetched_bytes)
        self.manifest.mark_asset(
            self.kind.name,
            job.item.id,
            job.asset.role,
            url=strip_query(job.asset.url),
            path=relative,
            state="fetched",
            size=fetched.size,
            sha256=fetched.sha256,
            etag=fetched.validator,
        )

    async def _finish_item(self, tracker: ItemTracker) -> None:
        """All assets are in: write metadata.json, then mark everything complete at once."""
        item, kind = tracker.item, self.kind.name
        failure = None
        if tracker.errors:
            role, reason = tracker.errors[0]
            failure = Failure(item.id, reason, role)
            self.failures.append(failure)
            self.manifest.mark_failed(kind, item.id, f"{role}: {reason}")
            log.error("failed %s: %s: %s", tracker.folder, role, reason)
        else:
            archive = {
                "archived_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "tool": f"pictory-archiver {__version__}",
                "kind": item.kind.name,
                "files": {role: tracker.files[role] for role in sorted(tracker.files)},
            }
            await asyncio.to_thread(self.layout.write_metadata, tracker.folder, item.raw, archive)
            for asset in item.assets:
                entry = tracker.files[asset.role]
                self.manifest.mark_asset(
                    kind,
                    item.id,
                    asset.role,
                    url=entry["source_url"],
                    path=f"{tracker.folder}/{asset.filename}",
                    state=COMPLETE,
                    size=entry["size"],
                    sha256=entry["sha256"],
                )
            self.manifest.mark_complete(kind, item.id)
            if tracker.fetched_files:
                self.new_items += 1
        self.progress.item_done(
            ItemOutcome(
                item.id,
                tracker.folder,
                failure is None,
                tracker.fetched_files,
                tracker.fetched_bytes,
                failure,
            )
        )


def _at_or_below(item: Item, frontier: Frontier | None, known: dict[str, str]) -> bool:
    """Has the walk reached the part of the listing a previous walk already recorded?"""
    if frontier is None:
        return False
    created = item.created_iso
    return created < frontier.created or (created == frontier.created and item.id in known)


def _has_size(path: Path, size: int | None) -> bool:
    try:
        return size is not None and path.stat().st_size == size
    except OSError:
        return False


def _file_entry(asset: Asset, size: int, sha256: str) -> dict[str, Any]:
    return {
        "file": asset.filename,
        "size": size,
        "sha256": sha256,
        "source_url": strip_query(asset.url),
    }


def summary_report(summary: RunSummary) -> dict[str, Any]:
    return {
        "listed": summary.listed,
        "new_items": summary.new_items,
        "files": summary.files,
        "bytes": summary.fetched_bytes,
        "elapsed": round(summary.elapsed, 3),
        "total_complete": summary.total_complete,
        "list_requests": summary.list_requests,
        "interrupted": summary.interrupted,
        "listing_error": summary.listing_error,
        "failures": [
            {"id": f.item_id, "asset": f.asset, "reason": f.reason} for f in summary.failures
        ],
    }


async def run_sync(options: SyncOptions, manifest: Manifest, progress: ProgressSink) -> RunSummary:
    """Run one sync; SIGINT/SIGTERM stop it cleanly (a second one exits at once)."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(Sync(options, manifest, progress).run())
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            sys.stderr.write("interrupted again: exiting now\n")
            os._exit(130)
        log.warning("interrupted: finishing current writes, saving state (again to quit now)")
        task.cancel()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        return await task
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _first_error(group: BaseExceptionGroup[BaseException]) -> ArchiverError | None:
    """The first ArchiverError in a (possibly nested) exception group from the TaskGroup."""
    for error in group.exceptions:
        if isinstance(error, ArchiverError):
            return error
        if isinstance(error, BaseExceptionGroup) and (found := _first_error(error)):
            return found
    return None
