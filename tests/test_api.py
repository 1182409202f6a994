"""PictoryClient against the fake API over loopback: paging, retries, auth, key hygiene."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

import pytest

from archiver.api import Page, PictoryClient, origin
from archiver.errors import ApiError, ArchiverError, AuthError, ExitCode
from archiver.fake import DEMO_API_KEY, FakeLibrary, FakePictory
from archiver.fake.server import decode_cursor
from archiver.models import VIDEO, Secret
from archiver.retry import RetryPolicy

FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05, max_wait=0.05)


def make_client(
    fake: FakePictory, key: str = DEMO_API_KEY, retry: RetryPolicy = FAST, timeout: float = 5.0
) -> PictoryClient:
    return PictoryClient(fake.api_url, Secret(key), timeout=timeout, retry=retry)


async def list_all(
    fake: FakePictory, key: str = DEMO_API_KEY, retry: RetryPolicy = FAST, timeout: float = 5.0
) -> list[Page]:
    async with make_client(fake, key, retry, timeout) as client:
        return [page async for page in client.list_pages(VIDEO)]


async def list_error(fake: FakePictory, retry: RetryPolicy = FAST, key: str = DEMO_API_KEY) -> str:
    """The message of the ApiError a listing ends in, checked to be free of the key."""
    with pytest.raises(ApiError) as info:
        await list_all(fake, key=key, retry=retry)
    assert_no_key(info.value)
    return info.value.message


def assert_no_key(exc: ArchiverError) -> None:
    for text in (exc.message, str(exc), repr(exc)):
        assert DEMO_API_KEY not in text
        assert DEMO_API_KEY[7:] not in text


def all_ids(pages: list[Page]) -> list[str]:
    return [item["id"] for page in pages for item in page.items]


def api_queries(fake: FakePictory) -> list[str]:
    return [r.query for r in fake.requests if r.origin == "api"]


async def test_lists_every_item_once_over_three_pages(
    fake: FakePictory, library: FakeLibrary
) -> None:
    pages = await list_all(fake)

    assert [page.number for page in pages] == [1, 2, 3]
    assert [len(page.items) for page in pages] == [100, 100, 50]
    assert all_ids(pages) == [raw["id"] for raw in library.items]
    assert len(set(all_ids(pages))) == 250
    assert pages[0].items[0] == fake.render(library.items[0])
    assert pages[-1].next_key is None
    assert fake.count("api") == 3
    assert fake.count("cdn") == 0


async def test_cursor_is_passed_back_url_encoded(fake: FakePictory) -> None:
    pages = await list_all(fake)
    queries = api_queries(fake)

    assert queries[0] == ""
    for previous, query in zip(pages[:-1], queries[1:], strict=True):
        assert previous.next_key is not None
        assert "+" in previous.next_key and "/" in previous.next_key
        assert "%2B" in query  # a raw '+' would reach the server as a space
        assert parse_qs(query) == {"nextPageKey": [previous.next_key]}
        assert decode_cursor(previous.next_key) is not None


async def test_key_is_sent_bare_to_the_api(fake: FakePictory) -> None:
    await list_all(fake)
    api = [r for r in fake.requests if r.origin == "api"]
    assert len(api) == 3
    for record in api:
        assert record.header("Authorization") == DEMO_API_KEY
        assert record.header("Accept") == "application/json"


async def test_empty_library_is_one_empty_page() -> None:
    async with FakePictory(FakeLibrary(0)) as fake:
        pages = await list_all(fake)
        assert pages == [Page(number=1, items=(), next_key=None)]
        assert fake.count("api") == 1


async def test_items_added_at_the_head_while_paging_do_not_repeat_or_skip(
    fake: FakePictory, library: FakeLibrary
) -> None:
    original = [raw["id"] for raw in library.items]
    seen: list[str] = []
    async with make_client(fake) as client:
        async for page in client.list_pages(VIDEO):
            seen += [item["id"] for item in page.items]
            if page.number == 1:
                library.add_new(7)
    assert seen == original


async def test_401_is_auth_error_after_one_request() -> None:
    async with FakePictory(FakeLibrary(3), api_key="pictai_the_right_one_0000") as fake:
        with pytest.raises(AuthError) as info:
            await list_all(fake, retry=RetryPolicy(attempts=5, base=0.01, cap=0.05))
        assert fake.count("api") == 1
    assert info.value.exit_code == ExitCode.AUTH
    assert "401" in info.value.message
    assert_no_key(info.value)


async def test_injected_401_is_not_retried(fake: FakePictory) -> None:
    fake.fail_api(401)
    with pytest.raises(AuthError):
        await list_all(fake)
    assert fake.count("api") == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
async def test_retryable_status_then_success(
    fake: FakePictory, library: FakeLibrary, status: int
) -> None:
    fake.fail_api(status, status)
    pages = await list_all(fake)
    assert all_ids(pages) == [raw["id"] for raw in library.items]
    assert fake.count("api") == 2 + 3


async def test_mixed_failures_are_all_retried(fake: FakePictory) -> None:
    fake.fail_api(500, 502, 503, 429)
    async with make_client(fake, retry=RetryPolicy(attempts=4, base=0.01, cap=0.05)) as client:
        pages = [page async for page in client.list_pages(VIDEO)]
        assert client.requests_made == 4 + 3
    assert len(all_ids(pages)) == 250
    assert fake.count("api") == 4 + 3


async def test_retry_mid_listing_resends_the_same_cursor(fake: FakePictory) -> None:
    async with make_client(fake) as client:
        pages = []
        async for page in client.list_pages(VIDEO):
            pages.append(page)
            if page.number == 1:
                fake.fail_api(503)
    assert len(all_ids(pages)) == 250
    queries = api_queries(fake)
    assert len(queries) == 4
    assert queries[1] == queries[2]
    assert parse_qs(queries[2]) == {"nextPageKey": [pages[0].next_key]}


async def test_retry_after_is_honoured(fake: FakePictory) -> None:
    fake.retry_after = "1"
    fake.fail_api(503)
    policy = RetryPolicy(attempts=3, base=0.001, cap=0.001, max_wait=5.0)
    started = time.monotonic()
    pages = await list_all(fake, retry=policy)
    elapsed = time.monotonic() - started
    assert len(all_ids(pages)) == 250
    assert 0.9 <= elapsed < 10


async def test_retry_after_is_capped_by_max_wait(fake: FakePictory) -> None:
    fake.retry_after = "3600"
    fake.fail_api(429, 429)
    started = time.monotonic()
    pages = await list_all(fake)  # FAST has max_wait=0.05
    assert len(pages) == 3
    assert time.monotonic() - started < 5


async def test_connection_reset_is_retried(fake: FakePictory, library: FakeLibrary) -> None:
    # aiohttp itself resends an idempotent request once after a reset, so three resets
    # are needed to be sure that our own retry loop had to step in.
    fake.api_resets = 3
    async with make_client(fake) as client:
        pages = [page async for page in client.list_pages(VIDEO)]
        assert client.requests_made > 3
    assert all_ids(pages) == [raw["id"] for raw in library.items]
    assert fake.count("api") == 3 + 3
    assert fake.api_resets == 0


async def test_retries_exhausted_is_api_error(fake: FakePictory) -> None:
    fake.fail_api(*[500] * 10)
    message = await list_error(fake, retry=RetryPolicy(attempts=2, base=0.01, cap=0.05))
    assert "HTTP 500" in message
    assert "listing page 1" in message
    assert "3 attempts" in message
    assert fake.count("api") == 3


async def test_resets_exhausted_is_api_error(fake: FakePictory) -> None:
    fake.api_resets = 10
    message = await list_error(fake, retry=RetryPolicy(attempts=1, base=0.01, cap=0.05))
    assert "listing page 1" in message
    assert "2 attempts" in message
    assert fake.count("api") in (2, 4)  # 4 when aiohttp resends once after each reset


async def test_timeouts_exhausted_is_api_error() -> None:
    async with FakePictory(FakeLibrary(3)) as fake:
        fake.api_delay = 2.0
        with pytest.raises(ApiError, match="after 2 attempts"):
            await list_all(fake, retry=RetryPolicy(attempts=1, base=0.01, cap=0.05), timeout=0.2)
        assert fake.count("api") == 2


@pytest.mark.parametrize("status", [400, 403, 404])
async def test_other_statuses_are_not_retried(fake: FakePictory, status: int) -> None:
    fake.fail_api(status)
    message = await list_error(fake)
    assert f"HTTP {status}" in message
    assert fake.count("api") == 1


async def test_non_json_page_is_api_error(fake: FakePictory) -> None:
    fake.api_page_faults = {1: "non_json"}
    message = await list_error(fake)
    assert message == "listing page 2 is not JSON"


async def test_page_without_items_is_api_error(fake: FakePictory) -> None:
    fake.api_page_faults = {0: "no_items"}
    message = await list_error(fake)
    assert message == "listing page 1 has no 'items' list"


@pytest.mark.parametrize("page_index", [0, 1, 2])
async def test_repeating_cursor_is_api_error(fake: FakePictory, page_index: int) -> None:
    fake.api_page_faults = {page_index: "loop_cursor"}
    message = await list_error(fake)
    assert "nextPageKey again" in message
    assert "loops" in message
    assert fake.count("api") <= page_index + 3


async def test_redirect_to_another_origin_never_carries_the_key(fake: FakePictory) -> None:
    fake.api_page_faults = {1: "redirect"}
    message = await list_error(fake)
    assert "HTTP 404" in message  # the CDN origin has no listing

    cdn = [r for r in fake.requests if r.origin == "cdn"]
    api = [r for r in fake.requests if r.origin == "api"]
    assert [r.path for r in cdn] == ["/pictoryapis/v1/aistudio/videos"]
    assert "nextPageKey=" in cdn[0].query  # the redirect was followed, query and all
    assert all(r.header("Authorization") is None for r in cdn)
    assert len(api) == 2
    assert all(r.header("Authorization") == DEMO_API_KEY for r in api)
    for record in cdn:
        assert all(DEMO_API_KEY not in value for value in record.headers.values())
        assert DEMO_API_KEY not in record.query


async def test_client_counts_redirected_requests(fake: FakePictory) -> None:
    fake.api_page_faults = {0: "redirect"}
    async with make_client(fake) as client:
        with pytest.raises(ApiError):
            async for _ in client.list_pages(VIDEO):
                pass
        assert client.requests_made == 2
    assert fake.count("api") == 1 and fake.count("cdn") == 1


@pytest.fixture
async def small_fake() -> AsyncIterator[FakePictory]:
    async with FakePictory(FakeLibrary(5), page_size=2) as server:
        yield server


async def test_small_pages(small_fake: FakePictory) -> None:
    pages = await list_all(small_fake)
    assert [len(page.items) for page in pages] == [2, 2, 1]
    assert [page.number for page in pages] == [1, 2, 3]


def test_origin_is_case_insensitive() -> None:
    assert origin("HTTPS://API.Pictory.ai/x?y=1") == ("https", "api.pictory.ai")
    assert origin("https://api.pictory.ai:8443/") != origin("https://api.pictory.ai/")
