"""The real `google-cloud-storage` client: listing objects and reading byte ranges, with retries.

Credentials: Application Default Credentials, read-only scope; anonymous when none are found (public
buckets) and when STORAGE_EMULATOR_HOST points the client at an emulator, which the client honours.
Each thread gets its own client, so downloads in parallel never share one HTTP session.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import google.auth
import structlog
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import storage

from appliance.storage.errors import SourceUnavailable, SyncError
from appliance.storage.retry import RetryPolicy, is_transient, with_retries
from appliance.storage.sources import GcsSource
from appliance.units import MiB

log = structlog.get_logger("aegis.storage")
T = TypeVar("T")

READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
# (connect, read) seconds: a stalled connection fails and is retried instead of hanging the sync.
HTTP_TIMEOUT = (10.0, 60.0)
_LIST_FIELDS = "items(name,generation,size,crc32c,md5Hash,contentEncoding),nextPageToken"
# The client hands over 8 KiB at a time; one write per MiB saves most of the system calls.
_WRITE_SIZE = MiB


@dataclass(frozen=True)
class RemoteObject:
    bucket: str
    name: str
    generation: int
    size: int
    crc32c: str | None
    md5: str | None
    content_encoding: str | None

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


class ShortRead(ConnectionError):
    """The connection ended before the whole range arrived (a transient error: retried)."""


class Cancelled(Exception):
    """Another part of the sync failed: this download stops early."""


class _RangeSink:
    """The file-like object the client streams into: writes at an offset of a shared descriptor.

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


def _unavailable(error: Exception, what: str) -> SourceUnavailable | None:
    """The source-unreachable form of `error`, or None when it is a failure of another kind."""
    reachability = (
        api_exceptions.Unauthorized,
        api_exceptions.Forbidden,
        auth_exceptions.RefreshError,
        auth_exceptions.DefaultCredentialsError,
    )
    if is_transient(error) or isinstance(error, reachability):
        return SourceUnavailable(f"{what}: {type(error).__name__}: {error}")
    return None


class GcsClient:
    def __init__(self, retry: RetryPolicy) -> None:
        self._retry = retry
        self._local = threading.local()
        self._lock = threading.Lock()
        self._credentials: tuple[Credentials, str] | None = None

    def _resolve_credentials(self) -> tuple[Credentials, str]:
        with self._lock:
            if self._credentials is None:
                if os.environ.get("STORAGE_EMULATOR_HOST"):
                    self._credentials = (AnonymousCredentials(), "<none>")
                else:
                    try:
                        credentials, project = google.auth.default(scopes=[READ_ONLY_SCOPE])
                    except auth_exceptions.DefaultCredentialsError:
                        log.info("storage_anonymous", reason="no application default credentials")
                        credentials, project = AnonymousCredentials(), None
                    self._credentials = (credentials, project or "<none>")
            return self._credentials

    def _client(self) -> storage.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            credentials, project = self._resolve_credentials()
            client = storage.Client(project=project, credentials=credentials)
            self._local.client = client
        return client

    def _call(self, call: Callable[[], T], what: str) -> T:
        try:
            return with_retries(call, what, self._retry)
        except Exception as error:
            unavailable = _unavailable(error, what)
            if unavailable is not None:
                raise unavailable from error
            raise

    def list_objects(self, source: GcsSource) -> list[RemoteObject]:
        """The objects `source` names: one object, or every object under a prefix."""
        if source.is_folder:

            def listing() -> list[storage.Blob]:
                blobs = self._client().list_blobs(
                    source.bucket,
                    prefix=source.name or None,
                    fields=_LIST_FIELDS,
                    timeout=HTTP_TIMEOUT,
                    retry=None,
                )
                return list(blobs)

            try:
                blobs = self._call(listing, f"listing {source.uri}")
            except api_exceptions.NotFound:
                raise SyncError(f"bucket {source.bucket!r} does not exist") from None
        else:

            def lookup() -> list[storage.Blob]:
                bucket = self._client().bucket(source.bucket)
                blob = bucket.get_blob(source.name, timeout=HTTP_TIMEOUT, retry=None)
                return [blob] if blob is not None else []

            blobs = self._call(lookup, f"reading metadata of {source.uri}")
            if not blobs:
                raise SyncError(f"object {source.uri} does not exist")
        return [
            RemoteObject(
                bucket=source.bucket,
                name=blob.name,
                generation=int(blob.generation),
                size=int(blob.size or 0),
                crc32c=blob.crc32c,
                md5=blob.md5_hash,
                content_encoding=blob.content_encoding,
            )
            for blob in blobs
        ]

    def download_range(
        self,
        obj: RemoteObject,
        fd: int,
        span: tuple[int, int],
        on_bytes: Callable[[int], None],
        cancel: threading.Event,
    ) -> None:
        """Write bytes [start, end) = `span` of `obj`'s generation into `fd` at the same offsets.

        A retry rewrites the range from its start; `on_bytes` gets a negative count for the bytes
        it takes back, so progress stays true.
        """
        start, end = span

        def attempt() -> None:
            blob = self._client().bucket(obj.bucket).blob(obj.name, generation=obj.generation)
            sink = _RangeSink(fd, start, on_bytes, cancel)
            try:
                # raw_download: the stored bytes, which are what the checksums describe.
                blob.download_to_file(
                    sink,
                    start=start,
                    end=end - 1,
                    raw_download=True,
                    checksum=None,
                    timeout=HTTP_TIMEOUT,
                    retry=None,
                )
                sink.flush()
                if sink.written != end - start:
                    raise ShortRead(f"got {sink.written} of {end - start} bytes")
            except BaseException:
                on_bytes(-sink.written)
                raise

        self._call(attempt, f"downloading {obj.uri} bytes {start}-{end - 1}")
