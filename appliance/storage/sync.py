"""Syncing one model version from any bucket store: compare, download in parallel ranges, verify,
switch atomically."""

from __future__ import annotations

import functools
import os
import shutil
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import structlog

from appliance.config import AppConfig, StorageConfig
from appliance.metrics import Metrics
from appliance.storage.cache import CachedObject, Manifest, Snapshot, VersionCache
from appliance.storage.checksums import can_verify, file_mismatch
from appliance.storage.errors import SourceUnavailable, SyncError
from appliance.storage.gcs import GcsClient
from appliance.storage.progress import SyncProgress
from appliance.storage.remote import Cancelled, ObjectStore, RemoteObject
from appliance.storage.retry import RetryPolicy
from appliance.storage.s3 import S3Client
from appliance.storage.sources import LocalSource, RemoteSource, parse_source, relative_path
from appliance.units import MiB

log = structlog.get_logger("aegis.storage")

# Objects above this are fetched as ranges in parallel; a failed range is retried on its own.
RANGED_THRESHOLD = 32 * MiB
PART_SIZE = 16 * MiB


@dataclass(frozen=True)
class SyncedArtifact:
    name: str
    version: str
    source: str
    path: Path
    downloaded_bytes: int
    stale: bool


@dataclass(frozen=True)
class _Planned:
    remote: RemoteObject
    path: str  # relative to the snapshot's data folder

    def cached(self) -> CachedObject:
        r = self.remote
        return CachedObject(self.path, r.name, r.version, r.size, r.checksums or ())

    def same_as(self, old: CachedObject) -> bool:
        """The same bytes: a version (generation, ETag) names one content of one object."""
        r = self.remote
        return (old.name, old.version, old.size) == (r.name, r.version, r.size)


class _Download:
    """One object being fetched: its open file and how many of its ranges are still to come."""

    def __init__(self, store: ObjectStore, planned: _Planned, path: Path, parts: int) -> None:
        self.store = store
        self.planned = planned
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.remaining = parts
        self.lock = threading.Lock()

    def part_done(self) -> bool:
        """True for the caller that finished the last range."""
        with self.lock:
            self.remaining -= 1
            return self.remaining == 0


def _spans(size: int) -> list[tuple[int, int]]:
    if size <= RANGED_THRESHOLD:
        return [(0, size)]
    return [(start, min(start + PART_SIZE, size)) for start in range(0, size, PART_SIZE)]


