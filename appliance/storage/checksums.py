"""Checking a downloaded file against the checksums its store reports.

Every checksum is the base64 of the big-endian digest, as both Cloud Storage (crc32c, md5Hash) and
S3 (x-amz-checksum-*, and the ETag of a single-part object, converted from hex) report them.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import google_crc32c

from appliance.units import MiB

_READ_SIZE = 8 * MiB

# (kind, base64 digest) pairs, sorted by kind.
Checksums = tuple[tuple[str, str], ...]


class _Digest(Protocol):
    def update(self, data: bytes, /) -> object: ...

    def digest(self) -> bytes: ...


class _Crc32:
    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


def _md5() -> _Digest:
    return hashlib.md5(usedforsecurity=False)


# The first one an object has is checked: the CRCs are the cheapest to compute, md5 is the fallback.
PREFERENCE = ("crc32c", "crc32", "sha256", "sha1", "md5")
_MAKERS: dict[str, Callable[[], _Digest]] = {
    "crc32c": google_crc32c.Checksum,
    "crc32": _Crc32,
    "sha256": hashlib.sha256,
    "sha1": hashlib.sha1,
    "md5": _md5,
}


def checksums(**values: str | None) -> Checksums:
    """The known checksums among `values` (kind=base64 digest or None)."""
    return tuple(sorted((kind, value) for kind, value in values.items() if value))


def file_mismatch(path: Path, expected: Checksums) -> str | None:
    """Why the file at `path` does not match the first checksum of PREFERENCE it has, or None.

    With no checksum it can check, the file passes (its size is checked by the caller).
    """
    known = dict(expected)
    kind = next((k for k in PREFERENCE if k in known), None)
    if kind is None:
        return None
    digest = _MAKERS[kind]()
    with open(path, "rb", buffering=0) as stream:
        while chunk := stream.read(_READ_SIZE):
            digest.update(chunk)
    actual = base64.b64encode(digest.digest()).decode()
    if actual != known[kind]:
        return f"{kind} mismatch: the source says {known[kind]}, the downloaded bytes give {actual}"
    return None


def can_verify(expected: Checksums) -> bool:
    return any(kind in PREFERENCE for kind, _ in expected)
