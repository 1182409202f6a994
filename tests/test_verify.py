"""verify: real files in tmp_path checked against a real SQLite manifest, by size and sha256."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from archiver.fake import FakeLibrary
from archiver.manifest import COMPLETE, FETCHED, Manifest
from archiver.verify import Problem, VerifyReport, check_file, verify_archive

V = "video"
ROLE_SUFFIXES = {
    "video": ".mp4",
    "preview": "_preview.jpg",
    "thumbnail": "_thumbnail.jpg",
    "last_frame": "_last_frame.png",
}
FILENAMES = {
    "video": "video.mp4",
    "preview": "preview.jpg",
    "thumbnail": "thumbnail.jpg",
    "last_frame": "last_frame.png",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def asset_bytes(library: FakeLibrary, index: int, role: str) -> bytes:
    raw = library.items[index]
    path = next(
        p
        for p in library.asset_paths(raw)
        if p.endswith(ROLE_SUFFIXES[role]) and (role != "video" or "_" not in p.rsplit("/")[-1])
    )
    asset = library.asset(path)
    assert asset is not None
    return asset.data


@dataclass
class Archive:
    dest: Path
    manifest: Manifest
    ids: list[str]
    files: dict[tuple[str, str], Path]  # (item id, role) -> file on disk
    rel: dict[tuple[str, str], str]  # (item id, role) -> path as the manifest has it


@pytest.fixture
def archive(tmp_path: Path, library: FakeLibrary) -> Iterator[Archive]:
    """Two complete items (4 files and 1 file) and one pending item whose file is missing."""
    dest = tmp_path / "archive"
    manifest = Manifest(tmp_path / "manifest.sqlite")
    run = manifest.start_run("sync")
    ids = [library.items[i]["id"] for i in range(3)]
    files: dict[tuple[str, str], Path] = {}
    rel: dict[tuple[str, str], str] = {}
    layout = {ids[0]: list(FILENAMES), ids[1]: ["video"], ids[2]: ["video"]}
    for index, item_id in enumerate(ids):
        raw = library.items[index]
        folder = manifest.record_listed(
            V, item_id, raw["createdDate"], f"videos/{item_id}", json.dumps(raw), run
        )
        for role in layout[item_id]:
            data = asset_bytes(library, index, role)
            relative = f"{folder}/{FILENAMES[role]}"
            target = dest / relative
            if index < 2:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            files[item_id, role], rel[item_id, role] = target, relative
            manifest.mark_asset(
                V,
                item_id,
                role,
                url=f"https://cdn.example/{item_id}/{role}",
                path=relative,
                state=FETCHED,
                size=len(data),
                sha256=sha256(data),
                etag='"e"',
            )
        if index < 2:
            manifest.mark_complete(V, item_id)
    manifest.commit()
    assert manifest.counts()[COMPLETE] == 2
    try:
        yield Archive(dest, manifest, ids, files, rel)
    finally:
        manifest.close()


def test_check_file_accepts_the_recorded_file(tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(200)))
    data = path.read_bytes()
    assert check_file(path, len(data), sha256(data), fast=False) is None
    assert check_file(path, len(data), sha256(data), fast=True) is None


def test_check_file_missing(tmp_path: Path) -> None:
    assert check_file(tmp_path / "gone.mp4", 10, sha256(b"x"), fast=False) == "missing"
    assert check_file(tmp_path / "gone.mp4", 10, sha256(b"x"), fast=True) == "missing"


def test_check_file_wrong_size_names_both_sizes(tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    path.write_bytes(b"a" * 90)
    reason = check_file(path, 100, sha256(b"a" * 100), fast=True)
    assert reason is not None
    assert reason.startswith("wrong size")
    assert "90" in reason and "100" in reason
    assert check_file(path, 100, sha256(b"a" * 100), fast=False) == reason


def test_check_file_altered_same_size_is_caught_only_when_hashing(tmp_path: Path) -> None:
    original = b"\xff\xd8\xff" + bytes(range(256)) * 10
    path = tmp_path / "preview.jpg"
    altered = bytearray(original)
    altered[1000] ^= 0x01
    path.write_bytes(bytes(altered))
    reason = check_file(path, len(original), sha256(original), fast=False)
    assert reason is not None and reason.startswith("altered")
    assert check_file(path, len(original), sha256(original), fast=True) is None


def test_check_file_hashes_files_larger_than_one_block(tmp_path: Path) -> None:
    data = bytes(range(256)) * (5 * 4096 + 7)  # > 5 MiB: several hash blocks
    path = tmp_path / "video.mp4"
    path.write_bytes(data)
    assert check_file(path, len(data), sha256(data), fast=False) is None
    with path.open("r+b") as handle:
        handle.seek(len(data) - 1)
        handle.write(b"\x00" if data[-1] else b"\x01")
    assert check_file(path, len(data), sha256(data), fast=False) == "altered (sha256 differs)"


def test_check_file_without_a_recorded_hash_checks_size_only(tmp_path: Path) -> None:
    path = tmp_path / "video.mp4"
    path.write_bytes(b"whatever")
    assert check_file(path, 8, None, fast=False) is None
    assert check_file(path, 9, None, fast=False) is not None


def test_check_file_under_a_non_directory_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "folder").write_bytes(b"a file where a folder should be")
    reason = check_file(tmp_path / "folder" / "video.mp4", 10, None, fast=False)
    assert reason is not None and reason.startswith("unreadable")


async def test_intact_archive_verifies_clean(archive: Archive) -> None:
    report = await verify_archive(archive.manifest, archive.dest)

    assert report.problems == ()
    assert report.exit_code == 0
    assert report.files == 5  # the pending item's file is not the archive's yet
    assert report.bytes == sum(p.stat().st_size for p in archive.files.values() if p.exists())
    assert report.lines() == [f"verify: 5 files, {report.bytes} bytes checked; all intact"]


async def test_every_problem_is_named_with_item_role_and_path(archive: Archive) -> None:
    a, b, _ = archive.ids
    archive.files[a, "preview"].unlink()
    thumbnail = archive.files[a, "thumbnail"]
    thumbnail.write_bytes(thumbnail.read_bytes()[:-10])
    video = archive.files[b, "video"]
    altered = bytearray(video.read_bytes())
    altered[len(altered) // 2] ^= 0xFF
    video.write_bytes(bytes(altered))

    report = await verify_archive(archive.manifest, archive.dest)

    by_role = {(p.item_id, p.role): p for p in report.problems}
    assert set(by_role) == {(a, "preview"), (a, "thumbnail"), (b, "video")}
    for key, problem in by_role.items():
        assert problem.kind == V
        assert problem.path == archive.rel[key]
    assert by_role[a, "preview"].reason == "missing"
    assert by_role[a, "thumbnail"].reason.startswith("wrong size")
    assert by_role[b, "video"].reason.startswith("altered")
    assert report.exit_code == 1

    lines = report.lines()
    for key, problem in by_role.items():
        assert any(archive.rel[key] in line and problem.reason in line for line in lines)
    assert lines[-1].startswith("verify: 5 files")
    assert lines[-1].endswith("3 damaged or missing")


async def test_fast_mode_checks_sizes_but_not_content(archive: Archive) -> None:
    a, b, _ = archive.ids
    video = archive.files[b, "video"]
    altered = bytearray(video.read_bytes())
    altered[100] ^= 0xFF
    video.write_bytes(bytes(altered))
    archive.files[a, "last_frame"].write_bytes(b"short")

    fast = await verify_archive(archive.manifest, archive.dest, fast=True)
    full = await verify_archive(archive.manifest, archive.dest, fast=False)

    assert [(p.item_id, p.role) for p in fast.problems] == [(a, "last_frame")]
    assert {(p.item_id, p.role) for p in full.problems} == {(a, "last_frame"), (b, "video")}
    assert fast.exit_code == full.exit_code == 1


async def test_a_missing_item_folder_reports_each_of_its_files(archive: Archive) -> None:
    a = archive.ids[0]
    for role in FILENAMES:
        archive.files[a, role].unlink()
    archive.files[a, "video"].parent.rmdir()

    report = await verify_archive(archive.manifest, archive.dest, parallel=1)

    assert sorted(p.role for p in report.problems) == sorted(FILENAMES)
    assert all(p.reason == "missing" and p.item_id == a for p in report.problems)


async def test_empty_manifest_is_clean(tmp_path: Path) -> None:
    with Manifest(tmp_path / "manifest.sqlite") as manifest:
        report = await verify_archive(manifest, tmp_path)
    assert report == VerifyReport(files=0, bytes=0, problems=())
    assert report.exit_code == 0


def test_report_lines_list_problems_before_the_verdict() -> None:
    problem = Problem(V, "id1", "video", "videos/id1/video.mp4", "missing")
    report = VerifyReport(files=1, bytes=10, problems=(problem,))
    assert report.lines() == [
        "  missing: videos/id1/video.mp4",
        "verify: 1 files, 10 bytes checked; 1 damaged or missing",
    ]
