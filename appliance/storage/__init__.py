"""Model artifacts from Cloud Storage, S3 (or local paths) into a verified, crash-safe local cache.

`ArtifactStore.sync(name, version, source)` returns the local path to load. Local and file://
sources are used in place. gs:// and s3:// sources (one object, or a prefix ending in '/') are
synced into `storage.cache_dir`, the same way whatever the store (remote.py is the interface each
store implements: gcs.py, s3.py):

    <cache_dir>/<model>/<version>/
        .lock                   flock: one sync of a version at a time, across processes
        current -> snapshots/<id>   symlink to the live snapshot, switched by an atomic rename
        snapshots/<id>/         complete, verified, never modified once here; <id> hashes the
            manifest.json       manifest. Keeps the live one and the one it replaced.
            data/<files>        one object: data/<its base name>; a prefix: the tree below it
        staging/<random>/       a snapshot being written; what a killed sync left is removed
                                by the next sync of that version, before anything else

manifest.json records the source, the bucket, and per object its name, version (GCS generation,
S3 ETag), size and the checksums it was verified against. A sync lists the source; when every
object's version and size match the live manifest it downloads nothing. Otherwise unchanged files
are hard-linked into a new staging folder and the rest is downloaded there (up to
`download_concurrency` ranges at a time; objects over 32 MiB in 16 MiB ranges, every range pinned
to the listed version), each object's size and checksum (crc32c, crc32, sha256, sha1 or md5,
whichever the store has) checked, files and folders fsynced, the folder renamed into snapshots/ and
`current` switched. A failed check or a kill leaves `current` as it was.

When the source cannot be reached (connection errors, timeouts, 429 and 5xx after bounded
retries, credentials refused), the live snapshot is served with `stale=True`, a warning is logged
and `aegis_artifact_stale` is set to 1; with no live snapshot the sync fails with SyncError.
"""

from appliance.storage.command import run_sync_command
from appliance.storage.errors import SyncError
from appliance.storage.progress import LogProgress, SyncProgress, TerminalProgress
from appliance.storage.retry import RetryPolicy
from appliance.storage.sync import ArtifactStore, SyncedArtifact, sync_all

__all__ = [
    "ArtifactStore",
    "LogProgress",
    "RetryPolicy",
    "SyncError",
    "SyncProgress",
    "SyncedArtifact",
    "TerminalProgress",
    "run_sync_command",
    "sync_all",
]
