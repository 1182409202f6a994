"""End to end: the real CLI against the fake Pictory server, real files, real manifest."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from archiver.fake import CdnFault, FakeLibrary, FakePictory
from archiver.lock import DestLock
from tests.conftest import KEY, CliResult, archived_files, sha256_file

RunCli = Callable[..., CliResult]


def wait_for_cdn(server: FakePictory, requests: int, timeout: float = 30) -> None:
    """Let a child run until the fake CDN has seen `requests` requests."""
    deadline = time.monotonic() + timeout
    while server.count("cdn") < requests and time.monotonic() < deadline:
        time.sleep(0.005)


def cdn_paths(server: FakePictory) -> list[str]:
    return [r.path for r in server.requests if r.origin == "cdn"]


def archived_paths(library: FakeLibrary, raw: dict[str, Any]) -> list[str]:
    """CDN paths the archiver should fetch for an item: all but the extended video, which
    is another item of the library (kept as a URL in metadata.json)."""
    skip = library.asset_paths({"extendVideoUrl": raw.get("extendVideoUrl")})
    return [p for p in library.asset_paths(raw) if p not in skip]


def expected_asset_count(library: FakeLibrary, items: list[dict[str, Any]]) -> int:
    return sum(len(archived_paths(library, raw)) for raw in items)


def test_full_archive_matches_server_byte_for_byte(
    run_cli: RunCli, server: FakePictory, library: FakeLibrary, dest: Path
) -> None:
    result = run_cli("sync", "--dest", str(dest))
    assert result.exit_code == 0, result.output
    assert server.count("api") == 3
    folders = sorted(p.parent for p in (dest / "videos").rglob("metadata.json"))
    assert len(folders) == len(library.items) == 250
    for raw in library.items:
        rendered = server.render(raw)
        folder = next(f for f in folders if f.name.endswith("_" + raw["id"]))
        created = raw["createdDate"]
        assert folder.relative_to(dest).parts[:3] == ("videos", created[:4], created[5:7])
        metadata = json.loads((folder / "metadata.json").read_text("utf-8"))
        archive = metadata.pop("archive")
        assert metadata == rendered
        for role, entry in archive["files"].items():
            path = folder / entry["file"]
            source = urlsplit(entry["source_url"]).path
            assert sha256_file(path) == entry["sha256"] == library.sha256(source), role
            assert path.stat().st_size == entry["size"]
        assert set(archive["files"]) >= {"video", "preview", "thumbnail", "last_frame"}
        assert (folder / "video.mp4").is_file() and (folder / "last_frame.png").is_file()
    assert not list(dest.rglob("*.part")) and not list(dest.rglob("*.tmp"))
    assert "250 new videos" in result.stdout


def test_second_run_fetches_only_new_items(
    run_cli: RunCli, server: FakePictory, library: FakeLibrary, dest: Path
) -> None:
    assert run_cli("sync", "--dest", str(dest)).exit_code == 0
    before = archived_files(dest)
    new = library.add_new(7)
    server.reset_log()
    result = run_cli("sync", "--dest", str(dest))
    assert result.exit_code == 0, result.output
    assert server.count("api") == 1
    fetched = cdn_paths(server)
    assert sorted(fetched) == sorted(p for raw in new for p in archived_paths(library, raw))
    after = archived_files(dest)
    assert {k: v for k, v in after.items() if k in before} == before
    assert len(after) - len(before) == expected_asset_count(library, new) + 7
    assert "7 new videos" in result.stdout


def test_noop_nightly_run_is_one_list_request_and_no_cdn(
    run_cli: RunCli, server: FakePictory, dest: Path
) -> None:
    assert run_cli("sync", "--dest", str(dest)).exit_code == 0
    server.reset_log()
    result = run_cli("sync", "--dest", str(dest))
    assert result.exit_code == 0
    assert server.count("api") == 1
    assert server.count("cdn") == 0
    assert "0 new videos" in result.stdout


def test_interrupted_export_resumes_to_the_end_without_refetching(
    run_cli: RunCli, server: FakePictory, library: FakeLibrary, dest: Path
) -> None:
    server.api_page_faults[1] = "non_json"
    first = run_cli("sync", "--dest", str(dest), "--concurrency", "4")
    assert first.exit_code == 1
    assert "listing" in first.output and "page 2" in first.output
    first_requests = cdn_paths(server)
    assert 0 < len(first_requests) < expected_asset_count(library, library.items)
    server.api_page_faults.clear()
    server.reset_log()
    second = run_cli("sync", "--dest", str(dest))
    assert second.exit_code == 0, second.output
    assert server.count("api") == 3
    second_fetch = cdn_paths(server)
    # one request per (item, asset) over both runs: nothing was fetched twice
    assert len(first_requests) + len(second_fetch) == expected_asset_count(library, library.items)
    assert set(first_requests) | set(second_fetch) == {
        p for raw in library.items for p in archived_paths(library, raw)
    }
    server.reset_log()
    assert run_cli("sync", "--dest", str(dest)).exit_code == 0
    assert server.count("api") == 1 and server.count("cdn") == 0


def test_bad_key_exits_3_after_one_request(
    run_cli: RunCli, server: FakePictory, dest: Path
) -> None:
    wrong = "pictai_wrongwrongwrong1234"
    result = run_cli("sync", "--dest", str(dest), env={"PICTORY_API_KEY": wrong})
    assert result.exit_code == 3
    assert server.count("api") == 1 and server.count("cdn") == 0
    assert "401" in result.stderr and "Traceback" not in result.output
    assert wrong not in result.output and "rejected the API key" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_key_and_bad_dest_exit_2(run_cli: RunCli, tmp_path: Path) -> None:
    missing = run_cli("sync", "--dest", str(tmp_path / "a"), env={"PICTORY_API_KEY": None})
    assert missing.exit_code == 2 and "API key" in missing.stderr
    a_file = tmp_path / "file"
    a_file.write_text("x")
    as_file = run_cli("sync", "--dest", str(a_file))
    assert as_file.exit_code == 2 and "not a directory" in as_file.stderr
    bad_option = run_cli("sync", "--dest", str(tmp_path / "b"), "--concurrency", "0")
    assert bad_option.exit_code == 2 and "--concurrency" in bad_option.stderr
    for result in (missing, as_file, bad_option):
        assert "Traceback" not in result.output


def test_unreadable_config_exits_2(run_cli: RunCli, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("api_key = [unclosed")
    result = run_cli("sync", "--dest", str(tmp_path / "d"), "--config", str(config))
    assert result.exit_code == 2 and "not valid TOML" in result.stderr


def test_second_concurrent_run_exits_4_and_touches_nothing(
    run_cli: RunCli, server: FakePictory, dest: Path
) -> None:
    lock = DestLock(dest / ".pictory-archiver" / "lock")
    with lock:
        result = run_cli("sync", "--dest", str(dest))
    assert result.exit_code == 4
    assert "another pictory-archiver run" in result.stderr
    assert server.count("api") == 0
    assert not (dest / ".pictory-archiver" / "manifest.sqlite").exists()


def test_two_real_processes_one_exits_4(
    spawn_cli: Callable[..., object], run_cli: RunCli, server: FakePictory, dest: Path
) -> None:
    server.cdn_delay = 0.05
    first = spawn_cli("sync", "--dest", str(dest), "--quiet")
    wait_for_cdn(server, 1)
    second = run_cli("sync", "--dest", str(dest))
    assert second.exit_code == 4
    assert f"pid {first.pid}" in second.stderr  # type: ignore[attr-defined]
    server.cdn_delay = 0
    first.wait(timeout=60)  # type: ignore[attr-defined]
    assert first.returncode == 0  # type: ignore[attr-defined]


def test_sigint_exits_130_and_next_run_completes(
    spawn_cli: Callable[..., object], run_cli: RunCli, server: FakePictory, dest: Path
) -> None:
    server.cdn_delay = 0.05
    proc = spawn_cli("sync", "--dest", str(dest))
    wait_for_cdn(server, 20)
    proc.send_signal(signal.SIGINT)  # type: ignore[attr-defined]
    stdout, stderr = proc.communicate(timeout=30)  # type: ignore[attr-defined]
    assert proc.returncode == 130, stderr  # type: ignore[attr-defined]
    assert "interrupted" in stdout and "Traceback" not in stderr
    server.cdn_delay = 0
    result = run_cli("sync", "--dest", str(dest))
    assert result.exit_code == 0, result.output
    assert "250 videos in archive" in result.stdout
    verify = run_cli("verify", "--dest", str(dest))
    assert verify.exit_code == 0, verify.output


def test_key_never_reaches_cdn_logs_or_files(
    run_cli: RunCli, server: FakePictory, dest: Path, tmp_path: Path
) -> None:
    log_file = tmp_path / "run.log"
    result = run_cli("sync", "--dest", str(dest), "--log-file", str(log_file), "--debug")
    assert result.exit_code == 0
    cdn = [r for r in server.requests if r.origin == "cdn"]
    assert cdn and all("authorization" not in {k.lower() for k in r.headers} for r in cdn)
    api = [r for r in server.requests if r.origin == "api"]
    assert all(r.header("Authorization") == KEY for r in api)
    assert KEY not in result.output
    for path in [log_file, *dest.rglob("*")]:
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_status_and_verify_clean_then_damaged(
    run_cli: RunCli, server: FakePictory, dest: Path
) -> None:
    assert run_cli("sync", "--dest", str(dest)).exit_code == 0
    status = run_cli("status", "--dest", str(dest))
    assert status.exit_code == 0
    assert "250 complete, 0 pending, 0 failed" in status.stdout
    assert "ok (exit 0)" in status.stdout
    clean = run_cli("verify", "--dest", str(dest))
    assert clean.exit_code == 0 and "all intact" in clean.stdout
    videos = sorted((dest / "videos").rglob("video.mp4"))
    truncated, altered, missing = videos[0], videos[1], sorted(dest.rglob("preview.jpg"))[2]
    truncated.write_bytes(truncated.read_bytes()[:100])
    data = bytearray(altered.read_bytes())
    data[-1] ^= 0xFF
    altered.write_bytes(bytes(data))
    missing.unlink()
    server.reset_log()
    damaged = run_cli("verify", "--dest", str(dest))
    assert damaged.exit_code == 1
    assert server.count("api") == 0 and server.count("cdn") == 0
    out = damaged.stdout
    assert "wrong size (100 bytes" in out and str(truncated.relative_to(dest)) in out
    assert "altered" in out and str(altered.relative_to(dest)) in out
    assert "missing" in out and str(missing.relative_to(dest)) in out
    assert "3 damaged or missing" in out


def test_status_without_archive_is_a_clear_error(run_cli: RunCli, tmp_path: Path) -> None:
    result = run_cli("status", "--dest", str(tmp_path))
    assert result.exit_code == 1 and "run sync first" in result.stderr


def test_full_refetches_files_missing_on_disk(
    run_cli: RunCli, server: FakePictory, dest: Path
) -> None:
    assert run_cli("sync", "--dest", str(dest)).exit_code == 0
    victim = sorted((dest / "videos").rglob("thumbnail.jpg"))[5]
    victim.unlink()
    server.reset_log()
    result = run_cli("sync", "--dest", str(dest), "--full")
    assert result.exit_code == 0, result.output
    assert server.count("api") == 3
    assert len(cdn_paths(server)) == 1 and cdn_paths(server)[0].endswith("_thumbnail.jpg")
    assert victim.is_file()
    assert run_cli("verify", "--dest", str(dest)).exit_code == 0


def test_demo_runs(run_cli: RunCli, tmp_path: Path) -> None:
    demo_dest = tmp_path / "demo"
    result = run_cli("demo", "--dest", str(demo_dest), "--quiet")
    assert result.exit_code == 0, result.output
    assert "second run" in result.stdout and "0 new videos" in result.stdout
    assert len(list((demo_dest / "videos").rglob("metadata.json"))) >= 100
    with sqlite3.connect(demo_dest / ".pictory-archiver" / "manifest.sqlite") as db:
        assert db.execute("SELECT count(*) FROM items WHERE state='complete'").fetchone()[0] >= 100


def manifest_rows(dest: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(dest / ".pictory-archiver" / "manifest.sqlite") as db:
        return db.execute(sql).fetchall()


def test_kill_9_at_any_moment_then_resume_refetches_nothing_complete(
    spawn_cli: Callable[..., Any],
    run_cli: RunCli,
    server: FakePictory,
    library: FakeLibrary,
    dest: Path,
) -> None:
    server.cdn_delay = 0.01
    for kill_after in (5, 150, 400):
        proc = spawn_cli("sync", "--dest", str(dest), "--quiet")
        wait_for_cdn(server, kill_after)
        proc.kill()
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        complete = manifest_rows(dest, "SELECT path, sha256 FROM assets WHERE state='complete'")
        for path, digest in complete:
            assert sha256_file(dest / path) == digest, path
        for folder in (dest / "videos").rglob("metadata.json"):
            json.loads(folder.read_text("utf-8"))
    server.cdn_delay = 0
    landed = landed_cdn_paths(dest, library)
    assert landed
    server.reset_log()
    result = run_cli("sync", "--dest", str(dest))
    assert result.exit_code == 0, result.output
    for record in server.requests:
        if record.origin == "cdn" and record.path in landed:
            assert record.header("Range") is not None, f"{record.path} fetched again"
    assert run_cli("verify", "--dest", str(dest)).exit_code == 0
    assert not list(dest.rglob("*.part")) and not list(dest.rglob("*.tmp"))
    assert len(list((dest / "videos").rglob("metadata.json"))) == 250


ROLE_FIELDS = {
    "video.mp4": "url",
    "preview.jpg": "previewImageUrl",
    "thumbnail.jpg": "thumbnailImageUrl",
    "last_frame.png": "lastFrameImageUrl",
    "first_frame.png": "firstFrameImageUrl",
}


def landed_cdn_paths(dest: Path, library: FakeLibrary) -> set[str]:
    """CDN paths of the files already complete on disk, final or staged as a whole .part
    (not shared with another item's references, which that item may fetch)."""
    shared = {
        path
        for raw in library.items
        for path in library.asset_paths({"refs": raw.get("referenceImageUrls") or []})
    }
    landed = set()
    for file in (dest / "videos").rglob("*"):
        field = ROLE_FIELDS.get(file.name.removesuffix(".part"))
        if field is None:
            continue
        raw = library.item(file.parent.name.split("_", 2)[2])
        (path,) = library.asset_paths({field: raw[field]})
        whole = file.stat().st_size == len(library.asset(path).data)  # type: ignore[union-attr]
        if whole:  # under its final name, or proven and staged for the next group commit
            landed.add(path)
    return landed - shared


def test_file_size_limit_stops_cleanly_and_next_run_completes(
    spawn_cli: Callable[..., Any],
    run_cli: RunCli,
    server: FakePictory,
    library: FakeLibrary,
    dest: Path,
) -> None:
    big = library.items[10]
    library.replace_asset(library.asset_paths({"url": big["url"]})[0], make_big_mp4())

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))

    proc = spawn_cli("sync", "--dest", str(dest), "--concurrency", "2", preexec_fn=limit)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert "cannot write" in stderr and "File too large" in stderr
    assert "Traceback" not in stderr
    part = next((dest / "videos").rglob("video.mp4.part"))
    assert part.stat().st_size > 0
    for path, digest in manifest_rows(
        dest, "SELECT path, sha256 FROM assets WHERE state='complete'"
    ):
        assert sha256_file(dest / path) == digest
    server.reset_log()
    result = run_cli("sync", "--dest", str(dest))
    assert result.exit_code == 0, result.output
    resumed = [r for r in server.requests if r.path == library.asset_paths({"url": big["url"]})[0]]
    assert resumed and resumed[0].header("Range") is not None
    assert run_cli("verify", "--dest", str(dest)).exit_code == 0


