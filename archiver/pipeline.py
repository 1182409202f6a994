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
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from archiver import __version__
from archiver.api import PictoryClient
from archiver.download import AssetDownloader, AssetRequest, FetchedFile
from archiver.errors import (
    ApiError,
    ArchiverError,
    AssetError,
    ExpiredUrlError,
)
from archiver.layout import ArchiveLayout, write_atomic
from archiver.lister import Lister
from archiver.manifest import (
    COMPLETE,
    DAMAGED,
    FAILED,
    FETCHED,
    AssetRecord,
    Manifest,
    utc_now,
)
from archiver.models import (
    VIDEO,
    Asset,
    Item,
    ItemKind,
    Secret,
    strip_query,
)
from archiver.outcomes import Failure, ItemOutcome, ProgressSink, RunSummary
from archiver.retry import RetryBudget, RetryPolicy

log = logging.getLogger("archiver")

MAX_REFRESHES_PER_ASSET = 2
CHECKPOINT_SECONDS = 1.0
CHECKPOINT_ITEMS = 2000
CHECKPOINT_BYTES = 32 << 20
MAX_REFRESH_WALKS = 20


@dataclass(frozen=True)
class SyncOptions:
    """The values a sync needs, taken from Settings by the CLI. A repair names the
    `damaged` files (item id, role, reason) that verify found; `only_ids` limits the run."""

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
    only_ids: frozenset[str] | None = None
    damaged: tuple[tuple[str, str, str], ...] = ()
    report_file: Path | None = None
    retry_policy: RetryPolicy | None = None


@dataclass
class ItemTracker:
    """An item with assets in flight; the last asset to land writes metadata.json.

    `item` is replaced when a re-listing brings fresh (re-signed) URLs.
    """

    item: Item
    folder: str
    remaining: int
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: dict[str, AssetRecord] = field(default_factory=dict)
    validators: dict[str, str | None] = field(default_factory=dict)
    staged: list[tuple[Path, Path]] = field(default_factory=list)
    fresh: bool = False
    errors: list[tuple[str, str]] = field(default_factory=list)
    fetched_files: int = 0
    fetched_bytes: int = 0
    url_generation: int = 0


@dataclass(frozen=True)
class Landing:
    """Files waiting for the next group commit: synced, then renamed, then recorded."""

    staged: tuple[tuple[Path, Path], ...]
    record: Callable[[], None]


@dataclass(frozen=True)
class AssetJob:
    """One file to fetch into an item's folder."""

    role: str
    tracker: ItemTracker


