"""Cloud Storage (gs://) through the real `google-cloud-storage` client: the ObjectStore for gs://.

Credentials: Application Default Credentials, read-only scope; anonymous when none are found (public
buckets) and when STORAGE_EMULATOR_HOST points the client at an emulator, which the client honours.
Each thread gets its own client, so downloads in parallel never share one HTTP session.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

import google.auth
import requests
import structlog
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import storage

from appliance.storage.checksums import checksums
from appliance.storage.errors import SyncError
from appliance.storage.remote import RangeSink, RemoteObject, ShortRead
from appliance.storage.retry import TRANSIENT_STATUS, RetryPolicy, call_store
from appliance.storage.sources import RemoteSource

T = TypeVar("T")

log = structlog.get_logger("aegis.storage")

READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
# (connect, read) seconds: a stalled connection fails and is retried instead of hanging the sync.
HTTP_TIMEOUT = (10.0, 60.0)
_LIST_FIELDS = "items(name,generation,size,crc32c,md5Hash,contentEncoding),nextPageToken"


_TRANSIENT_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    auth_exceptions.TransportError,
    ConnectionError,
    TimeoutError,
)


def is_transient(error: BaseException) -> bool:
    if isinstance(error, api_exceptions.GoogleAPICallError):
        return error.code in TRANSIENT_STATUS
    return isinstance(error, _TRANSIENT_ERRORS)


def _refused(error: BaseException) -> str | None:
    """Credentials refused or missing: the bucket is out of reach, as for a network failure."""
    refusals = (
        api_exceptions.Unauthorized,
        api_exceptions.Forbidden,
        auth_exceptions.RefreshError,
        auth_exceptions.DefaultCredentialsError,
    )
    if isinstance(error, refusals):
        return f"{type(error).__name__}: {error}"
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
        """The call with retries; any other API error becomes a SyncError naming `what`."""
        try:
            return call_store(call, what, self._retry, is_transient, _refused)
        except api_exceptions.GoogleAPICallError as error:
            raise SyncError(f"{what}: {type(error).__name__}: {error}") from None

    def list_objects(self, source: RemoteSource) -> list[RemoteObject]:
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

            def listing_or_missing() -> list[storage.Blob]:
                try:
                    return listing()
                except api_exceptions.NotFound:
                    raise SyncError(f"bucket {source.bucket!r} does not exist") from None

            blobs = self._call(listing_or_missing, f"listing {source.uri}")
        else:

            def lookup() -> list[storage.Blob]:
                bucket = self._client().bucket(source.bucket)
                blob = bucket.get_blob(source.name, timeout=HTTP_TIMEOUT, retry=None)
                return [blob] if blob is not None else []

            blobs = self._call(lookup, f"reading metadata of {source.uri}")
            if not blobs:
                raise SyncError(f"object {source.uri} does not exist")
        for blob in blobs:
            if blob.content_encoding == "gzip":
                raise SyncError(
                    f"gs://{source.bucket}/{blob.name} is stored gzip-encoded; upload artifacts "
                    "without Content-Encoding"
                )
        return [
            RemoteObject(
                scheme="gs",
                bucket=source.bucket,
                name=blob.name,
                version=str(blob.generation),
                size=int(blob.size or 0),
                checksums=checksums(crc32c=blob.crc32c, md5=blob.md5_hash),
            )
            for blob in blobs
        ]

    def describe(self, obj: RemoteObject) -> RemoteObject:
        return obj  # the listing carries the checksums

    def download_range(
        self,
        obj: RemoteObject,
        fd: int,
        span: tuple[int, int],
        on_bytes: Callable[[int], None],
        cancel: threading.Event,
    ) -> None:
        start, end = span

        def attempt() -> None:
            generation = int(obj.version)
            blob = self._client().bucket(obj.bucket).blob(obj.name, generation=generation)
            sink = RangeSink(fd, start, on_bytes, cancel)
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
