"""Re-check archived files against the manifest: size always, sha256 unless --fast."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

from archiver.manifest import AssetRecord, Manifest

HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class Problem:
    """One archived file that is not what the manifest says."""

    kind: str
    item_id: str
    role: str
    path: str
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    files: int
    bytes: int
    problems: tuple[Problem, ...]

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0

    def lines(self) -> list[str]:
        lines = [f"  {p.reason}: {p.path}" for p in self.problems]
        verdict = "all intact" if not self.problems else f"{len(self.problems)} damaged or missing"
        lines.append(f"verify: {self.files} files, {self.bytes} bytes checked; {verdict}")
        return lines


def check_file(path: Path, size: int | None, sha256: str | None, fast: bool) -> str | None:
    """Why the file is not the one recorded, or None when it is."""
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if size is not None and actual != size:
        return f"wrong size ({actual} bytes, expected {size})"
    if fast or sha256 is None:
        return None
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while block := handle.read(HASH_BLOCK):
                digest.update(block)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    return None if digest.hexdigest() == sha256 else "altered (sha256 differs)"


async def verify_archive(
    manifest: Manifest, dest: Path, *, fast: bool = False, parallel: int = 4
) -> VerifyReport:
    """Check every file of every complete item, hashing in threads off the event loop."""
    records = list(manifest.complete_assets())
    gate = asyncio.Semaphore(parallel)

    async def check(record: AssetRecord) -> Problem | None:
        async with gate:
            reason = await asyncio.to_thread(
                check_file, dest / record.path, record.size, record.sha256, fast
            )
        if reason is None:
            return None
        return Problem(record.kind, record.item_id, record.role, record.path, reason)

    results = await asyncio.gather(*(check(record) for record in records))
    return VerifyReport(
        files=len(records),
        bytes=sum(record.size or 0 for record in records),
        problems=tuple(problem for problem in results if problem is not None),
    )