def make_big_mp4() -> bytes:
    from archiver.fake.media import make_mp4

    return make_mp4(99, 6 << 20)


def test_run_report_json_and_log_file_for_cron(
    run_cli: RunCli, server: FakePictory, library: FakeLibrary, dest: Path, tmp_path: Path
) -> None:
    broken = library.items[42]
    server.fail_asset(
        library.asset_paths({"url": broken["url"]})[0], CdnFault("status", status=404)
    )
    report_file, log_file = tmp_path / "last.json", tmp_path / "cron.log"
    result = run_cli(
        "sync", "--dest", str(dest), "--report", str(report_file), "--log-file", str(log_file)
    )
    assert result.exit_code == 1
    assert f"FAILED {broken['id']} [video]" in result.stdout and "404" in result.stdout
    report = json.loads(report_file.read_text())
    runs = sorted((dest / ".pictory-archiver" / "runs").glob("*.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_text()) == report
    assert report["exit_code"] == 1 and report["new"] == 249 and report["failed"] == 1
    assert report["listed"] == 250 and report["complete"] == 249 and report["bytes"] > 0
    assert report["failures"] == [
        {"id": broken["id"], "asset": "video", "reason": report["failures"][0]["reason"]}
    ]
    assert report["started"] <= report["ended"]
    log_lines = log_file.read_text().splitlines()
    assert any(broken["id"] in line and "ERROR" in line for line in log_lines)
    assert all(line[:4].isdigit() for line in log_lines)
    status = run_cli("status", "--dest", str(dest))
    assert "1 failed" in status.stdout and broken["id"] in status.stdout
    second = run_cli("sync", "--dest", str(dest), "--log-file", str(log_file))
    assert second.exit_code == 0
    assert len(log_file.read_text().splitlines()) > len(log_lines)


def test_verify_repair_refetches_exactly_the_damaged_files(
    run_cli: RunCli, server: FakePictory, dest: Path
) -> None:
    assert run_cli("sync", "--dest", str(dest)).exit_code == 0
    videos = sorted((dest / "videos").rglob("video.mp4"))
    originals = {path: path.read_bytes() for path in (videos[3], videos[100])}
    videos[3].write_bytes(b"\0" * len(originals[videos[3]]))
    videos[100].unlink()
    server.reset_log()
    result = run_cli("verify", "--dest", str(dest), "--repair")
    assert result.exit_code == 0, result.output
    assert "2 damaged or missing" in result.stdout and "all intact" in result.stdout
    assert len(cdn_paths(server)) == 2
    for path, data in originals.items():
        assert path.read_bytes() == data
    assert run_cli("verify", "--dest", str(dest)).exit_code == 0


def test_debug_traceback_and_errors_never_show_the_key(
    run_cli: RunCli, server: FakePictory, dest: Path
) -> None:
    server.api_page_faults[0] = "non_json"
    result = run_cli("sync", "--dest", str(dest), "--debug")
    assert result.exit_code == 1
    assert KEY not in result.output
    wrong = "pictai_badbadbadbadbad9876"
    denied = run_cli("sync", "--dest", str(dest), "--debug", env={"PICTORY_API_KEY": wrong})
    assert denied.exit_code == 3 and "Traceback" in denied.stderr
    assert wrong not in denied.output and "rejected the API key" in denied.output


def test_unwritable_dest_stops_with_one_line_and_next_run_completes(
    run_cli: RunCli, server: FakePictory, dest: Path
) -> None:
    dest.mkdir()
    (dest / "videos").write_text("in the way")
    result = run_cli("sync", "--dest", str(dest))
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "cannot create" in errors[0]
    assert "Traceback" not in result.output
    (dest / "videos").unlink()
    again = run_cli("sync", "--dest", str(dest))
    assert again.exit_code == 0, again.output
    assert "250 videos in archive" in again.stdout
    status = run_cli("status", "--dest", str(dest))
    assert "stopped by an error: cannot create" in status.stdout and "ok (exit 0)" in status.stdout


def test_sigterm_is_an_interrupt_too(
    spawn_cli: Callable[..., Any], run_cli: RunCli, server: FakePictory, dest: Path
) -> None:
    server.cdn_delay = 0.05
    proc = spawn_cli("sync", "--dest", str(dest), "--quiet")
    wait_for_cdn(server, 10)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "sync interrupted" in stdout
    runs = manifest_rows(dest, "SELECT exit_code FROM runs")
    assert runs == [(130,)]
