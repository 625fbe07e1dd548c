"""Checksums as Cloud Storage reports them: base64 of the big-endian CRC32C, base64 of the MD5."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Protocol

import google_crc32c

from appliance.units import MiB

_READ_SIZE = 8 * MiB


class _Digest(Protocol):
    """What google_crc32c.Checksum and hashlib's md5 both offer."""

    def update(self, data: bytes, /) -> object: ...

    def digest(self) -> bytes: ...


def file_mismatch(path: Path, crc32c: str | None, md5: str | None) -> str | None:
    """Why the file at `path` does not match the expected checksums, or None when it does.

    CRC32C is preferred (every object has one, composite objects have no MD5); MD5 is the fallback.
    """
    digest: _Digest
    if crc32c:
        digest = google_crc32c.Checksum()
        kind, expected = "crc32c", crc32c
    elif md5:
        digest = hashlib.md5(usedforsecurity=False)
        kind, expected = "md5", md5
    else:
        return "the source reports neither a crc32c nor an md5 checksum to verify against"
    with open(path, "rb", buffering=0) as stream:
        while chunk := stream.read(_READ_SIZE):
            digest.update(chunk)
    actual = base64.b64encode(digest.digest()).decode()
    if actual != expected:
        return f"{kind} mismatch: the source says {expected}, the downloaded bytes give {actual}"
    return None
