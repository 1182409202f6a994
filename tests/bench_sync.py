"""Benchmark `pictory-archiver sync` against aria2c and curl -Z on a corpus served over loopback.

`make bench` runs every workload of issue 5 and overwrites BENCHMARKS.md; `--quick` runs
tiny versions of all of them (a smoke check, under a minute) and `--only a,c` picks some;
those print their report and write a file only when given `--output`. The corpus is
generated on disk, listed by the fake Pictory API and served by nginx (Debian
`nginx-light`, installed if missing) or, without nginx, by the fake's own CDN.

Not collected by pytest (no `test_` prefix): speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from archiver import __version__
from archiver.fake import DEMO_API_KEY
from archiver.fake.corpus import CorpusFile, CorpusLibrary, CorpusPictory

ROOT = Path(__file__).resolve().parent.parent
ARCHIVER = Path(sys.executable).parent / "pictory-archiver"
KiB, MiB = 1 << 10, 1 << 20
MB, GB = 1_000_000, 1_000_000_000
# File names in an archive folder by the raw API field they come from (README: the archive folder).
FILE_FIELDS = {
    "video.mp4": "url",
    "preview.jpg": "previewImageUrl",
    "thumbnail.jpg": "thumbnailImageUrl",
    "last_frame.png": "lastFrameImageUrl",
}
PACKAGES = {"nginx": "nginx-light", "aria2c": "aria2", "curl": "curl", "time": "time"}
MIN_FREE_BYTES = 8 * GB
DEFAULT_CONNECTIONS = 8  # the archiver's default concurrency
IGNORED = shutil.ignore_patterns("__pycache__")


class BenchError(Exception):
    """The benchmark cannot go on (a client failed or fetched the wrong files)."""


@dataclass(frozen=True)
class Sizes:
    """Asset sizes of a corpus: video `i` is `videos[i % len(videos)]` bytes."""

    videos: tuple[int, ...]
    image: int = 4 * KiB
    png_pixels: tuple[int, int] = (64, 36)


@dataclass(frozen=True)
class Scale:
    """How big each workload is: the issue's sizes, or tiny ones for `--quick`."""

    repeat: int
    large: Sizes
    small_videos: int
    latency_videos: int
    scale_videos: int
    scale_baseline_videos: int
    scale_repeat: int
    noop_repeat: int
    large_repeat: int
    disk_probe: int  # bytes


SMALL = Sizes((8 * KiB,))
LATENCY = Sizes((64 * KiB,))
TINY = Sizes((200,), image=340, png_pixels=(4, 4))
FULL = Scale(
    repeat=3,
    # 40 MP4s of 10..50 MiB in a scrambled order (1.27 GB), plus 120 small images.
    large=Sizes(tuple((10 + i * 37 % 41) * MiB for i in range(40))),
    small_videos=5_000,
    latency_videos=200,
    scale_videos=50_000,
    scale_baseline_videos=5_000,
    scale_repeat=1,
    noop_repeat=5,
    large_repeat=5,  # cheap, and durable writes on this disk vary from run to run
    disk_probe=1024 * MiB,
)
QUICK = Scale(
    repeat=1,
    large=Sizes((10 * MiB, 14 * MiB, 12 * MiB, 16 * MiB)),
    small_videos=100,
    latency_videos=10,
    scale_videos=500,
    scale_baseline_videos=50,
    scale_repeat=1,
    noop_repeat=2,
    large_repeat=1,
    disk_probe=128 * MiB,
)


@dataclass(frozen=True)
class Measurement:
    """One client run: wall time, CPU (user + sys) and peak RSS of its process tree, the
    files and bytes it fetched, and the CPU the CDN server spent meanwhile."""

    label: str
    wall: float
    cpu: float
    rss_kib: int
    files: int
    nbytes: int
    server_cpu: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / MB / self.wall

    @property
    def files_per_s(self) -> float:
        return self.files / self.wall

    @property
    def cpu_per_gb(self) -> float:
        return self.cpu / (self.nbytes / GB) if self.nbytes else 0.0

    @property
    def rss_mb(self) -> float:
        return self.rss_kib * KiB / MB


def median_of(runs: Sequence[Measurement]) -> Measurement:
    """Median wall time, CPU and server CPU; the highest peak RSS of all runs."""
    return Measurement(
        label=runs[0].label,
        wall=statistics.median(m.wall for m in runs),
        cpu=statistics.median(m.cpu for m in runs),
        rss_kib=max(m.rss_kib for m in runs),
        files=runs[0].files,
        nbytes=runs[0].nbytes,
        server_cpu=statistics.median(m.server_cpu for m in runs),
    )


@dataclass(frozen=True)
class Served:
    """One CDN response as the server logged it (path relative to the corpus)."""

    path: str
    nbytes: int
    ranged: bool


@dataclass(frozen=True)
class ArchiveState:
    """An archive folder in corpus terms: the CDN paths of the files under their final name,
    and the asset bytes on disk (.part files included)."""

    complete: frozenset[str]
    nbytes: int


def archive_state(dest: Path, library: CorpusLibrary) -> ArchiveState:
    """Read DEST/videos/…/<date>_<time>_<id>/<file> back into corpus paths."""
    complete: set[str] = set()
    nbytes = 0
    for folder, _, names in os.walk(dest / "videos"):
        item_id = Path(folder).name.rsplit("_", 1)[-1]
        for name in names:
            key = FILE_FIELDS.get(name.removesuffix(".part"))
            if key is None:
                continue
            nbytes += os.stat(os.path.join(folder, name)).st_size
            if not name.endswith(".part"):
                complete.add(library.item_assets(item_id)[key])
    return ArchiveState(frozenset(complete), nbytes)


