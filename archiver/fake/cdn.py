"""CDN object semantics: validators, byte ranges and the injectable ways a download goes wrong."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from archiver.fake.library import FakeAsset

CHUNK = 256 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
UNSATISFIABLE = (-1, -1)
ACCESS_DENIED = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>AccessDenied</Code><Message>Access denied</Message></Error>"
)
HTML_ERROR = (
    "<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head>"
    "<body><h1>Something went wrong</h1><p>Please try again later.</p></body></html>"
)


@dataclass(frozen=True)
class CdnFault:
    """One injected CDN misbehaviour, used up by one request to its path.

    kind: "status" (answer `status`, with `retry_after` if given), "reset" (drop the
    connection before any response), "truncate" (full headers, then close after `after`
    body bytes), "html" (200 text/html error page), "slow" (stall `delay` seconds after
    `after` body bytes, then finish normally).
    """

    kind: Literal["status", "reset", "truncate", "html", "slow"]
    status: int = 503
    retry_after: str | None = None
    after: int = 0
    delay: float = 0.0


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) of a single `bytes=` range; None: ignore it (200); UNSATISFIABLE: 416."""
    match = _RANGE.fullmatch(header.strip())
    if match is None or match[1] == match[2] == "":
        return None
    if match[1] == "":
        suffix = int(match[2])
        return (max(size - suffix, 0), size - 1) if suffix and size else UNSATISFIABLE
    first = int(match[1])
    if match[2] and int(match[2]) < first:
        return None
    if first >= size:
        return UNSATISFIABLE
    return first, min(int(match[2]) if match[2] else size - 1, size - 1)


def reset_connection(request: web.BaseRequest) -> web.Response:
    """Abort the connection with a TCP RST; aiohttp then has nowhere to send a response."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)


async def send_asset(
    request: web.Request, asset: FakeAsset, fault: CdnFault | None = None
) -> web.StreamResponse:
    """Serve one object as CloudFront would: validators, Range, If-Range and 416.

    A "truncate" or "slow" fault bends the body; other kinds are answered before this.
    """
    size = len(asset.data)
    headers = {
        "Content-Type": asset.content_type,
        "ETag": asset.etag,
        "Last-Modified": asset.last_modified,
        "Accept-Ranges": "bytes",
    }
    first, last, status = 0, size - 1, 200
    wanted = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if wanted is not None and if_range in (None, asset.etag, asset.last_modified):
        span = parse_range(wanted, size)
        if span == UNSATISFIABLE:
            headers["Content-Range"] = f"bytes */{size}"
            return web.Response(status=416, headers=headers)
        if span is not None:
            first, last, status = span[0], span[1], 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = last - first + 1
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    body = memoryview(asset.data)[first : last + 1]
    if fault is not None and fault.kind == "truncate":
        await _stream(response, body[: fault.after])
        # a real drop comes a while after the last bytes, which the client has read by then;
        # aiohttp discards bytes still unread when it learns of the drop
        await asyncio.sleep(0.05)
        if request.transport is not None:
            request.transport.close()
        return response
    if fault is not None and fault.kind == "slow":
        await _stream(response, body[: fault.after])
        await asyncio.sleep(fault.delay)
        body = body[fault.after :]
    await _stream(response, body)
    await response.write_eof()
    return response


async def _stream(response: web.StreamResponse, body: memoryview) -> None:
    for offset in range(0, len(body), CHUNK):
        await response.write(body[offset : offset + CHUNK])
