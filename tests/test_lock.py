"""DestLock: one run per DEST, across processes, released by the kernel when a holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import archiver
from archiver.errors import ExitCode, LockHeldError, StorageError
from archiver.lock import DestLock

PROJECT = Path(archiver.__file__).resolve().parent.parent
HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from archiver.lock import DestLock

    lock = DestLock(Path(sys.argv[1]))
    lock.acquire()
    print("locked", flush=True)
    sys.stdin.readline()  # hold until told (or killed)
    lock.release()
    print("released", flush=True)
    """
)


@pytest.fixture
def lock_path(dest: Path) -> Path:
    return dest / ".pictory-archiver" / "lock"


@pytest.fixture
def holder(lock_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the lock until its stdin gets a line."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=PROJECT,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "locked"
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)


def test_lock_creates_state_dir_and_records_pid(lock_path: Path) -> None:
    with DestLock(lock_path):
        assert lock_path.read_text() == f"{os.getpid()}\n"
    assert lock_path.read_text() == ""


def test_second_lock_in_same_process_is_refused(lock_path: Path, dest: Path) -> None:
    with DestLock(lock_path):
        with pytest.raises(LockHeldError) as info:
            DestLock(lock_path).acquire()
    assert f"pid {os.getpid()}" in info.value.message
    assert str(dest) in info.value.message
    assert info.value.exit_code == ExitCode.LOCKED


def test_released_lock_can_be_taken_again(lock_path: Path) -> None:
    lock = DestLock(lock_path)
    lock.acquire()
    lock.release()
    lock.release()  # idempotent
    with DestLock(lock_path):
        pass
    lock.acquire()
    lock.release()


def test_failed_attempt_does_not_disturb_the_holder(lock_path: Path) -> None:
    with DestLock(lock_path):
        for _ in range(3):
            with pytest.raises(LockHeldError):
                DestLock(lock_path).acquire()
        assert lock_path.read_text() == f"{os.getpid()}\n"
    with DestLock(lock_path):
        pass


def test_lock_held_by_child_process_names_its_pid(
    lock_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(LockHeldError) as info:
        DestLock(lock_path).acquire()
    assert f"pid {holder.pid}" in info.value.message

    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "released"
    assert holder.wait(timeout=10) == 0
    with DestLock(lock_path):
        assert lock_path.read_text() == f"{os.getpid()}\n"


def test_kernel_releases_lock_of_killed_holder(
    lock_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(LockHeldError):
        DestLock(lock_path).acquire()
    holder.send_signal(signal.SIGKILL)
    assert holder.wait(timeout=10) == -signal.SIGKILL
    assert lock_path.read_text() == f"{holder.pid}\n"  # stale pid left behind

    with DestLock(lock_path):
        assert lock_path.read_text() == f"{os.getpid()}\n"


def test_unusable_lock_location_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="cannot create lock file"):
        DestLock(blocker / ".pictory-archiver" / "lock").acquire()
