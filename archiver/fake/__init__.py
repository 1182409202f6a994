"""A deterministic fake Pictory API + CDN over loopback sockets, for tests, demo and benchmarks."""

from archiver.fake.cdn import CdnFault
from archiver.fake.library import DEMO_API_KEY, FakeAsset, FakeLibrary
from archiver.fake.server import FakePictory, RequestRecord, run_in_thread

__all__ = [
    "DEMO_API_KEY",
    "CdnFault",
    "FakeAsset",
    "FakeLibrary",
    "FakePictory",
    "RequestRecord",
    "run_in_thread",
]
