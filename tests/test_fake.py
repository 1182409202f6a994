"""The fake Pictory API + CDN, exercised over real loopback sockets with a real aiohttp client."""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
import zlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from archiver.fake import DEMO_API_KEY, CdnFault, FakeLibrary, FakePictory, run_in_thread
from archiver.fake.media import TINY_JPEG, make_jpeg, make_mp4, make_png
from archiver.fake.server import decode_cursor, encode_cursor

AUTH = {"Authorization": DEMO_API_KEY}


@pytest.fixture
def lib() -> FakeLibrary:
    return FakeLibrary(250, seed=7)


@pytest.fixture
async def srv(lib: FakeLibrary) -> AsyncIterator[FakePictory]:
    async with FakePictory(lib, page_size=100) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def listing(srv: FakePictory) -> str:
    return srv.api_url + "/v1/aistudio/videos"


async def get_page(
    http: aiohttp.ClientSession, srv: FakePictory, key: str | None = None
) -> dict[str, Any]:
    params = {"nextPageKey": key} if key is not None else None
    async with http.get(listing(srv), params=params, headers=AUTH) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def walk(http: aiohttp.ClientSession, srv: FakePictory) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    key = None
    while True:
        page = await get_page(http, srv, key)
        items += page["items"]
        key = page.get("nextPageKey")
        if key is None:
            return items


def path_of(srv: FakePictory, url: str) -> str:
    assert url.startswith(srv.cdn_url)
    return url[len(srv.cdn_url) :].split("?")[0]


