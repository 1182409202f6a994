"""Re-check archived files against the manifest: size always, sha256 unless --fast."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

from archiver.manifest import Manifest

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
    """Check every file of every complete item, hashing in a few threads off the event loop;
    memory stays flat however many files there are."""
    records = iter(manifest.complete_assets())
    problems: list[Problem] = []
    totals = [0, 0]

    async def checker() -> None:
        for record in records:
            totals[0] += 1
            totals[1] += record.size or 0
            reason = await asyncio.to_thread(
                check_file, dest / record.path, record.size, record.sha256, fast
            )
            if reason is not None:
                problems.append(
                    Problem(record.kind, record.item_id, record.role, record.path, reason)
                )

    await asyncio.gather(*(checker() for _ in range(parallel)))
    problems.sort(key=lambda problem: problem.path)
    return VerifyReport(files=totals[0], bytes=totals[1], problems=tuple(problems))
