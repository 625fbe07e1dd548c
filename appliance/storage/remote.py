"""What a bucket store (Cloud Storage, S3) gives the sync: list a source, describe an object, read
a byte range into a file. The sync engine (sync.py) plans, schedules, verifies and commits the same
way whatever the store; each store's module turns its client library's errors into SyncError
(for good) or SourceUnavailable (out of reach after retries).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from appliance.storage.checksums import Checksums
from appliance.storage.sources import RemoteSource
from appliance.units import MiB

# The client libraries hand over small chunks; one write per MiB saves most of the system calls.
_WRITE_SIZE = MiB


@dataclass(frozen=True)
class RemoteObject:
    scheme: str
    bucket: str
    name: str
    version: str  # pins every read to these bytes: a GCS generation, an S3 ETag
    size: int
    checksums: Checksums | None  # None: the listing does not carry them, describe() does

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.name}"


class ShortRead(ConnectionError):
    """The connection ended before the whole range arrived (a transient error: retried)."""


class Cancelled(Exception):
    """Another part of the sync failed: this download stops early."""


class ObjectStore(Protocol):
    def list_objects(self, source: RemoteSource) -> list[RemoteObject]:
        """The objects `source` names: one object, or every object under a prefix."""
        ...

    def describe(self, obj: RemoteObject) -> RemoteObject:
        """`obj` with the checksums to verify its download against (no request when known)."""
        ...

    def download_range(
        self,
        obj: RemoteObject,
        fd: int,
        span: tuple[int, int],
        on_bytes: Callable[[int], None],
        cancel: threading.Event,
    ) -> None:
        """Write bytes [start, end) = `span` of `obj`'s version into `fd` at the same offsets.

        A retry rewrites the range from its start; `on_bytes` gets a negative count for the bytes
        it takes back, so progress stays true.
        """
        ...


class RangeSink:
    """Where a range's bytes go: writes at an offset of a shared descriptor, a MiB at a time.

    Call flush() once the download returns."""

    def __init__(
        self, fd: int, offset: int, on_bytes: Callable[[int], None], cancel: threading.Event
    ) -> None:
        self._fd = fd
        self._offset = offset
        self._on_bytes = on_bytes
        self._cancel = cancel
        self._buffer = bytearray()
        self.written = 0

    def write(self, data: bytes) -> int:
        if self._cancel.is_set():
            raise Cancelled()
        self._buffer += data
        if len(self._buffer) >= _WRITE_SIZE:
            self.flush()
        self.written += len(data)
        self._on_bytes(len(data))
        return len(data)

    def flush(self) -> None:
        view = memoryview(self._buffer)
        while view:
            count = os.pwrite(self._fd, view, self._offset)
            self._offset += count
            view = view[count:]
        view.release()
        self._buffer.clear()
