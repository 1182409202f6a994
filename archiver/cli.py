"""Command line: parse options, build Settings, wire the stages, map errors to exit codes."""

from __future__ import annotations

import asyncio
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from archiver import __version__
from archiver.config import Settings, load_settings
from archiver.errors import ArchiverError, ExitCode

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _secrets() -> list[str]:
    """Every key this invocation may hold, so no output can show it."""
    candidates = [os.environ.get("PICTORY_API_KEY", "")]
    context = click.get_current_context(silent=True)
    if context is not None:
        candidates += [str(context.params.get("api_key") or "")]
        candidates += context.meta.get("pictory_secrets", [])
    return [key for key in candidates if key]


def _fail(message: str, code: int, debug: bool) -> NoReturn:
    from archiver.report import redact

    secrets = _secrets()
    if debug:
        click.echo(redact(traceback.format_exc(), secrets), err=True)
    click.echo(f"pictory-archiver: error: {redact(message, secrets)}", err=True)
    sys.exit(code)


def _settings(**flags: Any) -> Settings:
    settings = load_settings(flags, os.environ)
    if settings.api_key is not None:
        click.get_current_context().meta.setdefault("pictory_secrets", []).append(
            settings.api_key.value
        )
    for warning in settings.warnings:
        click.echo(f"pictory-archiver: warning: {warning}", err=True)
    return settings


def _handled(command: Callable[..., int]) -> Callable[..., None]:
    """Run a command body; ArchiverError → one line and its exit code; ^C → 130;
    anything else is a bug, still reported in one line (--debug shows the traceback)."""

    def run(**flags: Any) -> None:
        debug = bool(flags.get("debug"))
        try:
            code = command(**flags)
        except ArchiverError as exc:
            _fail(exc.message, int(exc.exit_code), debug)
        except KeyboardInterrupt:
            click.echo("pictory-archiver: interrupted", err=True)
            sys.exit(int(ExitCode.INTERRUPTED))
        except Exception as exc:  # noqa: BLE001 - a bug must still not dump a traceback
            reason = f"internal error: {type(exc).__name__}: {exc} (--debug shows details)"
            _fail(reason, int(ExitCode.PARTIAL), debug)
        sys.exit(code)

    run.__name__ = command.__name__
    run.__doc__ = command.__doc__
    return run


dest_option = click.option(
    "--dest", type=click.Path(path_type=Path), help="Archive folder (created if missing)."
)
config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="TOML config file (default: $XDG_CONFIG_HOME/pictory-archiver/config.toml).",
)
quiet_option = click.option(
    "--quiet", "-q", is_flag=True, default=None, help="Print only errors and the summary."
)
debug_option = click.option(
    "--debug", is_flag=True, default=None, help="Show tracebacks (the API key stays hidden)."
)
log_file_option = click.option(
    "--log-file", type=click.Path(path_type=Path), help="Append timestamped log lines here."
)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="pictory-archiver")
def cli() -> None:
    """Back up your Pictory AI Studio library: resumable, incremental, verified."""


@cli.command()
@dest_option
@click.option("--full", is_flag=True, default=None, help="Walk the whole listing; re-check files.")
@click.option("--concurrency", "-j", type=int, help="Parallel downloads (default 8).")
@click.option("--api-key", help="Pictory API key (better: PICTORY_API_KEY).")
@click.option("--api-url", help="API base URL.")
@click.option("--folder-template", help="Item folder under DEST/videos/.")
@click.option(
    "--report", "report_file", type=click.Path(path_type=Path), help="Write a JSON run report here."
)
@config_option
@quiet_option
@debug_option
@log_file_option
@_handled
def sync(**flags: Any) -> int:
    """Archive everything not yet archived (only what is new, unless --full)."""
    return _run_sync(_settings(**flags))


@cli.command()
@dest_option
@config_option
@debug_option
@_handled
def status(**flags: Any) -> int:
    """What the archive holds and how the last runs went (no network)."""
    from archiver.layout import ArchiveLayout
    from archiver.manifest import Manifest
    from archiver.report import status_lines

    settings = _settings(**flags)
    layout = ArchiveLayout(settings.dest, settings.folder_template)
    with Manifest.open_existing(layout.manifest_path) as manifest:
        for line in status_lines(manifest, layout.dest):
            click.echo(line)
    return 0


