"""ArchiveLayout: item folders under DEST, safe for any id, and atomic metadata.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from archiver.config import DEFAULT_TEMPLATE
from archiver.errors import StorageError
from archiver.layout import MAX_COMPONENT, ArchiveLayout, safe_component, write_atomic
from archiver.models import Asset, Item, parse_item

CDN = "https://d1.cloudfront.net/videos/user/u-1"
HOSTILE_IDS = [
    "../../etc",
    "..",
    ".",
    "/abs",
    "/",
    "a\\b",
    "a/b",
    "a_b",
    "nul\x00byte",
    "x" * 400,
    "y" * 400,
    "東京の夜景🎬",
    "東京の夜景🎥",
    ".hidden",
    "trailing.",
    "con",
    "-rf",
    "a b",
    "a:b",
    "\ud800",
]


def make_item(item_id: str, created: str = "2026-04-09T18:51:47.967Z") -> Item:
    return parse_item(
        {
            "url": f"{CDN}/v.mp4",
            "id": item_id,
            "createdDate": created,
            "previewImageUrl": f"{CDN}/v_preview.jpg",
            "thumbnailImageUrl": f"{CDN}/v_thumbnail.jpg",
            "lastFrameImageUrl": f"{CDN}/v_last_frame.png",
            "prompt": "Café — 東京 🎬\nline two",
        }
    )


@pytest.fixture
def layout(dest: Path) -> ArchiveLayout:
    dest.mkdir()
    return ArchiveLayout(dest, DEFAULT_TEMPLATE)


def test_default_template_folder(layout: ArchiveLayout) -> None:
    item = make_item("20260409185104635ec00b33280fc451f")
    assert (
        layout.item_folder(item)
        == "videos/2026/04/2026-04-09_185147_20260409185104635ec00b33280fc451f"
    )


def test_folder_uses_utc_date(layout: ArchiveLayout) -> None:
    item = make_item("abc", created="2026-01-01T01:02:03+05:00")
    assert layout.item_folder(item) == "videos/2025/12/2025-12-31_200203_abc"


def test_other_template_fields(dest: Path) -> None:
    layout = ArchiveLayout(dest, "{kind}/{year}{month}{day}/{id}")
    assert layout.item_folder(make_item("abc")) == "videos/video/20260409/abc"


def test_state_paths(layout: ArchiveLayout, dest: Path) -> None:
    assert layout.state_dir == dest / ".pictory-archiver"
    assert layout.manifest_path == dest / ".pictory-archiver" / "manifest.sqlite"
    assert layout.lock_path == dest / ".pictory-archiver" / "lock"
    layout.prepare()
    assert layout.runs_dir.is_dir()


def test_relative_dest_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    layout = ArchiveLayout(Path("rel"), DEFAULT_TEMPLATE)
    assert layout.dest == tmp_path / "rel"


@pytest.mark.parametrize("item_id", HOSTILE_IDS)
def test_hostile_id_gives_one_safe_component_inside_dest(
    layout: ArchiveLayout, dest: Path, item_id: str
) -> None:
    folder = layout.item_folder(make_item(item_id))
    parts = folder.split("/")
    assert parts[:3] == ["videos", "2026", "04"]
    assert len(parts) == 4
    name = parts[3]
    assert name.startswith("2026-04-09_185147_")
    component = name.removeprefix("2026-04-09_185147_")
    assert component not in ("", ".", "..")
    assert "\\" not in component and "\x00" not in component
    assert len(name) <= 255
    assert name.isascii()
    assert layout.make_folder(folder) is True
    path = layout.resolve(folder)
    assert path.is_dir()
    assert path.parent == dest.resolve() / "videos" / "2026" / "04"


def test_distinct_hostile_ids_give_distinct_folders(layout: ArchiveLayout) -> None:
    folders = {layout.item_folder(make_item(item_id)) for item_id in HOSTILE_IDS}
    assert len(folders) == len(HOSTILE_IDS)


def test_safe_component_keeps_plain_ids_and_marks_altered_ones() -> None:
    plain = "20260409185104635ec00b33280fc451f"
    assert safe_component(plain) == plain
    assert safe_component("a.b-c_d") == "a.b-c_d"
    altered = safe_component("../../etc")
    assert altered.startswith("etc-")
    assert len(altered) == len("etc-") + 10
    long = safe_component("z" * 400)
    assert long.startswith("z" * MAX_COMPONENT + "-")
    assert safe_component("東京").startswith("item-")
    assert safe_component("a/b") != safe_component("a_b")


@pytest.mark.parametrize(
    "relative",
    ["..", "../x", "a/../../x", "/etc/passwd", "videos/../../outside", "//host/share"],
)
def test_resolve_refuses_escapes(layout: ArchiveLayout, relative: str) -> None:
    with pytest.raises(StorageError, match="outside DEST"):
        layout.resolve(relative)


def test_resolve_refuses_symlink_out_of_dest(
    layout: ArchiveLayout, dest: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / "videos").symlink_to(outside)
    with pytest.raises(StorageError):
        layout.resolve("videos/x")
    with pytest.raises(StorageError):
        layout.make_folder("videos/2026")
    assert list(outside.iterdir()) == []


def test_resolve_allows_paths_inside(layout: ArchiveLayout, dest: Path) -> None:
    assert layout.resolve("videos/a/../b") == dest.resolve() / "videos" / "b"
    assert layout.resolve("") == dest.resolve()


def test_asset_path(layout: ArchiveLayout, dest: Path) -> None:
    asset = Asset("video", f"{CDN}/v.mp4", "video.mp4")
    assert layout.asset_path("videos/x", asset) == dest.resolve() / "videos" / "x" / "video.mp4"
    for bad in ("../video.mp4", "a/b.mp4", ".."):
        with pytest.raises(StorageError, match="unsafe asset file name"):
            layout.asset_path("videos/x", Asset("video", f"{CDN}/v.mp4", bad))


def test_write_metadata_is_atomic_and_keeps_raw(layout: ArchiveLayout, dest: Path) -> None:
    item = make_item("abc")
    folder = layout.item_folder(item)
    layout.make_folder(folder)
    path = layout.resolve(folder)
    archive: dict[str, Any] = {"archived_at": "2026-04-10T00:00:00Z", "files": {"video": 1}}

    layout.write_metadata(folder, item.raw, archive)

    target = path / "metadata.json"
    assert sorted(p.name for p in path.iterdir()) == ["metadata.json"]
    text = target.read_bytes().decode("utf-8")
    assert "Café — 東京 🎬" in text  # unicode kept as is, not \u-escaped
    document = json.loads(text)
    assert document == {**item.raw, "archive": archive}
    assert layout.read_metadata(folder) == document

    layout.write_metadata(folder, item.raw, {"archived_at": "later"})
    assert sorted(p.name for p in path.iterdir()) == ["metadata.json"]
    assert json.loads(target.read_text("utf-8"))["archive"] == {"archived_at": "later"}


def test_write_metadata_into_missing_folder_fails_cleanly(layout: ArchiveLayout) -> None:
    with pytest.raises(StorageError, match="metadata.json"):
        layout.write_metadata("videos/missing", {"id": "x"}, {})
    assert not (layout.dest / "videos").exists()


def test_write_atomic_leaves_no_temp_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "dir-in-the-way"
    (target / "child").mkdir(parents=True)  # os.replace of a file over a non-empty dir fails
    with pytest.raises(StorageError, match="dir-in-the-way"):
        write_atomic(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir-in-the-way"]


def test_write_atomic_replaces_content(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_bytes(b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.json"]


def test_make_folder_removes_stray_temp_files(layout: ArchiveLayout) -> None:
    folder = "videos/2026/04/x"
    assert layout.make_folder(folder) is True
    path = layout.resolve(folder)
    (path / ".metadata.json.k2j3h4.tmp").write_text("half")
    (path / ".metadata.json.zzzz.tmp").write_text("half")
    (path / "video.mp4").write_bytes(b"keep")
    (path / "video.mp4.part").write_bytes(b"keep")
    (path / "metadata.json").write_text("{}")

    assert layout.make_folder(folder) is False  # not new: earlier files may be resumed
    assert sorted(p.name for p in path.iterdir()) == [
        "metadata.json",
        "video.mp4",
        "video.mp4.part",
    ]


def test_make_folder_under_a_file_is_a_storage_error(layout: ArchiveLayout) -> None:
    (layout.dest / "videos").write_text("not a dir")
    with pytest.raises(StorageError, match="cannot create"):
        layout.make_folder("videos/2026")


def test_prepare_on_a_file_is_a_storage_error(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(StorageError, match="cannot create"):
        ArchiveLayout(target, DEFAULT_TEMPLATE).prepare()


def test_read_metadata_tolerates_missing_and_bad_files(layout: ArchiveLayout) -> None:
    layout.make_folder("videos/x")
    path = layout.resolve("videos/x")
    assert layout.read_metadata("videos/x") is None
    (path / "metadata.json").write_text("{not json")
    assert layout.read_metadata("videos/x") is None
    (path / "metadata.json").write_text("[1, 2]")
    assert layout.read_metadata("videos/x") is None


def test_metadata_json_is_readable_like_any_other_file(tmp_path: Path) -> None:
    layout = ArchiveLayout(tmp_path, DEFAULT_TEMPLATE)
    (tmp_path / "f").mkdir()
    layout.write_metadata("f", {"id": "x"}, {"files": {}})
    mode = (tmp_path / "f" / "metadata.json").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_publish_renames_staged_files_and_tolerates_a_second_pass(
    layout: ArchiveLayout,
) -> None:
    layout.make_folder("videos/x")
    folder = layout.resolve("videos/x")
    staged = [(folder / "video.mp4.part", folder / "video.mp4")]
    staged[0][0].write_bytes(b"data")
    temp, final = layout.stage_metadata("videos/x", {"id": "x"}, {"files": {}})
    staged.append((temp, final))
    assert not final.exists() and temp.exists()
    layout.publish(staged)
    layout.publish(staged)  # an interrupted checkpoint runs again: nothing is lost
    assert (folder / "video.mp4").read_bytes() == b"data"
    assert json.loads(final.read_text())["id"] == "x"
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "video.mp4"]
    (folder / "video.mp4").unlink()
    with pytest.raises(StorageError):
        layout.publish(staged)
