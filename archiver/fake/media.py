"""Real, valid, tiny media files made from a seed: what the fake CDN serves.

Each file passes the magic-byte and structure checks a downloader may apply; bulk bytes come
from `random.Random(seed).randbytes`, which is fast enough for 50 MB videos.
"""

from __future__ import annotations

import random
import struct
import zlib

# A 16x16 baseline JPEG made by libjpeg's cjpeg (SOI, APP0/JFIF, DQT, SOF0, DHT, SOS, EOI).
TINY_JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb004300100b0c0e0c0a100e0d0e1211101318281a1816"
    "16183123251d283a333d3c3933383740485c4e404457453738506d51575f626768673e4d71797064785c6567"
    "63ffdb0043011112121815182f1a1a2f63423842636363636363636363636363636363636363636363636363"
    "6363636363636363636363636363636363636363636363636363ffc00011080010001003012200021101031101"
    "ffc4001500010100000000000000000000000000000506ffc40017100100030000000000000000000000000004"
    "002131ffc4001501010100000000000000000000000000000002ffc400191100020301000000000000000000"
    "000000000403052131ffda000c03010002110311003f009f3872a2670e544ce1ca899c3952a56c57bdcd3fffd9"
)
_JFIF_END = 4 + 16  # SOI + the APP0 segment: comments go after it so the file stays JFIF
_MAX_COM = 65533


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def make_png(seed: int, width: int = 64, height: int = 36) -> bytes:
    """A real RGB PNG: a gradient tinted by `seed` (IHDR, IDAT, IEND, correct CRCs)."""
    rng = random.Random(seed)
    r0, g0, b0 = rng.randrange(256), rng.randrange(256), rng.randrange(256)
    reds = bytes((r0 + x * 255 // width) & 0xFF for x in range(width))
    blues = bytes((b0,)) * width
    rows = []
    for y in range(height):
        row = bytearray(3 * width)
        row[0::3] = reds
        row[1::3] = bytes(((g0 + y * 255 // height) & 0xFF,)) * width
        row[2::3] = blues
        rows.append(b"\x00" + row)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", _stored_zlib(b"".join(rows)))
        + _chunk(b"IEND", b"")
    )


def _stored_zlib(data: bytes) -> bytes:
    """A zlib stream of uncompressed blocks: valid for any inflater, and no deflate set-up cost."""
    blocks = [b"\x78\x01"]
    for pos in range(0, max(len(data), 1), 0xFFFF):
        block = data[pos : pos + 0xFFFF]
        final = pos + 0xFFFF >= len(data)
        blocks.append(struct.pack("<BHH", final, len(block), len(block) ^ 0xFFFF) + block)
    blocks.append(struct.pack(">I", zlib.adler32(data)))
    return b"".join(blocks)


def make_jpeg(seed: int, size: int = 4096) -> bytes:
    """A real baseline JPEG of exactly `size` bytes (at least ~340): COM segments carry the bulk."""
    remaining = max(size - len(TINY_JPEG), 12)
    payload = random.Random(seed).randbytes(remaining)
    segments = []
    pos = 0
    while remaining:
        take = min(remaining, 4 + _MAX_COM)
        if 0 < remaining - take < 4:
            take -= 4
        body = payload[pos : pos + take - 4]
        segments.append(b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body)
        pos += take - 4
        remaining -= take
    return TINY_JPEG[:_JFIF_END] + b"".join(segments) + TINY_JPEG[_JFIF_END:]


def make_mp4(seed: int, size: int = 64 * 1024) -> bytes:
    """ISO BMFF of exactly `size` bytes: `ftyp` (isom), `free`, then `mdat` of seed bytes."""
    ftyp = _box(b"ftyp", b"isom" + struct.pack(">I", 0x200) + b"isomiso2avc1mp41")
    free = _box(b"free", struct.pack(">Q", seed & 0xFFFFFFFFFFFFFFFF))
    mdat_payload = size - len(ftyp) - len(free) - 8
    if mdat_payload < 0 or size >= 2**32:
        raise ValueError(f"MP4 size out of range: {size}")
    return ftyp + free + _box(b"mdat", random.Random(seed).randbytes(mdat_payload))


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body
