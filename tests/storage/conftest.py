"""Fixtures for the storage tests: one fake-gcs-server and one moto S3 server for the session,
a bucket per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud import storage

from appliance.config import StorageConfig
from appliance.metrics import Metrics
from appliance.storage import ArtifactStore, RetryPolicy, SyncProgress
from tests.support.gcs import admin_client, emulator
from tests.support.http import free_port
from tests.support.s3 import AWS_VARIABLES_TO_CLEAR, S3Server, moto_server
from tests.support.s3 import admin_client as s3_admin_client

# Short waits: a test of an unreachable source should take well under a second.
FAST_RETRY = RetryPolicy(attempts=4, initial_backoff_s=0.02, max_backoff_s=0.1, deadline_s=5.0)
BIG_SIZE = 50 * 1024 * 1024


@pytest.fixture(scope="session")
def gcs_url() -> Iterator[str]:
    # The memory backend: the filesystem one writes objects named a/../../x outside its root.
    with emulator("memory") as url:
        yield url


@pytest.fixture(scope="session")
def admin(gcs_url: str) -> storage.Client:
    return admin_client(gcs_url)


@pytest.fixture
def bucket(admin: storage.Client) -> storage.Bucket:
    return admin.create_bucket(f"aegis-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def big_object(admin: storage.Client) -> tuple[str, bytes]:
    """A 50 MB object (above the ranged-read threshold), uploaded once: (gs:// URI, bytes)."""
    data = os.urandom(BIG_SIZE)
    big = admin.create_bucket(f"aegis-big-{uuid.uuid4().hex[:8]}")
    big.blob("models/big/1/model.pt2").upload_from_string(data)
    return f"gs://{big.name}/models/big/1/model.pt2", data


@pytest.fixture
def use_endpoint(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Point the code under test (the real client, via STORAGE_EMULATOR_HOST) at `url`."""
    return lambda url: monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)


@pytest.fixture(autouse=True)
def _emulator_env(use_endpoint: Callable[[str], None], gcs_url: str) -> None:
    use_endpoint(gcs_url)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with moto_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3_admin(s3_server: S3Server) -> Any:
    return s3_admin_client(s3_server)


@pytest.fixture
def s3_bucket(s3_admin: Any) -> str:
    name = f"aegis-{uuid.uuid4().hex[:12]}"
    s3_admin.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, s3_server: S3Server) -> None:
    """The code under test finds the server's credentials and endpoint through the standard
    chain, as on a host; nothing of the machine's own AWS settings."""
    for variable in AWS_VARIABLES_TO_CLEAR:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in s3_server.env().items():
        monkeypatch.setenv(variable, value)


@pytest.fixture
def use_s3_endpoint(monkeypatch: pytest.MonkeyPatch, s3_env: None) -> Callable[[str], None]:
    """Point the code under test (the real boto3, via AWS_ENDPOINT_URL) at `url`."""
    return lambda url: monkeypatch.setenv("AWS_ENDPOINT_URL", url)


@pytest.fixture
def dead_url() -> str:
    """A loopback URL nothing listens on: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def make_store(cache_dir: Path, metrics: Metrics) -> Callable[..., ArtifactStore]:
    def make(
        concurrency: int = 4,
        disk_reserve_bytes: int = 64 << 20,
        progress: SyncProgress | None = None,
    ) -> ArtifactStore:
        config = StorageConfig(
            cache_dir=str(cache_dir),
            download_concurrency=concurrency,
            disk_reserve_bytes=disk_reserve_bytes,
        )
        return ArtifactStore(config, metrics, progress, retry=FAST_RETRY)

    return make
