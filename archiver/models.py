"""Validated library items and their assets, parsed from raw API dicts.

The item kind (video, later image) is data, not an assumption: each `ItemKind`
names its endpoint, its folder and which fields hold which assets.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from archiver.errors import InvalidItemError

MAX_ID_LENGTH = 512
_EXTENSION = re.compile(r"^[a-z0-9]{1,5}$")
MEDIA_BY_EXTENSION = {
    "mp4": "mp4",
    "m4v": "mp4",
    "mov": "mp4",
    "jpg": "jpeg",
    "jpeg": "jpeg",
    "png": "png",
    "webp": "webp",
    "gif": "gif",
}


@dataclass(frozen=True)
class Secret:
    """A value that never shows itself in repr, logs or tracebacks."""

    value: str

    def __repr__(self) -> str:
        return f"Secret({mask_key(self.value)})"

    __str__ = __repr__


def mask_key(key: str) -> str:
    """The most of a key we ever print: its prefix and last four characters."""
    return f"pictai_…{key[-4:]}" if len(key) > 11 else "pictai_…"


@dataclass(frozen=True)
class AssetField:
    """Where one asset role lives in a raw item and what it is saved as."""

    role: str
    key: str
    default_ext: str
    required: bool
    many: bool = False


@dataclass(frozen=True)
class ItemKind:
    """A kind of library item: its endpoint under the API base and its assets."""

    name: str
    endpoint: str
    folder: str
    assets: tuple[AssetField, ...]


VIDEO = ItemKind(
    name="video",
    endpoint="/v1/aistudio/videos",
    folder="videos",
    assets=(
        AssetField("video", "url", "mp4", required=True),
        AssetField("preview", "previewImageUrl", "jpg", required=True),
        AssetField("thumbnail", "thumbnailImageUrl", "jpg", required=True),
        AssetField("last_frame", "lastFrameImageUrl", "png", required=True),
        AssetField("first_frame", "firstFrameImageUrl", "png", required=False),
        AssetField("reference", "referenceImageUrls", "png", required=False, many=True),
    ),
)

IMAGE = ItemKind(
    name="image",
    endpoint="/v1/aistudio/images",
    folder="images",
    assets=(
        AssetField("image", "url", "png", required=True),
        AssetField("reference", "referenceImageUrl", "png", required=False),
    ),
)

KINDS = {kind.name: kind for kind in (VIDEO, IMAGE)}


@dataclass(frozen=True)
class Asset:
    """One file of an item: its role, source URL and file name in the item folder."""

    role: str
    url: str
    filename: str

    @property
    def media(self) -> str | None:
        """The media family the bytes must be, judged from the file extension."""
        return MEDIA_BY_EXTENSION.get(self.filename.rsplit(".", 1)[-1])


@dataclass(frozen=True)
class Item:
    """A validated library item; `raw` is the API dict verbatim for metadata.json."""

    kind: ItemKind
    id: str
    created: datetime
    assets: tuple[Asset, ...]
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def created_iso(self) -> str:
        return self.created.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def strip_query(url: str) -> str:
    """A URL safe to print or store: no query string or fragment (signatures live there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.scheme else parts.path


def describe_id(raw: Any) -> str:
    """A printable, bounded rendering of whatever an item's id is."""
    value = raw.get("id") if isinstance(raw, Mapping) else None
    text = repr(value) if not isinstance(value, str) else value
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 60 else text[:57] + "..."


def parse_item(raw: Any, kind: ItemKind = VIDEO) -> Item:
    """Validate one raw API item; raise InvalidItemError naming what is wrong."""
    if not isinstance(raw, Mapping):
        raise InvalidItemError(f"item is a {type(raw).__name__}, not an object")
    item_id = raw.get("id")
    if not isinstance(item_id, str) or not item_id.strip():
        raise InvalidItemError(f"item id is missing or not a string: {describe_id(raw)}")
    if len(item_id) > MAX_ID_LENGTH:
        raise InvalidItemError(f"item id is {len(item_id)} characters long")
    created = _parse_created(raw.get("createdDate"))
    assets: list[Asset] = []
    for spec in kind.assets:
        value = raw.get(spec.key)
        if value is None:
            if spec.required:
                raise InvalidItemError(f"{spec.key} is missing")
            continue
        urls = _url_list(spec, value)
        for index, url in enumerate(urls, start=1):
            role = f"{spec.role}_{index}" if spec.many else spec.role
            assets.append(Asset(role, url, f"{role}.{_extension(url, spec.default_ext)}"))
    return Item(kind=kind, id=item_id, created=created, assets=tuple(assets), raw=raw)


def _parse_created(value: Any) -> datetime:
    if not isinstance(value, str):
        raise InvalidItemError("createdDate is missing or not a string")
    try:
        created = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidItemError(f"createdDate is not an ISO 8601 date: {value[:40]!r}") from None
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    try:
        return created.astimezone(UTC)
    except OverflowError:
        raise InvalidItemError(f"createdDate is out of range: {value[:40]!r}") from None


def _url_list(spec: AssetField, value: Any) -> list[str]:
    values = value if spec.many and isinstance(value, list) else [value]
    if spec.many and not isinstance(value, list):
        raise InvalidItemError(f"{spec.key} is not a list")
    urls = []
    for url in values:
        if not isinstance(url, str):
            raise InvalidItemError(f"{spec.key} is not a string")
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise InvalidItemError(f"{spec.key} is not an http(s) URL: {strip_query(url)[:80]}")
        urls.append(url)
    return urls


def _extension(url: str, default: str) -> str:
    name = posixpath.basename(unquote(urlsplit(url).path))
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return ext if _EXTENSION.match(ext) else default