@cli.command()
@dest_option
@click.option("--fast", is_flag=True, help="Only check sizes, do not re-hash.")
@click.option("--repair", is_flag=True, help="Re-fetch damaged items (needs the API), re-verify.")
@click.option("--api-key", help="Pictory API key, for --repair (better: PICTORY_API_KEY).")
@click.option("--api-url", help="API base URL, for --repair.")
@config_option
@quiet_option
@debug_option
@log_file_option
@_handled
def verify(fast: bool, repair: bool, **flags: Any) -> int:
    """Re-hash every archived file against the manifest (no network unless --repair)."""
    from archiver.layout import ArchiveLayout
    from archiver.manifest import Manifest
    from archiver.verify import verify_archive

    settings = _settings(**flags)
    layout = ArchiveLayout(settings.dest, settings.folder_template)
    with Manifest.open_existing(layout.manifest_path) as manifest:
        report = asyncio.run(verify_archive(manifest, layout.dest, fast=fast))
        for line in report.lines():
            click.echo(line)
    if not repair or not report.problems:
        return report.exit_code
    damaged = tuple((p.item_id, p.role, p.reason) for p in report.problems)
    click.echo(f"repair: re-fetching {len({p.item_id for p in report.problems})} items")
    _run_sync(settings, damaged=damaged)
    with Manifest.open_existing(layout.manifest_path) as manifest:
        report = asyncio.run(verify_archive(manifest, layout.dest, fast=fast))
    for line in report.lines():
        click.echo(line)
    return report.exit_code


@cli.command()
@click.option(
    "--dest", type=click.Path(path_type=Path), default=Path("pictory-demo"), show_default=True
)
@quiet_option
@debug_option
@_handled
def demo(dest: Path, **flags: Any) -> int:
    """Archive a generated library from a built-in fake Pictory server (no key, no network)."""
    from archiver.demo import demo_library

    with demo_library() as (api_url, api_key):
        base = {"dest": dest, "api_url": api_url, "api_key": api_key, **flags}
        for run in ("first run: the whole library", "second run: only what is new"):
            click.echo(f"== {run}")
            code = _run_sync(load_settings(base, {}))
            if code:
                return code
    click.echo(f"Look in {dest.absolute()}/videos/; try: pictory-archiver status --dest {dest}")
    return 0


def _run_sync(settings: Settings, damaged: tuple[tuple[str, str, str], ...] = ()) -> int:
    """Lock DEST, open the manifest, run the pipeline (a repair of `damaged` files, or a
    sync), print the summary."""
    from archiver.layout import ArchiveLayout
    from archiver.lock import DestLock
    from archiver.manifest import Manifest
    from archiver.pipeline import SyncOptions, run_sync
    from archiver.report import ConsoleProgress, configure_logging, log_summary, summary_lines

    bars = sys.stderr.isatty() and not settings.quiet
    key = settings.require_key()
    configure_logging(
        quiet=settings.quiet,
        debug=settings.debug,
        log_file=settings.log_file,
        bars=bars,
        secrets=[key.value],
    )
    options = SyncOptions(
        dest=settings.dest,
        api_url=settings.api_url,
        api_key=key,
        folder_template=settings.folder_template,
        concurrency=settings.concurrency,
        queue_size=settings.queue_size,
        timeout=settings.timeout,
        retries=settings.retries,
        full=settings.full,
        only_ids=frozenset(item_id for item_id, _, _ in damaged) if damaged else None,
        damaged=damaged,
        report_file=settings.report_file,
    )
    layout = ArchiveLayout(settings.dest, settings.folder_template)
    with DestLock(layout.lock_path):
        layout.prepare()
        with Manifest(layout.manifest_path) as manifest:
            progress = ConsoleProgress(bars=bars, quiet=settings.quiet)
            try:
                summary = asyncio.run(run_sync(options, manifest, progress))
            finally:
                progress.close()
    lines = summary_lines(summary)
    for line in lines:
        click.echo(line)
    log_summary(lines)
    return summary.exit_code


def main() -> None:
    cli(prog_name="pictory-archiver")
