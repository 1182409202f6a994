"""One exception tree for the whole archiver, each class carrying its exit code.

```
ArchiverError            exit 1  base; .message is one printable line (no key, no query strings)
├── ConfigError          exit 2  bad TOML, bad flag, missing key, unusable --dest
├── AuthError            exit 3  the API answered 401
├── LockHeldError        exit 4  another run holds DEST's lock
├── ApiError             exit 1  listing cannot go on: 5xx/timeouts after retries, malformed page
├── ManifestError        exit 1  manifest unreadable, newer schema, integrity check failed
├── StorageError         exit 1  DEST not writable, disk full, vanished
└── ItemError            (none)  never escapes the pipeline; becomes a failed outcome
    ├── InvalidItemError         one API item fails validation
    └── AssetError               one asset
        ├── TransientAssetError  timeout, reset, 5xx, 429, truncated body: retried
        ├── ExpiredUrlError      403/400 from the CDN: the signed URL expired, re-list
        └── PermanentAssetError  404/410, HTML instead of media, size mismatch
```
Interrupts are not ArchiverErrors: the CLI maps them to exit 130.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    PARTIAL = 1
    USAGE = 2
    AUTH = 3
    LOCKED = 4
    INTERRUPTED = 130


class ArchiverError(Exception):
    """Base of every handled failure; `message` is safe to print as one line."""

    exit_code: ExitCode = ExitCode.PARTIAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())


class ConfigError(ArchiverError):
    """The configuration, a flag or DEST cannot be used."""

    exit_code = ExitCode.USAGE


class AuthError(ArchiverError):
    """The API rejected the key (HTTP 401)."""

    exit_code = ExitCode.AUTH


class LockHeldError(ArchiverError):
    """Another run holds the lock on DEST."""

    exit_code = ExitCode.LOCKED


class ApiError(ArchiverError):
    """The listing cannot go on: server errors after retries, or a malformed page."""


class ManifestError(ArchiverError):
    """The manifest cannot be read or written safely."""


class StorageError(ArchiverError):
    """DEST cannot take more data: not writable, full, or gone."""


class ItemError(ArchiverError):
    """One item or asset failed; recorded as an outcome, never run-fatal."""


class InvalidItemError(ItemError):
    """An API item failed validation (no id, no MP4 URL, wrong types)."""


class AssetError(ItemError):
    """One asset could not be fetched."""


class TransientAssetError(AssetError):
    """Worth retrying: timeouts, resets, 5xx, 429, truncated bodies."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ExpiredUrlError(AssetError):
    """The CDN refused a URL that worked when listed: fetch a fresh one."""


class PermanentAssetError(AssetError):
    """Not worth retrying in this run: 404/410, not media, wrong size."""
