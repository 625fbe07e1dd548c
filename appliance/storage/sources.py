"""Where a model's artifacts come from: a Cloud Storage object or prefix, or a local path.

Also the rule for object names: only names that map to a path inside the cache folder are accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

# Cloud Storage bucket names: lowercase letters, digits, '-', '_' and '.', 3 to 222 characters.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
# ext4, xfs and most others refuse longer file names.
_MAX_SEGMENT_BYTES = 255


@dataclass(frozen=True)
class LocalSource:
    path: Path


@dataclass(frozen=True)
class GcsSource:
    bucket: str
    name: str  # an object name, or a prefix ending in '/' ('' for the whole bucket)

    @property
    def is_folder(self) -> bool:
        return self.name == "" or self.name.endswith("/")

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


def parse_source(source: str) -> LocalSource | GcsSource:
    """Parse a `model_path`; ValueError says why one cannot be used."""
    if source.startswith("gs://"):
        bucket, slash, name = source[len("gs://") :].partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"{source!r}: {bucket!r} is not a valid bucket name")
        if not slash:
            raise ValueError(f"{source!r}: name an object, or a prefix ending in '/' for a folder")
        if name:
            try:
                relative_path(name.rstrip("/") if name.endswith("/") else name)
            except ValueError as error:
                raise ValueError(f"{source!r}: the object name {error}") from None
        return GcsSource(bucket, name)
    if source.startswith("file://"):
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{source!r}: file:// URLs must name a local path (file:///abs/path)")
        return LocalSource(Path(unquote(parts.path)))
    if "://" in source:
        raise ValueError(f"{source!r}: unsupported scheme (use gs://, file:// or a local path)")
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
