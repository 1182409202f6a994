"""What a person (or cron) sees: progress bars or log lines, the summary, status.

Bars only when stderr is a terminal; otherwise one plain log line per item, so a
cron mail or a log file reads cleanly.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from archiver.errors import ConfigError
from archiver.manifest import Manifest
from archiver.models import mask_key
from archiver.outcomes import ItemOutcome, RunSummary

log = logging.getLogger("archiver")
summary_log = logging.getLogger("archiver.summary")


def human_bytes(size: float) -> str:
    """Decimal units, rounded before the unit is chosen (999,999 B is 1.0 MB)."""
    if size < 1000:
        return f"{size:.0f} B"
    for unit in ("KB", "MB", "GB"):
        size /= 1000
        if round(size, 1) < 1000:
            return f"{size:.1f} {unit}"
    return f"{size / 1000:.1f} TB"


class _TqdmHandler(logging.StreamHandler[TextIO]):
    """Log lines printed above the bars instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in `text` with its masked form."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, mask_key(secret))
    return text


class RedactingFilter(logging.Filter):
    """Last line of defence: no log line, however built, carries the key."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = f"{record.msg!r} {record.args!r}"
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        record.msg, record.args = redact(message, self._secrets), None
        return True


def configure_logging(
    *,
    quiet: bool,
    debug: bool,
    log_file: Path | None,
    bars: bool,
    secrets: Iterable[str] = (),
) -> None:
    """stderr gets errors (quiet), info or debug; --log-file gets timestamped lines."""
    root = logging.getLogger("archiver")
    redacting = RedactingFilter(secrets)
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    console: logging.Handler = _TqdmHandler() if bars else logging.StreamHandler(sys.stderr)
    # with bars on screen, per-item lines would only scroll them away: show problems only
    level = logging.DEBUG if debug else logging.WARNING if bars else logging.INFO
    console.setLevel(logging.ERROR if quiet else level)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.addFilter(redacting)
    console.addFilter(lambda record: record.name != summary_log.name)
    root.addHandler(console)
    if log_file is not None:
        try:
            handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--log-file {log_file}: {exc.strerror}") from None
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler.addFilter(redacting)
        root.addHandler(handler)


class ConsoleProgress:
    """Progress for a run: tqdm bars on a terminal, log lines otherwise."""

    def __init__(self, *, bars: bool, quiet: bool) -> None:
        self._bars = bars and not quiet
        self._items: Any = None
        self._bytes: Any = None
        if self._bars:
            from tqdm import tqdm

            self._items = tqdm(desc="videos", unit="video", total=0, position=0, leave=False)
            self._bytes = tqdm(
                desc="bytes", unit="B", unit_scale=True, unit_divisor=1024, position=1, leave=False
            )

    def listed(self, count: int) -> None:
        log.debug("listed %d items", count)

    def queued(self, items: int, files: int) -> None:
        if self._items is not None:
            self._items.total += items
            self._items.refresh()

    def file_done(self, size: int) -> None:
        if self._bytes is not None:
            self._bytes.update(size)

    def item_done(self, outcome: ItemOutcome) -> None:
        if self._items is not None:
            self._items.update(1)
        if outcome.ok and outcome.files:
            log.info(
                "archived %s (%d files, %s)",
                outcome.folder,
                outcome.files,
                human_bytes(outcome.fetched_bytes),
            )

    def close(self) -> None:
        for bar in (self._bytes, self._items):
            if bar is not None:
                bar.close()


def log_summary(lines: Iterable[str]) -> None:
    """The summary goes to --log-file too (the console shows it on stdout already)."""
    for line in lines:
        summary_log.info(line)


def summary_lines(summary: RunSummary) -> list[str]:
    """One summary line, then each failure with its reason."""
    state = "interrupted" if summary.interrupted else "done"
    lines = [
        f"sync {state}: {summary.new_items} new videos, {summary.files} files, "
        f"{human_bytes(summary.fetched_bytes)} in {summary.elapsed:.1f}s; "
        f"{len(summary.failures)} failed; {summary.total_complete} videos in archive"
    ]
    if summary.listing_error:
        lines.append(f"  listing incomplete: {summary.listing_error}")
    for failure in summary.failures:
        asset = f" [{failure.asset}]" if failure.asset else ""
        lines.append(f"  FAILED {failure.item_id}{asset}: {failure.reason}")
    if summary.failures:
        lines.append("  failed items are retried by the next run")
    return lines


def status_lines(manifest: Manifest, dest: Path) -> list[str]:
    """What the archive holds, from the manifest alone."""
    counts = manifest.counts()
    files, size = manifest.archived_bytes()
    lines = [
        f"archive: {dest}",
        f"videos: {counts['complete']} complete, {counts['pending']} pending, "
        f"{counts['failed']} failed, {counts['invalid']} invalid, "
        f"{counts['deleted_upstream']} deleted upstream (kept)",
        f"files: {files} ({human_bytes(size)})",
    ]
    for record in manifest.items("failed"):
        lines.append(f"  failed {record.id}: {record.error}")
    for record in manifest.items("invalid"):
        lines.append(f"  invalid {record.id}: {record.error}")
    runs = manifest.last_runs(5)
    if not runs:
        lines.append("last run: never")
    for run in runs:
        report = run["report"] or {}
        result = {0: "ok", 1: "partial", 130: "interrupted"}.get(run["exit_code"], "error")
        if report.get("error"):
            result = f"stopped by an error: {report['error']}"
        if run["ended"] is None:
            result = "running or killed"
        lines.append(
            f"run {run['id']} {run['command']}: {run['started']} → {run['ended'] or '?'}, "
            f"{report.get('elapsed', '?')}s, {result} (exit {run['exit_code']}), "
            f"{report.get('new', 0)} new, {report.get('failed', 0)} failed"
        )
    return lines
