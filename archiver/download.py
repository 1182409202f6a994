"""One asset from the CDN to disk: stream to .part, resume with Range, hash, prove, rename.

The session here never carries credentials. A file appears under its final name
only when its length, its media type and (when known) its size have been checked.
Durability is not done here file by file: the pipeline syncs the filesystem once per
group of files before the manifest may claim them (group commit).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar
from urllib.parse import urlsplit

import aiohttp

from archiver.errors import (
    AssetError,
    ExpiredUrlError,
    PermanentAssetError,
    StorageError,
    TransientAssetError,
)
from archiver.models import strip_query
from archiver.retry import HostThrottle, RetryBudget, RetryPolicy, parse_retry_after

P = ParamSpec("P")
T = TypeVar("T")

CHUNK_SIZE = 1 << 20
READ_BUFFER = 1 << 20
VALIDATOR_XATTR = "user.pictory-archiver.validator"
DIGEST_XATTR = "user.pictory-archiver.sha256"
PART_SUFFIX = ".part"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
MAGIC_CHECKS: dict[str, Callable[[bytes], bool]] = {
    "mp4": lambda head: head[4:8] == b"ftyp",
    "jpeg": lambda head: head.startswith(b"\xff\xd8\xff"),
    "png": lambda head: head.startswith(b"\x89PNG\r\n\x1a\n"),
    "webp": lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP",
    "gif": lambda head: head[:6] in (b"GIF87a", b"GIF89a"),
}
_HTML_START = re.compile(rb"^\s*(<!doctype|<html|<\?xml|<head|<body|<error)", re.IGNORECASE)


@dataclass(frozen=True)
class AssetRequest:
    """What to fetch and where. `validator` is the ETag/Last-Modified an existing .part
    was started under; `known_size` is the size the archive recorded for the version
    named `known_validator`, which the same version must have again. With `adopt_final`,
    a file already under the final name is treated as the .part to resume (a download
    that landed just before a crash): a Range request proves or completes it. Without a
    `validator`, the one kept on the file itself (xattr) is used. `may_resume=False`
    promises no earlier file can exist (a new folder): no need to look. With
    `stage_only`, the proven file is left as its .part for the caller to sync and rename
    (group commit); `FetchedFile.staged` names it."""

    url: str
    path: Path
    media: str | None
    validator: str | None = None
    known_size: int | None = None
    known_validator: str | None = None
    adopt_final: bool = False
    may_resume: bool = True
    stage_only: bool = False


@dataclass(frozen=True)
class FetchedFile:
    """A proven file: under its final name, or still `staged` under its .part name."""

    path: Path
    size: int
    sha256: str
    validator: str | None
    fetched_bytes: int
    staged: Path | None = None


def part_path(path: Path) -> Path:
    return path.with_name(path.name + PART_SUFFIX)


def discard(part: Path) -> None:
    """Remove a .part that cannot be built on; failing to is a storage problem."""
    try:
        part.unlink(missing_ok=True)
    except OSError as exc:
        raise storage_error(exc, part) from None


def storage_error(exc: OSError, path: Path) -> StorageError:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on device"
    return StorageError(f"cannot write {path}: {reason}")


class PartFile:
    """A .part file being appended to, hashed as it grows; blocking, run in a thread."""

    def __init__(self, path: Path, offset: int, validator: str | None = None) -> None:
        self.path = path
        self.hasher = hashlib.sha256()
        self.size = 0
        self.head = b""
        if offset:
            with path.open("rb") as existing:
                while block := existing.read(CHUNK_SIZE):
                    self._account(block)
            if self.size != offset:
                raise OSError(errno.EIO, "part file changed under us")
        self._handle: BinaryIO = path.open("r+b" if offset else "wb")
        self._handle.seek(offset)
        self._handle.truncate()
        if not offset:
            tag_file(self._handle.fileno(), VALIDATOR_XATTR, validator)
        else:
            tag_file(self._handle.fileno(), DIGEST_XATTR, None)  # growing again: not whole
        self._lock = threading.Lock()

    def _account(self, block: bytes) -> None:
        if len(self.head) < 16:
            self.head = (self.head + block)[:16]
        self.hasher.update(block)
        self.size += len(block)

    def write(self, block: bytes) -> None:
        with self._lock:
            self._handle.write(block)
            self._account(block)

    def close(self) -> None:
        """Close, waiting for a write still running in another thread (on cancel)."""
        with self._lock:
            self._handle.close()

    def finish(self, final: Path | None) -> None:
        """Close and move into place atomically (or leave it staged for the caller)."""
        with self._lock:
            tag_file(self._handle.fileno(), DIGEST_XATTR, self.hasher.hexdigest())
        self.close()
        if final is not None:
            os.replace(self.path, final)


class AssetDownloader:
    """Fetches assets over a credential-free session, retrying what a retry can fix."""

    def __init__(
        self,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        budget: RetryBudget | None = None,
        connections: int = 16,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
        self._retry = retry or RetryPolicy()
        self._budget = budget or RetryBudget()
        self._connections = connections
        self._throttle = HostThrottle()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AssetDownloader:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(limit=self._connections, ttl_dns_cache=300),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            read_bufsize=READ_BUFFER,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(
        self, request: AssetRequest, on_validator: Callable[[str | None], None]
    ) -> FetchedFile:
        """Fetch with retries; raise an AssetError subclass or StorageError when it cannot.

        `on_validator` hears the ETag/Last-Modified a new .part is started under, so the
        caller can keep it for a resume after a crash.
        """
        host = urlsplit(request.url).netloc
        attempt = 0
        started: list[str | None] = []

        def start(validator: str | None) -> None:
            started.append(validator)
            on_validator(validator)

        while True:
            await self._throttle.wait(host)
            started.clear()
            try:
                return await self._attempt(request, start)
            except TransientAssetError as exc:
                if attempt >= self._retry.attempts or not self._budget.take():
                    raise
                if exc.retry_after is not None:
                    self._throttle.pause(host, self._retry.delay(attempt, exc.retry_after))
                else:
                    await asyncio.sleep(self._retry.delay(attempt))
                attempt += 1
            finally:
                if started:
                    request = replace(request, validator=started[-1])

    async def _attempt(
        self, request: AssetRequest, on_validator: Callable[[str | None], None]
    ) -> FetchedFile:
        part = part_path(request.path)
        offset = 0
        if request.may_resume:
            if request.adopt_final and not part.exists() and request.path.exists():
                validator = request.validator or read_validator(request.path)
                if validator:
                    await self._disk(request.path, os.replace, request.path, part)
                    request = replace(request, validator=validator)
            if request.validator is None and part.exists():
                request = replace(request, validator=read_validator(part))
            offset = _resumable_offset(part, request.validator)
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            headers["If-Range"] = request.validator or ""
        where = strip_query(request.url)
        try:
            return await self._exchange(request, part, offset, headers, on_validator, where)
        except _RestartFromZero:
            discard(part)
            raise

    async def _exchange(
        self,
        request: AssetRequest,
        part: Path,
        offset: int,
        headers: dict[str, str],
        on_validator: Callable[[str | None], None],
        where: str,
    ) -> FetchedFile:
        assert self._session is not None
        try:
            async with self._session.get(request.url, headers=headers) as resp:
                offset, total = _check_response(resp, offset, where)
                if resp.status == 416:
                    return await self._finish(request, part, offset, None, 0, where)
                validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
                if offset == 0:
                    on_validator(validator)
                return await self._stream(request, resp, part, offset, total, validator, where)
        except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise TransientAssetError(f"{type(exc).__name__} fetching {where}") from None

    async def _stream(
        self,
        request: AssetRequest,
        resp: aiohttp.ClientResponse,
        part: Path,
        offset: int,
        total: int | None,
        validator: str | None,
        where: str,
    ) -> FetchedFile:
        writer: PartFile | None = None
        buffer: list[bytes] = []
        buffered = fetched = 0
        try:
            async for block in resp.content.iter_chunked(CHUNK_SIZE):
                buffer.append(block)
                buffered += len(block)
                if buffered >= CHUNK_SIZE:
                    if writer is None:
                        writer = await self._disk(request.path, PartFile, part, offset, validator)
                    await self._disk(request.path, writer.write, b"".join(buffer))
                    fetched += buffered
                    buffer, buffered = [], 0
        except BaseException:
            # what arrived before the drop is a valid prefix: keep it for the resume
            await asyncio.to_thread(keep_prefix, writer, part, offset, b"".join(buffer), validator)
            raise
        if writer is None and offset == 0:
            return await self._land_whole(request, part, b"".join(buffer), total, validator, where)
        if writer is None:
            writer = await self._disk(request.path, PartFile, part, offset, validator)
        if buffer:
            await self._disk(request.path, writer.write, b"".join(buffer))
            fetched += buffered
        if total is not None and writer.size != total:
            await asyncio.to_thread(writer.close)
            raise TransientAssetError(
                f"{where} ended after {writer.size} of {total} bytes (connection dropped)"
            )
        try:
            return await self._finish(request, part, writer.size, writer, fetched, where, validator)
        except BaseException:
            await asyncio.to_thread(writer.close)
            raise

    async def _land_whole(
        self,
        request: AssetRequest,
        part: Path,
        body: bytes,
        total: int | None,
        validator: str | None,
        where: str,
    ) -> FetchedFile:
        """A body that fit in one buffer (most files of a library): prove it, then one trip
        to a thread writes, hashes and renames it."""
        if total is not None and len(body) != total:
            raise TransientAssetError(f"{where} ended after {len(body)} of {total} bytes")
        _prove(request, len(body), body[:16], validator, where)
        final = None if request.stage_only else request.path
        digest = await self._disk(request.path, write_whole, part, final, body, validator)
        staged = part if request.stage_only else None
        return FetchedFile(request.path, len(body), digest, validator, len(body), staged)

    async def _finish(
        self,
        request: AssetRequest,
        part: Path,
        size: int,
        writer: PartFile | None,
        fetched: int,
        where: str,
        validator: str | None = None,
    ) -> FetchedFile:
        validator = validator or request.validator
        if writer is None:
            known = await self._disk(request.path, whole_part, part, size)
            if known is not None:
                return await self._finish_known(request, part, size, known, validator, where)
            writer = await self._disk(request.path, PartFile, part, size)
        try:
            _prove(request, size, writer.head, validator, where)
        except AssetError:
            await asyncio.to_thread(writer.close)
            discard(part)
            raise
        await self._disk(request.path, writer.finish, None if request.stage_only else request.path)
        return FetchedFile(
            path=request.path,
            size=size,
            sha256=writer.hasher.hexdigest(),
            validator=validator,
            fetched_bytes=fetched,
            staged=part if request.stage_only else None,
        )

    async def _finish_known(
        self,
        request: AssetRequest,
        part: Path,
        size: int,
        known: tuple[bytes, str],
        validator: str | None,
        where: str,
    ) -> FetchedFile:
        """A .part that a crash left whole and hashed: prove it without reading it again."""
        head, digest = known
        try:
            _prove(request, size, head, validator, where)
        except AssetError:
            discard(part)
            raise
        if not request.stage_only:
            await self._disk(request.path, os.replace, part, request.path)
        staged = part if request.stage_only else None
        return FetchedFile(request.path, size, digest, validator, 0, staged)

    @staticmethod
    async def _disk(path: Path, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Blocking file work in a thread; OSError becomes a run-fatal StorageError."""
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except OSError as exc:
            raise storage_error(exc, path) from None