@dataclass(frozen=True)
class TargetCheck:
    """One target of issue 5 and how this run measured against it (met None: not measured)."""

    workload: str
    goal: str
    measured: str
    met: bool | None


@dataclass
class Section:
    """A workload's part of BENCHMARKS.md."""

    key: str
    title: str
    lines: list[str] = field(default_factory=list)
    checks: list[TargetCheck] = field(default_factory=list)

    def check(self, goal: str, measured: str, met: bool | None) -> None:
        self.checks.append(TargetCheck(f"({self.key})", goal, measured, met))


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def comparison_table(
    results: dict[str, list[Measurement]],
    baselines: Sequence[str] = ("aria2c", "curl -Z"),
) -> list[str]:
    """One row per client: medians, and throughput relative to each baseline (> 1: faster)."""
    medians = {label: median_of(runs) for label, runs in results.items()}
    headers = ["client", "runs", "wall s", "MB/s", "files/s", "CPU s", "CPU-s/GB"]
    headers += ["peak RSS MB", "server CPU s", *(f"× {name}" for name in baselines)]
    rows = []
    for label, m in medians.items():
        ratios = [
            f"{medians[name].wall / m.wall:.2f}" if name in medians else "–" for name in baselines
        ]
        rows.append(
            [label, len(results[label]), f"{m.wall:.2f}", f"{m.mb_per_s:.1f}"]
            + [f"{m.files_per_s:,.0f}", f"{m.cpu:.2f}", f"{m.cpu_per_gb:.2f}"]
            + [f"{m.rss_mb:.1f}", f"{m.server_cpu:.2f}", *ratios]
        )
    return md_table(headers, rows)


def ratio_checks(
    section: Section, results: dict[str, list[Measurement]], minimums: dict[str, float], what: str
) -> None:
    """Targets of the form "the archiver's throughput ≥ k × baseline"."""
    archiver = median_of(results["archiver"])
    for name, minimum in minimums.items():
        goal = f"{what} ≥ {minimum}× {name}"
        if name not in results:
            section.check(goal, f"{name} not available", None)
            continue
        ratio = median_of(results[name]).wall / archiver.wall
        section.check(goal, f"{ratio:.2f}×", ratio >= minimum)


