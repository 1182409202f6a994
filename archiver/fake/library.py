"""The fake library: raw item dicts in the documented API shape, and the bytes of their assets.

Built from the API contract alone (never from `archiver.models`), so a parsing bug in the
archiver cannot be mirrored here and pass silently. Everything is deterministic from `seed`.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

from archiver.fake.media import make_jpeg, make_mp4, make_png

DEMO_API_KEY = "pictai_demo0000000000000000000000"
CDN_PLACEHOLDER = "{cdn}"
DEFAULT_START = datetime(2026, 4, 9, 18, 51, 47, 967000, tzinfo=UTC)

_STEP = timedelta(minutes=37)
_CACHE_BYTES = 128 * 1024 * 1024

_PROMPTS = (
    "A woman sitting on the grass as children run and play around her in a wide shot",
    "Café terrace at dusk — 東京の夜景, neon reflections, slow dolly 🎬",
    "Line one of the scene\nLine two: the camera pans left\n\tthen holds",
    "AC/DC style concert, crowd/stage lights 50/50, path-like: ../../etc/passwd",
    "Quotes \"double\" and 'single', backslash \\ and a colon: 9:16",
    "Близнецы бегут по пляжу, صباح الخير, 🌊🌊",
    "",
    "   leading and trailing spaces   ",
)
_LONG_PROMPT = "An extremely detailed cinematic prompt, " * 200
_SHAPES = (("9:16", 720, 1280), ("16:9", 1280, 720), ("1:1", 960, 960))
_MODELS = ("pixverse5.5", "veo3", "kling2.1", "seedance1.0")


def _digest(*parts: object) -> bytes:
    return hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=16).digest()


def _uuid(*parts: object) -> str:
    h = bytearray(_digest(*parts))
    h[6] = (h[6] & 0x0F) | 0x40
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _iso(dt: datetime) -> str:
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond // 1000:03d}Z"


def cdn_paths(value: object) -> list[str]:
    """Every `{cdn}`-prefixed string inside a raw value, as a CDN path, in order, deduplicated."""
    found: dict[str, None] = {}

    def walk(v: object) -> None:
        if isinstance(v, str):
            if v.startswith(CDN_PLACEHOLDER):
                found[v[len(CDN_PLACEHOLDER) :]] = None
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)

    walk(value)
    return list(found)


@dataclass(frozen=True)
class FakeAsset:
    """One CDN object as served: the bytes plus the validators a real CDN sends."""

    path: str
    content_type: str
    data: bytes
    etag: str
    last_modified: str


class FakeLibrary:
    """A user's video library, newest first, with mutations tests apply between runs."""

    def __init__(
        self,
        count: int = 250,
        *,
        seed: int = 1,
        video_size: int = 64 * 1024,
        image_size: int = 4 * 1024,
        start: datetime | None = None,
        optional_every: int = 5,
    ) -> None:
        self.seed = seed
        self.video_size = video_size
        self.image_size = image_size
        self.optional_every = optional_every
        self.start = start or DEFAULT_START
        self.user = _uuid(seed, "user")
        self._serial = count
        self._items: list[dict[str, Any]] = [
            self._make_item(count - 1 - i, self.start - i * _STEP - self._jitter(i))
            for i in range(count)
        ]
        self._known: set[str] | None = None
        self._positions: dict[str, int] | None = None
        self._overrides: dict[str, bytes] = {}
        self._revisions: dict[str, int] = {}
        self._cache: OrderedDict[str, FakeAsset] = OrderedDict()
        self._cache_bytes = 0

    def _jitter(self, i: int) -> timedelta:
        """Under a minute, so dates look organic yet stay strictly decreasing; none for the head."""
        if i == 0:
            return timedelta(0)
        return timedelta(milliseconds=int.from_bytes(_digest(self.seed, i, "t")[:4]) % 59_000)

    def _video_path(self, serial: int) -> str:
        return f"/videos/user/{self.user}/{_uuid(self.seed, serial, 'video')}"

    def _make_item(self, serial: int, created: datetime) -> dict[str, Any]:
        base = CDN_PLACEHOLDER + self._video_path(serial)
        ratio, width, height = _SHAPES[serial % len(_SHAPES)]
        prompt = _LONG_PROMPT if serial == 7 else f"{_PROMPTS[serial % len(_PROMPTS)]} #{serial}"
        stamp = created.strftime("%Y%m%d%H%M%S") + f"{created.microsecond // 1000:03d}"
        item: dict[str, Any] = {
            "url": base + ".mp4",
            "id": stamp + _digest(self.seed, serial, "id")[:8].hex(),
            "prompt": prompt,
            "aspectRatio": ratio,
            "createdDate": _iso(created),
            "model": _MODELS[serial % len(_MODELS)],
            "width": width,
            "height": height,
            "duration": "8s",
            "previewImageUrl": base + "_preview.jpg",
            "thumbnailImageUrl": base + "_thumbnail.jpg",
            "lastFrameImageUrl": base + "_last_frame.png",
        }
        if self.optional_every > 0 and serial % self.optional_every == self.optional_every - 1:
            other = CDN_PLACEHOLDER + self._video_path(serial - 1 if serial > 0 else serial + 1)
            image = f"/images/user/{self.user}/{_uuid(self.seed, serial, 'image')}.png"
            item["firstFrameImageUrl"] = base + "_first_frame.png"
            item["referenceImageUrls"] = [other + "_last_frame.png", CDN_PLACEHOLDER + image]
            item["extendVideoUrl"] = other + ".mp4"
        return item

    @property
    def items(self) -> list[dict[str, Any]]:
        """The current listing, newest first (a copy of the list; the dicts are live)."""
        return list(self._items)

    def item(self, item_id: str) -> dict[str, Any]:
        position = self.index_of(item_id)
        if position is None:
            raise KeyError(item_id)
        return self._items[position]

    def index_of(self, item_id: str) -> int | None:
        """Position of an id in the listing (first match), via an index rebuilt after changes."""
        if self._positions is None:
            self._positions = {}
            for i, raw in enumerate(self._items):
                key = raw.get("id")
                if isinstance(key, str):
                    self._positions.setdefault(key, i)
        return self._positions.get(item_id)

    def _changed(self) -> None:
        self._known = None
        self._positions = None

    def asset_paths(self, item: dict[str, Any]) -> list[str]:
        """All CDN paths (no origin) that an item references."""
        return cdn_paths(item)

    def add_new(self, n: int = 1) -> list[dict[str, Any]]:
        """Add `n` videos newer than the current head; returns them newest first."""
        newest = self._newest()
        new = []
        for k in range(1, n + 1):
            created = newest + k * _STEP + timedelta(milliseconds=self._serial % 997)
            new.append(self._make_item(self._serial, created))
            self._serial += 1
        new.reverse()
        self._items[:0] = new
        self._changed()
        return new

    def _newest(self) -> datetime:
        for raw in self._items:
            value = raw.get("createdDate")
            if isinstance(value, str):
                try:
                    return datetime.fromisoformat(value.replace("Z", "+00:00"))
                except ValueError:
                    continue
        return self.start

    def remove(self, item_id: str) -> None:
        """Delete a video upstream: it leaves the listing and its unshared assets 404."""
        self._items = [raw for raw in self._items if raw.get("id") != item_id]
        self._changed()

    def insert_raw(self, raw: dict[str, Any], position: int = 0) -> None:
        """Insert an arbitrary (possibly hostile) item verbatim; `{cdn}` strings get served."""
        self._items.insert(position, raw)
        self._changed()

    def replace_asset(self, path: str, data: bytes) -> None:
        """Change an object on the CDN: new bytes, new ETag, new Last-Modified."""
        self._overrides[path] = data
        self._revisions[path] = self._revisions.get(path, 0) + 1
        self._evict(path)

    def _evict(self, path: str) -> None:
        old = self._cache.pop(path, None)
        if old is not None:
            self._cache_bytes -= len(old.data)

    def asset(self, path: str) -> FakeAsset | None:
        """The object at a CDN path, or None (404) if no current item references it."""
        cached = self._cache.get(path)
        if cached is not None:
            self._cache.move_to_end(path)
            return cached
        if path not in self._overrides:
            if self._known is None:
                self._known = {p for raw in self._items for p in cdn_paths(raw)}
            if path not in self._known:
                return None
        data, content_type = self._content(path)
        revision = self._revisions.get(path, 0)
        asset = FakeAsset(
            path=path,
            content_type=content_type,
            data=data,
            etag='"' + hashlib.sha256(data).hexdigest()[:32] + '"',
            last_modified=format_datetime(self.start + timedelta(hours=revision), usegmt=True),
        )
        self._cache[path] = asset
        self._cache_bytes += len(data)
        while self._cache_bytes > _CACHE_BYTES and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cache_bytes -= len(dropped.data)
        return asset

    def _content(self, path: str) -> tuple[bytes, str]:
        lower = path.lower()
        content_type = (
            "video/mp4"
            if lower.endswith(".mp4")
            else "image/jpeg"
            if lower.endswith((".jpg", ".jpeg"))
            else "image/png"
            if lower.endswith(".png")
            else "application/octet-stream"
        )
        if path in self._overrides:
            return self._overrides[path], content_type
        seed = int.from_bytes(_digest(self.seed, path)[:8])
        if content_type == "video/mp4":
            return make_mp4(seed, self.video_size), content_type
        if content_type == "image/jpeg":
            return make_jpeg(seed, self.image_size), content_type
        if content_type == "image/png":
            return make_png(seed), content_type
        return random.Random(seed).randbytes(self.image_size), content_type

    def sha256(self, path: str) -> str:
        """Hex SHA-256 of the object now at `path` (KeyError if it would 404)."""
        asset = self.asset(path)
        if asset is None:
            raise KeyError(path)
        return hashlib.sha256(asset.data).hexdigest()
