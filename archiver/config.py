"""Settings: the TOML file < environment (PICTORY_*) < command-line flags, validated once.

Every option is declared once in OPTIONS; the file, the environment and the flags
all go through the same parser, so a bad value reads the same wherever it came from.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from archiver.errors import ConfigError
from archiver.models import Secret

DEFAULT_API_URL = "https://api.pictory.ai/pictoryapis"
DEFAULT_TEMPLATE = "{year}/{month}/{date}_{time}_{id}"
TEMPLATE_FIELDS = {
    "year": "2026",
    "month": "04",
    "day": "09",
    "date": "2026-04-09",
    "time": "185147",
    "id": "x",
    "kind": "video",
}


@dataclass(frozen=True)
class Settings:
    """Everything a run needs, typed and validated."""

    dest: Path
    api_key: Secret | None = None
    api_url: str = DEFAULT_API_URL
    concurrency: int = 8
    queue_size: int = 64
    folder_template: str = DEFAULT_TEMPLATE
    timeout: float = 60.0
    retries: int = 5
    full: bool = False
    quiet: bool = False
    debug: bool = False
    log_file: Path | None = None
    report_file: Path | None = None
    config_file: Path | None = None
    warnings: tuple[str, ...] = ()

    @property
    def state_dir(self) -> Path:
        return self.dest / ".pictory-archiver"

    def require_key(self) -> Secret:
        if self.api_key is None:
            raise ConfigError(
                "no API key: set PICTORY_API_KEY, pass --api-key, or put api_key in the "
                "config file (keys come from the API Access page of the Pictory dashboard)"
            )
        return self.api_key


def _as_int(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or isinstance(value, float) or not str(value).isdigit():
            raise ValueError("expected a whole number")
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}")
        return number

    return parse


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds")
    number = float(value)
    if not 0 < number <= 3600:
        raise ValueError("must be a number of seconds between 0 and 3600")
    return number


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _as_path(value: Any) -> Path:
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise ValueError("expected a path")
    return Path(value).expanduser()


def _as_key(value: Any) -> Secret:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    key = value.strip()
    if not key.startswith("pictai_") or any(c.isspace() for c in key):
        raise ValueError("Pictory API keys start with 'pictai_' and contain no spaces")
    return Secret(key)


def _as_url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a URL")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an http(s) URL")
    return value.strip().rstrip("/")


def _as_template(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a template string")
    try:
        sample = value.format(**TEMPLATE_FIELDS)
        marked = value.format(**{**TEMPLATE_FIELDS, "id": "\0"})
    except (KeyError, IndexError, ValueError) as exc:
        fields = ", ".join("{" + name + "}" for name in TEMPLATE_FIELDS)
        raise ValueError(f"unknown or broken field ({exc}); use {fields}") from None
    parts = sample.replace("\\", "/").split("/")
    if sample.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError("must be a relative path without empty, '.' or '..' parts")
    if "\0" not in marked:
        raise ValueError("must contain {id} so that every item gets its own folder")
    return value


OPTIONS: dict[str, Callable[[Any], Any]] = {
    "dest": _as_path,
    "api_key": _as_key,
    "api_url": _as_url,
    "concurrency": _as_int(1, 64),
    "queue_size": _as_int(1, 10_000),
    "folder_template": _as_template,
    "timeout": _as_float,
    "retries": _as_int(0, 20),
    "full": _as_bool,
    "quiet": _as_bool,
    "debug": _as_bool,
    "log_file": _as_path,
    "report_file": _as_path,
}


def default_config_path(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pictory-archiver" / "config.toml"


def load_settings(flags: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """Merge file < env < flags into Settings; raise ConfigError naming the bad key."""
    explicit = flags.get("config_file")
    path = Path(explicit).expanduser() if explicit else default_config_path(env)
    values: dict[str, Any] = {}
    warnings: list[str] = []
    if explicit or path.is_file():
        for key, raw in _read_toml(path).items():
            if key not in OPTIONS:
                raise ConfigError(f"{path}: unknown option {key!r}")
            values[key] = _parse(key, raw, f"{path}: {key}")
        if "api_key" in values and _readable_by_others(path):
            warnings.append(f"{path} holds api_key and other users can read it: chmod 600 it")
    for key in OPTIONS:
        env_name = "PICTORY_" + key.upper()
        if env.get(env_name):
            values[key] = _parse(key, env[env_name], env_name)
    for key, raw in flags.items():
        if key in OPTIONS and raw is not None:
            values[key] = _parse(key, raw, "--" + key.replace("_", "-"))
    if "dest" not in values:
        raise ConfigError("no destination: pass --dest DIR (or set dest in the config file)")
    dest: Path = values["dest"]
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"--dest {dest} exists and is not a directory")
    return Settings(
        config_file=path if path.is_file() else None, warnings=tuple(warnings), **values
    )


def _parse(key: str, raw: Any, where: str) -> Any:
    try:
        return OPTIONS[key](raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.__class__.__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False