class ArtifactStore:
    """Syncs model versions from their sources into the local cache (layout: see the package)."""

    def __init__(
        self,
        config: StorageConfig,
        metrics: Metrics | None = None,
        progress: SyncProgress | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._root = Path(config.cache_dir)
        self._concurrency = config.download_concurrency
        self._disk_reserve = config.disk_reserve_bytes
        self._metrics = metrics
        self._progress = progress or SyncProgress()
        policy = retry or RetryPolicy()
        self._stores: dict[str, ObjectStore] = {
            "gs": GcsClient(policy),
            "s3": S3Client(policy, config.download_concurrency),
        }

    def sync(self, name: str, version: str, source: str) -> SyncedArtifact:
        """Bring model `name` version `version` up to date with `source`; blocks until done."""
        what = f"model {name!r} version {version!r}"
        try:
            parsed = parse_source(source)
        except ValueError as error:
            raise SyncError(f"{what}: {error}") from None
        if isinstance(parsed, LocalSource):
            if not parsed.path.exists():
                raise SyncError(f"{what}: {parsed.path} does not exist")
            return SyncedArtifact(name, version, source, parsed.path, 0, stale=False)
        try:
            cache = VersionCache(self._root, name, version)
        except ValueError as error:
            raise SyncError(f"{what}: cannot be cached: the name {error}") from None
        started = time.monotonic()
        with cache.locked():
            cache.clean_staging()
            current = cache.current()
            try:
                snapshot, downloaded = self._update(name, version, parsed, cache, current)
            except SourceUnavailable as error:
                return self._last_good(what, name, version, source, current, str(error))
            except SyncError as error:
                raise SyncError(f"{what}: {error}") from None
            except OSError as error:
                raise SyncError(f"{what}: {type(error).__name__}: {error}") from None
        if self._metrics is not None:
            self._metrics.artifact_stale.labels(name, version).set(0)
            self._metrics.artifact_sync_bytes.labels(name, version).inc(downloaded)
            self._metrics.artifact_sync_seconds.labels(name, version).observe(
                time.monotonic() - started
            )
        log.info(
            "artifact_synced",
            model=name,
            version=version,
            source=source,
            path=str(snapshot.artifact),
            downloaded_bytes=downloaded,
            seconds=round(time.monotonic() - started, 3),
        )
        return SyncedArtifact(name, version, source, snapshot.artifact, downloaded, stale=False)

    def _last_good(
        self,
        what: str,
        name: str,
        version: str,
        source: str,
        current: Snapshot | None,
        why: str,
    ) -> SyncedArtifact:
        if current is None or not current.intact():
            raise SyncError(
                f"{what}: the source is unreachable ({why}) and there is no verified local copy "
                "to serve instead"
            )
        log.warning(
            "artifact_source_unreachable",
            model=name,
            version=version,
            source=source,
            error=why,
            serving=str(current.artifact),
            serving_source=current.manifest.source,
        )
        if self._metrics is not None:
            self._metrics.artifact_stale.labels(name, version).set(1)
        return SyncedArtifact(name, version, source, current.artifact, 0, stale=True)

    def _plan(self, source: RemoteSource, remote: list[RemoteObject]) -> list[_Planned]:
        planned: list[_Planned] = []
        for obj in remote:
            if source.is_folder:
                if obj.name.endswith("/") and obj.size == 0:
                    continue  # a "folder" placeholder, as the Cloud Console creates
                relative = obj.name[len(source.name) :]
            else:
                relative = obj.name.rsplit("/", 1)[-1]
            try:
                path = relative_path(relative)
            except ValueError as error:
                raise SyncError(
                    f"refusing object {obj.name!r} in {source.scheme}://{obj.bucket}: "
                    f"the name {error}"
                ) from None
            planned.append(_Planned(obj, path.as_posix()))
        if not planned:
            raise SyncError(f"no objects under {source.uri}")
        # One order whatever the store lists in, so that the same objects give the same manifest.
        planned.sort(key=lambda item: item.path)
        paths = {item.path for item in planned}
        for item in planned:
            parent = item.path.rpartition("/")[0]
            while parent:
                if parent in paths:
                    raise SyncError(f"{source.uri}{parent} is both an object and a folder")
                parent = parent.rpartition("/")[0]
        return planned

    def _update(
        self,
        name: str,
        version: str,
        source: RemoteSource,
        cache: VersionCache,
        current: Snapshot | None,
    ) -> tuple[Snapshot, int]:
        store = self._stores[source.scheme]
        planned = self._plan(source, store.list_objects(source))
        reusable: dict[str, CachedObject] = {}
        if current is not None and current.manifest.is_from(source.scheme, source.bucket):
            if current.intact():
                reusable = {obj.path: obj for obj in current.manifest.objects}
            else:
                log.warning(
                    "storage_snapshot_damaged",
                    model=name,
                    version=version,
                    path=str(current.folder),
                )
        keep = [p for p in planned if p.path in reusable and p.same_as(reusable[p.path])]
        fetch = self._describe(store, [p for p in planned if p not in keep])
        entries = {p.path: reusable[p.path] for p in keep} | {p.path: p.cached() for p in fetch}
        manifest = Manifest(
            source.uri, source.bucket, source.is_folder, tuple(entries[p.path] for p in planned)
        )
        if current is not None and not fetch and current.manifest == manifest:
            return current, 0
        self._check_space(cache.folder, fetch)
        staging = cache.new_staging()
        self._progress.begin(name, version, [(p.remote.name, p.remote.size) for p in fetch])
        try:
            for item in keep:
                # Unchanged: a hard link into the new snapshot, no copy, no download.
                target = staging / "data" / item.path
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(current.data / item.path, target)  # type: ignore[union-attr]
            self._download_all(store, staging / "data", fetch)
            snapshot = cache.commit(staging, manifest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            self._progress.end(0, failed=True)
            raise
        downloaded = sum(p.remote.size for p in fetch)
        self._progress.end(downloaded)
        return snapshot, downloaded

    def _describe(self, store: ObjectStore, fetch: list[_Planned]) -> list[_Planned]:
        """The objects to fetch, with the checksums to verify them against (S3 lists without)."""
        if all(p.remote.checksums is not None for p in fetch):
            return fetch

        def describe(item: _Planned) -> _Planned:
            return _Planned(store.describe(item.remote), item.path)

        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="aegis-sync") as pool:
            return list(pool.map(describe, fetch))

    def _check_space(self, folder: Path, fetch: list[_Planned]) -> None:
        needed = sum(p.remote.size for p in fetch)
        free = shutil.disk_usage(folder).free
        reserve = max(self._disk_reserve, needed // 20) if self._disk_reserve else 0
        if needed + reserve > free:
            raise SyncError(
                f"not enough disk space in {folder}: {needed / MiB:.1f} MiB to download "
                f"plus a reserve of {reserve / MiB:.1f} MiB ([storage] disk_reserve_bytes, "
                f"or 5% of the download), {free / MiB:.1f} MiB free"
            )

    def _download_all(self, store: ObjectStore, data: Path, fetch: list[_Planned]) -> None:
        cancel = threading.Event()
        downloads: list[_Download] = []
        jobs: list[tuple[_Download, tuple[int, int]]] = []
        try:
            for item in fetch:
                target = data / item.path
                target.parent.mkdir(parents=True, exist_ok=True)
                spans = _spans(item.remote.size)
                download = _Download(store, item, target, len(spans))
                downloads.append(download)
                jobs.extend((download, span) for span in spans)
            # Largest ranges first, so one big object does not finish last on a single thread.
            jobs.sort(key=lambda job: job[1][0] - job[1][1])
            with ThreadPoolExecutor(self._concurrency, thread_name_prefix="aegis-sync") as pool:
                futures = [
                    pool.submit(self._fetch, download, span, cancel) for download, span in jobs
                ]
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                failed = [f for f in done if f.exception() is not None]
                if failed:
                    cancel.set()
                    wait(futures)
                    errors = [f.exception() for f in futures if f.exception() is not None]
                    real = [e for e in errors if not isinstance(e, Cancelled)]
                    raise (real or errors)[0]  # type: ignore[misc]
        finally:
            for download in downloads:
                os.close(download.fd)

    def _fetch(self, download: _Download, span: tuple[int, int], cancel: threading.Event) -> None:
        remote = download.planned.remote
        if remote.size:
            advance = functools.partial(self._progress.advance, remote.name)
            download.store.download_range(remote, download.fd, span, advance, cancel)
        if not download.part_done():
            return
        os.fsync(download.fd)
        expected = remote.checksums or ()
        size = os.fstat(download.fd).st_size
        why: str | None
        if size != remote.size:
            why = f"size mismatch: the source says {remote.size} bytes, {size} arrived"
        else:
            why = file_mismatch(download.path, expected)
        if why is not None:
            raise SyncError(f"{remote.uri} (version {remote.version}) failed verification: {why}")
        if not can_verify(expected):
            log.warning(
                "storage_verified_by_size_only",
                object=remote.uri,
                reason="no whole-object checksum (an S3 multipart upload without one)",
            )
        os.chmod(download.path, 0o444)  # verified content: read-only from now on
        self._progress.object_done(remote.name)


def sync_all(
    config: AppConfig,
    metrics: Metrics | None = None,
    progress: SyncProgress | None = None,
) -> list[SyncedArtifact]:
    """Sync every declared model; one SyncError lists every model that failed."""
    store = ArtifactStore(config.storage, metrics, progress)
    results: list[SyncedArtifact] = []
    failures: list[str] = []
    for model in config.models:
        try:
            results.append(store.sync(model.name, model.version, model.config.model_path))
        except SyncError as error:
            failures.append(str(error))
    if failures:
        raise SyncError("; ".join(failures))
    return results
