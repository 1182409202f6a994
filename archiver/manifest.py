"""The manifest: what the archive holds, in SQLite (WAL), so every run resumes.

One writer (the pipeline, on the event loop) batches its changes and commits them
together; readers (status, verify) may look at any time thanks to WAL.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from archiver.errors import ManifestError

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    created TEXT NOT NULL,
    folder TEXT NOT NULL,
    state TEXT NOT NULL,
    item_json TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    last_seen_run INTEGER,
    error TEXT,
    deleted_upstream TEXT,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS items_state ON items (kind, state);
CREATE TABLE IF NOT EXISTS assets (
    kind TEXT NOT NULL,
    item_id TEXT NOT NULL,
    role TEXT NOT NULL,
    url TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER,
    sha256 TEXT,
    etag TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (kind, item_id, role)
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    command TEXT NOT NULL,
    started TEXT NOT NULL,
    ended TEXT,
    exit_code INTEGER,
    report_json TEXT
);
"""

PENDING, COMPLETE, FAILED, INVALID = "pending", "complete", "failed", "invalid"
FETCHED, DAMAGED = "fetched", "damaged"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Frontier:
    """The newest item such that it and everything older has been listed and recorded."""

    id: str
    created: str


@dataclass(frozen=True)
class AssetRecord:
    """What the manifest knows of one asset."""

    kind: str
    item_id: str
    role: str
    url: str
    path: str
    size: int | None
    sha256: str | None
    etag: str | None
    state: str
    attempts: int
    last_error: str | None


@dataclass(frozen=True)
class ItemRecord:
    kind: str
    id: str
    created: str
    folder: str
    state: str
    item_json: str
    error: str | None
    deleted_upstream: str | None


