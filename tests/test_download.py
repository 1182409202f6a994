"""AssetDownloader against the fake CDN over loopback: resume, proofs, retries, storage errors.

Every test checks the bytes that landed on disk against the fake library's own bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from archiver.download import (
    DIGEST_XATTR,
    AssetDownloader,
    AssetRequest,
    FetchedFile,
    part_path,
    read_tag,
    read_validator,
)
from archiver.errors import (
    AssetError,
    ExpiredUrlError,
    PermanentAssetError,
    StorageError,
    TransientAssetError,
)
from archiver.fake import CdnFault, FakeLibrary, FakePictory, RequestRecord
from archiver.retry import RetryBudget, RetryPolicy

FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05)


def cdn_path(library: FakeLibrary, index: int = 0, suffix: str = ".mp4") -> str:
    """The CDN path of item `index`'s asset ending in `suffix` (video by default)."""
    paths = library.asset_paths(library.items[index])
    return next(p for p in paths if p.endswith(suffix) and "_" not in p.rsplit("/", 1)[1][:-4])


def image_path(library: FakeLibrary, role_suffix: str, index: int = 0) -> str:
    """E.g. role_suffix="_preview.jpg" or "_last_frame.png"."""
    return next(p for p in library.asset_paths(library.items[index]) if p.endswith(role_suffix))


def data_of(library: FakeLibrary, path: str) -> bytes:
    asset = library.asset(path)
    assert asset is not None
    return asset.data


def etag_of(library: FakeLibrary, path: str) -> str:
    asset = library.asset(path)
    assert asset is not None
    return asset.etag


def cdn_log(fake: FakePictory, path: str) -> list[RequestRecord]:
    return [r for r in fake.requests if r.origin == "cdn" and r.path == path]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@asynccontextmanager
async def downloader(
    *, retry: RetryPolicy = FAST, timeout: float = 5.0, budget: RetryBudget | None = None
) -> AsyncIterator[AssetDownloader]:
    async with AssetDownloader(retry=retry, timeout=timeout, budget=budget) as opened:
        yield opened


async def fetch(
    fake: FakePictory,
    cdn: str,
    target: Path,
    *,
    media: str = "mp4",
    validator: str | None = None,
    known_size: int | None = None,
    known_validator: str | None = None,
    retry: RetryPolicy = FAST,
    timeout: float = 5.0,
    on_validator: Callable[[str | None], None] | None = None,
) -> FetchedFile:
    request = AssetRequest(
        fake.asset_url(cdn), target, media, validator, known_size, known_validator
    )
    async with downloader(retry=retry, timeout=timeout) as assets:
        return await assets.fetch(request, on_validator or (lambda _: None))


def assert_identical(got: FetchedFile, target: Path, library: FakeLibrary, cdn: str) -> None:
    expected = data_of(library, cdn)
    assert target.read_bytes() == expected
    assert got.path == target
    assert got.size == len(expected)
    assert got.sha256 == library.sha256(cdn) == hashlib.sha256(target.read_bytes()).hexdigest()
    assert not part_path(target).exists()


