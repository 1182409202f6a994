"""The sync pipeline in the test's loop against the fake server: faults, hostile input,
expiring URLs, pending retries and deletions, checked on disk byte for byte."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from archiver.fake import CdnFault, FakeLibrary, FakePictory
from archiver.manifest import Manifest
from archiver.models import Secret
from archiver.outcomes import ItemOutcome, RunSummary
from archiver.pipeline import SyncOptions, run_sync
from archiver.retry import RetryPolicy
from tests.conftest import KEY, sha256_file

FAST_RETRY = RetryPolicy(attempts=2, base=0.01, cap=0.02)


class Recorder:
    """A ProgressSink that remembers what it heard, and can act when a page is listed."""

    def __init__(self) -> None:
        self.pages = 0
        self.outcomes: list[ItemOutcome] = []
        self.on_page: Any = None

    def listed(self, count: int) -> None:
        self.pages += 1
        if self.on_page is not None:
            self.on_page(self.pages)

    def queued(self, items: int, files: int) -> None:
        pass

    def file_done(self, size: int) -> None:
        pass

    def item_done(self, outcome: ItemOutcome) -> None:
        self.outcomes.append(outcome)


async def sync(
    fake: FakePictory, dest: Path, progress: Recorder | None = None, **options: Any
) -> RunSummary:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / ".pictory-archiver" / "runs").mkdir(parents=True, exist_ok=True)
    settings = SyncOptions(
        dest=dest,
        api_url=fake.api_url,
        api_key=Secret(KEY),
        folder_template="{year}/{month}/{date}_{time}_{id}",
        concurrency=4,
        retry_policy=FAST_RETRY,
        **options,
    )
    with Manifest(dest / ".pictory-archiver" / "manifest.sqlite") as manifest:
        return await run_sync(settings, manifest, progress or Recorder())


def cdn_requests(fake: FakePictory) -> list[str]:
    return [r.path for r in fake.requests if r.origin == "cdn"]


def item_folder(dest: Path, item_id: str) -> Path:
    matches = [
        p.parent for p in (dest / "videos").rglob("metadata.json") if item_id in p.parent.name
    ]
    assert len(matches) == 1, item_id
    return matches[0]


def mp4_path(library: FakeLibrary, raw: dict[str, Any]) -> str:
    return next(p for p in library.asset_paths({"url": raw["url"]}))


def assert_item_matches(dest: Path, library: FakeLibrary, raw: dict[str, Any]) -> None:
    folder = item_folder(dest, raw["id"])
    metadata = json.loads((folder / "metadata.json").read_text("utf-8"))
    for entry in metadata["archive"]["files"].values():
        path = entry["source_url"].split("//", 1)[1].split("/", 1)[1]
        assert sha256_file(folder / entry["file"]) == library.sha256("/" + path)


@pytest.fixture
def small_library() -> FakeLibrary:
    return FakeLibrary(30, seed=11, video_size=8 * 1024, image_size=1024)


@pytest.fixture
async def small_fake(small_library: FakeLibrary) -> Any:
    async with FakePictory(small_library, page_size=10) as server:
        yield server


async def test_expired_signed_urls_are_refreshed_within_the_run(
    small_fake: FakePictory, small_library: FakeLibrary, dest: Path
) -> None:
    small_fake.signed_urls = True
    progress = Recorder()
    progress.on_page = lambda page: small_fake.expire_urls() if page == 1 else None
    summary = await sync(small_fake, dest, progress)
    assert summary.exit_code == 0, summary.failures
    assert summary.total_complete == 30
    denied = [r for r in small_fake.requests if r.origin == "cdn" and "Expires=0" in r.query]
    assert denied, "the first page's URLs should have been refused once"
    assert small_fake.count("api") <= 3 + 2  # the walk plus a bounded re-listing
    for raw in small_library.items:
        assert_item_matches(dest, small_library, raw)


async def test_refresh_resumes_the_same_part_file(
    small_fake: FakePictory, small_library: FakeLibrary, dest: Path
) -> None:
    raw = small_library.items[3]
    path = mp4_path(small_library, raw)
    small_fake.fail_asset(
        path,
        CdnFault("truncate", after=3000),
        CdnFault("status", status=403),
        CdnFault("status", status=403),
    )
    summary = await sync(small_fake, dest)
    assert summary.exit_code == 0, summary.failures
    requests = [r for r in small_fake.requests if r.path == path]
    assert len(requests) == 4
    assert requests[-1].header("Range") == "bytes=3000-"
    assert requests[-1].header("If-Range") == small_library.asset(path).etag  # type: ignore[union-attr]
    assert_item_matches(dest, small_library, raw)


async def test_a_real_permission_error_still_ends(
    small_fake: FakePictory, small_library: FakeLibrary, dest: Path
) -> None:
    raw = small_library.items[0]
    path = mp4_path(small_library, raw)
    small_fake.fail_asset(path, *[CdnFault("status", status=403)] * 50)
    summary = await sync(small_fake, dest)
    assert summary.exit_code == 1
    assert [f.item_id for f in summary.failures] == [raw["id"]]
    assert "403" in summary.failures[0].reason and summary.failures[0].asset == "video"
    assert len([r for r in small_fake.requests if r.path == path]) == 3
    assert summary.total_complete == 29


async def test_permanent_failure_stays_pending_and_next_run_fetches_only_it(
    small_fake: FakePictory, small_library: FakeLibrary, dest: Path
) -> None:
    raw = small_library.items[17]
    path = mp4_path(small_library, raw)
    small_fake.fail_asset(path, CdnFault("status", status=404))
    first = await sync(small_fake, dest)
    assert first.exit_code == 1
    assert first.failures[0].item_id == raw["id"] and "404" in first.failures[0].reason
    assert len([r for r in small_fake.requests if r.path == path]) == 1  # no hammering
    assert not list((dest / "videos").rglob("*.mp4.part"))
    with Manifest(dest / ".pictory-archiver" / "manifest.sqlite") as manifest:
        record = manifest.item("video", raw["id"])
        assert record is not None and record.state == "failed" and "404" in (record.error or "")
    small_fake.reset_log()
    second = await sync(small_fake, dest)
    assert second.exit_code == 0 and second.total_complete == 30
    assert small_fake.count("api") == 1
    assert cdn_requests(small_fake) == [path]
    assert_item_matches(dest, small_library, raw)


async def test_transient_cdn_faults_are_retried_and_files_are_exact(
    small_fake: FakePictory, small_library: FakeLibrary, dest: Path
) -> None:
    items = small_library.items
    small_fake.fail_asset(mp4_path(small_library, items[0]), CdnFault("status", status=503))
    small_fake.fail_asset(mp4_path(small_library, items[1]), CdnFault("truncate", after=100))
    small_fake.fail_asset(mp4_path(small_library, items[2]), CdnFault("html"))
    small_fake.fail_asset(
        mp4_path(small_library, items[3]), CdnFault("status", status=429, retry_after="1")
    )
    small_fake.fail_api(500, 503)
    summary = await sync(small_fake, dest)
    assert summary.exit_code == 0, summary.failures
    for raw in items:
        assert_item_matches(dest, small_library, raw)
    for mp4 in (dest / "videos").rglob("video.mp4"):
        assert mp4.read_bytes()[4:8] == b"ftyp"
    assert not list(dest.rglob("*.part"))


async def test_html_instead_of_media_is_never_stored(
    small_fake: FakePictory, small_library: FakeLibrary, dest: Path
) -> None:
    raw = small_library.items[5]
    path = mp4_path(small_library, raw)
    small_fake.fail_asset(path, *[CdnFault("html")] * 10)
    summary = await sync(small_fake, dest)
    assert summary.exit_code == 1 and "HTML" in summary.failures[0].reason
    for file in (dest / "videos").rglob("video.mp4*"):
        assert b"<html" not in file.read_bytes().lower()
    assert not (dest / "videos").joinpath("x").exists()
    assert not any(raw["id"] in p.parent.name for p in (dest / "videos").rglob("metadata.json"))


HOSTILE_IDS = [
    "../../escape",
    "/etc/absolute",
    "a\\b\\..\\c",
    "nul\x00byte",
    "x" * 400,
    "ünïcödé/🎬",
]


async def test_hostile_items_never_escape_dest_and_valid_ones_are_archived(
    small_library: FakeLibrary, tmp_path: Path
) -> None:
    template = small_library.items[0]
    good = [dict(template, id=hostile) for hostile in HOSTILE_IDS]
    bad: list[dict[str, Any]] = [
        dict(template, id=12345),
        {k: v for k, v in template.items() if k != "id"},
        dict(template, id="file-url", url="file:///etc/passwd"),
        dict(template, id="ftp-url", url="ftp://example.com/x.mp4"),
        {k: v for k, v in template.items() if k != "url"} | {"id": "no-url"},
        dict(template, id="wrong-type", url=123),
        dict(template, id="refs-not-list", referenceImageUrls="{cdn}/x.png"),
        "not an object",
    ]
    traversal = dict(template, id="traversal", url="{cdn}/videos/..%2F..%2F..%2Fescape.mp4")
    for raw in [*good, *bad, traversal]:
        small_library.insert_raw(raw, position=5)
    small_library.insert_raw(dict(small_library.items[20]), position=25)  # duplicate id
    dest = tmp_path / "inside" / "archive"
    async with FakePictory(small_library, page_size=10) as fake:
        summary = await sync(fake, dest)
    assert summary.exit_code == 1
    failed = {f.item_id for f in summary.failures}
    assert {
        "12345",
        "None",
        "file-url",
        "ftp-url",
        "no-url",
        "wrong-type",
        "refs-not-list",
    } <= failed
    assert "traversal" in failed
    assert summary.total_complete == 30 + len(HOSTILE_IDS)
    outside = [p for p in tmp_path.rglob("*") if not str(p).startswith(str(dest))]
    assert sorted(outside) == [tmp_path / "inside"]
    ids_in_metadata = {
        json.loads(p.read_text("utf-8"))["id"] for p in (dest / "videos").rglob("metadata.json")
    }
    assert set(HOSTILE_IDS) <= ids_in_metadata
    for folder in (dest / "videos").glob("*/*/*"):
        assert len(folder.name) < 120 and "\x00" not in folder.name and "\\" not in folder.name
    with Manifest(dest / ".pictory-archiver" / "manifest.sqlite") as manifest:
        invalid = {r.id: r.error for r in manifest.items("invalid")}
    assert "file:" in invalid["file-url"] and "ftp-url" in invalid


@pytest.mark.parametrize("fault", ["non_json", "no_items", "loop_cursor"])
async def test_broken_listing_pages_stop_cleanly(
    small_fake: FakePictory, dest: Path, fault: str
) -> None:
    small_fake.api_page_faults[1] = fault  # type: ignore[assignment]
    summary = await sync(small_fake, dest)
    assert summary.exit_code == 1 and summary.listing_error
    assert summary.total_complete == (20 if fault == "loop_cursor" else 10)
    with Manifest(dest / ".pictory-archiver" / "manifest.sqlite") as manifest:
        assert manifest.frontier("video") is None


async def test_full_sync_flags_deleted_items_and_keeps_them(
    small_fake: FakePictory, small_library: FakeLibrary, dest: Path
) -> None:
    assert (await sync(small_fake, dest)).exit_code == 0
    gone = [small_library.items[4]["id"], small_library.items[22]["id"]]
    kept = {item_id: sorted(item_folder(dest, item_id).iterdir()) for item_id in gone}
    for item_id in gone:
        small_library.remove(item_id)
    summary = await sync(small_fake, dest, full=True)
    assert summary.exit_code == 0
    with Manifest(dest / ".pictory-archiver" / "manifest.sqlite") as manifest:
        assert manifest.counts()["deleted_upstream"] == 2
        assert manifest.counts()["complete"] == 30
    for item_id in gone:
        folder = item_folder(dest, item_id)
        assert sorted(folder.iterdir()) == kept[item_id]
        metadata = json.loads((folder / "metadata.json").read_text("utf-8"))
        assert metadata["archive"]["deleted_upstream"]
        assert metadata["id"] == item_id


async def test_queue_is_bounded_and_workers_are_limited(
    small_fake: FakePictory, dest: Path
) -> None:
    small_fake.cdn_delay = 0.01
    summary = await sync(small_fake, dest, queue_size=2)
    assert summary.exit_code == 0
    assert 1 < small_fake.cdn_max_active <= 4


async def test_failed_item_on_the_first_page_is_retried_next_run(
    small_fake: FakePictory, small_library: FakeLibrary, dest: Path
) -> None:
    raw = small_library.items[2]
    path = mp4_path(small_library, raw)
    small_fake.fail_asset(path, CdnFault("status", status=404))
    assert (await sync(small_fake, dest)).exit_code == 1
    small_fake.reset_log()
    second = await sync(small_fake, dest)
    assert second.exit_code == 0 and second.total_complete == 30
    assert cdn_requests(small_fake) == [path]


async def test_run_stopped_after_the_walk_connected_resumes_everything(
    small_fake: FakePictory, small_library: FakeLibrary, dest: Path
) -> None:
    """The frontier moved (the whole listing was recorded) but downloads were cut short:
    the next run's walk stops at once, and the unfinished items are still fetched."""
    small_fake.cdn_delay = 0.05
    task = asyncio.create_task(sync(small_fake, dest, queue_size=200))
    manifest_path = dest / ".pictory-archiver" / "manifest.sqlite"
    for _ in range(400):
        await asyncio.sleep(0.01)
        if manifest_path.exists():
            with Manifest(manifest_path) as manifest:
                if manifest.frontier("video") is not None:
                    break
    task.cancel()
    first = await task
    assert first.interrupted and first.total_complete < 30
    small_fake.cdn_delay = 0
    small_fake.reset_log()
    second = await sync(small_fake, dest)
    assert second.exit_code == 0 and second.total_complete == 30
    assert small_fake.count("api") == 1
    for raw in small_library.items:
        assert_item_matches(dest, small_library, raw)
