"""What people and cron read: sizes, the run summary, status, and logs that never hold the key."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from archiver.errors import ConfigError
from archiver.manifest import FETCHED, Manifest
from archiver.models import mask_key
from archiver.outcomes import Failure, RunSummary
from archiver.report import (
    RedactingFilter,
    configure_logging,
    human_bytes,
    redact,
    status_lines,
    summary_lines,
)

KEY = "pictai_s3cr3tKEYvalue0000000000Zq9x"
MASKED = mask_key(KEY)
V = "video"
TIMESTAMPED = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} (DEBUG|INFO|WARNING|ERROR) ")


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (999, "999 B"),
        (1000, "1.0 KB"),
        (1500, "1.5 KB"),
        (999_949, "999.9 KB"),
        (1_500_000, "1.5 MB"),
        (2_345_000_000, "2.3 GB"),
        (10**12, "1.0 TB"),
        (2 * 10**15, "2000.0 TB"),
    ],
)
def test_human_bytes(size: int, text: str) -> None:
    assert human_bytes(size) == text


@pytest.mark.parametrize(("size", "text"), [(999_999, "1.0 MB"), (999_950_000, "1.0 GB")])
def test_human_bytes_rounds_up_into_the_next_unit(size: int, text: str) -> None:
    assert human_bytes(size) == text


def summary(**changes: object) -> RunSummary:
    fields: dict[str, object] = {
        "started": "2026-04-10T02:00:00Z",
        "ended": "2026-04-10T02:00:02Z",
        "listed": 250,
        "new_items": 3,
        "files": 12,
        "fetched_bytes": 1_500_000,
        "elapsed": 2.04,
        "failures": (),
        "total_complete": 10,
        "list_requests": 3,
    }
    fields.update(changes)
    return RunSummary(**fields)  # type: ignore[arg-type]


def test_summary_of_a_clean_run_has_no_failure_lines() -> None:
    assert summary_lines(summary()) == [
        "sync done: 3 new videos, 12 files, 1.5 MB in 2.0s; 0 failed; 10 videos in archive"
    ]


def test_summary_names_every_failure_with_id_asset_and_reason() -> None:
    failures = (
        Failure("20260409185104635ec00b33280fc451f", "HTTP 404: gone", "preview"),
        Failure("20260409180000000aaaaaaaaaaaaaaaa", "signed URL expired", "video"),
        Failure("bad/../id", "no MP4 URL"),
    )
    lines = summary_lines(summary(failures=failures))

    assert lines[0].endswith("; 3 failed; 10 videos in archive")
    assert "  FAILED 20260409185104635ec00b33280fc451f [preview]: HTTP 404: gone" in lines
    assert "  FAILED 20260409180000000aaaaaaaaaaaaaaaa [video]: signed URL expired" in lines
    assert "  FAILED bad/../id: no MP4 URL" in lines
    assert lines[-1] == "  failed items are retried by the next run"
    assert len(lines) == 5


def test_summary_of_an_interrupted_run_with_a_listing_error() -> None:
    lines = summary_lines(
        summary(interrupted=True, listing_error="the API kept failing (HTTP 503)")
    )
    assert lines[0].startswith("sync interrupted: 3 new videos")
    assert "  listing incomplete: the API kept failing (HTTP 503)" in lines
    assert "failed items are retried by the next run" not in "\n".join(lines)


@pytest.fixture
def manifest(tmp_path: Path) -> Iterator[Manifest]:
    with Manifest(tmp_path / "manifest.sqlite") as opened:
        yield opened


def listed(manifest: Manifest, item_id: str, run: int) -> None:
    manifest.record_listed(
        V, item_id, f"2026-04-09T18:00:{item_id[-2:]}.000Z", f"videos/{item_id}", "{}", run
    )


def test_status_of_a_new_archive(manifest: Manifest, tmp_path: Path) -> None:
    assert status_lines(manifest, tmp_path) == [
        f"archive: {tmp_path}",
        "videos: 0 complete, 0 pending, 0 failed, 0 invalid, 0 deleted upstream (kept)",
        "files: 0 (0 B)",
        "last run: never",
    ]


def test_status_counts_states_files_failures_and_runs(manifest: Manifest, tmp_path: Path) -> None:
    first = manifest.start_run("sync")
    for item_id in ("item01", "item02", "item03", "item04"):
        listed(manifest, item_id, first)
    for item_id, role, size in (("item01", "video", 1_000_000), ("item01", "preview", 500_000)):
        manifest.mark_asset(
            V,
            item_id,
            role,
            url="https://c/x",
            path=f"videos/{item_id}/{role}",
            state=FETCHED,
            size=size,
            sha256="0" * 64,
        )
    manifest.mark_asset(
        V,
        "item02",
        "video",
        url="https://c/y",
        path="videos/item02/video",
        state=FETCHED,
        size=7_000_000,
        sha256="1" * 64,
    )
    manifest.mark_complete(V, "item01")
    manifest.mark_failed(V, "item03", "video: HTTP 404: gone")
    manifest.record_invalid(V, "bad-id", "{}", "no MP4 URL")
    manifest.finish_run(first, 1, summary(failures=(Failure("item03", "gone"),)).as_report())
    second = manifest.start_run("sync --full")
    listed(manifest, "item02", second)
    listed(manifest, "item03", second)
    listed(manifest, "item04", second)
    manifest.mark_deleted_upstream(V, second)  # item01 vanished upstream: kept, flagged
    manifest.commit()

    lines = status_lines(manifest, tmp_path)

    assert lines[0] == f"archive: {tmp_path}"
    assert lines[1] == (
        "videos: 1 complete, 2 pending, 1 failed, 1 invalid, 1 deleted upstream (kept)"
    )
    assert lines[2] == "files: 2 (1.5 MB)"  # complete items only
    assert "  failed item03: video: HTTP 404: gone" in lines
    assert "  invalid bad-id: no MP4 URL" in lines
    runs = [line for line in lines if line.startswith("run ")]
    assert len(runs) == 2
    assert runs[0].startswith(f"run {second} sync --full: ")
    assert "running or killed" in runs[0]
    assert runs[1].startswith(f"run {first} sync: ")
    assert "2.04s, partial (exit 1), 3 new, 1 failed" in runs[1]


def test_status_names_exit_codes(manifest: Manifest, tmp_path: Path) -> None:
    for code in (0, 130, 3):
        manifest.finish_run(manifest.start_run("sync"), code, summary().as_report())
    runs = [line for line in status_lines(manifest, tmp_path) if line.startswith("run ")]
    assert "error (exit 3)" in runs[0]
    assert "interrupted (exit 130)" in runs[1]
    assert "ok (exit 0)" in runs[2]


def test_redact_masks_every_occurrence() -> None:
    text = f"Authorization: {KEY}\nretry with {KEY}?"
    redacted = redact(text, [KEY])
    assert KEY not in redacted
    assert redacted == f"Authorization: {MASKED}\nretry with {MASKED}?"
    assert MASKED.endswith(KEY[-4:])
    assert redact(text, ["", KEY]) == redacted  # an empty secret changes nothing
    assert redact("nothing secret", [KEY]) == "nothing secret"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A real logger and handler with the redacting filter, writing into a StringIO."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter([KEY]))
    logger = logging.getLogger("tests.report.redacting")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_filter_masks_the_key_in_the_message(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.warning(f"refused key {KEY} on https://api.example/x")
    assert stream.getvalue() == f"WARNING refused key {MASKED} on https://api.example/x\n"


def test_filter_masks_the_key_in_the_args(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("headers %s, key %r", {"Authorization": KEY}, KEY)
    output = stream.getvalue()
    assert KEY not in output
    assert output == f"INFO headers {{'Authorization': '{MASKED}'}}, key '{MASKED}'\n"


def test_filter_masks_the_key_in_a_traceback(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        try:
            raise KeyError(KEY)
        except KeyError as inner:
            raise RuntimeError(f"request with Authorization: {KEY} failed") from inner
    except RuntimeError:
        logger.exception("fetch failed")
    output = stream.getvalue()
    assert KEY not in output
    assert output.startswith("ERROR fetch failed\nTraceback (most recent call last):")
    assert f"RuntimeError: request with Authorization: {MASKED} failed" in output
    assert f"KeyError: '{MASKED}'" in output  # the chained cause too


def test_filter_keeps_records_that_hold_no_key(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    logger.debug("%d files, %s", 3, "1.5 MB")
    assert stream.getvalue() == "DEBUG 3 files, 1.5 MB\n"


def test_a_malformed_log_call_never_raises(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("%d files from %s", "not-a-number", KEY)  # must not crash the caller
    assert KEY not in stream.getvalue()


@pytest.fixture
def archiver_logger() -> Iterator[logging.Logger]:
    """The package logger; configure_logging rewires it, so put it back afterwards."""
    logger = logging.getLogger("archiver")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    try:
        yield logger
    finally:
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def test_log_file_gets_timestamped_lines_and_never_the_key(
    archiver_logger: logging.Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_file = tmp_path / "archiver.log"
    log_file.write_text("earlier run\n", encoding="utf-8")
    configure_logging(quiet=False, debug=False, log_file=log_file, bars=False, secrets=[KEY])
    worker = logging.getLogger("archiver.pipeline")

    worker.info("archived %s with key %s", "videos/x", KEY)
    worker.debug("not at this level")
    try:
        raise ConnectionError(f"reset while sending {KEY}")
    except ConnectionError:
        worker.error("run stopped", exc_info=True)
    for handler in archiver_logger.handlers:
        handler.flush()

    text = log_file.read_text(encoding="utf-8")
    assert KEY not in text
    assert text.startswith("earlier run\n")  # appended, not truncated
    lines = text.splitlines()[1:]
    assert TIMESTAMPED.match(lines[0])
    assert lines[0].endswith(f"INFO archived videos/x with key {MASKED}")
    assert TIMESTAMPED.match(lines[1])
    assert lines[1].endswith("ERROR run stopped")
    assert f"ConnectionError: reset while sending {MASKED}" in text
    assert text.count("Traceback (most recent call last)") == 1
    assert "not at this level" not in text

    stderr = capsys.readouterr().err
    assert KEY not in stderr
    assert f"archived videos/x with key {MASKED}" in stderr
    assert f"ConnectionError: reset while sending {MASKED}" in stderr
    assert not TIMESTAMPED.match(stderr)  # the console gets bare messages


def test_quiet_console_still_logs_everything_to_the_file(
    archiver_logger: logging.Logger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_file = tmp_path / "archiver.log"
    configure_logging(quiet=True, debug=True, log_file=log_file, bars=False, secrets=[KEY])
    # below the quiet console's level: only the file handler's own filter can redact these
    logging.getLogger("archiver.download").debug("GET %s", "https://cdn.example/v.mp4")
    logging.getLogger("archiver.api").info("listing with %s", KEY)
    logging.getLogger("archiver").error("fatal: %s", KEY)
    for handler in archiver_logger.handlers:
        handler.flush()

    text = log_file.read_text(encoding="utf-8")
    assert [line.split(" ", 3)[2] for line in text.splitlines()] == ["DEBUG", "INFO", "ERROR"]
    assert f"listing with {MASKED}" in text
    assert all(TIMESTAMPED.match(line) for line in text.splitlines())
    assert KEY not in text
    assert capsys.readouterr().err == f"fatal: {MASKED}\n"


def test_unwritable_log_file_is_a_config_error(
    archiver_logger: logging.Logger, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        configure_logging(
            quiet=False, debug=False, log_file=tmp_path / "no" / "dir" / "x.log", bars=False
        )
    assert "--log-file" in caught.value.message


def test_summary_report_is_json_and_carries_each_failure() -> None:
    failures = (Failure("id1", "HTTP 404", "video"), Failure("id2", "no MP4 URL"))
    report = summary(failures=failures).as_report()
    assert json.loads(json.dumps(report))["failures"] == [
        {"id": "id1", "asset": "video", "reason": "HTTP 404"},
        {"id": "id2", "asset": None, "reason": "no MP4 URL"},
    ]
    assert report["exit_code"] == 1 and report["failed"] == 2