def png_chunks(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        kinds.append(kind)
        pos += 12 + length
    return kinds


def test_media_files_are_real_and_deterministic() -> None:
    mp4 = make_mp4(3, 100_000)
    assert len(mp4) == 100_000 and mp4[4:12] == b"ftypisom"
    assert b"free" in mp4[:64] and b"mdat" in mp4[:64]
    assert make_mp4(3, 100_000) == mp4 != make_mp4(4, 100_000)
    for size in (4096, 200_000):
        jpeg = make_jpeg(5, size)
        assert len(jpeg) == size
        assert jpeg[:3] == b"\xff\xd8\xff" and jpeg[-2:] == b"\xff\xd9"
        assert jpeg[:20] == TINY_JPEG[:20] and jpeg.endswith(TINY_JPEG[20:])
    png = make_png(9, width=20, height=10)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png.endswith(b"IEND\xaeB`\x82")
    assert png_chunks(png) == [b"IHDR", b"IDAT", b"IEND"]
    assert make_png(9, width=20, height=10) == png != make_png(10, width=20, height=10)


def test_library_items_follow_the_documented_shape(lib: FakeLibrary) -> None:
    items = lib.items
    assert len(items) == 250 and items[0]["createdDate"] == "2026-04-09T18:51:47.967Z"
    dates = [datetime.fromisoformat(i["createdDate"]) for i in items]
    assert dates == sorted(dates, reverse=True) and len(set(dates)) == 250
    assert len({i["id"] for i in items}) == 250
    for item in items:
        assert len(item["id"]) == 33
        stamp = item["createdDate"].replace("-", "").replace("T", "").replace(":", "")
        assert item["id"][:17] == stamp.replace(".", "")[:17]
        assert item["url"].startswith("{cdn}/videos/user/") and item["url"].endswith(".mp4")
        assert item["lastFrameImageUrl"].endswith("_last_frame.png")
    with_optional = [i for i in items if "referenceImageUrls" in i]
    assert len(with_optional) == 50
    refs = with_optional[0]["referenceImageUrls"]
    assert refs[0].endswith("_last_frame.png") and "/images/user/" in refs[1]
    assert with_optional[0]["extendVideoUrl"] in {i["url"] for i in items}
    prompts = [i["prompt"] for i in items]
    assert any("\n" in p for p in prompts) and any("/" in p for p in prompts)
    assert any(not p.isascii() for p in prompts) and max(map(len, prompts)) > 2000
    assert FakeLibrary(250, seed=7).items == items


def test_big_library_is_cheap_and_assets_are_lazy() -> None:
    started = time.perf_counter()
    big = FakeLibrary(50_000, video_size=20 * 1024 * 1024)
    assert time.perf_counter() - started < 5
    mp4 = big.asset(big.asset_paths(big.items[-1])[0])
    assert mp4 is not None and len(mp4.data) == 20 * 1024 * 1024
    assert big.asset("/videos/user/nobody/nothing.mp4") is None


async def test_pagination_collects_every_item_once(
    srv: FakePictory, lib: FakeLibrary, http: aiohttp.ClientSession
) -> None:
    items = await walk(http, srv)
    assert [i["id"] for i in items] == [i["id"] for i in lib.items]
    assert srv.count("api") == 3
    assert all(i["url"].startswith(srv.cdn_url + "/videos/") for i in items)
    assert "{cdn}" not in str(items)


async def test_cursor_needs_url_encoding(srv: FakePictory, http: aiohttp.ClientSession) -> None:
    key = (await get_page(http, srv))["nextPageKey"]
    assert "+" in key and "/" in key and "=" in key
    assert decode_cursor(key) is not None and decode_cursor(key.replace("+", " ")) is None
    async with http.get(f"{listing(srv)}?nextPageKey={key}", headers=AUTH) as resp:
        assert resp.status == 400
    assert len((await get_page(http, srv, key))["items"]) == 100
    assert "+" in encode_cursor({"n": 0}) and encode_cursor({"n": 0}).endswith("==")


async def test_wrong_or_missing_key_is_401(srv: FakePictory, http: aiohttp.ClientSession) -> None:
    for headers in (
        {},
        {"Authorization": "pictai_wrong"},
        {"Authorization": "Bearer " + srv.api_key},
    ):
        async with http.get(listing(srv), headers=headers) as resp:
            assert resp.status == 401
            assert await resp.json() == {"message": "Unauthorized"}


async def test_empty_library_is_an_empty_page(http: aiohttp.ClientSession) -> None:
    async with FakePictory(FakeLibrary(0)) as server:
        assert await get_page(http, server) == {"items": []}


async def test_new_items_at_the_head_do_not_shift_later_pages(
    srv: FakePictory, lib: FakeLibrary, http: aiohttp.ClientSession
) -> None:
    before = [i["id"] for i in lib.items]
    first = await get_page(http, srv)
    new = lib.add_new(30)
    second = await get_page(http, srv, first["nextPageKey"])
    assert [i["id"] for i in second["items"]] == before[100:200]
    fresh = await walk(http, srv)
    assert [i["id"] for i in fresh] == [i["id"] for i in new] + before
    assert new[0]["createdDate"] > new[-1]["createdDate"] > lib.items[30]["createdDate"]


async def test_removed_item_leaves_listing_and_cdn(
    srv: FakePictory, lib: FakeLibrary, http: aiohttp.ClientSession
) -> None:
    victim = lib.items[3]
    lib.remove(victim["id"])
    assert victim["id"] not in {i["id"] for i in await walk(http, srv)}
    async with http.get(srv.cdn_url + victim["url"][len("{cdn}") :]) as resp:
        assert resp.status == 404


async def test_hostile_raw_item_is_served_verbatim(
    srv: FakePictory, lib: FakeLibrary, http: aiohttp.ClientSession
) -> None:
    good = lib.items[0]
    hostile = {"id": None, "url": good["url"], "width": "720", "extra": {"nested": [1, "{cdn}/x"]}}
    lib.insert_raw(hostile)
    served = (await get_page(http, srv))["items"][0]
    assert served["id"] is None and served["width"] == "720"
    assert served["url"].startswith(srv.cdn_url) and served["extra"]["nested"][1].endswith("/x")


async def test_cdn_ranges(srv: FakePictory, lib: FakeLibrary, http: aiohttp.ClientSession) -> None:
    path = lib.asset_paths(lib.items[0])[0]
    asset = lib.asset(path)
    assert asset is not None
    size, url = len(asset.data), srv.cdn_url + path
    async with http.head(url) as resp:
        assert resp.status == 200 and resp.headers["Content-Length"] == str(size)
        assert resp.headers["Accept-Ranges"] == "bytes" and resp.headers["ETag"] == asset.etag
        assert resp.headers["Content-Type"] == "video/mp4" and "Last-Modified" in resp.headers
    async with http.get(url) as resp:
        assert resp.status == 200 and await resp.read() == asset.data
    async with http.get(url, headers={"Range": "bytes=1000-"}) as resp:
        assert (
            resp.status == 206 and resp.headers["Content-Range"] == f"bytes 1000-{size - 1}/{size}"
        )
        assert await resp.read() == asset.data[1000:]
    async with http.get(url, headers={"Range": "bytes=10-19", "If-Range": asset.etag}) as resp:
        assert resp.status == 206 and await resp.read() == asset.data[10:20]
    async with http.get(url, headers={"Range": "bytes=10-", "If-Range": asset.last_modified}) as r:
        assert r.status == 206
    async with http.get(url, headers={"Range": "bytes=10-", "If-Range": '"stale"'}) as resp:
        assert resp.status == 200 and await resp.read() == asset.data
    async with http.get(url, headers={"Range": f"bytes={size}-"}) as resp:
        assert resp.status == 416 and resp.headers["Content-Range"] == f"bytes */{size}"
    async with http.get(srv.cdn_url + "/videos/user/nobody/none.mp4") as resp:
        assert resp.status == 404


async def test_replaced_asset_changes_etag(
    srv: FakePictory, lib: FakeLibrary, http: aiohttp.ClientSession
) -> None:
    path = lib.asset_paths(lib.items[1])[1]
    old = lib.asset(path)
    assert old is not None
    lib.replace_asset(path, make_jpeg(99, 5000))
    async with http.get(
        srv.cdn_url + path, headers={"Range": "bytes=5-", "If-Range": old.etag}
    ) as r:
        assert r.status == 200 and r.headers["ETag"] != old.etag
        assert await r.read() == make_jpeg(99, 5000)
    assert lib.sha256(path) == hashlib.sha256(make_jpeg(99, 5000)).hexdigest()


async def test_api_failures_resets_and_delay(srv: FakePictory, http: aiohttp.ClientSession) -> None:
    srv.api_failures = [500, 429, 503]
    srv.retry_after = "2"
    statuses = []
    for _ in range(4):
        async with http.get(listing(srv), headers=AUTH) as resp:
            statuses.append((resp.status, resp.headers.get("Retry-After")))
            await resp.json()
    assert statuses == [(500, None), (429, "2"), (503, "2"), (200, None)]
    # aiohttp retries an idempotent request once after a disconnect, so one reset is invisible.
    srv.api_resets = 2
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.get(listing(srv), headers=AUTH)
    assert srv.api_resets == 0
    srv.api_delay = 0.3
    started = time.perf_counter()
    async with http.get(listing(srv), headers=AUTH) as resp:
        assert resp.status == 200
    assert time.perf_counter() - started >= 0.3


async def test_api_page_faults(srv: FakePictory, http: aiohttp.ClientSession) -> None:
    key1 = (await get_page(http, srv))["nextPageKey"]
    srv.api_page_faults = {1: "non_json"}
    async with http.get(listing(srv), params={"nextPageKey": key1}, headers=AUTH) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
    srv.api_page_faults = {1: "no_items"}
    assert "items" not in await get_page(http, srv, key1)
    srv.api_page_faults = {1: "loop_cursor"}
    assert (await get_page(http, srv, key1))["nextPageKey"] == key1
    srv.api_page_faults = {0: "loop_cursor"}
    key0 = (await get_page(http, srv))["nextPageKey"]
    assert (await get_page(http, srv, key0))["nextPageKey"] == key0
    srv.api_page_faults = {0: "redirect"}
    async with http.get(listing(srv), headers=AUTH, allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"].startswith(srv.cdn_url)
    srv.reset_log()
    async with http.get(listing(srv), headers=AUTH) as resp:
        assert resp.status == 404
    cdn_hits = [r for r in srv.requests if r.origin == "cdn"]
    assert len(cdn_hits) == 1 and cdn_hits[0].header("authorization") is None


async def test_cdn_faults(srv: FakePictory, lib: FakeLibrary, http: aiohttp.ClientSession) -> None:
    path = lib.asset_paths(lib.items[0])[0]
    url, data = srv.cdn_url + path, lib.asset(path).data  # type: ignore[union-attr]
    srv.fail_asset(
        path,
        CdnFault("status", status=429, retry_after="1"),
        CdnFault("status", status=410),
        CdnFault("html"),
        CdnFault("truncate", after=1000),
        CdnFault("slow", delay=0.3, after=10),
    )
    async with http.get(url) as resp:
        assert (resp.status, resp.headers["Retry-After"]) == (429, "1")
    async with http.get(url) as resp:
        assert resp.status == 410
    async with http.get(url) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
    async with http.get(url) as resp:
        assert resp.headers["Content-Length"] == str(len(data))
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    started = time.perf_counter()
    async with http.get(url) as resp:
        assert await resp.read() == data
    assert time.perf_counter() - started >= 0.3
    srv.fail_asset(path, CdnFault("reset"), CdnFault("reset"))
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.get(url)
    async with http.get(url) as resp:
        assert resp.status == 200 and await resp.read() == data
    assert srv.fail_all_assets_matching("_thumbnail.jpg", CdnFault("status", status=404)) == 250


async def test_cdn_concurrency_gauge_and_log(
    srv: FakePictory, lib: FakeLibrary, http: aiohttp.ClientSession
) -> None:
    srv.cdn_delay = 0.2
    paths = [lib.asset_paths(item)[0] for item in lib.items[:6]]

    async def fetch(path: str) -> int:
        async with http.get(srv.cdn_url + path) as resp:
            await resp.read()
            return resp.status

    assert await asyncio.gather(*(fetch(p) for p in paths)) == [200] * 6
    assert srv.cdn_max_active == 6 and srv.cdn_active == 0 and srv.count("cdn") == 6
    assert all(r.header("Authorization") is None for r in srv.requests)


async def test_signed_urls_expire(srv: FakePictory, http: aiohttp.ClientSession) -> None:
    srv.signed_urls = True
    url = (await get_page(http, srv))["items"][0]["url"]
    assert "?Expires=" in url and "&Signature=" in url
    async with http.get(url) as resp:
        assert resp.status == 200
    async with http.get(url.split("?")[0]) as resp:
        assert resp.status == 403
    srv.expire_urls()
    async with http.get(url) as resp:
        assert resp.status == 403 and "AccessDenied" in await resp.text()
    fresh = (await get_page(http, srv))["items"][0]["url"]
    assert fresh != url and path_of(srv, fresh) == path_of(srv, url)
    async with http.get(fresh) as resp:
        assert resp.status == 200


def test_run_in_thread_from_sync_code() -> None:
    library = FakeLibrary(30)

    async def fetch_all(server: FakePictory) -> list[int]:
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(2):
                async with session.get(listing(server), headers=AUTH) as resp:
                    statuses.append(resp.status)
            return statuses

    with run_in_thread(library, page_size=10) as server:
        server.fail_api(503)
        assert asyncio.run(fetch_all(server)) == [503, 200]
        assert server.count("api") == 2
