"""The Pictory API client: the only holder of the key and of the listing's shape.

The key is attached per request, and only to requests for the API's own origin;
redirects are followed by hand so that it never travels to another host.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from archiver.errors import ApiError, AuthError
from archiver.models import ItemKind, Secret, strip_query
from archiver.retry import RetryPolicy, parse_retry_after

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Page:
    """One page of a listing: raw item dicts in API order and the cursor to the next."""

    number: int
    items: tuple[Any, ...]
    next_key: str | None


def origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class PictoryClient:
    """Lists a kind of item page by page, retrying what a retry can fix."""

    def __init__(
        self,
        base_url: str,
        key: Secret,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._key = key
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
        self._retry = retry or RetryPolicy()
        self._session: aiohttp.ClientSession | None = None
        self.requests_made = 0

    async def __aenter__(self) -> PictoryClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout, raise_for_status=False)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def list_pages(self, kind: ItemKind) -> AsyncGenerator[Page, None]:
        """Walk the listing newest first, following nextPageKey until it ends."""
        url = self._base + kind.endpoint
        seen_keys: set[str] = set()
        next_key: str | None = None
        number = 1
        while True:
            params = {"nextPageKey": next_key} if next_key is not None else None
            page = self._parse_page(number, await self._get_json(url, params, number))
            yield page
            if page.next_key is None:
                return
            if page.next_key in seen_keys:
                raise ApiError(f"the API sent page {number}'s nextPageKey again: listing loops")
            seen_keys.add(page.next_key)
            next_key = page.next_key
            number += 1

    @staticmethod
    def _parse_page(number: int, body: Any) -> Page:
        if not isinstance(body, dict):
            raise ApiError(f"listing page {number} is not a JSON object")
        items = body.get("items")
        if not isinstance(items, list):
            raise ApiError(f"listing page {number} has no 'items' list")
        next_key = body.get("nextPageKey")
        if next_key is not None and (not isinstance(next_key, str) or not next_key):
            raise ApiError(f"listing page {number} has a malformed nextPageKey")
        return Page(number=number, items=tuple(items), next_key=next_key)

    async def _get_json(self, url: str, params: dict[str, str] | None, number: int) -> Any:
        attempt = 0
        while True:
            try:
                status, retry_after_header, body = await self._get(url, params)
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = f"{type(exc).__name__} on listing page {number}"
                retry_after = None
            else:
                if status == 401:
                    raise AuthError("the Pictory API rejected the API key (401 Unauthorized)")
                if status == 200:
                    try:
                        return json.loads(body)
                    except (UnicodeDecodeError, ValueError):
                        raise ApiError(f"listing page {number} is not JSON") from None
                if status not in RETRY_STATUSES:
                    raise ApiError(f"the API answered HTTP {status} on listing page {number}")
                reason = f"HTTP {status} on listing page {number}"
                retry_after = parse_retry_after(retry_after_header)
            if attempt >= self._retry.attempts:
                raise ApiError(f"the API kept failing ({reason}) after {attempt + 1} attempts")
            await asyncio.sleep(self._retry.delay(attempt, retry_after))
            attempt += 1

    async def _get(self, url: str, params: dict[str, str] | None) -> tuple[int, str | None, bytes]:
        assert self._session is not None, "use PictoryClient as an async context manager"
        api_origin = origin(self._base)
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"Accept": "application/json"}
            if origin(url) == api_origin:
                headers["Authorization"] = self._key.value
            self.requests_made += 1
            async with self._session.get(
                url, params=params, headers=headers, allow_redirects=False
            ) as resp:
                if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                    url = urljoin(str(resp.url), resp.headers["Location"])
                    params = None
                    continue
                return resp.status, resp.headers.get("Retry-After"), await resp.read()
        raise ApiError(f"the API redirected more than {MAX_REDIRECTS} times ({strip_query(url)})")