def keep_prefix(
    writer: PartFile | None, part: Path, offset: int, block: bytes, validator: str | None
) -> None:
    """After a failure, keep the bytes that did arrive in the .part; errors here are moot."""
    try:
        if writer is None and block:
            writer = PartFile(part, offset, validator)
        if writer is not None:
            writer.write(block)
    except OSError:
        pass
    finally:
        if writer is not None:
            writer.close()


def write_whole(part: Path, final: Path | None, data: bytes, validator: str | None) -> str:
    """Write a whole file via its .part name, rename it into place (unless staged);
    return its sha256."""
    digest = hashlib.sha256(data).hexdigest()
    with part.open("wb") as handle:
        tag_file(handle.fileno(), VALIDATOR_XATTR, validator)
        tag_file(handle.fileno(), DIGEST_XATTR, digest)
        handle.write(data)
    if final is not None:
        os.replace(part, final)
    return digest


def _prove(
    request: AssetRequest, size: int, head: bytes, validator: str | None, where: str
) -> None:
    """The checks a file must pass before it may take its final name."""
    same_version = validator is not None and validator == request.known_validator
    if same_version and request.known_size is not None and size != request.known_size:
        raise PermanentAssetError(
            f"{where} is {size} bytes but the same version was {request.known_size} before"
        )
    problem = media_problem(head, request.media)
    if problem:
        raise TransientAssetError(f"{where} {problem}")