class Sync:
    """One sync run: owns the queue, the trackers and the counters."""

    def __init__(self, options: SyncOptions, manifest: Manifest, progress: ProgressSink) -> None:
        self.options = options
        self.kind = options.kind
        self.layout = ArchiveLayout(options.dest, options.folder_template)
        self.manifest = manifest
        self.progress = progress
        self.queue: asyncio.Queue[AssetJob | None] = asyncio.Queue(maxsize=options.queue_size)
        self.live: dict[str, ItemTracker] = {}
        self.failures: list[Failure] = []
        self.new_items = self.files = self.fetched_bytes = 0
        self.run_id = 0
        self.lister: Lister | None = None
        self.client: PictoryClient | None = None
        self.downloader: AssetDownloader | None = None
        self.unsynced: list[Landing] = []
        self._last_checkpoint = time.monotonic()
        self._checkpointing = False
        self._unsynced_bytes = 0
        self._refresh_lock = asyncio.Lock()
        self._refresh_walks = 0

    async def run(self) -> RunSummary:
        """Run to the end, or until interrupted; a run-fatal error is recorded, then raised."""
        started, clock = utc_now(), time.monotonic()
        for item_id, role, reason in self.options.damaged:  # under the lock, like the rest
            self.manifest.mark_damaged(self.kind.name, item_id, role, reason)
        command = "repair" if self.options.only_ids is not None else "sync"
        self.run_id = self.manifest.start_run(command + (" --full" if self.options.full else ""))
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
        self._settle()
        summary = RunSummary(
            started=started,
            ended=utc_now(),
            listed=self.lister.listed if self.lister else 0,
            new_items=self.new_items,
            files=self.files,
            fetched_bytes=self.fetched_bytes,
            elapsed=time.monotonic() - clock,
            failures=tuple((self.lister.failures if self.lister else []) + self.failures),
            total_complete=self.manifest.counts()[COMPLETE],
            list_requests=self.client.requests_made if self.client else 0,
            interrupted=interrupted,
            listing_error=self.lister.listing_error if self.lister else None,
            fatal_error=fatal.message if fatal else None,
            fatal_exit_code=int(fatal.exit_code) if fatal else None,
        )
        self._save_report(summary)
        if fatal is not None:
            raise fatal
        return summary

    async def _checkpoint(self) -> None:
        """Group commit: once a second (or every CHECKPOINT_ITEMS items or CHECKPOINT_BYTES
        bytes), make the proven files written so far durable with one filesystem sync,
        rename them into place (as if each had been fsynced, then renamed), then record
        them in the manifest in one transaction. The manifest never claims a file the disk
        might not have; after a crash, staged .part files are proven by a Range request."""
        due = (
            len(self.unsynced) >= CHECKPOINT_ITEMS
            or self._unsynced_bytes >= CHECKPOINT_BYTES
            or time.monotonic() - self._last_checkpoint >= CHECKPOINT_SECONDS
        )
        if self._checkpointing or not (due or self.manifest.commit_due()):
            return
        self._checkpointing = True
        try:
            count, self._unsynced_bytes = len(self.unsynced), 0
            batch = self.unsynced[:count]
            if batch:
                await asyncio.to_thread(self._land, batch)
            del self.unsynced[:count]
            for landing in batch:
                landing.record()
            self.manifest.commit()
            self._last_checkpoint = time.monotonic()
        finally:
            self._checkpointing = False

    def _land(self, batch: list[Landing]) -> None:
        """Sync every file of the batch at once, then rename them into place (blocking)."""
        self.layout.flush_to_disk()
        self.layout.publish([pair for landing in batch for pair in landing.staged])

    def _settle(self) -> None:
        """The last checkpoint, whatever ended the run; blocking is fine by now."""
        batch, self.unsynced = self.unsynced, []
        if batch:
            try:
                self._land(batch)
            except ArchiverError as exc:
                log.error("could not make the last files durable: %s", exc.message)
                batch = []
        for landing in batch:
            landing.record()
        self.manifest.commit()

    def _save_report(self, summary: RunSummary) -> None:
        """The run report: in the manifest, in runs/<start>.json and in --report FILE."""
        report = summary.as_report()
        self.manifest.finish_run(self.run_id, summary.exit_code, report)
        data = json.dumps(report, indent=2).encode() + b"\n"
        stamp = summary.started.replace("-", "").replace(":", "")
        targets = [self.layout.runs_dir / f"{stamp}-{self.run_id}.json"]
        targets += [self.options.report_file] if self.options.report_file else []
        for target in targets:
            try:
                write_atomic(target, data)
            except ArchiverError as exc:
                log.error("cannot write the run report: %s", exc.message)

    async def _run_stages(self) -> None:
        options = self.options
        retry = options.retry_policy or RetryPolicy(attempts=options.retries)
        async with (
            PictoryClient(
                options.api_url, options.api_key, timeout=options.timeout, retry=retry
            ) as client,
            AssetDownloader(
                timeout=options.timeout,
                retry=retry,
                budget=RetryBudget(max(100, 20 * options.concurrency)),
                connections=options.concurrency,
            ) as downloader,
        ):
            self.client, self.downloader = client, downloader
            self.lister = Lister(
                client,
                self.manifest,
                self.layout,
                self.kind,
                run_id=self.run_id,
                full=options.full,
                progress=self.progress,
                admit=self._queue_item,
                checkpoint=self._checkpoint,
            )
            async with asyncio.TaskGroup() as group:
                group.create_task(self._list_and_close())
                for _ in range(options.concurrency):
                    group.create_task(self._work())

    async def _list_and_close(self) -> None:
        assert self.lister is not None
        await self.lister.run(self.options.only_ids)
        for _ in range(self.options.concurrency):
            await self.queue.put(None)

    async def _queue_item(self, item: Item, folder: str, recheck: bool) -> None:
        """Queue the assets not yet safely on disk; finish at once if there are none."""
        todo: list[Asset] = []
        done: dict[str, dict[str, Any]] = {}
        records = self.manifest.assets_of(self.kind.name, item.id)
        for asset in item.assets:
            record = records.get(asset.role)
            if (
                record is not None
                and record.state in (COMPLETE, FETCHED)
                and _has_size(self.layout.asset_path(folder, asset), record.size)
            ):
                done[asset.role] = _file_entry(asset, record.size or 0, record.sha256 or "")
            else:
                todo.append(asset)
        if recheck and not todo:
            return
        if recheck:
            log.info("re-fetching missing or damaged files of %s", folder)
            self.manifest.mark_pending(self.kind.name, item.id, "files missing on disk")
        created = await asyncio.to_thread(self.layout.make_folder, folder)
        tracker = ItemTracker(
            item, folder, remaining=len(todo), files=done, records=records, fresh=created
        )
        self.progress.queued(1, len(todo))
        if not todo:
            await self._finish_item(tracker)
            return
        self.live[item.id] = tracker
        for asset in todo:
            await self.queue.put(AssetJob(asset.role, tracker))

    async def _work(self) -> None:
        while (job := await self.queue.get()) is not None:
            try:
                await self._fetch(job)
            finally:
                self.queue.task_done()
        self.queue.task_done()

    async def _fetch(self, job: AssetJob) -> None:
        """Fetch one asset, getting fresh URLs by re-listing when the old ones expired."""
        tracker = job.tracker
        for refreshes in range(MAX_REFRESHES_PER_ASSET + 1):
            asset = next((a for a in tracker.item.assets if a.role == job.role), None)
            if asset is None:
                tracker.errors.append((job.role, "no longer listed for this item"))
                break
            generation = tracker.url_generation
            try:
                fetched = await self._fetch_asset(tracker, asset)
            except ExpiredUrlError as exc:
                if refreshes < MAX_REFRESHES_PER_ASSET and await self._refresh(tracker, generation):
                    log.info("fresh URLs for %s after: %s", tracker.folder, exc.message)
                    continue
                self._asset_failed(tracker, asset, exc.message)
            except AssetError as exc:
                self._asset_failed(tracker, asset, exc.message)
            else:
                self._asset_landed(tracker, asset, fetched)
            break
        tracker.remaining -= 1
        if tracker.remaining == 0:
            self.live.pop(tracker.item.id, None)
            await self._finish_item(tracker)
        await self._checkpoint()

    async def _fetch_asset(self, tracker: ItemTracker, asset: Asset) -> FetchedFile:
        assert self.downloader is not None
        path = self.layout.asset_path(tracker.folder, asset)
        record = tracker.records.get(asset.role)
        # files of an earlier try may wait here: a .part to resume, or a file that landed
        # just before a crash, before the manifest heard of it (adopted, proven by Range)
        leftovers = not tracker.fresh or asset.role in tracker.validators
        settled = record is not None and record.state in (COMPLETE, FETCHED, DAMAGED)
        request = AssetRequest(
            url=asset.url,
            path=path,
            media=asset.media,
            validator=tracker.validators.get(asset.role) or (record.etag if record else None),
            known_size=record.size if record else None,
            known_validator=record.etag if record else None,
            adopt_final=leftovers and not settled,
            may_resume=leftovers,
            stage_only=True,
        )

        def remember(validator: str | None) -> None:
            tracker.validators[asset.role] = validator

        return await self.downloader.fetch(request, remember)

    async def _refresh(self, tracker: ItemTracker, generation: int) -> bool:
        """Re-list down to the item for fresh URLs, renewing every item in flight; bounded."""
        assert self.lister is not None
        async with self._refresh_lock:
            if tracker.url_generation != generation:
                return True
            if self._refresh_walks >= MAX_REFRESH_WALKS:
                return False
            self._refresh_walks += 1
            try:
                async with aclosing(self.lister.relist(until=tracker.item)) as items:
                    async for item in items:
                        renewed = self.live.get(item.id)
                        if renewed is not None:
                            renewed.item = item
                            renewed.url_generation += 1
            except ApiError as exc:
                log.error("re-listing for fresh URLs failed: %s", exc.message)
            return tracker.url_generation != generation

    def _asset_failed(self, tracker: ItemTracker, asset: Asset, reason: str) -> None:
        self.manifest.mark_asset(
            self.kind.name,
            tracker.item.id,
            asset.role,
            url=strip_query(asset.url),
            path=f"{tracker.folder}/{asset.filename}",
            state=FAILED,
            error=reason,
        )
        tracker.errors.append((asset.role, reason))

    def _asset_landed(self, tracker: ItemTracker, asset: Asset, fetched: FetchedFile) -> None:
        tracker.files[asset.role] = _file_entry(asset, fetched.size, fetched.sha256)
        tracker.fetched_files += 1
        tracker.fetched_bytes += fetched.fetched_bytes
        self.files += 1
        self.fetched_bytes += fetched.fetched_bytes
        self.progress.file_done(fetched.fetched_bytes)
        self._unsynced_bytes += fetched.fetched_bytes
        if fetched.staged is not None:
            tracker.staged.append((fetched.staged, fetched.path))

    def _record_complete(self, tracker: ItemTracker) -> None:
        """The item and its files, complete in the manifest in one go (after the sync)."""
        self._record_files(tracker, COMPLETE)
        self.manifest.mark_complete(self.kind.name, tracker.item.id)

    def _record_landed(self, tracker: ItemTracker) -> None:
        """A failed item's files that did land: the retry need not fetch them again."""
        self._record_files(tracker, FETCHED)

    def _record_files(self, tracker: ItemTracker, state: str) -> None:
        for asset in tracker.item.assets:
            entry = tracker.files.get(asset.role)
            if entry is None:
                continue
            self.manifest.mark_asset(
                self.kind.name,
                tracker.item.id,
                asset.role,
                url=entry["source_url"],
                path=f"{tracker.folder}/{asset.filename}",
                state=state,
                size=entry["size"],
                sha256=entry["sha256"],
                etag=tracker.validators.get(asset.role),
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
            self.unsynced.append(
                Landing(tuple(tracker.staged), partial(self._record_landed, tracker))
            )
            log.error("failed %s: %s: %s", tracker.folder, role, reason)
        else:
            archive = {
                "archived_at": utc_now(),
                "tool": f"pictory-archiver {__version__}",
                "kind": item.kind.name,
                "files": {role: tracker.files[role] for role in sorted(tracker.files)},
            }
            metadata = await asyncio.to_thread(
                self.layout.stage_metadata, tracker.folder, item.raw, archive
            )
            self.unsynced.append(
                Landing((*tracker.staged, metadata), partial(self._record_complete, tracker))
            )
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


def _first_error(group: BaseExceptionGroup[BaseException]) -> ArchiverError | None:
    """The first ArchiverError in a (possibly nested) exception group from the TaskGroup."""
    for error in group.exceptions:
        if isinstance(error, ArchiverError):
            return error
        if isinstance(error, BaseExceptionGroup) and (found := _first_error(error)):
            return found
    return None


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
        log.warning("interrupted: stopping downloads, saving state (again to quit at once)")
        task.cancel()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        return await task
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