def say(text: str) -> None:
    print(text, flush=True)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without proxies or PICTORY_* settings, plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PICTORY_") and not key.lower().endswith("_proxy")
    }
    return {**env, **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def process_cpu(pid: int) -> float:
    """User + system seconds of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scan(dest: Path) -> tuple[int, int]:
    """(files, bytes) under a folder."""
    files = total = 0
    for folder, _, names in os.walk(dest):
        for name in names:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:  # renamed under us by the running client
                continue
            files += 1
    return files, total


def output_of(argv: Sequence[str]) -> str:
    """A command's stdout + stderr, or "" if it cannot run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def version(executable: str) -> str:
    """The first dotted number `executable --version` prints."""
    words = output_of([executable, "--version"]).split()
    return next((w for w in words if w[:1].isdigit() and "." in w), "?")


def archiver_version() -> str:
    """The archiver's version and last commit, flagging uncommitted changes to it."""
    commit = output_of(["git", "-C", str(ROOT), "log", "-1", "--format=%h", "--", "archiver"])
    dirty = output_of(["git", "-C", str(ROOT), "status", "--porcelain", "archiver"])
    return f"{__version__} at {commit or '?'}" + (" with uncommitted changes" if dirty else "")


def disk_write_speed(folder: Path, size: int) -> float:
    """MB/s of writing `size` random bytes to a new file in `folder` and fsyncing it."""
    block = os.urandom(MiB)
    probe = folder / "disk-probe"
    os.sync()
    started = time.perf_counter()
    with probe.open("wb", buffering=0) as out:
        for _ in range(size // MiB):
            out.write(block)
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - started
    probe.unlink()
    return size / MB / elapsed


def tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def ensure_tools(notes: list[str]) -> None:
    """Install nginx-light, aria2 and curl from Debian if missing; note what stays missing."""
    missing = [package for exe, package in PACKAGES.items() if tool(exe) is None]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        say(f"installing {' '.join(missing)} with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
        if subprocess.run(install, env=env, capture_output=True, check=False).returncode:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
            subprocess.run(install, env=env, capture_output=True, check=False)
    for exe, package in PACKAGES.items():
        if tool(exe) is None:
            notes.append(f"`{exe}` is not installed and could not be (Debian `{package}`).")


class Nginx:
    """nginx as a child process serving `root` on two loopback ports: one without an access
    log (for throughput), one logging every response's path, bytes sent and Range header."""

    CONFIG = """\
{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    types {{ video/mp4 mp4; image/jpeg jpg; image/png png; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    log_format served '$uri $status $body_bytes_sent "$http_range"';
    server {{ listen 127.0.0.1:{port}; root {root}; access_log off; }}
    server {{ listen 127.0.0.1:{logged_port}; root {root}; access_log {log} served; }}
}}
"""
    SETTINGS = (
        "1 worker process, `sendfile on`, `access_log off`; a second port with an access log "
        "serves (d)'s no-op runs and (e)"
    )

    def __init__(self, executable: str, root: Path, prefix: Path) -> None:
        self.executable = executable
        self.root = root
        self.prefix = prefix
        self.access_log = prefix / "access.log"
        self.port = free_port()
        self.logged_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.version = output_of([executable, "-v"]).rpartition("/")[2]

    def start(self) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.access_log.touch()
        config = self.prefix / "nginx.conf"
        config.write_text(
            self.CONFIG.format(
                user="user root;\n" if os.geteuid() == 0 else "",
                prefix=self.prefix,
                root=self.root,
                port=self.port,
                logged_port=self.logged_port,
                log=self.access_log,
            )
        )
        errors = self.prefix / "error.log"
        argv = [self.executable, "-p", str(self.prefix), "-c", str(config), "-e", str(errors)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not (accepts(self.port) and accepts(self.logged_port)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(errors.read_text()[-300:] if errors.exists() else "no log")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def base_url(self, corpus: str, *, logged: bool) -> str:
        return f"http://127.0.0.1:{self.logged_port if logged else self.port}/{corpus}"

    def cpu_seconds(self) -> float:
        """CPU of the master and its workers so far."""
        assert self.proc is not None
        pid = self.proc.pid
        workers = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return sum(process_cpu(p) for p in [pid, *map(int, workers)])

    def log_mark(self) -> int:
        return self.access_log.stat().st_size

    def served_since(self, mark: int, corpus: str) -> list[Served]:
        with self.access_log.open("rb") as log:
            log.seek(mark)
            lines = log.read().decode().splitlines()
        served = []
        for line in lines:
            uri, _status, nbytes, wanted = line.split(" ", 3)
            served.append(Served(uri.removeprefix(f"/{corpus}"), int(nbytes), wanted != '"-"'))
        return served


@dataclass
class Target:
    """A corpus being served: the fake API lists it and each file is at `base` + its path,
    on nginx when there is one, else on the fake's own CDN."""

    name: str
    library: CorpusLibrary
    api: CorpusPictory
    nginx: Nginx | None
    workdir: Path
    logged: bool = False

    def __post_init__(self) -> None:
        self.log(self.logged)

    def log(self, logged: bool) -> None:
        """Serve from nginx's logging port (or not) from the next run on."""
        self.logged = logged
        self.api.cdn_base = self.nginx.base_url(self.name, logged=logged) if self.nginx else None

    @property
    def base(self) -> str:
        return self.api.cdn_base or self.api.cdn_url

    @property
    def server(self) -> str:
        return f"nginx {self.nginx.version}" if self.nginx else "the fake server (aiohttp)"

    def server_cpu(self) -> float:
        if self.nginx is not None:
            return self.nginx.cpu_seconds()
        usage = resource.getrusage(resource.RUSAGE_SELF)  # the fake CDN runs in this process
        return usage.ru_utime + usage.ru_stime

    def mark(self) -> int:
        return self.nginx.log_mark() if self.nginx else len(self.api.requests)

    def served_since(self, mark: int) -> list[Served]:
        """Responses since `mark`; on the fake CDN, bytes are estimated from Range headers."""
        if self.nginx is not None:
            return self.nginx.served_since(mark, self.name)
        sizes = {f.path: f.size for f in self.library.files()}
        served = []
        for record in self.api.requests[mark:]:
            if record.origin == "cdn":
                wanted = record.header("Range")
                first = int(wanted.removeprefix("bytes=").split("-")[0] or 0) if wanted else 0
                served.append(Served(record.path, sizes.get(record.path, 0) - first, bool(wanted)))
        return served

    def url_list(self, kind: str, line: Callable[[str, CorpusFile], str]) -> Path:
        """The corpus as a client's input file, written once per client kind and base URL."""
        path = self.workdir / "inputs" / f"{self.name}-{kind}-{abs(hash(self.base))}"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            path.write_text("".join(line(self.base + f.path, f) for f in self.library.files()))
        return path


@dataclass(frozen=True)
class ResumeRound:
    """One round of (e): an uninterrupted sync; a sync killed part-way, then resumed (and, if
    the resume leaves files missing, completed by `sync --full`)."""

    HEADERS = ["round", "uninterrupted s", "killed at", "resume s", "killed + resume s"] + [
        *("÷ uninterrupted", "served ÷ corpus", "Range requests", "completed re-fetched")
    ]

    uninterrupted: float
    killed_after: float
    at_kill: float  # fraction of the corpus bytes in DEST (.part included) at the kill
    resume: float
    missing: int  # files the plain resume left missing (exit 0 all the same)
    repair: float  # wall time of the `sync --full` that completed them, if needed
    served: float  # bytes served to the killed run and after it ÷ corpus bytes
    ranged: int  # Range requests after the kill
    refetched: int  # bytes served after the kill for files complete at the kill

    @property
    def total(self) -> float:
        return self.killed_after + self.resume + self.repair

    @property
    def ratio(self) -> float:
        return self.total / self.uninterrupted

    def cells(self, number: int) -> list[object]:
        resume = f"{self.resume:.2f}"
        if self.missing:
            resume += f" (left {self.missing} files missing; `sync --full` {self.repair:.2f})"
        return [
            number,
            f"{self.uninterrupted:.2f}",
            f"{self.at_kill:.0%} after {self.killed_after:.2f} s",
            resume,
            f"{self.total:.2f}",
            f"{self.ratio:.3f}",
            f"{self.served:.3f}",
            self.ranged,
            f"{self.refetched:,} B",
        ]


def exited(pid: int) -> bool:
    """Has a child exited? Without reaping it, so wait4 still gets its resource usage."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


class Client:
    """A downloader under test: its command line for DEST and N connections, and what it says
    (or DEST shows) it fetched."""

    name = ""
    executable = ""

    def argv(self, target: Target, dest: Path, workers: int, report: Path) -> list[str]:
        raise NotImplementedError

    def env(self, target: Target) -> dict[str, str]:
        return clean_env()

    def fetched(self, dest: Path, report: Path) -> tuple[int, int]:
        return scan(dest)


class Archiver(Client):
    """`pictory-archiver sync [FLAGS]` as shipped (sha256, durable files), its package taken
    from `code` (a copy made at the start, so that edits during the run cannot mix
    versions); counts from its --report."""

    name = "archiver"
    executable = str(ARCHIVER)

    def __init__(self, code: Path, *flags: str) -> None:
        self.code = code
        self.flags = flags

    def argv(self, target: Target, dest: Path, workers: int, report: Path) -> list[str]:
        return [self.executable, "sync", "--dest", str(dest), "--quiet", *self.flags] + [
            *("--concurrency", str(workers), "--report", str(report))
        ]

    def env(self, target: Target) -> dict[str, str]:
        return clean_env(
            PICTORY_API_KEY=DEMO_API_KEY,
            PICTORY_API_URL=target.api.api_url,
            XDG_CONFIG_HOME=str(target.workdir / "xdg"),
            PYTHONPATH=str(self.code),  # ahead of the editable install's finder
        )

    def fetched(self, dest: Path, report: Path) -> tuple[int, int]:
        summary = json.loads(report.read_text())
        return summary["files"], summary["bytes"]


class Aria2(Client):
    """aria2c with one connection per file and N files at a time."""

    name = executable = "aria2c"

    def argv(self, target: Target, dest: Path, workers: int, report: Path) -> list[str]:
        urls = target.url_list("aria2c", lambda url, f: f"{url}\n  out={f.name}\n")
        return ["aria2c", "-x1", "-s1", "-j", str(workers), "-i", str(urls), "-d", str(dest)] + [
            *("--quiet=true", "--file-allocation=none"),
            *("--allow-overwrite=true", "--auto-file-renaming=false"),
        ]


class Curl(Client):
    """curl -Z with N transfers at a time."""

    name, executable = "curl -Z", "curl"

    def argv(self, target: Target, dest: Path, workers: int, report: Path) -> list[str]:
        urls = target.url_list("curl", lambda url, f: f'url = "{url}"\noutput = "{f.name}"\n')
        return ["curl", "-Z", "--parallel-max", str(workers), "--silent", "--show-error"] + [
            *("--fail", "--output-dir", str(dest), "--config", str(urls))
        ]


@dataclass
class Running:
    """A client process the benchmark started."""

    label: str
    client: Client
    dest: Path
    report: Path
    proc: subprocess.Popen[bytes]
    started: float
    server_cpu: float
    timed: bool  # run under /usr/bin/time, which writes the peak RSS to `report`.rss

    def kill(self) -> None:
        """SIGKILL the client itself (not /usr/bin/time around it)."""
        pid = self.proc.pid
        if self.timed:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            pid = int(children[0]) if children else pid
        os.kill(pid, signal.SIGKILL)


Contender = tuple[str, Client, int]  # label, client, connections


class Bench:
    """One benchmark session: the work folder, the CDN server, the clients, the workloads."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.scale = QUICK if args.quick else FULL
        self.args_repeat: int | None = args.repeat
        self.repeat: int = args.repeat or self.scale.repeat
        self.workers: int = args.connections
        self.workdir = Path(tempfile.mkdtemp(prefix="pictory-bench-", dir=args.workdir))
        self.notes: list[str] = []
        ensure_tools(self.notes)
        code = self.workdir / "code"
        shutil.copytree(ROOT / "archiver", code / "archiver", ignore=IGNORED)
        self.archiver_version = archiver_version()
        self.archiver = Archiver(code)
        self.archiver_full = Archiver(code, "--full")
        if tool("time") is None:
            self.notes.append(
                "Peak RSS is ru_maxrss from wait4(2): it includes the RSS the "
                "benchmark process had when it forked the client."
            )
        self.baselines = [c for c in (Aria2(), Curl()) if tool(c.executable)]
        self.nginx: Nginx | None = None
        self.corpora: dict[str, CorpusLibrary] = {}
        self.runs = 0
        self.disk_speed = "not measured"
        self.live: dict[int, subprocess.Popen[bytes]] = {}

    def abort(self, signum: int, _frame: object) -> None:
        """On ^C or SIGTERM: kill the clients running now (the fake CDN they may be waiting
        on lives in this process), then unwind, which stops nginx and removes the corpus."""
        for pid in self.live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        raise SystemExit(128 + signum)

    def probe_disk(self) -> None:
        """Durable sequential write speed where DEST goes: the ceiling for a durable client."""
        size = self.scale.disk_probe
        speeds = sorted(disk_write_speed(self.workdir, size) for _ in range(3))
        self.disk_speed = (
            f"{speeds[1]:,.0f} MB/s (median of 3 probes: {', '.join(f'{v:,.0f}' for v in speeds)}; "
            f"{size // MiB} MiB of random bytes, one stream, one fsync)"
        )
        say(f"disk: {self.disk_speed}")

    def start_cdn(self) -> None:
        """Start nginx over corpora/ (each corpus under /NAME), or note why not."""
        executable = tool("nginx")
        if executable is None:
            self.notes.append("nginx is not available: the fake server served every workload.")
            return
        nginx = Nginx(executable, self.workdir / "corpora", self.workdir / "nginx")
        try:
            nginx.start()
        except BenchError as exc:
            self.notes.append(f"nginx did not start ({exc}): the fake server served instead.")
            return
        self.nginx = nginx

    def close(self, keep: bool) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        if keep:
            say(f"kept {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def corpus(self, name: str, videos: int, sizes: Sizes) -> CorpusLibrary:
        """A corpus under corpora/NAME, generated on first use."""
        if name not in self.corpora:
            library = CorpusLibrary(
                self.workdir / "corpora" / name,
                videos,
                video_sizes=sizes.videos,
                image_size=sizes.image,
                png_pixels=sizes.png_pixels,
            )
            started = time.monotonic()
            written = library.write()
            say(
                f"corpus {name}: {videos:,} videos, {len(library.files()):,} files, "
                f"{library.total_bytes / MB:,.1f} MB ({written:,} files written in "
                f"{time.monotonic() - started:.1f} s)"
            )
            self.corpora[name] = library
        return self.corpora[name]

    @contextlib.asynccontextmanager
    async def serve(
        self, name: str, library: CorpusLibrary, *, fake_cdn: bool = False, logged: bool = False
    ) -> AsyncIterator[Target]:
        """The fake API listing `library`, with nginx as its CDN unless `fake_cdn`."""
        api = CorpusPictory(library)
        async with api:
            nginx = None if fake_cdn else self.nginx
            target = Target(name, library, api, nginx, self.workdir, logged)
            say(f"serving {name} from {target.server}")
            yield target

    def fresh_dest(self) -> Path:
        dest = self.workdir / "dest"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        return dest

    def start(
        self, client: Client, target: Target, workers: int, label: str, dest: Path
    ) -> Running:
        self.runs += 1
        report = self.workdir / "logs" / f"{self.runs:03d}.json"
        report.parent.mkdir(exist_ok=True)
        os.sync()  # the last run's dirty pages must not be written back during this one
        argv = client.argv(target, dest, workers, report)
        timer = tool("time")
        if timer is not None:
            # A child's ru_maxrss starts from its parent's RSS at fork: the peak RSS must come
            # from a small parent, /usr/bin/time.
            argv = [timer, "-f", "%M", "-o", str(report.with_suffix(".rss")), *argv]
        server_cpu, started = target.server_cpu(), time.perf_counter()
        with report.with_suffix(".log").open("wb") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=client.env(target),
                cwd=dest,
                start_new_session=True,  # a process group `abort` can kill
            )
        self.live[proc.pid] = proc
        return Running(label, client, dest, report, proc, started, server_cpu, timer is not None)

    async def reap(self, running: Running, target: Target, *, killed: bool = False) -> Measurement:
        """Wait for a client; its CPU and peak RSS come from wait4(2), reaped children included."""
        _, status, usage = await asyncio.to_thread(os.wait4, running.proc.pid, 0)
        self.live.pop(running.proc.pid)
        wall = time.perf_counter() - running.started
        running.proc.returncode = code = os.waitstatus_to_exitcode(status)
        files = nbytes = 0
        if not killed:
            if code != 0:
                log = running.report.with_suffix(".log").read_text()[-800:]
                raise BenchError(f"{running.label} exited {code}: {log}")
            files, nbytes = running.client.fetched(running.dest, running.report)
        measured = Measurement(
            label=running.label,
            wall=wall,
            cpu=usage.ru_utime + usage.ru_stime,
            rss_kib=(
                int(running.report.with_suffix(".rss").read_text().split()[-1])
                if running.timed
                else usage.ru_maxrss
            ),
            files=files,
            nbytes=nbytes,
            server_cpu=target.server_cpu() - running.server_cpu,
        )
        say(
            f"  {measured.label:<16} {measured.wall:7.2f} s {measured.mb_per_s:8.1f} MB/s "
            f"{measured.files_per_s:7.0f} files/s  CPU {measured.cpu:6.2f} s  "
            f"RSS {measured.rss_mb:6.1f} MB  server CPU {measured.server_cpu:5.2f} s"
        )
        return measured

    async def run(
        self,
        client: Client,
        target: Target,
        *,
        workers: int | None = None,
        label: str | None = None,
        dest: Path | None = None,
        expect: tuple[int, int] | None = None,
    ) -> Measurement:
        """Run a client to the end into `dest` (default: a fresh one) and check it fetched
        `expect` (files, bytes), by default the whole corpus."""
        library = target.library
        expect = expect or (len(library.files()), library.total_bytes)
        dest = dest or self.fresh_dest()
        running = self.start(client, target, workers or self.workers, label or client.name, dest)
        measured = await self.reap(running, target)
        if (measured.files, measured.nbytes) != expect:
            raise BenchError(
                f"{measured.label} fetched {measured.files} files, {measured.nbytes} bytes; "
                f"expected {expect[0]} files, {expect[1]} bytes"
            )
        return measured

    async def compare(
        self, target: Target, contenders: Sequence[Contender], repeat: int | None = None
    ) -> dict[str, list[Measurement]]:
        """Every contender `repeat` times, interleaved so that drift hits all alike."""
        repeat = repeat or self.repeat
        results: dict[str, list[Measurement]] = {label: [] for label, _, _ in contenders}
        for round_no in range(1, repeat + 1):
            say(f" round {round_no}/{repeat}")
            for label, client, workers in contenders:
                results[label].append(await self.run(client, target, workers=workers, label=label))
        return results

    def contenders(self, workers: int, suffix: str = "") -> list[Contender]:
        return [(c.name + suffix, c, workers) for c in (self.archiver, *self.baselines)]

    async def large_files(self) -> Section:
        """(a) ≥ 1 GB of 10–50 MiB MP4s."""
        section = Section("a", "Large files")
        sizes = self.scale.large
        library = self.corpus("large", len(sizes.videos), sizes)
        async with self.serve("large", library) as target:
            repeat = self.args_repeat or self.scale.large_repeat
            results = await self.compare(target, self.contenders(self.workers), repeat)
        section.lines += [
            f"{len(library.files())} files: {len(sizes.videos)} MP4s of "
            f"{min(sizes.videos) // MiB}–{max(sizes.videos) // MiB} MiB plus 3 small images "
            f"each, {library.total_bytes / GB:.2f} GB in all; {self.workers} connections; "
            f"served by {target.server}.",
            "",
            *comparison_table(results),
        ]
        ratio_checks(section, results, {"aria2c": 1.5, "curl -Z": 0.8}, "MB/s")
        archiver = median_of(results["archiver"])
        per_gb = archiver.cpu_per_gb
        section.check("≤ 2.5 CPU-s per GB", f"{per_gb:.2f} CPU-s/GB", per_gb <= 2.5)
        return section

    async def small_files(self) -> Section:
        """(b) 5,000 videos × 4 assets of a few KB."""
        section = Section("b", "Many small files")
        library = self.corpus("small", self.scale.small_videos, SMALL)
        async with self.serve("small", library) as target:
            results = await self.compare(target, self.contenders(self.workers))
        png = library.files()[3].size
        section.lines += [
            f"{self.scale.small_videos:,} videos × 4 assets = {len(library.files()):,} files "
            f"(MP4 8 KiB, JPEG 4 KiB ×2, PNG {png / KiB:.1f} KiB; "
            f"{library.total_bytes / MB:.0f} MB); {self.workers} connections; served by "
            f"{target.server}. The archiver also writes a metadata.json per video.",
            "",
            *comparison_table(results),
        ]
        ratio_checks(section, results, {"aria2c": 2.0, "curl -Z": 0.8}, "files/s")
        return section

    async def latency(self) -> Section:
        """(c) 50 ms added to every CDN response; 1, 4 and 16 workers."""
        section = Section("c", "Latency")
        library = self.corpus("latency", self.scale.latency_videos, LATENCY)
        async with self.serve("latency", library, fake_cdn=True) as target:
            target.api.cdn_delay = 0.05
            contenders = [(f"archiver ×{n}", self.archiver, n) for n in (1, 4, 16)]
            results = await self.compare(target, contenders + self.contenders(16, " ×16")[1:])
        one, sixteen = median_of(results["archiver ×1"]), median_of(results["archiver ×16"])
        speedup = one.wall / sixteen.wall
        section.lines += [
            f"{len(library.files()):,} files ({self.scale.latency_videos} videos: MP4 64 KiB, "
            "JPEG 4 KiB ×2, PNG 7 KiB), every CDN response delayed 50 ms. nginx cannot add a "
            "delay, so the fake server (aiohttp, `cdn_delay=0.05`, in the benchmark's process) "
            "serves this workload. ×N: workers or connections. The ratio columns compare each "
            "row with the baselines at 16 connections.",
            "",
            f"16 workers vs 1: **{speedup:.1f}×** the throughput.",
            "",
            *comparison_table(results, baselines=("aria2c ×16", "curl -Z ×16")),
        ]
        section.check("16 workers ≥ 12× the throughput of 1", f"{speedup:.1f}×", speedup >= 12)
        return section

    async def scale_up(self) -> Section:
        """(d) 5,000 vs 50,000 videos: full sync time and peak RSS; then no-op nightly syncs."""
        section = Section("d", "Scale")
        scale = self.scale
        big = self.corpus("scale", scale.scale_videos, TINY)
        # Same seed: the small library's files are the first of the big one's, already on disk.
        small = CorpusLibrary(
            big.root,
            scale.scale_baseline_videos,
            video_sizes=TINY.videos,
            image_size=TINY.image,
            png_pixels=TINY.png_pixels,
        )
        async with self.serve("scale", small) as target:
            small_row, small_rss = await self.full_syncs(target)
        async with self.serve("scale", big) as target:
            big_row, big_rss = await self.full_syncs(target)
            noop_row, noop_met = await self.noop_syncs(target)
        section.lines += [
            f"Tiny assets (MP4 200 B, JPEG 340 B ×2, PNG {big.files()[3].size} B) so the disk "
            f"holds {len(big.files()):,} files; {self.workers} workers; served by "
            f"{'nginx' if self.nginx else 'the fake server'}; the archiver only (no baselines). "
            f"Full syncs: {scale.scale_repeat} run each (trimmed to keep the benchmark under "
            f"25 minutes). No-op nightly sync of the complete {len(big.items):,}-video archive: "
            f"median of {scale.noop_repeat} runs, wall time of the whole subprocess (Python "
            "start-up included). API requests: the fake API's request log. CDN requests of the "
            "no-op runs: nginx's access log (these runs use the logging port); the archiver's "
            "--report must also say 0 files.",
            "",
            *md_table(
                ["run", "wall s", "files/s", "CPU s", "peak RSS MB", "API requests"]
                + ["CDN requests"],
                [small_row, big_row, noop_row],
            ),
            f"Peak RSS: {small_rss:.1f} MB at {len(small.items):,} videos, {big_rss:.1f} MB at "
            f"{len(big.items):,} ({big_rss / small_rss:.2f}×).",
            "",
        ]
        section.check(
            "peak RSS < 100 MB, flat from 5,000 to 50,000 videos (≤ 1.1×)",
            f"{small_rss:.1f} → {big_rss:.1f} MB",
            big_rss < 100 and big_rss <= 1.1 * small_rss,
        )
        section.check(
            "no-op nightly sync: 1 list request, 0 CDN requests, < 1 s wall",
            f"{noop_row[5]} API, {noop_row[6]} CDN, {noop_row[1]} s",
            noop_met,
        )
        return section

    async def full_syncs(self, target: Target) -> tuple[list[object], float]:
        """Full syncs of a target into a fresh DEST: a table row and the peak RSS in MB."""
        videos = len(target.library.items)
        runs, api = [], []
        for _ in range(self.scale.scale_repeat):
            target.api.reset_log()
            runs.append(await self.run(self.archiver, target, label=f"full {videos:,}"))
            api.append(target.api.count("api"))
        full = median_of(runs)
        row: list[object] = [f"full sync, {videos:,} videos", f"{full.wall:.1f}"]
        row += [f"{full.files_per_s:,.0f}", f"{full.cpu:.1f}", f"{full.rss_mb:.1f}", max(api)]
        return [*row, f"{full.files:,} (files fetched, per --report)"], full.rss_mb

    async def noop_syncs(self, target: Target) -> tuple[list[object], bool]:
        """Sync the complete archive again, `noop_repeat` times: a table row, and whether the
        target is met."""
        target.log(True)
        dest = self.workdir / "dest"
        runs, api, cdn = [], [], []
        for _ in range(self.scale.noop_repeat):
            target.api.reset_log()
            mark = target.mark()
            runs.append(
                await self.run(self.archiver, target, label="no-op", dest=dest, expect=(0, 0))
            )
            api.append(target.api.count("api"))
            cdn.append(len(target.served_since(mark)))
        noop = median_of(runs)
        worst = max(m.wall for m in runs)
        row: list[object] = ["no-op nightly sync", f"{noop.wall:.2f} (worst {worst:.2f})", "–"]
        row += [f"{noop.cpu:.2f}", f"{noop.rss_mb:.1f}", max(api), max(cdn)]
        return row, max(api) == 1 and max(cdn) == 0 and noop.wall < 1

    async def resume(self) -> Section:
        """(e) kill -9 at 50 % of workload (a), then resume."""
        section = Section("e", "Kill -9 at 50 % and resume")
        sizes = self.scale.large
        library = self.corpus("large", len(sizes.videos), sizes)
        async with self.serve("large", library, logged=True) as target:
            rounds = [await self.killed_and_resumed(target) for _ in range(self.repeat)]
        source = (
            "nginx's access log (`$body_bytes_sent`; on for this workload only)"
            if self.nginx
            else "the fake CDN's request log (estimated from Range headers)"
        )
        section.lines += [
            f"Workload (a) ({library.total_bytes / GB:.2f} GB), {self.workers} workers. Each "
            "round: an uninterrupted sync; then a sync killed with SIGKILL once half the bytes "
            "are in DEST (.part files included) and a second sync into the same DEST. If that "
            "resume leaves files missing, a `sync --full` completes the archive and its time "
            f"is added. Bytes served: {source}. Completed re-fetched: bytes served after the "
            "kill for files that were under their final name when it came.",
            "",
            *md_table(ResumeRound.HEADERS, [r.cells(i + 1) for i, r in enumerate(rounds)]),
        ]
        missing = max(r.missing for r in rounds)
        ratio = statistics.median(r.ratio for r in rounds)
        refetched = max(r.refetched for r in rounds)
        section.check("the resume completes the archive", f"{missing} files left", missing == 0)
        section.check("killed + resume ≤ 1.05× uninterrupted", f"{ratio:.2f}×", ratio <= 1.05)
        section.check("no completed bytes re-fetched", f"{refetched:,} B", refetched == 0)
        return section

    async def killed_and_resumed(self, target: Target) -> ResumeRound:
        """One round of (e): uninterrupted; killed at half the bytes; resumed."""
        library = target.library
        whole = await self.run(self.archiver, target, label="uninterrupted")
        dest = self.fresh_dest()
        first_mark = target.mark()
        running = self.start(self.archiver, target, self.workers, "killed", dest)
        while not exited(running.proc.pid) and scan(dest)[1] < library.total_bytes / 2:
            await asyncio.sleep(0.01)
        running.kill()
        killed = await self.reap(running, target, killed=True)
        at_kill = archive_state(dest, library)
        await asyncio.sleep(0.2)  # let nginx log the responses the kill cut short
        kill_mark = target.mark()
        resumed = await self.reap(
            self.start(self.archiver, target, self.workers, "resume", dest), target
        )
        missing = len(library.files()) - len(archive_state(dest, library).complete)
        repair = 0.0
        if missing:
            running = self.start(self.archiver_full, target, self.workers, "sync --full", dest)
            repair = (await self.reap(running, target)).wall
        done = archive_state(dest, library)
        if len(done.complete) != len(library.files()) or done.nbytes != library.total_bytes:
            raise BenchError(f"the resume left {len(done.complete)} files, {done.nbytes} bytes")
        served = target.served_since(first_mark)
        after_kill = target.served_since(kill_mark)
        return ResumeRound(
            uninterrupted=whole.wall,
            killed_after=killed.wall,
            at_kill=at_kill.nbytes / library.total_bytes,
            resume=resumed.wall,
            missing=missing,
            repair=repair,
            served=sum(s.nbytes for s in served) / library.total_bytes,
            ranged=sum(1 for s in after_kill if s.ranged),
            refetched=sum(s.nbytes for s in after_kill if s.path in at_kill.complete),
        )


WORKLOADS: dict[str, Callable[[Bench], Awaitable[Section]]] = {
    "a": Bench.large_files,
    "b": Bench.small_files,
    "c": Bench.latency,
    "d": Bench.scale_up,
    "e": Bench.resume,
}


def machine_rows(bench: Bench) -> list[tuple[str, str]]:
    """What the numbers came from."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    models = [
        line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line
    ]
    memory = int(Path("/proc/meminfo").read_text().split()[1]) * KiB
    mount = output_of(["findmnt", "-no", "SOURCE,FSTYPE", "-T", str(bench.workdir.parent)])
    source, fstype = (mount or "? ?").split()[:2]
    server = (
        f"nginx {bench.nginx.version} ({Nginx.SETTINGS}) for (a), (b), (d), (e); "
        "the fake server for (c)"
        if bench.nginx
        else "the fake server (aiohttp) for every workload: nginx was not available"
    )
    baselines = ", ".join(f"{c.executable} {version(c.executable)}" for c in bench.baselines)
    return [
        ("CPU", f"{models[0] if models else '?'}, {os.cpu_count()} cores"),
        ("memory", f"{memory / GB:.1f} GB"),
        ("corpus and DEST", f"{source}, {fstype} (same filesystem); corpus in the page cache"),
        ("kernel", f"Linux {platform.release()}"),
        ("Python", platform.python_version()),
        ("aiohttp", importlib.metadata.version("aiohttp")),
        ("archiver", f"{bench.archiver_version} (copied at the start: every run used it)"),
        ("disk: write + fsync", bench.disk_speed),
        ("CDN server", server),
        ("baselines", baselines or "none available"),
    ]


def method_lines(bench: Bench) -> list[str]:
    n = bench.workers
    return [
        f"- Each client runs as a subprocess into an empty DEST; `sync` runs before each run. "
        f"archiver: `pictory-archiver sync --dest D --quiet --concurrency {n} --report R` (API "
        "key and URL in the environment; a sha256 of every file, every file durable on disk "
        f"before the SQLite manifest records it). aria2c: `aria2c -x1 -s1 -j {n} -i urls.txt -d D "
        f"--file-allocation=none`. curl: `curl -Z --parallel-max {n} --fail --config urls.txt "
        "--output-dir D`. Neither baseline hashes its files or makes them durable; the archiver "
        "does both before it counts a file, so on (a) the disk's durable write speed (Machine) "
        "bounds it and not them.",
        "- wall: spawn to exit (start-up, listing and the final commit included). CPU: user + "
        "sys of the client and the children it reaped, from wait4(2); peak RSS: `/usr/bin/time "
        "-f %M` around the client. "
        "server CPU: nginx's master + worker (from /proc) or, for the fake server, this "
        "benchmark's process, during the run: low numbers show the server is not the bottleneck.",
        "- Median of the rounds (clients interleaved within a round); peak RSS is the highest "
        "of the rounds. MB = 10⁶ bytes, GB = 10⁹. `× aria2c`: the archiver's throughput ÷ "
        "aria2c's (the same for curl -Z): above 1, the archiver is faster.",
    ]


DESIGN_NOTES = Path(__file__).with_name("bench_notes.md")


def render(bench: Bench, sections: Sequence[Section], command: str, minutes: float) -> str:
    kind = "quick (tiny workloads)" if bench.scale is QUICK else "full"
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, a {kind} run of "
        f"{minutes:.1f} minutes. The script (`tests/bench_sync.py`) overwrites this file; "
        "issue 5 sets the workloads and the targets.",
        "",
        "## Machine",
        "",
        *md_table(["", ""], machine_rows(bench)),
        "## Method",
        "",
        *method_lines(bench),
        "",
    ]
    if bench.notes:
        lines += ["## Notes", "", *(f"- {note}" for note in bench.notes), ""]
    checks = [check for section in sections for check in section.checks]
    verdict = {True: "met", False: "**not met**", None: "not measured"}
    lines += ["## Targets (issue 5)", ""]
    lines += md_table(
        ["workload", "target", "measured", "result"],
        [(c.workload, c.goal, c.measured, verdict[c.met]) for c in checks],
    )
    for section in sections:
        lines += [f"## ({section.key}) {section.title}", "", *section.lines]
    if DESIGN_NOTES.is_file():  # hand-written: the choices these numbers led to
        lines += ["", DESIGN_NOTES.read_text("utf-8").strip()]
    return "\n".join(lines).rstrip() + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny workloads: a smoke check")
    parser.add_argument("--only", default="abcde", help="workloads to run, e.g. a,b (default all)")
    parser.add_argument("--repeat", type=int, help="rounds per workload (default 3; quick 1)")
    parser.add_argument(
        "--connections", type=int, default=DEFAULT_CONNECTIONS, help="for (a) (b) (d) (e)"
    )
    parser.add_argument("--workdir", help="where the corpus and DEST go (default: the temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the corpus and the logs")
    parser.add_argument(
        "--output", type=Path, help="report file (default BENCHMARKS.md for a full run of all)"
    )
    args = parser.parse_args(argv)
    args.only = [key for key in args.only.replace(",", "") if key in WORKLOADS] or list(WORKLOADS)
    if args.output is None and not args.quick and len(args.only) == len(WORKLOADS):
        args.output = ROOT / "BENCHMARKS.md"  # only a full run of everything replaces it
    return args


async def run_workloads(bench: Bench, keys: Sequence[str]) -> list[Section]:
    bench.probe_disk()
    bench.start_cdn()
    sections = []
    for key in keys:
        say(f"== {WORKLOADS[key].__doc__}")
        sections.append(await WORKLOADS[key](bench))
    return sections


def shown_command(args: argparse.Namespace) -> str:
    """How to run this again: `make bench` for the default full run, else the flags used."""
    flags = ["--quick"] if args.quick else []
    if "".join(args.only) != "".join(WORKLOADS):
        flags.append("--only " + ",".join(args.only))
    if args.repeat:
        flags.append(f"--repeat {args.repeat}")
    if args.connections != DEFAULT_CONNECTIONS:
        flags.append(f"--connections {args.connections}")
    if not flags:
        return "make bench"
    return " ".join([".venv/bin/python tests/bench_sync.py", *flags])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    bench = Bench(args)
    signal.signal(signal.SIGINT, bench.abort)
    signal.signal(signal.SIGTERM, bench.abort)
    free = shutil.disk_usage(bench.workdir).free
    if not args.quick and free < MIN_FREE_BYTES:
        bench.close(keep=False)
        say(f"only {free / GB:.1f} GB free in {bench.workdir.parent}; the benchmark needs 8")
        return 1
    try:
        sections = asyncio.run(run_workloads(bench, args.only))
    except BenchError as exc:
        say(f"benchmark failed: {exc}")
        return 1
    finally:
        bench.close(args.keep)
    report = render(bench, sections, shown_command(args), (time.monotonic() - started) / 60)
    say("\n" + report)
    if args.output is not None:
        args.output.write_text(report)
        say(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