async def test_plain_fetch_lands_the_exact_bytes_and_reports_the_etag(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    target = tmp_path / "video.mp4"
    seen: list[str | None] = []

    got = await fetch(fake, cdn, target, on_validator=seen.append)

    assert_identical(got, target, library, cdn)
    assert got.validator == etag_of(library, cdn)
    assert got.fetched_bytes == len(data_of(library, cdn))
    assert seen == [etag_of(library, cdn)]
    assert leftovers(tmp_path) == ["video.mp4"]
    (request,) = cdn_log(fake, cdn)
    assert request.header("Authorization") is None
    assert request.header("Accept-Encoding") == "identity"
    assert request.header("Range") is None


@pytest.mark.parametrize(
    ("suffix", "media"), [("_preview.jpg", "jpeg"), ("_last_frame.png", "png")]
)
async def test_images_pass_their_magic_check(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path, suffix: str, media: str
) -> None:
    cdn = image_path(library, suffix)
    target = tmp_path / f"asset{suffix}"
    got = await fetch(fake, cdn, target, media=media)
    assert_identical(got, target, library, cdn)


async def test_signed_url_query_never_reaches_an_error_message(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    fake.signed_urls = True
    cdn = cdn_path(library)
    fake.fail_asset(cdn, CdnFault("status", status=404))
    with pytest.raises(PermanentAssetError) as caught:
        await fetch(fake, cdn, tmp_path / "video.mp4")
    assert "Signature" not in caught.value.message
    assert cdn in caught.value.message


async def test_truncated_body_is_resumed_with_range_and_if_range(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    data, etag = data_of(library, cdn), etag_of(library, cdn)
    cut = 10_000
    fake.fail_asset(cdn, CdnFault("truncate", after=cut))
    target = tmp_path / "video.mp4"
    seen: list[str | None] = []

    got = await fetch(fake, cdn, target, on_validator=seen.append)

    assert_identical(got, target, library, cdn)
    first, second = cdn_log(fake, cdn)
    assert first.header("Range") is None
    assert second.header("Range") == f"bytes={cut}-"
    assert second.header("If-Range") == etag
    assert got.fetched_bytes == len(data) - cut  # only the remainder came in the second request
    assert set(seen) == {etag}


async def test_a_part_left_by_an_earlier_run_is_resumed(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    data, etag = data_of(library, cdn), etag_of(library, cdn)
    target = tmp_path / "video.mp4"
    part_path(target).write_bytes(data[:7000])

    got = await fetch(fake, cdn, target, validator=etag)

    assert_identical(got, target, library, cdn)
    (request,) = cdn_log(fake, cdn)
    assert request.header("Range") == "bytes=7000-"
    assert request.header("If-Range") == etag
    assert got.fetched_bytes == len(data) - 7000
    assert got.validator == etag


async def test_a_resumed_file_is_hashed_over_old_and_new_bytes(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    """The sha256 must cover the bytes already in the .part, not only those just fetched."""
    cdn = image_path(library, "_last_frame.png")
    data = data_of(library, cdn)
    target = tmp_path / "last_frame.png"
    part_path(target).write_bytes(data[: len(data) // 2])

    got = await fetch(fake, cdn, target, media="png", validator=etag_of(library, cdn))

    assert_identical(got, target, library, cdn)
    assert got.fetched_bytes == len(data) - len(data) // 2


async def test_changed_validator_discards_the_part_instead_of_splicing(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    old, old_etag = data_of(library, cdn), etag_of(library, cdn)
    target = tmp_path / "video.mp4"
    part_path(target).write_bytes(old[:9000])
    new = data_of(library, cdn_path(library, 1))  # another valid MP4, same length
    assert new != old
    library.replace_asset(cdn, new)
    new_etag = etag_of(library, cdn)
    seen: list[str | None] = []

    got = await fetch(fake, cdn, target, validator=old_etag, on_validator=seen.append)

    assert target.read_bytes() == new
    assert got.sha256 == hashlib.sha256(new).hexdigest() == library.sha256(cdn)
    assert got.fetched_bytes == len(new)  # the server answered 200 with the whole new object
    assert got.validator == new_etag
    assert seen == [new_etag]
    (request,) = cdn_log(fake, cdn)
    assert request.header("If-Range") == old_etag
    assert not part_path(target).exists()


async def test_a_part_without_validator_is_discarded(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    target = tmp_path / "video.mp4"
    part_path(target).write_bytes(b"\x00junk that must never be spliced" * 100)

    got = await fetch(fake, cdn, target, validator=None)

    assert_identical(got, target, library, cdn)
    (request,) = cdn_log(fake, cdn)
    assert request.header("Range") is None
    assert request.header("If-Range") is None


async def test_part_holding_the_whole_file_finishes_on_416_without_the_body(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    data, etag = data_of(library, cdn), etag_of(library, cdn)
    target = tmp_path / "video.mp4"
    part_path(target).write_bytes(data)

    got = await fetch(fake, cdn, target, validator=etag)

    assert_identical(got, target, library, cdn)
    assert got.fetched_bytes == 0
    (request,) = cdn_log(fake, cdn)
    assert request.header("Range") == f"bytes={len(data)}-"


async def test_part_longer_than_the_object_restarts_from_zero(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    data, etag = data_of(library, cdn), etag_of(library, cdn)
    target = tmp_path / "video.mp4"
    part_path(target).write_bytes(data + b"trailing garbage")

    got = await fetch(fake, cdn, target, validator=etag)

    assert_identical(got, target, library, cdn)
    first, second = cdn_log(fake, cdn)
    assert first.header("Range") == f"bytes={len(data) + 16}-"
    assert second.header("Range") is None


async def test_expired_url_keeps_the_part_for_a_fresh_url(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    fake.signed_urls = True
    cdn = cdn_path(library)
    data, etag = data_of(library, cdn), etag_of(library, cdn)
    target = tmp_path / "video.mp4"
    fake.fail_asset(cdn, CdnFault("truncate", after=5000))
    seen: list[str | None] = []
    with pytest.raises(TransientAssetError):  # no retries: the cut leaves a .part
        await fetch(fake, cdn, target, retry=RetryPolicy(attempts=0), on_validator=seen.append)
    assert seen == [etag]
    assert part_path(target).read_bytes() == data[:5000]

    stale = AssetRequest(fake.asset_url(cdn), target, "mp4", validator=etag)
    fake.expire_urls()
    async with downloader() as assets:
        with pytest.raises(ExpiredUrlError):
            await assets.fetch(stale, seen.append)
        assert part_path(target).read_bytes() == data[:5000]
        fresh = AssetRequest(fake.asset_url(cdn), target, "mp4", validator=etag)
        got = await assets.fetch(fresh, seen.append)

    assert_identical(got, target, library, cdn)
    assert got.fetched_bytes == len(data) - 5000
    assert cdn_log(fake, cdn)[-1].header("Range") == "bytes=5000-"


async def test_bytes_received_before_a_stall_are_kept_for_the_retry(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    """A read timeout mid-body keeps what arrived (even under 1 MiB) and resumes from it."""
    cdn = cdn_path(library)
    data = data_of(library, cdn)
    fake.fail_asset(cdn, CdnFault("slow", after=12_000, delay=1.0))
    target = tmp_path / "video.mp4"

    got = await fetch(fake, cdn, target, timeout=0.3)

    assert_identical(got, target, library, cdn)
    first, second = cdn_log(fake, cdn)
    assert first.header("Range") is None
    assert second.header("Range") == "bytes=12000-"
    assert got.fetched_bytes == len(data) - 12_000


async def test_html_error_page_with_200_is_retried(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    fake.fail_asset(cdn, CdnFault("html"), CdnFault("html"))
    target = tmp_path / "video.mp4"

    got = await fetch(fake, cdn, target)

    assert_identical(got, target, library, cdn)
    assert len(cdn_log(fake, cdn)) == 3


async def test_html_every_time_is_never_stored(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    fake.fail_asset(cdn, *[CdnFault("html")] * 10)
    target = tmp_path / "video.mp4"

    with pytest.raises(TransientAssetError):
        await fetch(fake, cdn, target)

    assert len(cdn_log(fake, cdn)) == FAST.attempts + 1
    assert not target.exists()
    assert not part_path(target).exists()
    assert leftovers(tmp_path) == []


async def test_html_page_on_a_resume_keeps_the_good_part(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    data, etag = data_of(library, cdn), etag_of(library, cdn)
    target = tmp_path / "video.mp4"
    part_path(target).write_bytes(data[:8000])
    fake.fail_asset(cdn, CdnFault("html"))

    got = await fetch(fake, cdn, target, validator=etag)

    assert_identical(got, target, library, cdn)
    assert [r.header("Range") for r in cdn_log(fake, cdn)] == ["bytes=8000-", "bytes=8000-"]
    assert got.fetched_bytes == len(data) - 8000


async def test_html_body_with_a_media_content_type_is_rejected(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = image_path(library, "_preview.jpg")
    library.replace_asset(cdn, b"  <!DOCTYPE html><html><body>Bad gateway</body></html>")
    target = tmp_path / "preview.jpg"

    with pytest.raises(AssetError):
        await fetch(fake, cdn, target, media="jpeg")

    assert leftovers(tmp_path) == []


async def test_wrong_magic_for_the_media_is_never_stored(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    png = data_of(library, image_path(library, "_last_frame.png"))
    library.replace_asset(cdn, png)
    target = tmp_path / "video.mp4"

    with pytest.raises(AssetError) as caught:
        await fetch(fake, cdn, target, media="mp4")

    assert "mp4" in caught.value.message
    assert leftovers(tmp_path) == []


async def test_empty_body_is_not_a_file(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = image_path(library, "_thumbnail.jpg")
    library.replace_asset(cdn, b"")
    target = tmp_path / "thumbnail.jpg"

    with pytest.raises(AssetError):
        await fetch(fake, cdn, target, media="jpeg")

    assert leftovers(tmp_path) == []


async def test_same_version_with_a_different_size_is_permanent(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    data, etag = data_of(library, cdn), etag_of(library, cdn)
    target = tmp_path / "video.mp4"

    with pytest.raises(PermanentAssetError):
        await fetch(fake, cdn, target, known_size=len(data) + 1, known_validator=etag)

    assert len(cdn_log(fake, cdn)) == 1
    assert leftovers(tmp_path) == []


async def test_new_version_may_have_a_new_size(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    data, etag = data_of(library, cdn), etag_of(library, cdn)
    target = tmp_path / "video.mp4"
    got = await fetch(fake, cdn, target, known_size=len(data) + 1, known_validator='"older"')
    assert_identical(got, target, library, cdn)
    got = await fetch(fake, cdn, target, known_size=len(data), known_validator=etag)
    assert_identical(got, target, library, cdn)


@pytest.mark.parametrize("status", [404, 410])
async def test_gone_is_permanent_after_one_request(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path, status: int
) -> None:
    cdn = cdn_path(library)
    fake.fail_asset(cdn, *[CdnFault("status", status=status)] * 5)
    target = tmp_path / "video.mp4"

    with pytest.raises(PermanentAssetError) as caught:
        await fetch(fake, cdn, target)

    assert str(status) in caught.value.message
    assert len(cdn_log(fake, cdn)) == 1
    assert leftovers(tmp_path) == []


async def test_asset_removed_upstream_is_a_real_404(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    library.remove(library.items[0]["id"])
    with pytest.raises(PermanentAssetError):
        await fetch(fake, cdn, tmp_path / "video.mp4")
    assert len(cdn_log(fake, cdn)) == 1


async def test_expired_signed_url_is_an_expired_url_error_without_retries(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    fake.signed_urls = True
    cdn = cdn_path(library)
    url = fake.asset_url(cdn)
    fake.expire_urls()
    target = tmp_path / "video.mp4"

    async with downloader() as assets:
        with pytest.raises(ExpiredUrlError):
            await assets.fetch(AssetRequest(url, target, "mp4"), lambda _: None)

    assert len(cdn_log(fake, cdn)) == 1
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "fault",
    [
        CdnFault("status", status=500),
        CdnFault("status", status=503, retry_after="0"),
        CdnFault("status", status=429, retry_after="0"),
        CdnFault("status", status=429),
    ],
    ids=["500", "503", "429", "429-no-retry-after"],
)
async def test_server_errors_are_retried(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path, fault: CdnFault
) -> None:
    cdn = cdn_path(library)
    fake.fail_asset(cdn, fault, fault)
    target = tmp_path / "video.mp4"

    got = await fetch(fake, cdn, target)

    assert_identical(got, target, library, cdn)
    assert len(cdn_log(fake, cdn)) == 3


async def test_two_connection_resets_are_retried(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    # aiohttp silently retries a GET once after a reset: two make the downloader see one
    fake.fail_asset(cdn, CdnFault("reset"), CdnFault("reset"))
    target = tmp_path / "video.mp4"

    got = await fetch(fake, cdn, target)

    assert_identical(got, target, library, cdn)
    assert len(cdn_log(fake, cdn)) == 3


async def test_retries_exhausted_is_transient_and_leaves_nothing(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    fake.fail_asset(cdn, *[CdnFault("status", status=503)] * 10)
    target = tmp_path / "video.mp4"

    with pytest.raises(TransientAssetError) as caught:
        await fetch(fake, cdn, target)

    assert "503" in caught.value.message
    assert len(cdn_log(fake, cdn)) == FAST.attempts + 1
    assert leftovers(tmp_path) == []


async def test_run_budget_stops_retries_across_fetches(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    first, second = cdn_path(library, 0), cdn_path(library, 1)
    fake.fail_asset(first, *[CdnFault("status", status=503)] * 10)
    fake.fail_asset(second, *[CdnFault("status", status=503)] * 10)
    budget = RetryBudget(retries=2)

    async with downloader(budget=budget) as assets:
        with pytest.raises(TransientAssetError):
            await assets.fetch(
                AssetRequest(fake.asset_url(first), tmp_path / "a.mp4", "mp4"), lambda _: None
            )
        with pytest.raises(TransientAssetError):
            await assets.fetch(
                AssetRequest(fake.asset_url(second), tmp_path / "b.mp4", "mp4"), lambda _: None
            )

    assert len(cdn_log(fake, first)) == 3  # 1 + the 2 retries the run had
    assert len(cdn_log(fake, second)) == 1  # budget spent: no retry at all
    assert budget.left == 0


async def test_retry_after_pauses_every_worker_for_that_host(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    """A 429 with Retry-After: 1 on one asset holds back the next request of another."""
    paused, other = cdn_path(library, 0), cdn_path(library, 1)
    fake.fail_asset(paused, CdnFault("status", status=429, retry_after="1"))
    # the other worker's first response stalls past the read timeout, so it must retry
    fake.fail_asset(other, CdnFault("slow", after=1000, delay=0.8))
    arrivals: list[float] = []

    async def watch() -> None:
        while True:
            while len(arrivals) < len(fake.requests):
                arrivals.append(time.monotonic())
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    try:
        async with downloader(timeout=0.3) as assets:
            results = await asyncio.gather(
                assets.fetch(
                    AssetRequest(fake.asset_url(paused), tmp_path / "a.mp4", "mp4"),
                    lambda _: None,
                ),
                assets.fetch(
                    AssetRequest(fake.asset_url(other), tmp_path / "b.mp4", "mp4"),
                    lambda _: None,
                ),
            )
        await asyncio.sleep(0.01)
    finally:
        watcher.cancel()

    assert_identical(results[0], tmp_path / "a.mp4", library, paused)
    assert_identical(results[1], tmp_path / "b.mp4", library, other)
    log = [(r.path, t) for r, t in zip(fake.requests, arrivals, strict=True)]
    told_to_wait = next(t for p, t in log if p == paused)
    other_times = [t for p, t in log if p == other]
    assert len(other_times) == 2
    assert other_times[0] - told_to_wait < 0.5  # both were in flight together
    assert other_times[1] - told_to_wait >= 0.9  # the other's retry waited for the pause
    paused_retry = [t for p, t in log if p == paused][1]
    assert paused_retry - told_to_wait >= 0.9


async def test_parent_replaced_by_a_file_is_a_storage_error(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    blocker = tmp_path / "folder"
    blocker.write_bytes(b"not a directory")

    with pytest.raises(StorageError) as caught:
        await fetch(fake, cdn_path(library), blocker / "video.mp4")

    assert not isinstance(caught.value, OSError)
    assert "folder" in caught.value.message
    assert blocker.read_bytes() == b"not a directory"


async def test_missing_uncreatable_directory_is_a_storage_error(
    library: FakeLibrary, fake: FakePictory
) -> None:
    target = Path("/proc/no-such-archive/videos/video.mp4")  # even root cannot create it
    with pytest.raises(StorageError):
        await fetch(fake, cdn_path(library), target)


async def test_final_name_taken_by_a_directory_is_a_storage_error(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    target = tmp_path / "video.mp4"
    target.mkdir()
    with pytest.raises(StorageError):
        await fetch(fake, cdn_path(library), target)
    assert target.is_dir()


async def test_undeletable_stale_part_is_a_storage_error(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    target = tmp_path / "video.mp4"
    part_path(target).mkdir()  # a stale .part the downloader cannot unlink
    (part_path(target) / "x").write_bytes(b"x")

    with pytest.raises(StorageError):
        await fetch(fake, cdn_path(library), target, validator=None)


async def test_file_size_limit_mid_body_is_a_storage_error_and_stays_resumable(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    """A write refused by the OS (EFBIG under RLIMIT_FSIZE, like ENOSPC) stops the fetch with
    StorageError; the bytes written stay in the .part and the next run resumes from them."""
    cdn = cdn_path(library)
    data, etag = data_of(library, cdn), etag_of(library, cdn)
    target = tmp_path / "video.mp4"
    seen: list[str | None] = []
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, hard))
    try:
        with pytest.raises(StorageError) as caught:
            await fetch(fake, cdn, target, on_validator=seen.append)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    assert "video.mp4" in caught.value.message
    assert len(cdn_log(fake, cdn)) == 1  # not retried: the disk will not get better by itself
    assert not target.exists()
    kept = part_path(target).read_bytes()
    assert kept == data[: len(kept)]
    assert seen == [etag]

    got = await fetch(fake, cdn, target, validator=etag)

    assert_identical(got, target, library, cdn)
    if kept:
        assert cdn_log(fake, cdn)[-1].header("Range") == f"bytes={len(kept)}-"
        assert got.fetched_bytes == len(data) - len(kept)


async def test_a_final_file_landed_before_a_crash_is_adopted_not_refetched(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    data, etag = data_of(library, cdn), etag_of(library, cdn)
    target = tmp_path / "video.mp4"
    target.write_bytes(data)
    request = AssetRequest(fake.asset_url(cdn), target, "mp4", etag, adopt_final=True)
    async with downloader() as assets:
        got = await assets.fetch(request, lambda _: None)
    assert_identical(got, target, library, cdn)
    assert got.fetched_bytes == 0
    (sent,) = cdn_log(fake, cdn)
    assert sent.header("Range") == f"bytes={len(data)}-" and sent.header("If-Range") == etag


async def test_an_adopted_file_of_an_old_version_is_replaced(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    cdn = cdn_path(library)
    old = data_of(library, cdn)
    old_etag = etag_of(library, cdn)
    library.replace_asset(cdn, old[:4] + b"ftyp" + b"n" * 5000)
    target = tmp_path / "video.mp4"
    target.write_bytes(old)
    request = AssetRequest(fake.asset_url(cdn), target, "mp4", old_etag, adopt_final=True)
    async with downloader() as assets:
        got = await assets.fetch(request, lambda _: None)
    assert_identical(got, target, library, cdn)
    assert got.fetched_bytes == len(data_of(library, cdn))


async def test_a_file_that_carries_its_validator_is_adopted_without_the_manifest(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    """A crash after the rename but before any manifest commit: the validator travels on
    the file itself (xattr), so the resume proves the file with one empty Range request."""
    cdn = cdn_path(library)
    data, etag = data_of(library, cdn), etag_of(library, cdn)
    target = tmp_path / "video.mp4"
    first = await fetch(fake, cdn, target)
    assert read_validator(target) == etag
    assert first.fetched_bytes == len(data)
    fake.reset_log()
    request = AssetRequest(fake.asset_url(cdn), target, "mp4", adopt_final=True)
    async with downloader() as assets:
        got = await assets.fetch(request, lambda _: None)
    assert_identical(got, target, library, cdn)
    assert got.fetched_bytes == 0
    (sent,) = cdn_log(fake, cdn)
    assert sent.header("Range") == f"bytes={len(data)}-" and sent.header("If-Range") == etag


async def test_a_whole_part_left_by_a_crash_is_proven_from_its_tags(
    library: FakeLibrary, fake: FakePictory, tmp_path: Path
) -> None:
    """Staged for a group commit when the run died: its validator and sha256 are on the
    file, so the resume costs one empty Range request and no re-read of the bytes."""
    cdn = cdn_path(library)
    data, etag = data_of(library, cdn), etag_of(library, cdn)
    target = tmp_path / "video.mp4"
    staged = AssetRequest(fake.asset_url(cdn), target, "mp4", stage_only=True)
    async with downloader() as assets:
        first = await assets.fetch(staged, lambda _: None)
    assert first.staged == part_path(target) and not target.exists()
    assert read_tag(part_path(target), DIGEST_XATTR) == first.sha256 == library.sha256(cdn)
    os.setxattr(part_path(target), DIGEST_XATTR, b"f" * 64)  # proves the tag is what is used
    fake.reset_log()
    async with downloader() as assets:
        again = await assets.fetch(AssetRequest(fake.asset_url(cdn), target, "mp4"), print)
    assert again.sha256 == "f" * 64 and again.fetched_bytes == 0
    assert target.read_bytes() == data and not part_path(target).exists()
    (sent,) = cdn_log(fake, cdn)
    assert sent.header("Range") == f"bytes={len(data)}-" and sent.header("If-Range") == etag
