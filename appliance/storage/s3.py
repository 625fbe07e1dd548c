"""S3 and S3-compatible stores (s3://) through the real `boto3` client: the ObjectStore for s3://.

Credentials: the standard AWS chain (environment, shared config and credentials files, web
identity, container and instance metadata); anonymous when it finds none (public buckets).
AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) points the client at an S3-compatible store; AWS_REGION,
else AWS_DEFAULT_REGION or the config file, names the region. Error messages name the bucket and
the key, never a credential.

What is verified: the size always; then the first of the object's full-object checksums (CRC32C,
CRC32, SHA-256, SHA-1; asked for with ChecksumMode=ENABLED) or, for a single-part object that is not
KMS- or customer-key-encrypted, its ETag, which is then the MD5 of the bytes. A multipart object
uploaded without a full-object checksum has neither: only its size can be checked.

Every read names the listed ETag (If-Match), so an object replaced during a sync fails that sync
instead of mixing two versions. One client serves every thread (boto3 clients are thread-safe); its
connection pool holds `download_concurrency` connections.
"""

from __future__ import annotations

import base64
import os
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
import botocore.exceptions as boto_exceptions
import structlog
from botocore import UNSIGNED
from botocore.config import Config

from appliance.storage.checksums import Checksums, checksums
from appliance.storage.errors import SyncError
from appliance.storage.remote import RangeSink, RemoteObject, ShortRead
from appliance.storage.retry import TRANSIENT_STATUS, RetryPolicy, call_store
from appliance.storage.sources import RemoteSource
from appliance.units import MiB

log = structlog.get_logger("aegis.storage")

T = TypeVar("T")

# Seconds: a stalled connection fails and is retried instead of hanging the sync.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
_CHUNK = MiB
_MD5_ETAG = re.compile(r"[0-9a-f]{32}")
# (ChecksumX response field, our kind); CRC64NVME has no implementation here, so it is not used.
_CHECKSUM_FIELDS = (
    ("ChecksumCRC32C", "crc32c"),
    ("ChecksumCRC32", "crc32"),
    ("ChecksumSHA256", "sha256"),
    ("ChecksumSHA1", "sha1"),
)
_TRANSIENT_CODES = frozenset(
    {"RequestTimeout", "SlowDown", "InternalError", "ServiceUnavailable", "Throttling"}
)
_REFUSED_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)
_CREDENTIAL_ERRORS = (
    boto_exceptions.NoCredentialsError,
    boto_exceptions.PartialCredentialsError,
    boto_exceptions.CredentialRetrievalError,
    boto_exceptions.TokenRetrievalError,
)
_TRANSIENT_ERRORS = (
    boto_exceptions.ConnectionError,  # also endpoint, connect-timeout, proxy and TLS failures
    boto_exceptions.HTTPClientError,  # read timeouts, closed connections, broken streams
    boto_exceptions.IncompleteReadError,
    ConnectionError,
    TimeoutError,
)


