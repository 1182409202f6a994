"""`python -m archiver.fake`: serve a fake library by hand, to poke at with curl or the archiver."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from archiver.fake.library import DEMO_API_KEY, FakeLibrary
from archiver.fake.server import FakePictory


async def serve(args: argparse.Namespace) -> None:
    library = FakeLibrary(args.videos, seed=args.seed, video_size=args.video_size)
    server = FakePictory(library, api_key=args.key, page_size=args.page_size)
    server.signed_urls = args.signed
    await server.start(args.host, api_port=args.port, cdn_port=args.cdn_port)
    try:
        print(f"API URL: {server.api_url}")
        print(f"CDN URL: {server.cdn_url}")
        print(f"API key: {args.key}")
        print(f"{len(library.items)} videos; Ctrl-C to stop", flush=True)
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m archiver.fake", description=__doc__)
    parser.add_argument("--videos", type=int, default=250, help="library size (default 250)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="API port (default: any free port)")
    parser.add_argument("--cdn-port", type=int, default=0, help="CDN port (default: any)")
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--video-size", type=int, default=64 * 1024, help="bytes per MP4")
    parser.add_argument("--key", default=DEMO_API_KEY, help="API key the fake accepts")
    parser.add_argument("--signed", action="store_true", help="serve signed CDN URLs")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
