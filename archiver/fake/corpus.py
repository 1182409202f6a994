"""A fake library written to disk, so a real static server (nginx) can be its CDN: for benchmarks.

`CorpusLibrary` is a FakeLibrary whose assets are files under a root folder (video sizes
chosen per item, images as small or as tiny as asked); the fake CDN serves them from disk
too. `CorpusPictory` is the fake API over it, listing asset URLs on another origin when
one is given, so the listing comes from the fake while the bytes come from nginx.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from archiver.fake.library import CDN_PLACEHOLDER, DEMO_API_KEY, FakeAsset, FakeLibrary
from archiver.fake.media import make_jpeg, make_mp4, make_png
from archiver.fake.server import FakePictory

CONTENT_TYPES = {".mp4": "video/mp4", ".jpg": "image/jpeg", ".png": "image/png"}


@dataclass(frozen=True)
class CorpusFile:
    """One asset of the corpus: its CDN path (`/videos/user/…/x.mp4`) and its size in bytes."""

    path: str
    size: int

    @property
    def name(self) -> str:
        """The last path component, unique within a corpus."""
        return self.path.rsplit("/", 1)[-1]


class CorpusLibrary(FakeLibrary):
    """A library of `count` videos with four assets each (MP4, two JPEGs, a PNG), on disk.

    Video `i` of the listing (newest first) is `video_sizes[i % len(video_sizes)]` bytes;
    JPEGs are `image_size` bytes; PNGs are `png_pixels` (width, height) RGB images.
    Every file passes the archiver's media checks. Nothing is written until `write()`.
    """

    def __init__(
        self,
        root: Path,
        count: int,
        *,
        video_sizes: Sequence[int],
        image_size: int = 4 * 1024,
        png_pixels: tuple[int, int] = (64, 36),
        seed: int = 1,
    ) -> None:
        super().__init__(
            count, seed=seed, video_size=video_sizes[0], image_size=image_size, optional_every=0
        )
        self.root = root
        self.png_pixels = png_pixels
        self._png_size = len(make_png(0, *png_pixels))
        self._video_sizes = tuple(video_sizes)
        self._files: dict[str, CorpusFile] = {}
        for index, raw in enumerate(self.items):
            for path in self.asset_paths(raw):
                size = self._size(path, self._video_sizes[index % len(self._video_sizes)])
                self._files[path] = CorpusFile(path, size)

    def _size(self, path: str, video_size: int) -> int:
        if path.endswith(".mp4"):
            return video_size
        return self.image_size if path.endswith(".jpg") else self._png_size

    def files(self) -> list[CorpusFile]:
        """Every asset in listing order."""
        return list(self._files.values())

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self._files.values())

    def local_path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def write(self) -> int:
        """Write every asset not already on disk at its size; returns the files written."""
        written = 0
        folders: set[Path] = set()
        for file in self._files.values():
            target = self.local_path(file.path)
            if target.parent not in folders:
                target.parent.mkdir(parents=True, exist_ok=True)
                folders.add(target.parent)
            try:
                if target.stat().st_size == file.size:
                    continue
            except FileNotFoundError:
                pass
            target.write_bytes(self._make(file))
            written += 1
        return written

    def _make(self, file: CorpusFile) -> bytes:
        seed = int.from_bytes(hashlib.blake2b(f"{self.seed}:{file.path}".encode()).digest()[:8])
        if file.path.endswith(".mp4"):
            return make_mp4(seed, file.size)
        if file.path.endswith(".jpg"):
            return make_jpeg(seed, file.size)
        return make_png(seed, *self.png_pixels)

    def asset(self, path: str) -> FakeAsset | None:
        """The file at a CDN path, read from disk, with nginx-style validators; None: 404."""
        if path not in self._files:
            return None
        target = self.local_path(path)
        try:
            data = target.read_bytes()
            mtime = int(target.stat().st_mtime)
        except FileNotFoundError:
            return None
        suffix = path[path.rfind(".") :]
        return FakeAsset(
            path=path,
            content_type=CONTENT_TYPES.get(suffix, "application/octet-stream"),
            data=data,
            etag=f'"{mtime:x}-{len(data):x}"',
            last_modified=format_datetime(datetime.fromtimestamp(mtime, UTC), usegmt=True),
        )

    def item_assets(self, item_id: str) -> dict[str, str]:
        """An item's CDN paths by raw field name (`url`, `previewImageUrl`, …)."""
        return {
            key: value[len(CDN_PLACEHOLDER) :]
            for key, value in self.item(item_id).items()
            if isinstance(value, str) and value.startswith(CDN_PLACEHOLDER)
        }


class CorpusPictory(FakePictory):
    """The fake API over a CorpusLibrary. Asset URLs are `cdn_base` + CDN path when it is set
    (e.g. `http://127.0.0.1:8081/large` for a static server serving the corpus root under
    `/large`), else the fake's own CDN URLs. `cdn_base` may be switched between runs."""

    def __init__(
        self,
        library: CorpusLibrary,
        *,
        cdn_base: str | None = None,
        api_key: str = DEMO_API_KEY,
        page_size: int = 100,
    ) -> None:
        super().__init__(library, api_key=api_key, page_size=page_size)
        self.cdn_base = cdn_base

    def asset_url(self, path: str) -> str:
        if self.cdn_base is not None:
            return self.cdn_base + path
        return super().asset_url(path)
