"""Parsing model_path sources, and the rule that keeps object names inside the cache."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.storage.sources import (
    GcsSource,
    LocalSource,
    RemoteSource,
    S3Source,
    parse_source,
    relative_path,
)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("gs://bucket/models/m/1/model.pt2", GcsSource("bucket", "models/m/1/model.pt2")),
        ("gs://my.bucket_1/models/m/1/", GcsSource("my.bucket_1", "models/m/1/")),
        ("gs://bucket/", GcsSource("bucket", "")),
        ("s3://bucket/models/m/1/model.pt2", S3Source("bucket", "models/m/1/model.pt2")),
        ("s3://my.bucket-1/models/m/1/", S3Source("my.bucket-1", "models/m/1/")),
        ("s3://bucket/", S3Source("bucket", "")),
        ("file:///srv/models/m.pt2", LocalSource(Path("/srv/models/m.pt2"))),
        ("file://localhost/srv/a%20b.pt2", LocalSource(Path("/srv/a b.pt2"))),
        ("/srv/models/m.pt2", LocalSource(Path("/srv/models/m.pt2"))),
        ("models/m.pt2", LocalSource(Path("models/m.pt2"))),
    ],
)
def test_sources_parse(source: str, expected: object) -> None:
    assert parse_source(source) == expected


def test_folder_sources_are_the_ones_ending_in_a_slash() -> None:
    assert GcsSource("b", "m/1/").is_folder and GcsSource("b", "").is_folder
    assert not GcsSource("b", "m/1/model.pt2").is_folder
    assert S3Source("b", "m/1/").is_folder and not S3Source("b", "m/1/model.pt2").is_folder


def test_a_source_names_its_store() -> None:
    assert S3Source("b", "m/").uri == "s3://b/m/" and GcsSource("b", "m/").uri == "gs://b/m/"
    assert cast(RemoteSource, S3Source("b", "m/")) != GcsSource("b", "m/")


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("gs://Bucket/m.pt2", "not a valid bucket name"),
        ("gs://bucket", "name an object"),
        ("gs://bucket/a/../m.pt2", "'.' or '..'"),
        ("gs://bucket/a//m.pt2", "'.' or '..'"),
        ("file://otherhost/m.pt2", "local path"),
        ("az://bucket/m.pt2", "unsupported scheme"),
        ("s3://bucket", "name an object"),
        ("s3://bucket/a/../m.pt2", "'.' or '..'"),
        ("s3://Bucket/m.pt2", "not a valid bucket name"),
        ("s3://my_bucket/m.pt2", "not a valid bucket name"),  # '_' is GCS-only
        ("s3://ab/m.pt2", "not a valid bucket name"),
        ("s3://" + "b" * 64 + "/m.pt2", "not a valid bucket name"),
        ("s3://a..b/m.pt2", "not a valid bucket name"),
        ("s3://-bucket/m.pt2", "not a valid bucket name"),
        ("s3://192.168.1.10/m.pt2", "not a valid bucket name"),
    ],
)
def test_bad_sources_say_why(source: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_source(source)
    assert why in str(info.value) and repr(source) in str(info.value)


@pytest.mark.parametrize(
    "name", ["", "/abs", "a/../b", "..", ".", "a//b", "a/", "a\\b", "a\x00b", "a\nb", "x" * 256]
)
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        relative_path(name)


def test_safe_names_keep_their_segments() -> None:
    assert relative_path("a/b c/ünï.pt2") == PurePosixPath("a", "b c", "ünï.pt2")
    assert relative_path("..hidden/x..y") == PurePosixPath("..hidden", "x..y")


@given(st.text(max_size=40))
def test_an_accepted_name_never_leaves_its_folder(name: str) -> None:
    base = Path("/cache/snapshot/data")
    try:
        path = relative_path(name)
    except ValueError:
        return
    joined = os.path.normpath(base / path)
    assert joined.startswith(str(base) + "/")
    assert "\x00" not in joined
