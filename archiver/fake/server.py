"""The fake Pictory: an API origin and a CDN origin on two loopback ports, with fault knobs.

Two origins, so tests can prove the key reaches the API origin only. This module owns the
listing (auth, cursors, page faults), the request log and the knobs; `cdn.py` owns how one
object is served. Faults are deterministic; each one-shot fault is used by one request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from archiver.fake.cdn import (
    ACCESS_DENIED,
    HTML_ERROR,
    CdnFault,
    reset_connection,
    send_asset,
)
from archiver.fake.library import CDN_PLACEHOLDER, DEMO_API_KEY, FakeLibrary

LIST_PATH = "/pictoryapis/v1/aistudio/videos"
# Appended to every cursor: base64 of these bytes (after 3-byte alignment) is "+++//w==",
# so every nextPageKey needs URL-encoding, as the real DynamoDB-style keys may.
_CURSOR_TAIL = b"\xfb\xef\xbf\xff"
_dumps = functools.partial(json.dumps, ensure_ascii=False)

PageFault = Literal["non_json", "no_items", "loop_cursor", "redirect"]


@dataclass(frozen=True)
class RequestRecord:
    """One request as the fake saw it; `headers` keeps the client's header-name case."""

    origin: Literal["api", "cdn"]
    method: str
    path: str
    query: str
    headers: dict[str, str]

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup (so `is None` checks can't pass by spelling)."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


def encode_cursor(state: dict[str, Any]) -> str:
    """An opaque nextPageKey: base64 of JSON, always containing `+`, `/` and `=`."""
    text = json.dumps(state, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 3)
    return base64.b64encode(text + _CURSOR_TAIL).decode()


def decode_cursor(key: str) -> dict[str, Any] | None:
    """The state inside a nextPageKey, or None if it was mangled (e.g. `+` sent unencoded)."""
    try:
        blob = base64.b64decode(key, validate=True)
        if not blob.endswith(_CURSOR_TAIL):
            return None
        state = json.loads(blob[: -len(_CURSOR_TAIL)])
    except (binascii.Error, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("n"), int):
        return None
    return state


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class FakePictory:
    """The API origin (`api_url`) and the CDN origin (`cdn_url`) over one FakeLibrary."""

    def __init__(
        self, library: FakeLibrary, *, api_key: str = DEMO_API_KEY, page_size: int = 100
    ) -> None:
        self.library = library
        self.api_key = api_key
        self.page_size = page_size
        self.requests: list[RequestRecord] = []
        self.api_failures: list[int] = []
        self.retry_after: str | None = None
        self.api_resets = 0
        self.api_delay = 0.0
        self.api_page_faults: dict[int, PageFault] = {}
        self.cdn_faults: dict[str, list[CdnFault]] = {}
        self.cdn_delay = 0.0
        self.signed_urls = False
        self.cdn_active = 0
        self.cdn_max_active = 0
        self._generation = 0
        self._secret = hashlib.sha256(f"fake-cdn:{library.seed}".encode()).digest()
        self._lock = threading.Lock()
        self._runners: list[web.AppRunner] = []
        self._api_origin = ""
        self._cdn_origin = ""

    @property
    def api_url(self) -> str:
        """Base URL the archiver is configured with; it lists `{api_url}/v1/aistudio/videos`."""
        if not self._api_origin:
            raise RuntimeError("FakePictory is not started")
        return self._api_origin + "/pictoryapis"

    @property
    def cdn_url(self) -> str:
        if not self._cdn_origin:
            raise RuntimeError("FakePictory is not started")
        return self._cdn_origin

    async def start(self, host: str = "127.0.0.1", api_port: int = 0, cdn_port: int = 0) -> None:
        """Bind both origins (port 0 = any free port) and start serving."""
        api = web.Application(middlewares=[self._recorder("api")])
        api.router.add_get(LIST_PATH, self._list_videos)
        cdn = web.Application(middlewares=[self._recorder("cdn")])
        cdn.router.add_get("/{path:.*}", self._serve_asset)
        origins = []
        for app, port in ((api, api_port), (cdn, cdn_port)):
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
            await runner.setup()
            self._runners.append(runner)
            sock = _listen(host, port)
            await web.SockSite(runner, sock).start()
            shown = f"[{host}]" if ":" in host else host
            origins.append(f"http://{shown}:{sock.getsockname()[1]}")
        self._api_origin, self._cdn_origin = origins

    async def stop(self) -> None:
        """Close both origins; requests still stalled by faults are dropped after a moment."""
        await asyncio.gather(*(runner.cleanup() for runner in self._runners))
        self._runners.clear()

    async def __aenter__(self) -> FakePictory:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def count(self, origin: Literal["api", "cdn"]) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.origin == origin)

    def reset_log(self) -> None:
        """Forget logged requests and the CDN concurrency high-water mark."""
        with self._lock:
            self.requests.clear()
            self.cdn_max_active = self.cdn_active

    def fail_api(self, *statuses: int) -> None:
        with self._lock:
            self.api_failures.extend(statuses)

    def fail_asset(self, path: str, *faults: CdnFault) -> None:
        """Queue faults for the next requests to one CDN path (`/videos/user/…/x.mp4`)."""
        with self._lock:
            self.cdn_faults.setdefault(path, []).extend(faults)

    def fail_all_assets_matching(self, suffix: str, fault: CdnFault, times: int = 1) -> int:
        """Queue `fault` `times` over for every current asset path ending in `suffix`."""
        paths = {p for raw in self.library.items for p in self.library.asset_paths(raw)}
        matched = sorted(p for p in paths if p.endswith(suffix))
        for path in matched:
            self.fail_asset(path, *([fault] * times))
        return len(matched)

    def expire_urls(self) -> None:
        """Invalidate every signed URL handed out so far (only matters with `signed_urls`)."""
        with self._lock:
            self._generation += 1

    def asset_url(self, path: str) -> str:
        """The URL a listing would give for a CDN path right now."""
        url = self.cdn_url + path
        if self.signed_urls:
            url += f"?Expires={self._generation}&Signature={self._sign(path, self._generation)}"
        return url

    def _sign(self, path: str, generation: int) -> str:
        return hmac.new(self._secret, f"{path}?{generation}".encode(), "sha256").hexdigest()[:40]

    def render(self, value: Any) -> Any:
        """A raw library value as the API serves it: `{cdn}` prefixes become real URLs."""
        if isinstance(value, str):
            if value.startswith(CDN_PLACEHOLDER):
                return self.asset_url(value[len(CDN_PLACEHOLDER) :])
            return value
        if isinstance(value, list):
            return [self.render(v) for v in value]
        if isinstance(value, dict):
            return {k: self.render(v) for k, v in value.items()}
        return value

    def _log(self, origin: Literal["api", "cdn"], request: web.Request) -> None:
        record = RequestRecord(
            origin=origin,
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers={str(k): v for k, v in request.headers.items()},
        )
        with self._lock:
            self.requests.append(record)

    def _recorder(self, origin: Literal["api", "cdn"]) -> Middleware:
        """Middleware that logs every request to an origin; on the CDN it also gauges load."""

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            self._log(origin, request)
            if origin == "api":
                return await handler(request)
            self.cdn_active += 1
            self.cdn_max_active = max(self.cdn_max_active, self.cdn_active)
            try:
                return await handler(request)
            finally:
                self.cdn_active -= 1

        return record

    async def _list_videos(self, request: web.Request) -> web.StreamResponse:
        if self.api_delay:
            await asyncio.sleep(self.api_delay)
        with self._lock:
            reset = self.api_resets > 0
            if reset:
                self.api_resets -= 1
            status = self.api_failures.pop(0) if self.api_failures and not reset else None
        if reset:
            return reset_connection(request)
        if status is not None:
            headers = {}
            if self.retry_after is not None and status in (429, 503):
                headers["Retry-After"] = self.retry_after
            body = {"message": f"Injected failure {status}"}
            return web.json_response(body, status=status, headers=headers)
        if request.headers.get("Authorization") != self.api_key:
            return web.json_response({"message": "Unauthorized"}, status=401)
        key = request.query.get("nextPageKey")
        state = {"n": 0} if key is None else decode_cursor(key)
        if state is None:
            return web.json_response({"message": "Invalid nextPageKey"}, status=400)
        page_no: int = state["n"]
        fault = self.api_page_faults.get(page_no)
        if fault == "redirect":
            raise web.HTTPFound(self.cdn_url + request.path_qs)
        if fault == "non_json":
            return web.Response(text=HTML_ERROR, content_type="text/html")
        if fault == "no_items":
            return web.json_response({"message": "OK", "count": 0})
        items = self.library.items
        first = self._resume_index(state, items)
        page = items[first : first + self.page_size]
        listing: dict[str, Any] = {"items": [self.render(raw) for raw in page]}
        if fault == "loop_cursor":
            listing["nextPageKey"] = key if key is not None else encode_cursor({"n": 0, "o": 0})
        elif first + len(page) < len(items):
            last = page[-1]
            listing["nextPageKey"] = encode_cursor(
                {
                    "n": page_no + 1,
                    "id": last.get("id"),
                    "c": last.get("createdDate"),
                    "o": first + len(page),
                }
            )
        return web.json_response(listing, dumps=_dumps)

    def _resume_index(self, state: dict[str, Any], items: list[dict[str, Any]]) -> int:
        """Where the page after the cursor's last item starts, however the head has grown."""
        last_id = state.get("id")
        offset = state.get("o")
        if isinstance(offset, int) and 0 < offset <= len(items):
            previous = items[offset - 1]
            if (previous.get("id") if isinstance(previous, dict) else None) == last_id:
                return offset  # nothing moved since the cursor was made
        if isinstance(last_id, str):
            position = self.library.index_of(last_id)
            if position is not None:
                return position + 1
        created = state.get("c")
        if isinstance(created, str):
            for i, raw in enumerate(items):
                value = raw.get("createdDate")
                if isinstance(value, str) and value < created:
                    return i
            return len(items)
        return offset if isinstance(offset, int) and offset >= 0 else 0

    async def _serve_asset(self, request: web.Request) -> web.StreamResponse:
        if self.cdn_delay:
            await asyncio.sleep(self.cdn_delay)
        path = request.path
        with self._lock:
            queue = self.cdn_faults.get(path)
            fault = queue.pop(0) if queue else None
            generation = self._generation
        if fault is not None and fault.kind == "reset":
            return reset_connection(request)
        if fault is not None and fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return web.Response(
                status=fault.status, text=ACCESS_DENIED, content_type="text/xml", headers=headers
            )
        if fault is not None and fault.kind == "html":
            return web.Response(text=HTML_ERROR, content_type="text/html")
        if self.signed_urls and not self._signature_ok(request, path, generation):
            return web.Response(status=403, text=ACCESS_DENIED, content_type="text/xml")
        asset = self.library.asset(path)
        if asset is None:
            return web.Response(status=404, text="Not Found")
        return await send_asset(request, asset, fault)

    def _signature_ok(self, request: web.Request, path: str, generation: int) -> bool:
        expected = self._sign(path, generation)
        return request.query.get("Expires") == str(generation) and hmac.compare_digest(
            request.query.get("Signature", ""), expected
        )


@contextlib.contextmanager
def run_in_thread(
    library: FakeLibrary,
    *,
    api_key: str = DEMO_API_KEY,
    page_size: int = 100,
    host: str = "127.0.0.1",
) -> Iterator[FakePictory]:
    """Serve from a daemon thread with its own loop, for code that calls `asyncio.run` itself.

    Knobs may be set from the calling thread while it runs.
    """
    server = FakePictory(library, api_key=api_key, page_size=page_size)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start(host))
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.stop())
        loop.close()

    thread = threading.Thread(target=serve, name="fake-pictory", daemon=True)
    thread.start()
    ready.wait()
    if failure:
        raise failure[0]
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
