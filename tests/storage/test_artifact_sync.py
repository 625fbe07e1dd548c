"""ArtifactStore against fake-gcs-server through the real google-cloud-storage client."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import structlog
from google.cloud import storage

from appliance.config import parse_config
from appliance.metrics import Metrics
from appliance.storage import (
    ArtifactStore,
    LogProgress,
    SyncError,
    TerminalProgress,
    run_sync_command,
    sync_all,
)
from tests.support.gcs import admin_client, emulator
from tests.support.proxy import FaultyProxy

REPO = Path(__file__).resolve().parents[2]
StoreFactory = Callable[..., ArtifactStore]

pytestmark = pytest.mark.timeout(60)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def test_single_object(bucket: storage.Bucket, make_store: StoreFactory, metrics: Metrics) -> None:
    bucket.blob("models/m/1/model.pt2").upload_from_string(b"weights" * 100)
    source = f"gs://{bucket.name}/models/m/1/model.pt2"

    result = make_store().sync("m", "1", source)

    assert result.path.name == "model.pt2"
    assert result.path.read_bytes() == b"weights" * 100
    assert (result.downloaded_bytes, result.stale, result.source) == (700, False, source)
    assert sample(metrics, "aegis_artifact_sync_bytes_total", "m") == 700
    assert sample(metrics, "aegis_artifact_sync_seconds_count", "m") == 1
    assert sample(metrics, "aegis_artifact_stale", "m") == 0


def test_folder_prefix_with_nested_files(bucket: storage.Bucket, make_store: StoreFactory) -> None:
    files = {"model.pt2": b"a" * 10, "sub/dir/b.bin": b"b" * 20, "sub/c.txt": b"", "d": b"dd"}
    for name, data in files.items():
        bucket.blob(f"m/1/{name}").upload_from_string(data)
    bucket.blob("m/1/sub/").upload_from_string(b"")  # a folder placeholder, as the console makes
    bucket.blob("m/10/other.pt2").upload_from_string(b"not this prefix")

    result = make_store().sync("m", "1", f"gs://{bucket.name}/m/1/")

    assert result.path.is_dir()
    assert tree(result.path) == files
    assert result.downloaded_bytes == 32


def test_large_object_is_read_in_parallel_ranges_and_resync_downloads_nothing(
    big_object: tuple[str, bytes],
    gcs_url: str,
    use_endpoint: Callable[[str], None],
    make_store: StoreFactory,
) -> None:
    source, data = big_object
    store = make_store(concurrency=4)
    with FaultyProxy(gcs_url) as proxy:
        use_endpoint(proxy.url)
        first = store.sync("big", "1", source)
        ranges = [r for method, path, r in proxy.requests if "/download/" in path]
        proxy.requests.clear()
        second = store.sync("big", "1", source)
        downloads_after = [path for _, path, _ in proxy.requests if "/download/" in path]

    assert first.downloaded_bytes == len(data)
    assert sha256(first.path) == hashlib.sha256(data).hexdigest()
    assert len(ranges) == 4 and len(set(ranges)) == 4  # 50 MB in 16 MiB ranges
    assert all(r and r.startswith("bytes=") for r in ranges)
    assert (second.downloaded_bytes, second.path) == (0, first.path)
    assert downloads_after == []


def test_changed_object_is_downloaded_again_and_unchanged_ones_are_not(
    bucket: storage.Bucket, make_store: StoreFactory
) -> None:
    bucket.blob("m/a.pt2").upload_from_string(b"a" * 1000)
    bucket.blob("m/sub/b.bin").upload_from_string(b"b" * 1000)
    source = f"gs://{bucket.name}/m/"
    store = make_store()
    first = store.sync("m", "1", source)

    bucket.blob("m/sub/b.bin").upload_from_string(b"B" * 3000)  # a new generation
    second = store.sync("m", "1", source)

    assert second.downloaded_bytes == 3000
    assert second.path != first.path
    assert tree(second.path) == {"a.pt2": b"a" * 1000, "sub/b.bin": b"B" * 3000}
    # The unchanged file was linked, not copied, and the replaced snapshot is kept intact.
    assert (second.path / "a.pt2").stat().st_ino == (first.path / "a.pt2").stat().st_ino
    assert tree(first.path) == {"a.pt2": b"a" * 1000, "sub/b.bin": b"b" * 1000}
    assert store.sync("m", "1", source).downloaded_bytes == 0


def test_unreachable_source_serves_the_last_verified_copy(
    bucket: storage.Bucket,
    make_store: StoreFactory,
    metrics: Metrics,
    use_endpoint: Callable[[str], None],
    dead_url: str,
    gcs_url: str,
) -> None:
    bucket.blob("m/model.pt2").upload_from_string(b"good")
    source = f"gs://{bucket.name}/m/model.pt2"
    good = make_store().sync("m", "1", source)

    use_endpoint(dead_url)
    with structlog.testing.capture_logs() as logs:
        stale = make_store().sync("m", "1", source)  # a fresh store: as after a restart

    assert (stale.stale, stale.path, stale.downloaded_bytes) == (True, good.path, 0)
    assert stale.path.read_bytes() == b"good"
    assert sample(metrics, "aegis_artifact_stale", "m") == 1
    warnings = [e for e in logs if e["event"] == "artifact_source_unreachable"]
    assert warnings and warnings[0]["log_level"] == "warning"

    use_endpoint(gcs_url)
    assert make_store().sync("m", "1", source).stale is False
    assert sample(metrics, "aegis_artifact_stale", "m") == 0


def test_a_cache_written_with_the_first_manifest_format_still_serves(
    bucket: storage.Bucket,
    make_store: StoreFactory,
    use_endpoint: Callable[[str], None],
    dead_url: str,
) -> None:
    bucket.blob("m/model.pt2").upload_from_string(b"good")
    source = f"gs://{bucket.name}/m/"
    good = make_store().sync("m", "1", source)
    manifest_path = good.path.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    blob = bucket.get_blob("m/model.pt2")
    # As the gs://-only releases wrote it: an integer generation, crc32c and md5 fields.
    manifest["format"] = 1
    manifest["objects"] = [
        {
            "path": "model.pt2",
            "name": "m/model.pt2",
            "generation": blob.generation,
            "size": 4,
            "crc32c": blob.crc32c,
            "md5": blob.md5_hash,
        }
    ]
    manifest_path.write_text(json.dumps(manifest))

    again = make_store().sync("m", "1", source)
    use_endpoint(dead_url)
    stale = make_store().sync("m", "1", source)

    assert (again.downloaded_bytes, again.path) == (0, good.path)
    assert (stale.stale, stale.path) == (True, good.path)


def test_unreachable_source_without_a_local_copy_fails_clearly(
    make_store: StoreFactory, use_endpoint: Callable[[str], None], dead_url: str, cache_dir: Path
) -> None:
    use_endpoint(dead_url)
    with pytest.raises(SyncError) as info:
        make_store().sync("m", "1", "gs://some-bucket/m/model.pt2")
    message = str(info.value)
    assert "model 'm' version '1'" in message
    assert "unreachable" in message and "no verified local copy" in message
    assert not (cache_dir / "m" / "1" / "current").exists()


def test_corrupted_object_is_refused_and_the_good_version_stays(
    tmp_path: Path, make_store: StoreFactory, use_endpoint: Callable[[str], None], cache_dir: Path
) -> None:
    # The filesystem backend keeps checksums beside the bytes (in an xattr): rewriting the stored
    # bytes makes the bucket serve content that does not match its own crc32c, as bit rot would.
    root = tmp_path / "gcs"
    with emulator("filesystem", root) as url:
        use_endpoint(url)
        bucket = admin_client(url).create_bucket("corrupt")
        bucket.blob("m/a.pt2").upload_from_string(b"good-1" * 1000)
        store = make_store()
        good = store.sync("m", "1", "gs://corrupt/m/")

        bucket.blob("m/a.pt2").upload_from_string(b"good-2" * 1000)
        (root / "corrupt" / "m" / "a.pt2").write_bytes(b"evil-2" * 1000)
        with pytest.raises(SyncError) as info:
            store.sync("m", "1", "gs://corrupt/m/")

    message = str(info.value)
    assert "model 'm'" in message and "gs://corrupt/m/a.pt2" in message
    assert "crc32c mismatch" in message
    assert (cache_dir / "m" / "1" / "current").resolve() == good.path.parent.resolve()
    assert (good.path / "a.pt2").read_bytes() == b"good-1" * 1000
    assert staged(cache_dir, "m") == []


KILL_SCRIPT = """
import sys
from appliance.config import StorageConfig
from appliance.storage import ArtifactStore
store = ArtifactStore(StorageConfig(cache_dir=sys.argv[1], download_concurrency=4))
store.sync("big", "1", sys.argv[2])
"""


def test_sigkill_during_a_download_never_activates_a_half_version(
    bucket: storage.Bucket,
    big_object: tuple[str, bytes],
    gcs_url: str,
    use_endpoint: Callable[[str], None],
    dead_url: str,
    make_store: StoreFactory,
    cache_dir: Path,
) -> None:
    _, data = big_object
    blob = bucket.blob("big/model.pt2")
    blob.upload_from_string(b"v1" * 1000)
    source = f"gs://{bucket.name}/big/model.pt2"
    good = make_store().sync("big", "1", source)
    blob.upload_from_string(data)  # the new 50 MB generation the killed process was fetching

    with FaultyProxy(gcs_url) as proxy:
        proxy.chunk_delay_s = 0.01  # about 6 MB/s per connection: the download takes seconds
        env = {**os.environ, "STORAGE_EMULATOR_HOST": proxy.url, "PYTHONPATH": str(REPO)}
        process = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, str(cache_dir), source],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            landed = 0
            while landed < 4 * 1024 * 1024:
                assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the download never got going"
                time.sleep(0.02)
                landed = sum(
                    p.stat().st_blocks * 512
                    for p in (cache_dir / "big" / "1" / "staging").rglob("*")
                    if p.is_file()
                )
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            process.stderr.close()  # type: ignore[union-attr]

    assert staged(cache_dir, "big"), "the kill should have left a partial staging folder"
    assert (cache_dir / "big" / "1" / "current").resolve() == good.path.parent.parent.resolve()

    # A start while the bucket is down serves the last complete version, not the partial one.
    use_endpoint(dead_url)
    stale = make_store().sync("big", "1", source)
    assert (stale.stale, stale.path) == (True, good.path)
    assert stale.path.read_bytes() == b"v1" * 1000

    use_endpoint(gcs_url)
    fresh = make_store().sync("big", "1", source)
    assert fresh.downloaded_bytes == len(data)
    assert sha256(fresh.path) == hashlib.sha256(data).hexdigest()
    assert staged(cache_dir, "big") == []


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
    bucket: storage.Bucket, make_store: StoreFactory, tmp_path: Path, prefix: str, name: str
) -> None:
    bucket.blob("m/fine.pt2").upload_from_string(b"fine")
    bucket.blob(name).upload_from_string(b"evil")

    with pytest.raises(SyncError, match="refusing") as info:
        make_store().sync("m", "1", f"gs://{bucket.name}/{prefix}")

    assert repr(name) in str(info.value)
    written = [
        p for p in tmp_path.rglob("*") if p.is_file() and p.read_bytes() in (b"evil", b"fine")
    ]
    assert written == []


def test_source_names_that_escape_are_refused(make_store: StoreFactory) -> None:
    with pytest.raises(SyncError, match=r"'\.\.'"):
        make_store().sync("m", "1", "gs://bucket/models/../x.pt2")
    with pytest.raises(SyncError, match="cannot be cached"):
        make_store().sync("..", "1", "gs://bucket/x.pt2")


@pytest.mark.parametrize("status", [429, 503])
def test_transient_errors_are_retried(
    bucket: storage.Bucket,
    gcs_url: str,
    use_endpoint: Callable[[str], None],
    make_store: StoreFactory,
    status: int,
) -> None:
    bucket.blob("m/a.pt2").upload_from_string(b"a" * 100)
    bucket.blob("m/b.pt2").upload_from_string(b"b" * 100)
    with FaultyProxy(gcs_url) as proxy:
        use_endpoint(proxy.url)
        proxy.status, proxy.fail_next = status, 3
        result = make_store(concurrency=1).sync("m", "1", f"gs://{bucket.name}/m/")
        assert proxy.fail_next == 0

    assert tree(result.path) == {"a.pt2": b"a" * 100, "b.pt2": b"b" * 100}


def test_retries_are_bounded(
    bucket: storage.Bucket,
    gcs_url: str,
    use_endpoint: Callable[[str], None],
    make_store: StoreFactory,
) -> None:
    bucket.blob("m/a.pt2").upload_from_string(b"a")
    with FaultyProxy(gcs_url) as proxy:
        use_endpoint(proxy.url)
        proxy.fail_next = 1000
        started = time.monotonic()
        with pytest.raises(SyncError, match="503"):
            make_store().sync("m", "1", f"gs://{bucket.name}/m/a.pt2")
        # The policy's 4 attempts, no more (the client also fetches bucket metadata on the side).
        assert len([path for _, path, _ in proxy.requests if "/o/" in path]) == 4
    assert time.monotonic() - started < 5


def test_missing_object_fails_without_retrying(
    bucket: storage.Bucket, make_store: StoreFactory
) -> None:
    with pytest.raises(SyncError, match=r"gs://.*/nope\.pt2 does not exist"):
        make_store().sync("m", "1", f"gs://{bucket.name}/nope.pt2")
    with pytest.raises(SyncError, match="no objects under"):
        make_store().sync("m", "1", f"gs://{bucket.name}/empty/")


def test_not_enough_disk_space_stops_before_downloading(
    bucket: storage.Bucket,
    make_store: StoreFactory,
    cache_dir: Path,
    tmp_path: Path,
) -> None:
    bucket.blob("m/a.pt2").upload_from_string(b"a" * 1000)
    # A reserve the size of the whole disk: the 1000 bytes can never fit beside it.
    whole_disk = shutil.disk_usage(tmp_path).total
    with pytest.raises(SyncError, match=r"not enough disk space.*\[storage\] disk_reserve_bytes"):
        make_store(disk_reserve_bytes=whole_disk).sync("m", "1", f"gs://{bucket.name}/m/")
    assert not (cache_dir / "m" / "1" / "current").exists()
    assert staged(cache_dir, "m") == []
    # The reserve is the operator's to size: a small one lets the same small model in.
    result = make_store(disk_reserve_bytes=0).sync("m", "1", f"gs://{bucket.name}/m/")
    assert (result.path / "a.pt2").read_bytes() == b"a" * 1000


def test_local_sources_are_used_in_place(tmp_path: Path, make_store: StoreFactory) -> None:
    artifact = tmp_path / "model.pt2"
    artifact.write_bytes(b"local")
    store = make_store()
    for source in (str(artifact), f"file://{artifact}"):
        result = store.sync("m", "1", source)
        assert (result.path, result.downloaded_bytes, result.stale) == (artifact, 0, False)
    with pytest.raises(SyncError, match="does not exist"):
        store.sync("m", "1", f"file://{tmp_path}/absent.pt2")


def test_different_models_sync_at_the_same_time(
    bucket: storage.Bucket, make_store: StoreFactory
) -> None:
    for index in range(4):
        bucket.blob(f"m{index}/model.pt2").upload_from_string(bytes([index]) * 5000)
    store = make_store()
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(
                lambda i: store.sync(f"m{i}", "1", f"gs://{bucket.name}/m{i}/model.pt2"), range(4)
            )
        )
    assert [r.path.read_bytes() for r in results] == [bytes([i]) * 5000 for i in range(4)]


def config_for(cache_dir: Path, *sources: str) -> object:
    models = [{"name": f"m{i}", "model_path": source} for i, source in enumerate(sources)]
    return parse_config({"storage": {"cache_dir": str(cache_dir)}, "models": models})


def test_sync_all_reports_every_failed_model(bucket: storage.Bucket, cache_dir: Path) -> None:
    bucket.blob("ok/model.pt2").upload_from_string(b"ok")
    config = config_for(
        cache_dir, f"gs://{bucket.name}/ok/model.pt2", f"gs://{bucket.name}/missing.pt2"
    )
    with pytest.raises(SyncError) as info:
        sync_all(config)  # type: ignore[arg-type]
    assert "model 'm1'" in str(info.value) and "m0" not in str(info.value)
    assert (cache_dir / "m0" / "1" / "current").exists()


def test_sync_command_exit_codes_and_messages(bucket: storage.Bucket, cache_dir: Path) -> None:
    bucket.blob("ok/model.pt2").upload_from_string(b"ok")
    out, err = io.StringIO(), io.StringIO()
    good = config_for(cache_dir, f"gs://{bucket.name}/ok/model.pt2")
    assert run_sync_command(good, stdout=out, stderr=err) == 0  # type: ignore[arg-type]
    assert "m0 1:" in out.getvalue() and "model.pt2" in out.getvalue()

    out, err = io.StringIO(), io.StringIO()
    bad = config_for(cache_dir, f"gs://{bucket.name}/absent.pt2")
    assert run_sync_command(bad, stdout=out, stderr=err) == 1  # type: ignore[arg-type]
    assert err.getvalue().startswith("aegis sync: error: model 'm0' version '1'")
    assert "absent.pt2 does not exist" in err.getvalue()
    assert "Traceback" not in err.getvalue()


def test_progress_on_a_terminal_and_in_logs() -> None:
    stream = io.StringIO()
    terminal = TerminalProgress(stream)
    logged = LogProgress(interval_s=0.0)
    with structlog.testing.capture_logs() as logs:
        for progress in (terminal, logged):
            progress.begin("m", "1", [("models/m/weights.bin", 4 * 1024 * 1024)])
            progress.advance("models/m/weights.bin", 2 * 1024 * 1024)
            time.sleep(0.11)  # past the terminal's redraw throttle
            progress.advance("models/m/weights.bin", 2 * 1024 * 1024)
            progress.object_done("models/m/weights.bin")
            progress.end(4 * 1024 * 1024)

    drawn = stream.getvalue()
    assert "models/m/weights.bin" in drawn and "MiB/s" in drawn and "ETA" in drawn
    assert "m/1 total" in drawn and "(1/1 objects)" in drawn and "\x1b[" in drawn
    events = [e for e in logs if e["event"] == "sync_progress"]
    assert events[-1]["finished"] is True and events[-1]["bytes"] == 4 * 1024 * 1024
    assert events[-1]["failed"] is False
    assert {"rate_mib_s", "eta", "total_bytes"} <= set(events[-1])


def test_a_failed_sync_ends_its_progress_as_failed_not_finished(
    bucket: storage.Bucket, make_store: StoreFactory
) -> None:
    blob = bucket.blob("m/a.pt2")
    blob.upload_from_string(b"a" * 1000)

    class ObjectVanishes(LogProgress):
        """The object is deleted between the listing and the download: a real race."""

        def begin(self, model: str, version: str, objects: Sequence[tuple[str, int]]) -> None:
            blob.delete()
            super().begin(model, version, objects)

    store = make_store(progress=ObjectVanishes(interval_s=0.0))
    with structlog.testing.capture_logs() as logs, pytest.raises(SyncError):
        store.sync("m", "1", f"gs://{bucket.name}/m/")
    events = [e for e in logs if e["event"] == "sync_progress"]
    assert events and events[-1]["failed"] is True and events[-1]["finished"] is False, events
