"""The listing stage: walk the API newest first, validate and de-duplicate items,
record them in the manifest and hand each one on to be fetched.

It owns the incremental logic: a walk stops at the manifest's frontier, and moves the
frontier only when it connected the top of the listing to the old frontier (or the end).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection
from contextlib import aclosing
from typing import Any

from archiver.api import PictoryClient
from archiver.errors import ApiError, InvalidItemError
from archiver.layout import ArchiveLayout
from archiver.manifest import COMPLETE, Frontier, Manifest, utc_now
from archiver.models import Item, ItemKind, describe_id, parse_item
from archiver.outcomes import Failure, ProgressSink

log = logging.getLogger("archiver")

Admit = Callable[[Item, str, bool], Awaitable[None]]
"""Queue an item's missing files: (item, folder, recheck files of a complete item)."""


class Lister:
    """Produces the items a run must look at, each exactly once."""

    def __init__(
        self,
        client: PictoryClient,
        manifest: Manifest,
        layout: ArchiveLayout,
        kind: ItemKind,
        *,
        run_id: int,
        full: bool,
        progress: ProgressSink,
        admit: Admit,
        checkpoint: Callable[[], Awaitable[None]],
    ) -> None:
        self.client = client
        self.manifest = manifest
        self.layout = layout
        self.kind = kind
        self.run_id = run_id
        self.full = full
        self.progress = progress
        self.admit = admit
        self.checkpoint = checkpoint
        self.failures: list[Failure] = []
        self.listed = 0
        self.listing_error: str | None = None
        self._awaiting: set[str] = set()
        self._refreshed: dict[str, Item] = {}
        self._repeating_pages = 0

    async def run(self, only_ids: frozenset[str] | None) -> None:
        """The walk (or, for a repair, a search for `only_ids`), then earlier runs' leftovers."""
        try:
            if only_ids is None:
                await self._walk()
            else:
                await self._walk_for(only_ids)
        except ApiError as exc:
            self.listing_error = exc.message
            log.error("listing stopped: %s", exc.message)
        await self._admit_unfinished(only_ids)

    async def _walk(self) -> None:
        """Page from the newest item down to the frontier (or to the end with --full)."""
        frontier = self.manifest.frontier(self.kind.name)
        top: Item | None = None
        connected = False
        async for page in self.client.list_pages(self.kind):
            items = self._parse_page(page.items)
            known = self.manifest.states(self.kind.name, [item.id for item in items])
            self._awaiting = {item.id for item in items}
            for item in items:
                if not self.full and _at_or_below(item, frontier, known):
                    connected = True
                    break
                top = top or item
                await self._consider(item, known.get(item.id))
            await self.checkpoint()
            if connected:
                break
        else:
            connected = True
        if connected and top is not None:
            self.manifest.set_frontier(self.kind.name, Frontier(top.id, top.created_iso))
        if connected and self.full:
            await self._flag_deleted_upstream()
        self.manifest.commit()

    async def _walk_for(self, wanted: Collection[str]) -> None:
        """Repair: list until every wanted item is found, to fetch it with fresh URLs."""
        missing = set(wanted)
        async for page in self.client.list_pages(self.kind):
            for item in self._parse_page(page.items):
                if item.id in missing:
                    missing.discard(item.id)
                    await self._consider(item, None)
            if not missing:
                break

    async def relist(self, until: Item) -> AsyncGenerator[Item, None]:
        """Walk again from the top down to the page holding `until`, for fresh URLs.

        Items still waiting on the current page are renewed here too, so that they need
        no walk of their own."""
        async with aclosing(self.client.list_pages(self.kind)) as pages:
            async for page in pages:
                oldest, found = None, False
                for raw in page.items:
                    try:
                        item = parse_item(raw, self.kind)
                    except InvalidItemError:
                        continue
                    oldest, found = item.created_iso, found or item.id == until.id
                    if item.id in self._awaiting:
                        self._refreshed[item.id] = item
                    yield item
                if found or (oldest is not None and oldest < until.created_iso):
                    return

    async def _flag_deleted_upstream(self) -> None:
        """Items a complete walk did not see: flagged in manifest and metadata, kept on disk."""
        for item_id in self.manifest.mark_deleted_upstream(self.kind.name, self.run_id):
            record = self.manifest.item(self.kind.name, item_id)
            if record is None or not record.folder:
                continue
            log.info("no longer listed upstream (kept locally): %s", record.folder)
            metadata = await asyncio.to_thread(self.layout.read_metadata, record.folder)
            if metadata is not None and isinstance(metadata.get("archive"), dict):
                archive = metadata.pop("archive")
                archive["deleted_upstream"] = utc_now()
                await asyncio.to_thread(
                    self.layout.write_metadata, record.folder, metadata, archive
                )

    def _parse_page(self, raw_items: tuple[Any, ...]) -> list[Item]:
        """Valid items not yet considered in this run; a listing that only repeats ends.

        The manifest, not memory, knows what this run has considered (memory stays flat
        however long the listing); items past the frontier on the last page are not
        considered, so they stay eligible for the retry of unfinished items."""
        valid: dict[str, Item] = {}
        for raw in raw_items:
            try:
                item = parse_item(raw, self.kind)
            except InvalidItemError as exc:
                self._invalid(raw, exc.message)
                continue
            valid.setdefault(item.id, item)
        considered = self.manifest.listed_in_run(self.kind.name, valid, self.run_id)
        items = [item for item_id, item in valid.items() if item_id not in considered]
        self.listed += len(raw_items)
        self.progress.listed(len(raw_items))
        repeats_only = bool(raw_items) and not items and len(considered) > 0
        self._repeating_pages = self._repeating_pages + 1 if repeats_only else 0
        if self._repeating_pages >= 2:
            raise ApiError("the listing keeps repeating items it already sent: stopping it")
        return items

    def _invalid(self, raw: Any, reason: str) -> None:
        name = describe_id(raw)
        log.error("invalid item %s: %s", name, reason)
        self.failures.append(Failure(name, reason))
        if isinstance(raw, dict) and isinstance(raw.get("id"), str):
            self.manifest.record_invalid(self.kind.name, raw["id"], json.dumps(raw), reason)

    async def _consider(self, item: Item, state: str | None) -> None:
        """Record a listed item and hand on whatever of it is not yet on disk."""
        self._awaiting.discard(item.id)
        item = self._refreshed.pop(item.id, item)
        folder = self.manifest.record_listed(
            self.kind.name,
            item.id,
            item.created_iso,
            self.layout.item_folder(item),
            json.dumps(item.raw, ensure_ascii=False),
            self.run_id,
        )
        if state == COMPLETE and not self.full:
            return
        await self.admit(item, folder, state == COMPLETE)

    async def _admit_unfinished(self, only_ids: frozenset[str] | None) -> None:
        """Items left pending or failed by earlier runs and not listed this time."""
        for record in self.manifest.unfinished(self.kind.name, self.run_id):
            if only_ids is not None and record.id not in only_ids:
                continue
            try:
                item = parse_item(json.loads(record.item_json), self.kind)
            except (InvalidItemError, ValueError):
                continue
            await self.admit(item, record.folder, False)


def _at_or_below(item: Item, frontier: Frontier | None, known: dict[str, str]) -> bool:
    """Has the walk reached the part of the listing a previous walk already recorded?"""
    if frontier is None:
        return False
    created = item.created_iso
    return created < frontier.created or (created == frontier.created and item.id in known)
