"""parse_item: documented items parse, assets get stable names, anything else is refused."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from archiver.errors import InvalidItemError
from archiver.models import IMAGE, MAX_ID_LENGTH, VIDEO, Asset, describe_id, parse_item, strip_query

CDN = "https://d1.cloudfront.net/videos/user/u-1"


def documented_item() -> dict[str, Any]:
    """The example item of the API page, with every optional field present."""
    return {
        "url": f"{CDN}/v-1.mp4",
        "id": "20260409185104635ec00b33280fc451f",
        "prompt": "A woman sitting on the grass as children run and play around her",
        "aspectRatio": "9:16",
        "createdDate": "2026-04-09T18:51:47.967Z",
        "model": "pixverse5.5",
        "width": 720,
        "height": 1280,
        "duration": "8s",
        "previewImageUrl": f"{CDN}/v-1_preview.jpg",
        "thumbnailImageUrl": f"{CDN}/v-1_thumbnail.jpg",
        "lastFrameImageUrl": f"{CDN}/v-1_last_frame.png",
        "firstFrameImageUrl": f"{CDN}/v-1_first_frame.png",
        "referenceImageUrls": [
            f"{CDN}/v-0_last_frame.png",
            "https://d1.cloudfront.net/images/user/u-1/i-1.png",
        ],
        "extendVideoUrl": f"{CDN}/v-0.mp4",
    }


def minimal_item() -> dict[str, Any]:
    item = documented_item()
    for key in ("firstFrameImageUrl", "referenceImageUrls", "extendVideoUrl"):
        del item[key]
    return item


def invalid(raw: Any) -> str:
    with pytest.raises(InvalidItemError) as info:
        parse_item(raw)
    return info.value.message


def test_documented_item_parses_with_all_assets() -> None:
    raw = documented_item()
    item = parse_item(raw)
    assert item.kind is VIDEO
    assert item.id == raw["id"]
    assert item.created == datetime(2026, 4, 9, 18, 51, 47, 967000, tzinfo=UTC)
    assert item.created_iso == "2026-04-09T18:51:47.967Z"
    assert [(a.role, a.filename, a.url) for a in item.assets] == [
        ("video", "video.mp4", raw["url"]),
        ("preview", "preview.jpg", raw["previewImageUrl"]),
        ("thumbnail", "thumbnail.jpg", raw["thumbnailImageUrl"]),
        ("last_frame", "last_frame.png", raw["lastFrameImageUrl"]),
        ("first_frame", "first_frame.png", raw["firstFrameImageUrl"]),
        ("reference_1", "reference_1.png", raw["referenceImageUrls"][0]),
        ("reference_2", "reference_2.png", raw["referenceImageUrls"][1]),
    ]
    assert [a.media for a in item.assets] == ["mp4"] + ["jpeg"] * 2 + ["png"] * 4


def test_minimal_item_has_the_four_required_assets() -> None:
    item = parse_item(minimal_item())
    assert [a.filename for a in item.assets] == [
        "video.mp4",
        "preview.jpg",
        "thumbnail.jpg",
        "last_frame.png",
    ]


def test_raw_is_kept_verbatim() -> None:
    raw = documented_item()
    raw["futureField"] = {"nested": [1, "two", None]}
    raw["width"] = "720"  # numbers as strings are not our business
    snapshot = copy.deepcopy(raw)
    item = parse_item(raw)
    assert item.raw == snapshot
    assert raw == snapshot  # parsing does not mutate its input


def test_optional_fields_present_but_null_are_fine() -> None:
    raw = minimal_item()
    raw.update(firstFrameImageUrl=None, referenceImageUrls=None, extendVideoUrl=None, prompt=None)
    item = parse_item(raw)
    assert len(item.assets) == 4


def test_empty_reference_list_gives_no_reference_assets() -> None:
    raw = minimal_item()
    raw["referenceImageUrls"] = []
    assert [a.role for a in parse_item(raw).assets if a.role.startswith("reference")] == []


@pytest.mark.parametrize(
    ("url", "filename"),
    [
        (f"{CDN}/ref.jpeg", "reference_1.jpeg"),
        (f"{CDN}/ref.JPG", "reference_1.jpg"),
        (f"{CDN}/ref.webp?Signature=abc.def&Expires=1", "reference_1.webp"),
        (f"{CDN}/ref", "reference_1.png"),
        (f"{CDN}/ref.", "reference_1.png"),
        (f"{CDN}/ref.toolongext", "reference_1.png"),
        (f"{CDN}/ref.p%2Fng", "reference_1.png"),
        (f"{CDN}/x%2F..", "reference_1.png"),
        (f"{CDN}/ref.%2E%2E%2Fetc", "reference_1.png"),
        (f"{CDN}/ref.p%00g", "reference_1.png"),
        (f"{CDN}/ref.pn g", "reference_1.png"),
        (f"{CDN}/archive.tar.gz", "reference_1.gz"),
        ("https://d1.cloudfront.net/", "reference_1.png"),
        ("https://d1.cloudfront.net/a.b/c", "reference_1.png"),
    ],
)
def test_extension_comes_from_the_url_path_or_default(url: str, filename: str) -> None:
    raw = minimal_item()
    raw["referenceImageUrls"] = [url]
    (reference,) = [a for a in parse_item(raw).assets if a.role == "reference_1"]
    assert reference.filename == filename
    assert reference.url == url


def test_video_extension_from_url() -> None:
    raw = minimal_item()
    raw["url"] = f"{CDN}/v-1.MOV"
    video = parse_item(raw).assets[0]
    assert video.filename == "video.mov"
    assert video.media == "mp4"


def test_unknown_extension_has_no_media_family() -> None:
    assert Asset("video", f"{CDN}/x.bin", "video.bin").media is None


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r.pop("id"), "id is missing"),
        (lambda r: r.update(id=12345), "12345"),
        (lambda r: r.update(id=""), "id is missing"),
        (lambda r: r.update(id="   "), "id is missing"),
        (lambda r: r.update(id=None), "None"),
        (lambda r: r.update(id="x" * (MAX_ID_LENGTH + 1)), f"{MAX_ID_LENGTH + 1} characters"),
        (lambda r: r.pop("url"), "url is missing"),
        (lambda r: r.update(url=None), "url is missing"),
        (lambda r: r.pop("lastFrameImageUrl"), "lastFrameImageUrl is missing"),
        (lambda r: r.update(url="file:///etc/passwd"), "url is not an http(s) URL"),
        (lambda r: r.update(url="ftp://cdn.example.com/v.mp4"), "url is not an http(s) URL"),
        (lambda r: r.update(url="javascript:alert(1)"), "url is not an http(s) URL"),
        (lambda r: r.update(url="https:///no-host.mp4"), "url is not an http(s) URL"),
        (lambda r: r.update(url="/relative/v.mp4"), "url is not an http(s) URL"),
        (lambda r: r.update(url=["https://a/b.mp4"]), "url is not a string"),
        (lambda r: r.update(previewImageUrl=42), "previewImageUrl is not a string"),
        (lambda r: r.update(referenceImageUrls=f"{CDN}/r.png"), "referenceImageUrls is not a list"),
        (lambda r: r.update(referenceImageUrls={"a": 1}), "referenceImageUrls is not a list"),
        (lambda r: r.update(referenceImageUrls=[f"{CDN}/r.png", 7]), "referenceImageUrls"),
        (lambda r: r.update(referenceImageUrls=["ftp://x/r.png"]), "not an http(s) URL"),
        (lambda r: r.pop("createdDate"), "createdDate is missing"),
        (lambda r: r.update(createdDate=1712688707), "createdDate is missing or not a string"),
        (lambda r: r.update(createdDate="yesterday"), "not an ISO 8601 date: 'yesterday'"),
        (lambda r: r.update(createdDate="2026-13-40T00:00:00Z"), "not an ISO 8601 date"),
        (lambda r: r.update(createdDate=""), "not an ISO 8601 date"),
    ],
)
def test_invalid_items_are_refused_with_a_clear_message(mutate: Any, expected: str) -> None:
    raw = documented_item()
    mutate(raw)
    assert expected in invalid(raw)


@pytest.mark.parametrize("raw", [None, "item", 42, ["id", "x"]])
def test_non_dict_item_is_refused(raw: Any) -> None:
    assert f"item is a {type(raw).__name__}, not an object" == invalid(raw)


def test_invalid_url_message_drops_the_query_string() -> None:
    raw = documented_item()
    raw["url"] = "ftp://cdn.example.com/v.mp4?Signature=SECRET123"
    message = invalid(raw)
    assert "ftp://cdn.example.com/v.mp4" in message
    assert "SECRET123" not in message


def test_id_of_max_length_is_accepted() -> None:
    raw = minimal_item()
    raw["id"] = "x" * MAX_ID_LENGTH
    assert parse_item(raw).id == raw["id"]


def test_hostile_id_strings_are_accepted_here_and_made_safe_by_layout() -> None:
    for hostile in ("../../etc", "/abs", "a\\b", "nul\x00byte", "東京🎬"):
        raw = minimal_item()
        raw["id"] = hostile
        assert parse_item(raw).id == hostile


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-04-09T18:51:47.967Z", datetime(2026, 4, 9, 18, 51, 47, 967000, tzinfo=UTC)),
        ("2026-04-09T20:51:47.967+02:00", datetime(2026, 4, 9, 18, 51, 47, 967000, tzinfo=UTC)),
        ("2026-04-09T13:51:47-05:00", datetime(2026, 4, 9, 18, 51, 47, tzinfo=UTC)),
        ("2026-04-09T18:51:47", datetime(2026, 4, 9, 18, 51, 47, tzinfo=UTC)),
        ("2026-04-10T00:30:00+05:30", datetime(2026, 4, 9, 19, 0, 0, tzinfo=UTC)),
    ],
)
def test_created_date_is_normalised_to_utc(value: str, expected: datetime) -> None:
    raw = minimal_item()
    raw["createdDate"] = value
    created = parse_item(raw).created
    assert created == expected
    assert created.utcoffset() == timedelta(0)


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_out_of_range_created_date_is_an_invalid_item(value: str) -> None:
    raw = minimal_item()
    raw["createdDate"] = value
    assert "createdDate" in invalid(raw)


def test_strip_query_drops_query_and_fragment() -> None:
    assert (
        strip_query("https://d1.cloudfront.net/v/x.mp4?Expires=1&Signature=abc#frag")
        == "https://d1.cloudfront.net/v/x.mp4"
    )
    assert strip_query("http://h:8080/a/b") == "http://h:8080/a/b"
    assert strip_query("/path/only?sig=1") == "/path/only"


def test_describe_id_is_bounded_and_printable() -> None:
    assert describe_id({"id": "abc"}) == "abc"
    assert describe_id({"id": 7}) == "7"
    assert describe_id({}) == "None"
    assert describe_id("not a dict") == "None"
    shown = describe_id({"id": "line\nbreak\x00" + "y" * 200})
    assert len(shown) == 60
    assert "\n" not in shown and "\x00" not in shown
    assert shown.startswith("line\\nbreak\\x00")


def test_image_kind_parses_an_image_item() -> None:
    raw = {
        "url": "https://d1.cloudfront.net/images/user/u-1/6f1c.webp",
        "id": "6f1c2b4e-8a7d-4c1e-9b3a-0d2e5f6a7b8c",
        "prompt": "a cat",
        "aspectRatio": "1:1",
        "createdDate": "2026-04-09T18:51:47.967Z",
        "model": "flux",
        "width": 1024,
        "height": 1024,
        "style": None,
        "referenceImageUrl": "https://d1.cloudfront.net/images/user/u-1/ref",
    }
    item = parse_item(raw, IMAGE)
    assert item.kind is IMAGE
    assert item.id == raw["id"]
    assert [(a.role, a.filename) for a in item.assets] == [
        ("image", "image.webp"),
        ("reference", "reference.png"),
    ]
    del raw["referenceImageUrl"]
    assert [a.role for a in parse_item(raw, IMAGE).assets] == ["image"]
    with pytest.raises(InvalidItemError, match="url is missing"):
        parse_item({**raw, "url": None}, IMAGE)