def tag_file(fd: int, name: str, value: str | None) -> None:
    """Keep facts on the file itself as extended attributes, which a rename carries
    along: the validator it was fetched under (so a crash before the manifest heard of it
    still allows a resume) and, once whole, its sha256 (so proving it again needs no
    re-read). Best effort: without xattrs, the manifest and a re-hash do the same.
    A None value removes the attribute."""
    try:
        if value:
            os.setxattr(fd, name, value.encode("utf-8", "replace"))
        else:
            os.removexattr(fd, name)
    except OSError:
        pass


def read_tag(path: Path, name: str) -> str | None:
    try:
        return os.getxattr(path, name).decode("utf-8", "replace") or None
    except OSError:
        return None


def read_validator(path: Path) -> str | None:
    return read_tag(path, VALIDATOR_XATTR)


def whole_part(part: Path, size: int) -> tuple[bytes, str] | None:
    """(first bytes, sha256) of a .part already proven whole, from its tags."""
    digest = read_tag(part, DIGEST_XATTR)
    if digest is None or part.stat().st_size != size:
        return None
    with part.open("rb") as handle:
        return handle.read(16), digest


def _resumable_offset(part: Path, validator: str | None) -> int:
    """Bytes of an existing .part we may build on; one without a validator is dropped."""
    try:
        size = part.stat().st_size
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise storage_error(exc, part) from None
    if size and validator:
        return size
    discard(part)
    return 0


