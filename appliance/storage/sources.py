"""Where a model's artifacts come from: a Cloud Storage or S3 object or prefix, or a local path.

Also the rule for object names: only names that map to a path inside the cache folder are accepted.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar
from urllib.parse import unquote, urlsplit

# Cloud Storage bucket names: lowercase letters, digits, '-', '_' and '.', 3 to 222 characters.
_GCS_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
# S3 bucket names: lowercase letters, digits, '-' and '.', 3 to 63 characters, no '..', not an
# IPv4 address.
_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# ext4, xfs and most others refuse longer file names.
_MAX_SEGMENT_BYTES = 255


@dataclass(frozen=True)
class LocalSource:
    path: Path


@dataclass(frozen=True)
class RemoteSource:
    """An object, or a prefix ending in '/' ('' for the whole bucket), in a bucket store."""

    bucket: str
    name: str
    scheme: ClassVar[str]

    @property
    def is_folder(self) -> bool:
        return self.name == "" or self.name.endswith("/")

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.name}"


@dataclass(frozen=True)
class GcsSource(RemoteSource):
    scheme: ClassVar[str] = "gs"


@dataclass(frozen=True)
class S3Source(RemoteSource):
    scheme: ClassVar[str] = "s3"


def _valid_gcs_bucket(bucket: str) -> bool:
    return _GCS_BUCKET.fullmatch(bucket) is not None


def _valid_s3_bucket(bucket: str) -> bool:
    if not _S3_BUCKET.fullmatch(bucket) or ".." in bucket:
        return False
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        return True
    return False


_REMOTE = {"gs": (GcsSource, _valid_gcs_bucket), "s3": (S3Source, _valid_s3_bucket)}


def parse_source(source: str) -> LocalSource | RemoteSource:
    """Parse a `model_path`; ValueError says why one cannot be used."""
    scheme, separator, rest = source.partition("://")
    if separator and scheme in _REMOTE:
        kind, valid_bucket = _REMOTE[scheme]
        bucket, slash, name = rest.partition("/")
        if not valid_bucket(bucket):
            raise ValueError(f"{source!r}: {bucket!r} is not a valid bucket name")
        if not slash:
            raise ValueError(f"{source!r}: name an object, or a prefix ending in '/' for a folder")
        if name:
            try:
                relative_path(name.rstrip("/") if name.endswith("/") else name)
            except ValueError as error:
                raise ValueError(f"{source!r}: the object name {error}") from None
        return kind(bucket, name)
    if source.startswith("file://"):
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{source!r}: file:// URLs must name a local path (file:///abs/path)")
        return LocalSource(Path(unquote(parts.path)))
    if "://" in source:
        raise ValueError(
            f"{source!r}: unsupported scheme (use gs://, s3://, file:// or a local path)"
        )
    return LocalSource(Path(source))


def relative_path(name: str) -> PurePosixPath:
    """`name` as a relative path that stays inside the folder it is joined to.

    ValueError completes the sentence "the name ...".

    Refused: empty names and segments, '.' and '..', absolute paths, backslashes (a separator
    elsewhere), control characters (NUL included) and segments longer than a file name may be.
    """
    if not name:
        raise ValueError("is empty")
    if name.startswith("/"):
        raise ValueError("is an absolute path")
    if "\\" in name:
        raise ValueError("contains a backslash")
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise ValueError("contains a control character")
    segments = name.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise ValueError("has an empty, '.' or '..' path segment")
        if len(segment.encode()) > _MAX_SEGMENT_BYTES:
            raise ValueError("has a path segment longer than 255 bytes")
    return PurePosixPath(*segments)
