"""Shared fixtures: the fake Pictory server (in-loop or in a thread), DEST, and CLI runners."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from archiver.cli import cli as cli_group
from archiver.fake import DEMO_API_KEY, FakeLibrary, FakePictory, run_in_thread

KEY = DEMO_API_KEY


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def library() -> FakeLibrary:
    """250 videos: three pages, small files so the suite stays fast."""
    return FakeLibrary(250, seed=3, video_size=24 * 1024, image_size=2 * 1024)


@pytest.fixture
async def fake(library: FakeLibrary) -> AsyncIterator[FakePictory]:
    """The fake server in the test's own event loop (for async unit tests)."""
    async with FakePictory(library) as server:
        yield server


@pytest.fixture
def server(library: FakeLibrary) -> Iterator[FakePictory]:
    """The fake server in a thread (for code that runs its own event loop, like the CLI)."""
    with run_in_thread(library) as running:
        yield running


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "archive"


@pytest.fixture
def cli_env(server: FakePictory, tmp_path: Path) -> dict[str, str]:
    """Environment pointing the CLI at the fake server, with no user config file."""
    return {
        "PICTORY_API_KEY": KEY,
        "PICTORY_API_URL": server.api_url,
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
    }


@pytest.fixture
def run_cli(cli_env: dict[str, str]) -> Callable[..., CliResult]:
    """Run the CLI in-process (fast); extra env overrides with env={...} (None unsets)."""

    def run(*args: str, env: dict[str, str | None] | None = None) -> CliResult:
        merged: dict[str, str | None] = {**cli_env, **(env or {})}
        result = CliRunner().invoke(cli_group, list(args), env=merged, catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return run


@pytest.fixture
def spawn_cli(cli_env: dict[str, str]) -> Callable[..., subprocess.Popen[str]]:
    """Start the CLI as a real child process (for signals, kill -9 and locks)."""

    def spawn(
        *args: str, env: dict[str, str] | None = None, preexec_fn: Callable[[], None] | None = None
    ) -> subprocess.Popen[str]:
        full_env = {**os.environ, **cli_env, **(env or {})}
        return subprocess.Popen(
            [sys.executable, "-m", "archiver", *args],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec_fn,  # noqa: PLW1509 - resource limits for one child
        )

    return spawn


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def archived_files(dest: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under DEST/videos."""
    return {
        str(path.relative_to(dest)): sha256_file(path)
        for path in sorted((dest / "videos").rglob("*"))
        if path.is_file()
    }