class Manifest:
    """SQLite manifest with batched commits; every sqlite3 error becomes ManifestError."""

    def __init__(self, path: Path, *, batch_rows: int = 500, batch_seconds: float = 1.0) -> None:
        self.path = path
        self._batch_rows = batch_rows
        self._batch_seconds = batch_seconds
        self._dirty = 0
        self._last_commit = time.monotonic()
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise ManifestError(f"cannot open manifest {path}: {exc}") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._check_schema()
            self._db.execute("BEGIN")
        except sqlite3.Error as exc:
            self._db.close()
            raise ManifestError(f"cannot open manifest {path}: {exc}") from None
        except ManifestError:
            self._db.close()
            raise

    @classmethod
    def open_existing(cls, path: Path) -> Manifest:
        """For status/verify: refuse to create a manifest where there is none."""
        if not path.is_file():
            raise ManifestError(f"no archive here: {path} does not exist (run sync first)")
        return cls(path)

    def _check_schema(self) -> None:
        self._db.executescript(SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
            )
        elif int(row[0]) > SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema {row[0]} is newer than this pictory-archiver "
                f"understands ({SCHEMA_VERSION}): upgrade pictory-archiver"
            )

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, tuple(params))
        except sqlite3.Error as exc:
            raise ManifestError(f"manifest error: {exc}") from None

    def _changed(self, rows: int = 1) -> None:
        self._dirty += rows

    def commit_due(self) -> bool:
        """Is the batch big or old enough to commit?"""
        return bool(self._dirty) and (
            self._dirty >= self._batch_rows
            or time.monotonic() - self._last_commit >= self._batch_seconds
        )

    def commit(self) -> None:
        """Make every change so far durable in one transaction and start the next."""
        try:
            self._db.execute("COMMIT")
            self._db.execute("BEGIN")
        except sqlite3.Error as exc:
            raise ManifestError(f"cannot commit the manifest: {exc}") from None
        self._dirty = 0
        self._last_commit = time.monotonic()

    def close(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
            self._db.close()
        except sqlite3.Error as exc:
            raise ManifestError(f"cannot close the manifest: {exc}") from None

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def frontier(self, kind: str) -> Frontier | None:
        row = self._execute("SELECT value FROM meta WHERE key=?", (f"frontier:{kind}",)).fetchone()
        if row is None:
            return None
        data = json.loads(row[0])
        return Frontier(id=data["id"], created=data["created"])

    def set_frontier(self, kind: str, frontier: Frontier) -> None:
        value = json.dumps({"id": frontier.id, "created": frontier.created})
        self._execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (f"frontier:{kind}", value)
        )
        self._changed()

    def states(self, kind: str, ids: Iterable[str]) -> dict[str, str]:
        """The state of each of `ids` that the manifest knows."""
        ids = list(ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._execute(
            f"SELECT id, state FROM items WHERE kind=? AND id IN ({marks})", (kind, *ids)
        )
        return dict(rows.fetchall())

    def listed_in_run(self, kind: str, ids: Iterable[str], run_id: int) -> set[str]:
        """Which of `ids` this run has recorded already (so the run need not remember)."""
        ids = list(ids)
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        rows = self._execute(
            f"SELECT id FROM items WHERE kind=? AND last_seen_run=? AND id IN ({marks})",
            (kind, run_id, *ids),
        )
        return {row[0] for row in rows.fetchall()}

    def record_listed(
        self, kind: str, item_id: str, created: str, folder: str, item_json: str, run_id: int
    ) -> str:
        """Upsert a listed item (fresh URLs, last seen); return the folder it lives in."""
        now = utc_now()
        row = self._execute(
            """INSERT INTO items (kind, id, created, folder, state, item_json, first_seen,
                                  last_seen, last_seen_run)
               VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?)
               ON CONFLICT (kind, id) DO UPDATE SET item_json=excluded.item_json,
                   last_seen=excluded.last_seen, last_seen_run=excluded.last_seen_run,
                   deleted_upstream=NULL,
                   folder=CASE WHEN state='invalid' THEN excluded.folder ELSE folder END,
                   created=CASE WHEN state='invalid' THEN excluded.created ELSE created END,
                   error=CASE WHEN state='invalid' THEN NULL ELSE error END,
                   state=CASE WHEN state='invalid' THEN 'pending' ELSE state END
               RETURNING folder""",
            (kind, item_id, created, folder, item_json, now, now, run_id),
        )
        self._changed()
        return str(row.fetchone()[0])

    def record_invalid(self, kind: str, item_id: str, item_json: str, reason: str) -> None:
        now = utc_now()
        self._execute(
            """INSERT INTO items (kind, id, created, folder, state, item_json, first_seen,
                                  last_seen, error)
               VALUES (?, ?, '', '', 'invalid', ?, ?, ?, ?)
               ON CONFLICT (kind, id) DO UPDATE SET last_seen=excluded.last_seen,
                   error=excluded.error, item_json=excluded.item_json
               WHERE items.state != 'complete'""",
            (kind, item_id, item_json, now, now, reason),
        )
        self._changed()

    def assets_of(self, kind: str, item_id: str) -> dict[str, AssetRecord]:
        """Every asset the manifest knows of one item, by role."""
        rows = self._execute(
            "SELECT * FROM assets WHERE kind=? AND item_id=?", (kind, item_id)
        ).fetchall()
        return {record.role: record for record in (AssetRecord(*row) for row in rows)}

    def mark_asset(
        self,
        kind: str,
        item_id: str,
        role: str,
        *,
        url: str,
        path: str,
        state: str,
        size: int | None = None,
        sha256: str | None = None,
        etag: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record one asset's state; `attempts` counts the runs in which it failed."""
        failed = 1 if state == FAILED else 0
        self._execute(
            """INSERT INTO assets (kind, item_id, role, url, path, size, sha256, etag, state,
                                   attempts, last_error)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (kind, item_id, role) DO UPDATE SET url=excluded.url,
                   path=excluded.path, size=coalesce(excluded.size, size),
                   sha256=excluded.sha256, etag=coalesce(excluded.etag, etag),
                   state=excluded.state, attempts=attempts + ?, last_error=excluded.last_error""",
            (kind, item_id, role, url, path, size, sha256, etag, state, failed, error, failed),
        )
        self._changed()

    def mark_complete(self, kind: str, item_id: str) -> None:
        """The item and all its assets are on disk; call after its assets are marked."""
        self._execute(
            "UPDATE items SET state='complete', error=NULL WHERE kind=? AND id=?", (kind, item_id)
        )
        self._changed()

    def mark_failed(self, kind: str, item_id: str, reason: str) -> None:
        self._execute(
            "UPDATE items SET state='failed', error=? WHERE kind=? AND id=?",
            (reason, kind, item_id),
        )
        self._changed()

    def mark_damaged(self, kind: str, item_id: str, role: str, reason: str) -> None:
        """A file of a complete item is missing or altered: fetch it (and the item) again."""
        self._execute(
            "UPDATE assets SET state='damaged', last_error=? WHERE kind=? AND item_id=? AND role=?",
            (reason, kind, item_id, role),
        )
        self.mark_pending(kind, item_id, f"{role}: {reason}")

    def mark_pending(self, kind: str, item_id: str, reason: str) -> None:
        """Send a complete item back to be fetched again (verify --repair, --full)."""
        self._execute(
            "UPDATE items SET state='pending', error=? WHERE kind=? AND id=?",
            (reason, kind, item_id),
        )
        self._changed()

    def unfinished(self, kind: str, not_seen_in_run: int, batch: int = 200) -> Iterator[ItemRecord]:
        """Pending or failed items not listed by this run, newest first, to be retried from
        their stored JSON. Read a batch at a time (keyset paging): memory stays flat and no
        statement stays open while the caller writes."""
        after = ("\uffff", "")
        while True:
            rows = self._execute(
                """SELECT kind, id, created, folder, state, item_json, error, deleted_upstream
                   FROM items WHERE kind=? AND state IN ('pending', 'failed')
                   AND coalesce(last_seen_run, -1) != ?
                   AND (created < ? OR (created = ? AND id > ?))
                   ORDER BY created DESC, id LIMIT ?""",
                (kind, not_seen_in_run, after[0], after[0], after[1], batch),
            ).fetchall()
            yield from (ItemRecord(*row) for row in rows)
            if len(rows) < batch:
                return
            after = (rows[-1][2], rows[-1][1])

    def item(self, kind: str, item_id: str) -> ItemRecord | None:
        row = self._execute(
            """SELECT kind, id, created, folder, state, item_json, error, deleted_upstream
               FROM items WHERE kind=? AND id=?""",
            (kind, item_id),
        ).fetchone()
        return ItemRecord(*row) if row else None

    def items(self, state: str | None = None) -> Iterator[ItemRecord]:
        sql = """SELECT kind, id, created, folder, state, item_json, error, deleted_upstream
                 FROM items"""
        rows = (
            self._execute(sql + " WHERE state=? ORDER BY created DESC", (state,))
            if state
            else (self._execute(sql + " ORDER BY created DESC"))
        )
        return (ItemRecord(*row) for row in rows.fetchall())

    def complete_assets(self) -> Iterator[AssetRecord]:
        """Every file a complete item claims, for verify and --full re-checks."""
        rows = self._execute(
            """SELECT a.* FROM assets a JOIN items i ON i.kind=a.kind AND i.id=a.item_id
               WHERE i.state='complete' ORDER BY a.path"""
        )
        while batch := rows.fetchmany(1000):
            yield from (AssetRecord(*row) for row in batch)

    def mark_deleted_upstream(self, kind: str, run_id: int) -> list[str]:
        """Items a full listing in run `run_id` did not see: flag them, never delete."""
        now = utc_now()
        rows = self._execute(
            """SELECT id FROM items WHERE kind=? AND state != 'invalid'
               AND coalesce(last_seen_run, -1) != ? AND deleted_upstream IS NULL""",
            (kind, run_id),
        ).fetchall()
        ids = [row[0] for row in rows]
        try:
            self._db.executemany(
                "UPDATE items SET deleted_upstream=? WHERE kind=? AND id=?",
                [(now, kind, item_id) for item_id in ids],
            )
        except sqlite3.Error as exc:
            raise ManifestError(f"manifest error: {exc}") from None
        self._changed(len(ids) or 1)
        return ids

    def counts(self) -> dict[str, int]:
        rows = self._execute("SELECT state, count(*) FROM items GROUP BY state").fetchall()
        counts = {state: 0 for state in (COMPLETE, PENDING, FAILED, INVALID)}
        counts.update(dict(rows))
        deleted = self._execute("SELECT count(*) FROM items WHERE deleted_upstream IS NOT NULL")
        counts["deleted_upstream"] = int(deleted.fetchone()[0])
        return counts

    def archived_bytes(self) -> tuple[int, int]:
        """(files, bytes) held by complete items."""
        row = self._execute(
            """SELECT count(*), coalesce(sum(a.size), 0) FROM assets a JOIN items i
               ON i.kind=a.kind AND i.id=a.item_id WHERE i.state='complete'"""
        ).fetchone()
        return int(row[0]), int(row[1])

    def start_run(self, command: str) -> int:
        cursor = self._execute(
            "INSERT INTO runs (command, started) VALUES (?, ?)", (command, utc_now())
        )
        self.commit()
        return int(cursor.lastrowid or 0)

    def finish_run(self, run_id: int, exit_code: int, report: dict[str, Any]) -> None:
        self._execute(
            "UPDATE runs SET ended=?, exit_code=?, report_json=? WHERE id=?",
            (utc_now(), exit_code, json.dumps(report), run_id),
        )
        self.commit()

    def last_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        rows = self._execute(
            "SELECT id, command, started, ended, exit_code, report_json FROM runs "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            {
                "id": row[0],
                "command": row[1],
                "started": row[2],
                "ended": row[3],
                "exit_code": row[4],
                "report": json.loads(row[5]) if row[5] else None,
            }
            for row in rows
        ]