def _code(error: boto_exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: boto_exceptions.ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_transient(error: BaseException) -> bool:
    if isinstance(error, boto_exceptions.ClientError):
        return _status(error) in TRANSIENT_STATUS or _code(error) in _TRANSIENT_CODES
    return isinstance(error, _TRANSIENT_ERRORS)


def _refused(error: BaseException) -> str | None:
    """Credentials missing or refused, or no permission: out of reach, as for a network failure."""
    if isinstance(error, _CREDENTIAL_ERRORS):
        return f"AWS credentials: {type(error).__name__}: {error}"
    if isinstance(error, boto_exceptions.ClientError):
        code, status = _code(error), _status(error)
        if code in _REFUSED_CODES or status in (401, 403):
            # A HEAD answer has no body, so 403 comes without a code; it is also what a missing
            # key answers when the credentials may not list the bucket.
            detail = error.response.get("Error", {}).get("Message") or "Forbidden"
            return (
                f"access refused ({code if code and not code.isdigit() else status}: {detail}); "
                "check the AWS credentials and that they may read this bucket"
            )
    return None


def _expected(head: dict[str, Any]) -> Checksums:
    """The checksums a HEAD answer lets us verify against, as (kind, base64) pairs."""
    etag = str(head.get("ETag", "")).strip('"')
    multipart = "-" in etag
    kind = head.get("ChecksumType")  # FULL_OBJECT or COMPOSITE; older stores do not say
    found: dict[str, str | None] = {}
    if kind == "FULL_OBJECT" or (kind is None and not multipart):
        for field, name in _CHECKSUM_FIELDS:
            value = head.get(field)
            if value and "-" not in value:  # a composite checksum ends in -<parts>
                found[name] = value
    # The ETag of a KMS- or customer-key-encrypted object is not the MD5 of its bytes.
    encrypted = head.get("ServerSideEncryption") in ("aws:kms", "aws:kms:dsse") or bool(
        head.get("SSECustomerAlgorithm")
    )
    if _MD5_ETAG.fullmatch(etag) and not encrypted:
        found["md5"] = base64.b64encode(bytes.fromhex(etag)).decode()
    return checksums(**found)


class S3Client:
    def __init__(self, retry: RetryPolicy, concurrency: int) -> None:
        self._retry = retry
        self._concurrency = concurrency
        self._lock = threading.Lock()
        self._client: Any = None

    def _s3(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        session = boto3.session.Session()
        settings: dict[str, Any] = {
            # One attempt per call: RetryPolicy bounds the retries of the whole operation.
            "retries": {"total_max_attempts": 1, "mode": "standard"},
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": READ_TIMEOUT_S,
            "max_pool_connections": max(10, self._concurrency),
            # Ranged reads carry no whole-object checksum; the whole file is verified here.
            "response_checksum_validation": "when_required",
        }
        if session.get_credentials() is None:
            log.info("storage_anonymous", store="s3", reason="no AWS credentials found")
            settings["signature_version"] = UNSIGNED
        # botocore itself reads AWS_DEFAULT_REGION only; AWS_REGION is the newer SDKs' name.
        region = os.environ.get("AWS_REGION") or session.region_name
        return session.client("s3", region_name=region, config=Config(**settings))

    def _call(
        self, call: Callable[[], T], what: str, missing: Callable[[str], str] | None = None
    ) -> T:
        """The call with retries. `missing(code)` words a 404; other API errors become
        SyncError naming `what`."""
        try:
            return call_store(call, what, self._retry, is_transient, _refused)
        except boto_exceptions.ClientError as error:
            code = _code(error)
            if missing is not None and _status(error) == 404:
                raise SyncError(missing(code)) from None
            if code == "PreconditionFailed" or _status(error) == 412:  # If-Match: a new ETag
                raise SyncError(f"{what}: the object changed during the sync; sync again") from None
            raise SyncError(f"{what}: {code or _status(error)}: {error}") from None
        except boto_exceptions.BotoCoreError as error:
            raise SyncError(f"{what}: {type(error).__name__}: {error}") from None

    def _head(self, bucket: str, key: str, etag: str | None = None) -> dict[str, Any]:
        extra = {"IfMatch": f'"{etag}"'} if etag else {}
        head: dict[str, Any] = self._s3().head_object(
            Bucket=bucket, Key=key, ChecksumMode="ENABLED", **extra
        )
        return head

    def list_objects(self, source: RemoteSource) -> list[RemoteObject]:
        def no_bucket(code: str) -> str:
            return f"bucket {source.bucket!r} does not exist"

        if not source.is_folder:

            def no_object(code: str) -> str:
                if code == "NoSuchBucket":
                    return no_bucket(code)
                return f"object {source.uri} does not exist"

            head = self._call(
                lambda: self._head(source.bucket, source.name),
                f"reading metadata of {source.uri}",
                no_object,
            )
            etag, size = str(head["ETag"]).strip('"'), int(head["ContentLength"])
            return [RemoteObject("s3", source.bucket, source.name, etag, size, _expected(head))]

        def listing() -> list[dict[str, Any]]:
            pages = (
                self._s3()
                .get_paginator("list_objects_v2")
                .paginate(Bucket=source.bucket, Prefix=source.name)
            )
            return [item for page in pages for item in page.get("Contents", [])]

        items = self._call(listing, f"listing {source.uri}", no_bucket)
        # A listing has the ETag and size; the checksums come from describe(), for what is fetched.
        return [
            RemoteObject(
                "s3", source.bucket, item["Key"], str(item["ETag"]).strip('"'), item["Size"], None
            )
            for item in items
        ]

    def describe(self, obj: RemoteObject) -> RemoteObject:
        if obj.checksums is not None:
            return obj
        what = f"reading metadata of {obj.uri}"

        def gone(code: str) -> str:
            return f"{obj.uri} was deleted during the sync; sync again"

        head = self._call(lambda: self._head(obj.bucket, obj.name, obj.version), what, gone)
        return RemoteObject(
            obj.scheme, obj.bucket, obj.name, obj.version, obj.size, _expected(head)
        )

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
            sink = RangeSink(fd, start, on_bytes, cancel)
            try:
                response = self._s3().get_object(
                    Bucket=obj.bucket,
                    Key=obj.name,
                    Range=f"bytes={start}-{end - 1}",
                    IfMatch=f'"{obj.version}"',
                )
                body = response["Body"]
                try:
                    for chunk in body.iter_chunks(_CHUNK):
                        sink.write(chunk)
                finally:
                    body.close()
                sink.flush()
                if sink.written != end - start:
                    raise ShortRead(f"got {sink.written} of {end - start} bytes")
            except BaseException:
                on_bytes(-sink.written)
                raise

        def gone(code: str) -> str:
            return f"{obj.uri} was deleted during the sync; sync again"

        self._call(attempt, f"downloading {obj.uri} bytes {start}-{end - 1}", gone)
