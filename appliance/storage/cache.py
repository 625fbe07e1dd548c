"""One model version's folder in the cache: verified snapshots, the `current` link, staging.

A snapshot is written in `staging/`, fsynced, then renamed into `snapshots/`; `current` is then
switched to it by renaming a fresh symlink over the old one. Both renames are atomic, so `current`
only ever names a complete, verified snapshot, whenever the process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from appliance.storage.checksums import Checksums, checksums
from appliance.storage.sources import relative_path

log = structlog.get_logger("aegis.storage")

MANIFEST = "manifest.json"
DATA = "data"
# Format 1 (gs:// only) had an integer generation and crc32c and md5 fields; it is still read.
MANIFEST_FORMAT = 2


@dataclass(frozen=True)
class CachedObject:
    path: str  # relative to the snapshot's data folder
    name: str  # the object's name in its bucket
    version: str  # the version the bytes were read at: a GCS generation, an S3 ETag
    size: int
    checksums: Checksums  # what the download was verified against

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "name": self.name,
            "version": self.version,
            "size": self.size,
            "checksums": dict(self.checksums),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], format: int) -> CachedObject:
        if format == 1:
            found = checksums(crc32c=data["crc32c"], md5=data["md5"])
            return cls(data["path"], data["name"], str(data["generation"]), data["size"], found)
        found = checksums(**data["checksums"])
        return cls(data["path"], data["name"], data["version"], data["size"], found)


@dataclass(frozen=True)
class Manifest:
    source: str
    bucket: str
    folder: bool
    objects: tuple[CachedObject, ...]

    def snapshot_id(self) -> str:
        """Names the content: the same objects always give the same id."""
        text = json.dumps(self.to_json(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, object]:
        return {
            "format": MANIFEST_FORMAT,
            "source": self.source,
            "bucket": self.bucket,
            "folder": self.folder,
            "objects": [obj.to_json() for obj in self.objects],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        format = data.get("format")
        if format not in (1, MANIFEST_FORMAT):
            raise ValueError(f"unknown manifest format {format!r}")
        objects = tuple(CachedObject.from_json(obj, format) for obj in data["objects"])
        return cls(str(data["source"]), str(data["bucket"]), bool(data["folder"]), objects)

    def is_from(self, scheme: str, bucket: str) -> bool:
        """Whether the snapshot came from this store's bucket (its files may be reused)."""
        return self.source.startswith(f"{scheme}://") and self.bucket == bucket


@dataclass(frozen=True)
class Snapshot:
    folder: Path
    manifest: Manifest

    @property
    def data(self) -> Path:
        return self.folder / DATA

    @property
    def artifact(self) -> Path:
        """What the runtime loads: the data folder, or the one file of a single-object source."""
        if self.manifest.folder:
            return self.data
        return self.data / self.manifest.objects[0].path

    def intact(self) -> bool:
        """Every file is there with its size (contents were verified before the snapshot was)."""
        for obj in self.manifest.objects:
            try:
                if (self.data / obj.path).stat().st_size != obj.size:
                    return False
            except OSError:
                return False
        return True


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class VersionCache:
    def __init__(self, root: Path, model: str, version: str) -> None:
        # Model and version names become folders: the same rule as object names keeps them inside.
        for name in (model, version):
            if "/" in name:
                raise ValueError("contains '/'")
            relative_path(name)
        self.folder = root / model / version
        self._snapshots = self.folder / "snapshots"
        self._staging = self.folder / "staging"
        self._current = self.folder / "current"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Only one sync of this version at a time, across threads and processes (`aegis sync`
        beside `aegis serve`). The kernel drops the lock when its holder dies, even by SIGKILL."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def clean_staging(self) -> None:
        """Remove what a sync killed midway left; only called with the lock held."""
        if self._staging.exists():
            for leftover in self._staging.iterdir():
                log.info("storage_staging_removed", path=str(leftover))
                shutil.rmtree(leftover, ignore_errors=True)

    def current(self) -> Snapshot | None:
        """The live snapshot, or None when there is none usable."""
        try:
            target = self.folder / os.readlink(self._current)
        except FileNotFoundError:
            return None
        try:
            manifest = Manifest.from_json(json.loads((target / MANIFEST).read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            log.warning("storage_snapshot_unreadable", path=str(target), error=str(error))
            return None
        return Snapshot(target, manifest)

    def new_staging(self) -> Path:
        folder = self._staging / uuid.uuid4().hex
        (folder / DATA).mkdir(parents=True)
        return folder

    def commit(self, staging: Path, manifest: Manifest) -> Snapshot:
        """Make the fully written and verified `staging` folder the current snapshot."""
        manifest_path = staging / MANIFEST
        with open(manifest_path, "w") as stream:
            json.dump(manifest.to_json(), stream, indent=1)
            stream.flush()
            os.fsync(stream.fileno())
        for folder, _, _ in os.walk(staging, topdown=False):
            fsync_dir(Path(folder))
        self._snapshots.mkdir(exist_ok=True)
        snapshot = self._snapshots / manifest.snapshot_id()
        if snapshot.exists():
            # The same content was committed before (the link switch may not have happened).
            shutil.rmtree(staging)
        else:
            os.rename(staging, snapshot)
            fsync_dir(self._snapshots)
        previous = self.current()
        link = self.folder / f".current-{uuid.uuid4().hex}"
        os.symlink(os.path.relpath(snapshot, self.folder), link)
        os.replace(link, self._current)
        fsync_dir(self.folder)
        # Keep the snapshot just replaced too: rolling back by hand then needs no download.
        keep = {snapshot.name, previous.folder.name if previous else ""}
        for old in self._snapshots.iterdir():
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
        return Snapshot(snapshot, manifest)
