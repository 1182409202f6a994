"""The demo: a generated library served by the built-in fake Pictory server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

DEMO_VIDEOS = 120


@contextmanager
def demo_library(videos: int = DEMO_VIDEOS) -> Iterator[tuple[str, str]]:
    """Yield (api_url, api_key) of a running fake server holding `videos` videos."""
    from archiver.fake import DEMO_API_KEY, FakeLibrary, run_in_thread

    library = FakeLibrary(videos, seed=7, video_size=256 * 1024)
    with run_in_thread(library) as server:
        yield server.api_url, DEMO_API_KEY
