"""Manifest: a real SQLite file in WAL mode; states, frontier, runs, durability, errors."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import archiver
from archiver.errors import ManifestError
from archiver.manifest import (
    COMPLETE,
    FAILED,
    INVALID,
    PENDING,
    SCHEMA_VERSION,
    Frontier,
    Manifest,
)

V = "video"
PROJECT = Path(archiver.__file__).resolve().parent.parent


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "manifest.sqlite"


@pytest.fixture
def manifest(path: Path) -> Iterator[Manifest]:
    with Manifest(path) as opened:
        yield opened


def listed(m: Manifest, item_id: str, run_id: int, created: str = "", kind: str = V) -> str:
    created = created or f"2026-04-09T18:00:{item_id[-2:].rjust(2, '0')}.000Z"
    return m.record_listed(
        kind, item_id, created, f"videos/{item_id}", json.dumps({"id": item_id}), run_id
    )


def read_rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Read through a second, independent connection (sees only committed data)."""
    reader = sqlite3.connect(path)
    try:
        return reader.execute(sql).fetchall()
    finally:
        reader.close()


def test_new_manifest_has_schema_and_version(path: Path) -> None:
    Manifest(path).close()
    tables = {row[0] for row in read_rows(path, "SELECT name FROM sqlite_master")}
    assert {"meta", "items", "assets", "runs"} <= tables
    assert read_rows(path, "SELECT value FROM meta WHERE key='schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    assert read_rows(path, "PRAGMA journal_mode") == [("wal",)]


def test_reopening_keeps_the_version_row(path: Path) -> None:
    Manifest(path).close()
    Manifest(path).close()
    assert read_rows(path, "SELECT count(*) FROM meta WHERE key='schema_version'") == [(1,)]


def test_newer_schema_is_refused(path: Path) -> None:
    Manifest(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(ManifestError, match="newer") as info:
        Manifest(path)
    assert "upgrade" in info.value.message


def test_corrupt_file_is_a_manifest_error(path: Path) -> None:
    path.write_bytes(os.urandom(8192))
    with pytest.raises(ManifestError) as info:
        Manifest(path)
    assert str(path) in info.value.message
    assert not isinstance(info.value, sqlite3.Error)


def test_unopenable_path_is_a_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError):
        Manifest(tmp_path / "no" / "such" / "dir" / "manifest.sqlite")


def test_open_existing_refuses_to_create(path: Path) -> None:
    with pytest.raises(ManifestError, match="run sync first"):
        Manifest.open_existing(path)
    assert not path.exists()
    Manifest(path).close()
    Manifest.open_existing(path).close()


def test_frontier_get_and_set(manifest: Manifest) -> None:
    assert manifest.frontier(V) is None
    manifest.set_frontier(V, Frontier("a", "2026-04-09T18:51:47.967Z"))
    assert manifest.frontier(V) == Frontier("a", "2026-04-09T18:51:47.967Z")
    manifest.set_frontier(V, Frontier("b", "2026-04-10T00:00:00.000Z"))
    assert manifest.frontier(V) == Frontier("b", "2026-04-10T00:00:00.000Z")
    assert manifest.frontier("image") is None


def test_record_listed_inserts_pending(manifest: Manifest) -> None:
    assert listed(manifest, "i01", run_id=1) == "videos/i01"
    record = manifest.item(V, "i01")
    assert record is not None
    assert record.state == PENDING
    assert record.folder == "videos/i01"
    assert json.loads(record.item_json) == {"id": "i01"}
    assert manifest.item(V, "nope") is None


def test_record_listed_upsert_keeps_folder_and_first_seen(manifest: Manifest, path: Path) -> None:
    manifest.record_listed(V, "x", "2026-01-01T00:00:00.000Z", "videos/old", '{"v": 1}', 1)
    manifest.mark_complete(V, "x")
    manifest.commit()
    db = sqlite3.connect(path)
    db.execute("UPDATE items SET first_seen='2000-01-01T00:00:00Z', last_seen='2000'")
    db.commit()
    db.close()

    folder = manifest.record_listed(V, "x", "2026-01-01T00:00:00.000Z", "videos/new", '{"v":2}', 2)

    assert folder == "videos/old"
    record = manifest.item(V, "x")
    assert record is not None
    assert record.folder == "videos/old"
    assert record.state == COMPLETE
    assert record.item_json == '{"v":2}'
    manifest.commit()
    ((first_seen, last_seen, run),) = read_rows(
        path, "SELECT first_seen, last_seen, last_seen_run FROM items"
    )
    assert first_seen == "2000-01-01T00:00:00Z"
    assert last_seen != "2000" and str(last_seen).startswith("20")
    assert run == 2


def test_states(manifest: Manifest) -> None:
    for item_id in ("a1", "b2", "c3"):
        listed(manifest, item_id, 1)
    manifest.mark_complete(V, "a1")
    manifest.mark_failed(V, "b2", "boom")
    assert manifest.states(V, ["a1", "b2", "c3", "zz"]) == {
        "a1": COMPLETE,
        "b2": FAILED,
        "c3": PENDING,
    }
    assert manifest.states(V, []) == {}
    assert manifest.states("image", ["a1"]) == {}


def test_states_with_many_ids(manifest: Manifest) -> None:
    ids = [f"id{n:04d}" for n in range(300)]
    for item_id in ids:
        listed(manifest, item_id, 1)
    assert manifest.states(V, ids) == dict.fromkeys(ids, PENDING)


def test_mark_failed_pending_complete(manifest: Manifest) -> None:
    listed(manifest, "a1", 1)
    manifest.mark_failed(V, "a1", "HTTP 404 on video.mp4")
    record = manifest.item(V, "a1")
    assert record is not None and (record.state, record.error) == (FAILED, "HTTP 404 on video.mp4")
    manifest.mark_complete(V, "a1")
    record = manifest.item(V, "a1")
    assert record is not None and (record.state, record.error) == (COMPLETE, None)
    manifest.mark_pending(V, "a1", "files missing on disk")
    record = manifest.item(V, "a1")
    assert record is not None and (record.state, record.error) == (PENDING, "files missing on disk")


def test_mark_asset_counts_attempts_and_keeps_size_and_etag(manifest: Manifest) -> None:
    listed(manifest, "a1", 1)
    url, where = "https://cdn/v.mp4", "videos/a1/video.mp4"
    assert manifest.assets_of(V, "a1").get("video") is None
    manifest.mark_asset(V, "a1", "video", state=FAILED, error="reset", url=url, path=where)
    manifest.mark_asset(
        V, "a1", "video", state=FAILED, error="timeout", etag='"e1"', url=url, path=where
    )
    record = manifest.assets_of(V, "a1").get("video")
    assert record is not None
    assert (record.state, record.attempts, record.last_error, record.etag) == (
        FAILED,
        2,
        "timeout",
        '"e1"',
    )
    manifest.mark_asset(
        V, "a1", "video", state=COMPLETE, size=123, sha256="ab" * 32, url=url, path=where
    )
    record = manifest.assets_of(V, "a1").get("video")
    assert record is not None
    assert (record.state, record.attempts, record.size, record.sha256) == (
        COMPLETE,
        2,
        123,
        "ab" * 32,
    )
    assert record.etag == '"e1"'
    assert record.last_error is None
    manifest.mark_asset(V, "a1", "video", state=FAILED, error="again", url=url, path=where)
    record = manifest.assets_of(V, "a1").get("video")
    assert record is not None and record.size == 123 and record.attempts == 3


def test_unfinished_excludes_seen_in_run_and_complete(manifest: Manifest) -> None:
    listed(manifest, "p1", 1, created="2026-04-01T00:00:00.000Z")  # pending, run 1
    listed(manifest, "f1", 1, created="2026-04-03T00:00:00.000Z")  # failed, run 1
    manifest.mark_failed(V, "f1", "x")
    listed(manifest, "c1", 1, created="2026-04-04T00:00:00.000Z")  # complete
    manifest.mark_complete(V, "c1")
    listed(manifest, "s2", 2, created="2026-04-05T00:00:00.000Z")  # pending, seen in run 2
    manifest.record_invalid(V, "bad", '{"id": "bad"}', "url is missing")
    listed(manifest, "o1", 1, created="2026-04-02T00:00:00.000Z", kind="image")

    assert [r.id for r in manifest.unfinished(V, 2)] == ["f1", "p1"]
    assert [r.id for r in manifest.unfinished(V, 1)] == ["s2"]
    assert [r.id for r in manifest.unfinished("image", 2)] == ["o1"]
    failed = next(iter(manifest.unfinished(V, 2)))
    assert (failed.state, failed.error, failed.folder) == (FAILED, "x", "videos/f1")


def test_record_invalid_never_downgrades_complete(manifest: Manifest) -> None:
    listed(manifest, "a1", 1)
    manifest.mark_complete(V, "a1")
    manifest.record_invalid(V, "a1", "{}", "broken now")
    record = manifest.item(V, "a1")
    assert record is not None and record.state == COMPLETE and record.error is None
    manifest.record_invalid(V, "b2", '{"id": "b2"}', "no url")
    record = manifest.item(V, "b2")
    assert record is not None and (record.state, record.error) == (INVALID, "no url")


def test_item_fixed_upstream_after_being_invalid_gets_a_real_folder(manifest: Manifest) -> None:
    manifest.record_invalid(V, "a1", '{"id": "a1"}', "url is missing")
    folder = listed(manifest, "a1", 2)
    assert folder == "videos/a1"
    record = manifest.item(V, "a1")
    assert record is not None and record.state == PENDING


def test_mark_deleted_upstream_flags_and_never_deletes(manifest: Manifest) -> None:
    for item_id in ("a1", "b2", "c3"):
        listed(manifest, item_id, 1)
    manifest.mark_complete(V, "b2")
    manifest.record_invalid(V, "bad", "{}", "no url")
    listed(manifest, "o1", 1, kind="image")
    listed(manifest, "a1", 2)

    assert sorted(manifest.mark_deleted_upstream(V, 2)) == ["b2", "c3"]

    assert len(list(manifest.items())) == 5
    flagged = {r.id for r in manifest.items() if r.deleted_upstream is not None}
    assert flagged == {"b2", "c3"}
    record = manifest.item(V, "b2")
    assert record is not None and record.state == COMPLETE
    assert manifest.counts()["deleted_upstream"] == 2
    assert manifest.mark_deleted_upstream(V, 2) == []  # already flagged

    listed(manifest, "c3", 3)  # back in the listing
    record = manifest.item(V, "c3")
    assert record is not None and record.deleted_upstream is None


def test_counts(manifest: Manifest) -> None:
    assert manifest.counts() == {
        COMPLETE: 0,
        PENDING: 0,
        FAILED: 0,
        INVALID: 0,
        "deleted_upstream": 0,
    }
    for item_id in ("a1", "b2", "c3", "d4"):
        listed(manifest, item_id, 1)
    manifest.mark_complete(V, "a1")
    manifest.mark_complete(V, "b2")
    manifest.mark_failed(V, "c3", "x")
    manifest.record_invalid(V, "e5", "{}", "bad")
    assert manifest.counts() == {
        COMPLETE: 2,
        PENDING: 1,
        FAILED: 1,
        INVALID: 1,
        "deleted_upstream": 0,
    }


def test_archived_bytes_counts_complete_items_only(manifest: Manifest) -> None:
    assert manifest.archived_bytes() == (0, 0)
    for item_id in ("a1", "b2"):
        listed(manifest, item_id, 1)
        for role, size in (("video", 1000), ("preview", 24)):
            manifest.mark_asset(
                V, item_id, role, url="u", path=f"{item_id}/{role}", state=COMPLETE, size=size
            )
    manifest.mark_complete(V, "a1")
    assert manifest.archived_bytes() == (2, 1024)
    assert [a.path for a in manifest.complete_assets()] == ["a1/preview", "a1/video"]
    manifest.mark_complete(V, "b2")
    assert manifest.archived_bytes() == (4, 2048)


def test_items_filtered_by_state_newest_first(manifest: Manifest) -> None:
    listed(manifest, "old", 1, created="2026-01-01T00:00:00.000Z")
    listed(manifest, "new", 1, created="2026-03-01T00:00:00.000Z")
    listed(manifest, "mid", 1, created="2026-02-01T00:00:00.000Z")
    manifest.mark_complete(V, "mid")
    assert [r.id for r in manifest.items()] == ["new", "mid", "old"]
    assert [r.id for r in manifest.items(PENDING)] == ["new", "old"]


def test_runs(manifest: Manifest, path: Path) -> None:
    first = manifest.start_run("sync")
    second = manifest.start_run("verify")
    assert second > first > 0
    # start_run commits, so a reader sees the run at once
    assert read_rows(path, "SELECT id, command FROM runs ORDER BY id") == [
        (first, "sync"),
        (second, "verify"),
    ]
    manifest.finish_run(first, 1, {"failed": ["x"], "ok": 3})
    runs = manifest.last_runs()
    assert [r["id"] for r in runs] == [second, first]
    assert runs[0]["ended"] is None and runs[0]["report"] is None
    assert runs[1]["exit_code"] == 1
    assert runs[1]["report"] == {"failed": ["x"], "ok": 3}
    assert runs[1]["ended"] is not None
    assert [r["id"] for r in manifest.last_runs(limit=1)] == [second]
    assert read_rows(path, f"SELECT exit_code FROM runs WHERE id={first}") == [(1,)]


def test_readers_see_changes_only_after_commit(manifest: Manifest, path: Path) -> None:
    listed(manifest, "a1", 1)
    manifest.set_frontier(V, Frontier("a1", "2026"))
    assert read_rows(path, "SELECT id FROM items") == []
    manifest.commit()
    assert read_rows(path, "SELECT id FROM items") == [("a1",)]
    assert read_rows(path, "SELECT count(*) FROM meta WHERE key='frontier:video'") == [(1,)]


def test_a_commit_is_due_for_full_batches_only(path: Path) -> None:
    with Manifest(path, batch_rows=3, batch_seconds=3600) as manifest:
        assert not manifest.commit_due()
        listed(manifest, "a1", 1)
        listed(manifest, "b2", 1)
        assert not manifest.commit_due()
        assert read_rows(path, "SELECT count(*) FROM items") == [(0,)]
        listed(manifest, "c3", 1)
        assert manifest.commit_due()
        manifest.commit()
        assert not manifest.commit_due()
        assert read_rows(path, "SELECT count(*) FROM items") == [(3,)]


def test_close_commits_and_reopen_sees_everything(path: Path) -> None:
    manifest = Manifest(path)
    listed(manifest, "a1", 1)
    manifest.mark_complete(V, "a1")
    manifest.close()
    with Manifest(path) as reopened:
        assert reopened.states(V, ["a1"]) == {"a1": COMPLETE}


CRASHING_WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from archiver.manifest import Manifest

    m = Manifest(Path(sys.argv[1]))
    m.record_listed("video", "committed", "2026", "videos/c", "{}", 1)
    m.commit()
    m.record_listed("video", "uncommitted", "2026", "videos/u", "{}", 1)
    m.mark_complete("video", "committed")
    os._exit(0)  # a crash: no close, no commit
    """
)


def test_only_committed_changes_survive_a_crash(path: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(path)], check=True, timeout=30, cwd=PROJECT
    )
    with Manifest(path) as reopened:
        assert reopened.states(V, ["committed", "uncommitted"]) == {"committed": PENDING}


def test_unfinished_pages_through_many_items_in_order_while_the_caller_writes(
    manifest: Manifest,
) -> None:
    for number in range(25):
        same_second = "2026-04-09T18:00:00.000Z" if number % 5 == 0 else ""
        listed(manifest, f"u{number:02d}", 1, created=same_second)
    seen = []
    for record in manifest.unfinished(V, 2, batch=4):
        seen.append(record.id)
        manifest.mark_complete(V, record.id)
    assert sorted(seen) == sorted(f"u{n:02d}" for n in range(25))
    assert len(seen) == 25
    created = [manifest.item(V, item_id).created for item_id in seen]  # type: ignore[union-attr]
    assert created == sorted(created, reverse=True)


def test_listed_in_run_names_what_this_run_recorded(manifest: Manifest) -> None:
    listed(manifest, "a1", 1)
    listed(manifest, "b2", 2)
    assert manifest.listed_in_run(V, ["a1", "b2", "zz"], 2) == {"b2"}
    assert manifest.listed_in_run(V, [], 2) == set()
