"""ArtifactStore against moto's S3 server through the real boto3 (credentials enforced)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import structlog
import torch
from boto3.s3.transfer import TransferConfig

from appliance.config import StorageConfig, parse_config
from appliance.metrics import Metrics
from appliance.storage import ArtifactStore, RetryPolicy, SyncError, run_sync_command
from appliance.units import MiB
from tests.conftest import ServerFactory
from tests.support.config import model_table
from tests.support.http import call
from tests.support.models import Mlp
from tests.support.proxy import FaultyProxy
from tests.support.s3 import S3Server, admin_client

StoreFactory = Callable[..., ArtifactStore]

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("s3_env")]


def tree(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def staged(cache_dir: Path, model: str, version: str = "1") -> list[Path]:
    staging = cache_dir / model / version / "staging"
    return list(staging.iterdir()) if staging.exists() else []


def sample(metrics: Metrics, name: str, model: str, version: str = "1") -> float | None:
    return metrics.registry.get_sample_value(name, {"model": model, "version": version})


def object_reads(proxy: FaultyProxy) -> list[str]:
    """The Range headers of the object downloads the proxy saw (listings are GETs without one)."""
    return [r for method, _, r in proxy.requests if method == "GET" and r is not None]


def test_single_object(
    s3_admin: Any, s3_bucket: str, make_store: StoreFactory, metrics: Metrics
) -> None:
    s3_admin.put_object(Bucket=s3_bucket, Key="models/m/1/model.pt2", Body=b"weights" * 100)
    source = f"s3://{s3_bucket}/models/m/1/model.pt2"

    result = make_store().sync("m", "1", source)

    assert result.path.name == "model.pt2"
    assert result.path.read_bytes() == b"weights" * 100
    assert (result.downloaded_bytes, result.stale, result.source) == (700, False, source)
    assert sample(metrics, "aegis_artifact_sync_bytes_total", "m") == 700
    assert sample(metrics, "aegis_artifact_sync_seconds_count", "m") == 1
    assert sample(metrics, "aegis_artifact_stale", "m") == 0
    manifest = json.loads((result.path.parents[1] / "manifest.json").read_text())
    assert manifest["source"] == source
    assert set(manifest["objects"][0]["checksums"]) == {"crc32", "md5"}


def test_folder_prefix_with_nested_files_and_a_restart_that_downloads_nothing(
    s3_admin: Any,
    s3_bucket: str,
    s3_server: S3Server,
    make_store: StoreFactory,
    use_s3_endpoint: Callable[[str], None],
) -> None:
    files = {"model.pt2": b"a" * 10, "sub/dir/b.bin": b"b" * 20, "sub/c.txt": b"", "d": b"dd"}
    for name, data in files.items():
        s3_admin.put_object(Bucket=s3_bucket, Key=f"m/1/{name}", Body=data)
    s3_admin.put_object(Bucket=s3_bucket, Key="m/1/sub/", Body=b"")  # a console "folder"
    s3_admin.put_object(Bucket=s3_bucket, Key="m/10/other.pt2", Body=b"not this prefix")
    source = f"s3://{s3_bucket}/m/1/"

    first = make_store().sync("m", "1", source)
    with FaultyProxy(s3_server.url) as proxy:
        use_s3_endpoint(proxy.url)
        again = make_store().sync("m", "1", source)  # a fresh store: as after a restart

    assert first.path.is_dir()
    assert tree(first.path) == files
    assert first.downloaded_bytes == 32
    assert (again.downloaded_bytes, again.path, again.stale) == (0, first.path, False)
    assert len(proxy.requests) == 1 and "list-type=2" in proxy.requests[0][1]  # the listing only


def test_changed_object_is_downloaded_again_and_unchanged_ones_are_not(
    s3_admin: Any, s3_bucket: str, make_store: StoreFactory
) -> None:
    s3_admin.put_object(Bucket=s3_bucket, Key="m/a.pt2", Body=b"a" * 1000)
    s3_admin.put_object(Bucket=s3_bucket, Key="m/sub/b.bin", Body=b"b" * 1000)
    source = f"s3://{s3_bucket}/m/"
    store = make_store()
    first = store.sync("m", "1", source)

    s3_admin.put_object(Bucket=s3_bucket, Key="m/sub/b.bin", Body=b"B" * 3000)
    second = store.sync("m", "1", source)

    assert second.downloaded_bytes == 3000
    assert tree(second.path) == {"a.pt2": b"a" * 1000, "sub/b.bin": b"B" * 3000}
    assert (second.path / "a.pt2").stat().st_ino == (first.path / "a.pt2").stat().st_ino
    assert tree(first.path) == {"a.pt2": b"a" * 1000, "sub/b.bin": b"b" * 1000}
    assert store.sync("m", "1", source).downloaded_bytes == 0


def test_large_object_is_read_in_parallel_ranges_pinned_to_its_etag(
    s3_admin: Any,
    s3_bucket: str,
    s3_server: S3Server,
    make_store: StoreFactory,
    use_s3_endpoint: Callable[[str], None],
) -> None:
    data = os.urandom(40 * MiB)  # above the ranged-read threshold: 16 MiB ranges
    s3_admin.put_object(
        Bucket=s3_bucket, Key="big/model.pt2", Body=data, ChecksumAlgorithm="SHA256"
    )
    with FaultyProxy(s3_server.url) as proxy:
        use_s3_endpoint(proxy.url)
        result = make_store(concurrency=4).sync("big", "1", f"s3://{s3_bucket}/big/model.pt2")

    assert hashlib.sha256(result.path.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert sorted(object_reads(proxy)) == sorted(
        [
            f"bytes={start}-{min(start + 16 * MiB, len(data)) - 1}"
            for start in (0, 16 * MiB, 32 * MiB)
        ]
    )
    manifest = json.loads((result.path.parents[1] / "manifest.json").read_text())
    assert "sha256" in manifest["objects"][0]["checksums"]


def test_an_object_replaced_during_a_sync_fails_it_instead_of_mixing_versions(
    s3_admin: Any,
    s3_bucket: str,
    s3_server: S3Server,
    make_store: StoreFactory,
    use_s3_endpoint: Callable[[str], None],
    monkeypatch: pytest.MonkeyPatch,
    cache_dir: Path,
) -> None:
    monkeypatch.setattr("appliance.storage.sync.RANGED_THRESHOLD", MiB)
    monkeypatch.setattr("appliance.storage.sync.PART_SIZE", MiB)
    s3_admin.put_object(Bucket=s3_bucket, Key="m/model.pt2", Body=b"1" * 3 * MiB)
    with FaultyProxy(s3_server.url) as proxy:
        proxy.chunk_delay_s = 0.05  # about a second per 1 MiB range
        use_s3_endpoint(proxy.url)
        with ThreadPoolExecutor(1) as pool:
            sync = pool.submit(make_store(concurrency=1).sync, "m", "1", f"s3://{s3_bucket}/m/")
            deadline = time.monotonic() + 30
            while not object_reads(proxy):
                assert time.monotonic() < deadline and not sync.done()
                time.sleep(0.01)
            s3_admin.put_object(Bucket=s3_bucket, Key="m/model.pt2", Body=b"2" * 3 * MiB)
            with pytest.raises(SyncError, match="changed during the sync"):
                sync.result(timeout=30)

    assert not (cache_dir / "m" / "1" / "current").exists()
    assert staged(cache_dir, "m") == []


def test_multipart_objects_are_not_checked_against_their_etag_or_part_checksums(
    s3_admin: Any, s3_bucket: str, make_store: StoreFactory
) -> None:
    # A multipart ETag is not an MD5 and its default CRC32 is of the parts: only the size and a
    # full-object checksum (none here) can be checked, and the object must not be refused.
    data = os.urandom(11 * MiB)
    parts = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    s3_admin.upload_fileobj(io.BytesIO(data), s3_bucket, "m/model.pt2", Config=parts)
    assert s3_admin.head_object(Bucket=s3_bucket, Key="m/model.pt2")["ETag"].endswith('-3"')

    with structlog.testing.capture_logs() as logs:
        result = make_store().sync("m", "1", f"s3://{s3_bucket}/m/model.pt2")

    assert result.path.read_bytes() == data
    warned = [e for e in logs if e["event"] == "storage_verified_by_size_only"]
    assert warned and warned[0]["object"] == f"s3://{s3_bucket}/m/model.pt2"


def test_unreachable_store_serves_the_last_verified_copy(
    s3_admin: Any,
    s3_bucket: str,
    s3_server: S3Server,
    make_store: StoreFactory,
    metrics: Metrics,
    use_s3_endpoint: Callable[[str], None],
    dead_url: str,
) -> None:
    s3_admin.put_object(Bucket=s3_bucket, Key="m/model.pt2", Body=b"good")
    source = f"s3://{s3_bucket}/m/"
    good = make_store().sync("m", "1", source)

    use_s3_endpoint(dead_url)
    with structlog.testing.capture_logs() as logs:
        stale = make_store().sync("m", "1", source)

    assert (stale.stale, stale.path, stale.downloaded_bytes) == (True, good.path, 0)
    assert (stale.path / "model.pt2").read_bytes() == b"good"
    assert sample(metrics, "aegis_artifact_stale", "m") == 1
    warnings = [e for e in logs if e["event"] == "artifact_source_unreachable"]
    assert warnings and warnings[0]["log_level"] == "warning"
    assert f"s3://{s3_bucket}/m/" in warnings[0]["error"]

    use_s3_endpoint(s3_server.url)
    assert make_store().sync("m", "1", source).stale is False
    assert sample(metrics, "aegis_artifact_stale", "m") == 0


def test_unreachable_store_without_a_local_copy_fails_clearly(
    make_store: StoreFactory, use_s3_endpoint: Callable[[str], None], dead_url: str
) -> None:
    use_s3_endpoint(dead_url)
    with pytest.raises(SyncError) as info:
        make_store().sync("m", "1", "s3://some-bucket/m/model.pt2")
    message = str(info.value)
    assert "model 'm' version '1'" in message and "s3://some-bucket/m/model.pt2" in message
    assert "unreachable" in message and "no verified local copy" in message


@pytest.mark.parametrize(
    ("upload", "kind"),
    # CRC32C is left out: moto computes it as a CRC32 unless the `crc32c` package is installed.
    [
        ({}, "md5"),  # no x-amz-checksum: the single-part ETag is the MD5
        ({"ChecksumAlgorithm": "CRC32"}, "crc32"),
        ({"ChecksumAlgorithm": "SHA256"}, "sha256"),
        ({"ChecksumAlgorithm": "SHA1"}, "sha1"),
    ],
)
def test_corrupted_object_is_refused_and_the_good_version_stays(
    s3_server: S3Server,
    s3_bucket: str,
    make_store: StoreFactory,
    use_s3_endpoint: Callable[[str], None],
    cache_dir: Path,
    upload: dict[str, str],
    kind: str,
) -> None:
    admin = admin_client(s3_server, checksums=bool(upload))
    admin.put_object(Bucket=s3_bucket, Key="m/a.pt2", Body=b"good-1" * 1000, **upload)
    source = f"s3://{s3_bucket}/m/"
    good = make_store().sync("m", "1", source)

    admin.put_object(Bucket=s3_bucket, Key="m/a.pt2", Body=b"good-2" * 1000, **upload)
    with FaultyProxy(s3_server.url) as proxy, pytest.raises(SyncError) as info:
        proxy.corrupt_bodies = True  # the bytes that arrive are not the ones S3 describes
        use_s3_endpoint(proxy.url)
        make_store().sync("m", "1", source)

    message = str(info.value)
    assert "model 'm'" in message and f"s3://{s3_bucket}/m/a.pt2" in message
    assert f"{kind} mismatch" in message
    assert (cache_dir / "m" / "1" / "current").resolve() == good.path.parent.resolve()
    assert (good.path / "a.pt2").read_bytes() == b"good-1" * 1000
    assert staged(cache_dir, "m") == []


@pytest.mark.parametrize(
    ("prefix", "name"),
    [
        ("m/", "m/../../escape.pt2"),
        ("m/", "m/sub/../../../escape.pt2"),
        ("", "/absolute.pt2"),
        ("m/", "m//double-slash.pt2"),
        ("m/", "m/./dot.pt2"),
        ("m/", "m/back\\slash.pt2"),
        ("m/", "m/control\x01char.pt2"),
    ],
)
def test_object_names_that_escape_the_cache_are_refused(
    s3_admin: Any, s3_bucket: str, make_store: StoreFactory, tmp_path: Path, prefix: str, name: str
) -> None:
    s3_admin.put_object(Bucket=s3_bucket, Key="m/fine.pt2", Body=b"fine")
    s3_admin.put_object(Bucket=s3_bucket, Key=name, Body=b"evil")

    with pytest.raises(SyncError, match="refusing") as info:
        make_store().sync("m", "1", f"s3://{s3_bucket}/{prefix}")

    assert repr(name) in str(info.value) and f"s3://{s3_bucket}" in str(info.value)
    written = [
        p for p in tmp_path.rglob("*") if p.is_file() and p.read_bytes() in (b"evil", b"fine")
    ]
    assert written == []


def test_missing_key_bucket_or_prefix_fails_clearly_without_retrying(
    s3_bucket: str,
    s3_server: S3Server,
    make_store: StoreFactory,
    use_s3_endpoint: Callable[[str], None],
) -> None:
    with FaultyProxy(s3_server.url) as proxy:
        use_s3_endpoint(proxy.url)
        store = make_store()
        with pytest.raises(SyncError, match=rf"object s3://{s3_bucket}/nope\.pt2 does not exist"):
            store.sync("m", "1", f"s3://{s3_bucket}/nope.pt2")
        assert len(proxy.requests) == 1
        with pytest.raises(SyncError, match=rf"no objects under s3://{s3_bucket}/empty/"):
            store.sync("m", "1", f"s3://{s3_bucket}/empty/")
        with pytest.raises(SyncError, match="bucket 'no-such-bucket-here' does not exist"):
            store.sync("m", "1", "s3://no-such-bucket-here/m/")
        # A HEAD answer has no body to tell a missing bucket from a missing key.
        with pytest.raises(SyncError, match=r"object s3://no-such-bucket-here/m\.pt2 does not"):
            store.sync("m", "1", "s3://no-such-bucket-here/m.pt2")


@pytest.mark.parametrize(
    ("source", "access_key", "code"),
    [
        ("m/", None, "SignatureDoesNotMatch"),  # the right key id, a wrong secret: a listing
        ("m/model.pt2", None, "403"),  # the same, a HEAD: S3 answers 403 without a body
        ("m/", "AKIAWRONGWRONGWRONG0", "InvalidAccessKeyId"),
    ],
)
def test_refused_credentials_fail_clearly_and_never_show_the_secret(
    s3_admin: Any,
    s3_bucket: str,
    s3_server: S3Server,
    make_store: StoreFactory,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    access_key: str | None,
    code: str,
) -> None:
    s3_admin.put_object(Bucket=s3_bucket, Key="m/model.pt2", Body=b"good")
    secret = "wrong-secret-Zx81/kQpYlW0+oT3vHn5sEcRbJ"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    if access_key:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)

    with structlog.testing.capture_logs() as logs, pytest.raises(SyncError) as info:
        make_store().sync("m", "1", f"s3://{s3_bucket}/{source}")

    message = str(info.value)
    assert f"s3://{s3_bucket}/{source}" in message
    assert "access refused" in message and code in message and "credentials" in message
    assert "no verified local copy" in message
    assert secret not in message and secret not in repr(logs)


def test_refused_credentials_serve_the_last_verified_copy(
    s3_admin: Any,
    s3_bucket: str,
    make_store: StoreFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3_admin.put_object(Bucket=s3_bucket, Key="m/model.pt2", Body=b"good")
    good = make_store().sync("m", "1", f"s3://{s3_bucket}/m/model.pt2")

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "rotated-away")
    stale = make_store().sync("m", "1", f"s3://{s3_bucket}/m/model.pt2")

    assert (stale.stale, stale.path) == (True, good.path)


@pytest.mark.parametrize("status", [429, 503])
def test_transient_errors_are_retried(
    s3_admin: Any,
    s3_bucket: str,
    s3_server: S3Server,
    make_store: StoreFactory,
    use_s3_endpoint: Callable[[str], None],
    status: int,
) -> None:
    s3_admin.put_object(Bucket=s3_bucket, Key="m/a.pt2", Body=b"a" * 100)
    s3_admin.put_object(Bucket=s3_bucket, Key="m/b.pt2", Body=b"b" * 100)
    with FaultyProxy(s3_server.url) as proxy:
        use_s3_endpoint(proxy.url)
        proxy.status, proxy.fail_next = status, 3
        result = make_store(concurrency=1).sync("m", "1", f"s3://{s3_bucket}/m/")
        assert proxy.fail_next == 0

    assert tree(result.path) == {"a.pt2": b"a" * 100, "b.pt2": b"b" * 100}


def test_retries_are_bounded(
    s3_admin: Any,
    s3_bucket: str,
    s3_server: S3Server,
    use_s3_endpoint: Callable[[str], None],
    cache_dir: Path,
) -> None:
    s3_admin.put_object(Bucket=s3_bucket, Key="m/a.pt2", Body=b"a")
    # A deadline no loaded machine reaches: the count of attempts alone must stop the retries.
    policy = RetryPolicy(attempts=4, initial_backoff_s=0.02, max_backoff_s=0.1, deadline_s=60.0)
    store = ArtifactStore(StorageConfig(cache_dir=str(cache_dir)), retry=policy)
    with FaultyProxy(s3_server.url) as proxy:
        use_s3_endpoint(proxy.url)
        proxy.fail_next = 1000
        with pytest.raises(SyncError, match="503"):
            store.sync("m", "1", f"s3://{s3_bucket}/m/a.pt2")
        # The policy's 4 attempts; boto3's own retries are off.
        assert len(proxy.requests) == 4, proxy.requests


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_sync_command_for_an_s3_model_with_progress_on_a_terminal(
    s3_admin: Any, s3_bucket: str, cache_dir: Path
) -> None:
    s3_admin.put_object(Bucket=s3_bucket, Key="ok/model.pt2", Body=b"ok")
    config = parse_config(
        {
            "storage": {"cache_dir": str(cache_dir)},
            "models": [{"name": "m0", "model_path": f"s3://{s3_bucket}/ok/model.pt2"}],
        }
    )
    out, err = io.StringIO(), Terminal()
    assert run_sync_command(config, stdout=out, stderr=err) == 0
    assert "m0 1:" in out.getvalue() and "model.pt2" in out.getvalue()
    drawn = err.getvalue()  # progress bars, as on a terminal
    assert "m0/1 total" in drawn and "MiB/s" in drawn and "(1/1 objects)" in drawn


def test_a_server_serves_a_model_from_s3(
    s3_admin: Any,
    s3_bucket: str,
    s3_server: S3Server,
    artifacts: dict[str, Path],
    serve: ServerFactory,
) -> None:
    s3_admin.upload_file(str(artifacts["mlp.pt2"]), s3_bucket, "models/mlp/1/model.pt2")
    server = serve(
        model_table("mlp", f"s3://{s3_bucket}/models/mlp/1/model.pt2", "max_batch_size = 4"),
        env=s3_server.env(),
    )
    x = [[0.25 * i for i in range(8)]]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": x[0]}]}
    reply = call(server, "POST", "/v2/models/mlp/infer", json.dumps(body).encode())

    assert reply.status == 200, reply
    assert "s3://" in server.log() and "artifact_synced" in server.log()
    expected = Mlp()(torch.tensor(x)).detach().flatten().tolist()
    assert reply.json()["outputs"][0]["data"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
