"""Where things go under DEST: item folders, safe names, state files, atomic sidecars.

Every path handed out is checked to resolve inside DEST, whatever the API sent.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from archiver.errors import StorageError
from archiver.models import Asset, Item

STATE_DIR = ".pictory-archiver"
METADATA_NAME = "metadata.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
MAX_COMPONENT = 64


def safe_component(text: str) -> str:
    """A file-name-safe rendering of `text`; a hash suffix keeps altered names unique."""
    cleaned = _UNSAFE.sub("_", text).strip("._") or "item"
    if cleaned == text and len(text) <= MAX_COMPONENT:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{cleaned[:MAX_COMPONENT]}-{digest}"


class ArchiveLayout:
    """Maps items and assets to paths under DEST."""

    def __init__(self, dest: Path, folder_template: str) -> None:
        self.dest = dest.absolute()
        self.template = folder_template
        self._root = self.dest.resolve()

    @property
    def state_dir(self) -> Path:
        return self.dest / STATE_DIR

    @property
    def manifest_path(self) -> Path:
        return self.state_dir / "manifest.sqlite"

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "lock"

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs"

    def item_folder(self, item: Item) -> str:
        """The item's folder relative to DEST, e.g. videos/2026/04/2026-04-09_185147_<id>.

        Checked lexically here (every part is a safe name); `make_folder` resolves it
        against symlinks before anything is written."""
        when = item.created
        relative = self.template.format(
            year=f"{when.year:04d}",
            month=f"{when.month:02d}",
            day=f"{when.day:02d}",
            date=when.strftime("%Y-%m-%d"),
            time=when.strftime("%H%M%S"),
            id=safe_component(item.id),
            kind=item.kind.name,
        )
        folder = f"{item.kind.folder}/{relative}"
        if any(part in ("", ".", "..") for part in folder.split("/")):
            raise StorageError(f"refusing a folder outside DEST: {folder[:80]!r}")
        return folder

    def resolve(self, relative: str) -> Path:
        """DEST/relative, refusing anything that would land outside DEST (symlinks too)."""
        path = (self.dest / relative).resolve()
        if path != self._root and self._root not in path.parents:
            raise StorageError(f"refusing a path outside DEST: {relative[:80]!r}")
        return path

    def asset_path(self, folder: str, asset: Asset) -> Path:
        """A file in an item folder that `item_folder` already checked: the name alone
        must be safe, so no second walk of the path is needed (this runs per file)."""
        if safe_component(asset.filename) != asset.filename:
            raise StorageError(f"unsafe asset file name {asset.filename!r}")
        return self.dest / folder / asset.filename

    def prepare(self) -> None:
        """Create DEST and its state folder, or explain why not."""
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {self.state_dir}: {exc.strerror}") from None

    def make_folder(self, folder: str) -> bool:
        """Create an item's folder, dropping sidecar temp files a crash left in it;
        True when the folder is new (so nothing of an earlier run can be in it)."""
        path = self.resolve(folder)
        try:
            path.mkdir(parents=True)
            return True
        except FileExistsError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot create {folder}: {exc.strerror}") from None
        try:
            if not path.is_dir():
                raise StorageError(f"cannot create {folder}: a file is in the way")
            for stray in path.glob(".*.tmp"):
                stray.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {folder}: {exc.strerror}") from None
        return False

    def write_metadata(self, folder: str, raw: Mapping[str, Any], archive: dict[str, Any]) -> None:
        """metadata.json: the API item verbatim plus one `archive` key, written atomically."""
        write_atomic(self.resolve(f"{folder}/{METADATA_NAME}"), metadata_bytes(raw, archive))

    def stage_metadata(
        self, folder: str, raw: Mapping[str, Any], archive: dict[str, Any]
    ) -> tuple[Path, Path]:
        """metadata.json written under a temp name, not yet synced or renamed: the
        pipeline renames it (temp, final) after its group's filesystem sync."""
        final = self.resolve(f"{folder}/{METADATA_NAME}")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as handle:
                handle.write(metadata_bytes(raw, archive))
        except OSError as exc:
            raise StorageError(f"cannot write {folder}/{METADATA_NAME}: {exc.strerror}") from None
        return Path(tmp), final

    def publish(self, staged: list[tuple[Path, Path]]) -> None:
        """Group commit, second half: after `flush_to_disk`, rename the staged files into
        place and make the renames durable. A reader only ever sees whole, synced files."""
        folders = set()
        try:
            for temp, final in staged:
                try:
                    os.replace(temp, final)
                except FileNotFoundError:
                    if not final.exists():
                        raise
                    # already published (a checkpoint interrupted half-way is run again)
                folders.add(final.parent)
            for folder in folders:
                fsync_dir(folder)
        except OSError as exc:
            raise StorageError(f"cannot move files into place: {exc.strerror}") from None

    def flush_to_disk(self) -> None:
        """Make everything written under DEST durable at once (group commit): one syncfs
        of DEST's filesystem instead of an fsync per file."""
        try:
            fd = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise StorageError(f"cannot open {self.dest}: {exc.strerror}") from None
        try:
            if _syncfs is None or _syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    def read_metadata(self, folder: str) -> dict[str, Any] | None:
        try:
            with self.resolve(f"{folder}/{METADATA_NAME}").open("rb") as handle:
                value = json.load(handle)
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func: Callable[[int], int] = libc.syncfs
    except (OSError, AttributeError):
        return None
    return func


_syncfs = _load_syncfs()


def metadata_bytes(raw: Mapping[str, Any], archive: dict[str, Any]) -> bytes:
    document = {**raw, "archive": archive}
    try:
        return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # lone surrogates from the API: keep them as \u escapes
        return json.dumps(document, indent=2).encode("ascii") + b"\n"


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp name in the same folder, fsync, rename over, fsync the folder."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {path.name}: {exc.strerror or exc}") from None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