def _check_response(
    resp: aiohttp.ClientResponse, offset: int, where: str
) -> tuple[int, int | None]:
    """Classify a CDN answer; return (offset to write at, expected total size)."""
    status = resp.status
    if status == 200:
        if resp.content_type == "text/html":
            raise TransientAssetError(f"{where} answered an HTML page instead of media")
        return 0, resp.content_length
    if status == 206:
        match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
        if match is None or int(match.group(1)) != offset:
            raise _RestartFromZero(f"{where} resumed at the wrong offset")
        total = match.group(3)
        return offset, int(total) if total != "*" else None
    if status == 416:
        total_text = resp.headers.get("Content-Range", "").rpartition("/")[2]
        if offset and total_text.isdigit() and int(total_text) == offset:
            return offset, offset
        raise _RestartFromZero(f"{where} refused the resume range")
    if status in (404, 410):
        raise PermanentAssetError(f"{where} is gone (HTTP {status})")
    if status in (400, 403):
        raise ExpiredUrlError(f"{where} was refused (HTTP {status}): the signed URL expired")
    if status in (408, 429) or status >= 500:
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        raise TransientAssetError(f"{where} answered HTTP {status}", retry_after)
    raise PermanentAssetError(f"{where} answered HTTP {status}")


class _RestartFromZero(TransientAssetError):
    """The server cannot continue our .part: drop it and fetch the whole file again."""


def media_problem(head: bytes, media: str | None) -> str | None:
    """Why the first bytes are not the media the asset should be, or None when they are."""
    if not head:
        return "is empty"
    if _HTML_START.match(head):
        return "is an HTML page, not media"
    check = MAGIC_CHECKS.get(media or "")
    if check is not None and not check(head):
        return f"is not a valid {media} file"
    return None
