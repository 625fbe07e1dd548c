#!/usr/bin/env python3
"""The rollout state of one Aegis host: what last passed the gate, and whether a rollout runs.

Installed by the aegis_appliance role and run by it as root, on the host, so that the state
survives a lost controller or a dropped ssh connection:

  begin   --state DIR --release PATH (--file P | --artifact P)...
  commit  --state DIR --release PATH (--file P | --artifact P)...
  restore --state DIR

The good state (DIR/good.json and the copies in DIR/blobs) is the whole of what ran when a rollout
last passed its gate: the release /opt/aegis/current pointed at, and each managed file (config,
unit, drop-ins, pushed artifacts), with its content, owner and mode, or its absence. A rollout
writes DIR/pending.json before it changes anything, and it is removed once the host passed the
gate (commit) or was put back as it was (restore). When `begin` finds a pending rollout, it was cut
off (controller gone, ssh dropped): the good state stays as it is, and the caller restarts the
service and gates it again, so a rerun finishes the rollout or rolls it back.

Files (config, unit, drop-ins) are copied. Artifacts, which may be large, are hard-linked when they
are on the same file system: the role replaces them by renaming a new file over the old one, which
leaves a linked copy intact. Each command prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GOOD = "good.json"
PENDING = "pending.json"
BLOBS = "blobs"


def _write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        json.dump(document, stream, indent=1, sort_keys=True)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with path.open(encoding="utf-8") as stream:
            return json.load(stream)
    except FileNotFoundError:
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _keep(state: Path, path: Path, artifact: bool) -> str:
    """Store the current content of `path` among the blobs; the blob's name."""
    blobs = state / BLOBS
    info = path.stat()
    if artifact:
        # The same inode, size and mtime are the same content: a rerun links nothing new.
        name = f"inode-{info.st_dev}-{info.st_ino}-{info.st_size}-{info.st_mtime_ns}"
        if not (blobs / name).exists():
            try:
                os.link(path, blobs / name)
            except OSError:  # another file system: a copy, named by its content
                artifact = False
        if artifact:
            return name
    name = f"sha256-{_sha256(path)}"
    if not (blobs / name).exists():
        fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".copy.")
        os.close(fd)
        shutil.copyfile(path, tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, blobs / name)
    return name


def snapshot(state: Path, release: str, files: list[str], artifacts: list[str]) -> dict[str, Any]:
    """The live state of the managed paths, their content kept among the blobs."""
    entries: dict[str, Any] = {}
    for paths, artifact in ((files, False), (artifacts, True)):
        for name in paths:
            path = Path(name)
            if not path.is_file():
                entries[name] = {"present": False}
                continue
            info = path.stat()
            entries[name] = {
                "present": True,
                "blob": _keep(state, path, artifact),
                "mode": info.st_mode & 0o7777,
                "uid": info.st_uid,
                "gid": info.st_gid,
            }
    return {"release": release, "files": entries}


def _collect_garbage(state: Path, good: dict[str, Any]) -> None:
    used = {entry["blob"] for entry in good["files"].values() if entry["present"]}
    for blob in (state / BLOBS).iterdir():
        if blob.name not in used:
            blob.unlink()


def _live_release(link: Path) -> str:
    return os.readlink(link) if link.is_symlink() else ""


def _prepare(state: Path) -> None:
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    (state / BLOBS).mkdir(mode=0o700, exist_ok=True)


def begin(args: argparse.Namespace) -> dict[str, Any]:
    state: Path = args.state
    _prepare(state)
    pending = _read_json(state / PENDING)
    good = _read_json(state / GOOD)
    if pending is not None:
        return {"resumed": True, "pending": pending, "good": good, "changed": False}
    fresh = snapshot(state, _live_release(args.current), args.file, args.artifact)
    changed = fresh != good
    if changed:
        _write_json_atomically(state / GOOD, fresh)
        _collect_garbage(state, fresh)
    pending = {"release": args.release, "started": time.time(), "previous": fresh["release"]}
    _write_json_atomically(state / PENDING, pending)
    return {"resumed": False, "pending": pending, "good": fresh, "changed": changed}


def commit(args: argparse.Namespace) -> dict[str, Any]:
    state: Path = args.state
    _prepare(state)
    good = snapshot(state, _live_release(args.current), args.file, args.artifact)
    changed = good != _read_json(state / GOOD)
    _write_json_atomically(state / GOOD, good)
    _collect_garbage(state, good)
    (state / PENDING).unlink(missing_ok=True)
    return {"good": good, "changed": changed}


def _same_content(path: Path, blob: Path, name: str) -> bool:
    if not path.is_file():
        return False
    if name.startswith("inode-"):
        return os.path.samefile(path, blob)
    return _sha256(path) == name.removeprefix("sha256-")


def _put_back(state: Path, name: str, entry: dict[str, Any]) -> str:
    """Make `name` what the good state says it was; what was done."""
    path = Path(name)
    if not entry["present"]:
        if path.is_file() or path.is_symlink():
            path.unlink()
            return "removed"
        return "absent"
    blob = state / BLOBS / entry["blob"]
    if _same_content(path, blob, entry["blob"]):
        os.chown(path, entry["uid"], entry["gid"])
        os.chmod(path, entry["mode"])
        return "unchanged"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.aegis-rollout")
    tmp.unlink(missing_ok=True)
    if entry["blob"].startswith("inode-"):
        os.link(blob, tmp)
    else:
        shutil.copyfile(blob, tmp)
    os.chown(tmp, entry["uid"], entry["gid"])
    os.chmod(tmp, entry["mode"])
    os.replace(tmp, path)
    return "restored"


def restore(args: argparse.Namespace) -> dict[str, Any]:
    state: Path = args.state
    good = _read_json(state / GOOD)
    if good is None or not good["release"]:
        raise SystemExit("aegis-rollout: no good state to restore (this host never passed a gate)")
    done = {name: _put_back(state, name, entry) for name, entry in sorted(good["files"].items())}
    link: Path = args.current
    if _live_release(link) != good["release"]:
        tmp = link.with_name(f".{link.name}.aegis-rollout")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(good["release"])
        os.replace(tmp, link)
        done[str(link)] = "restored"
    (state / PENDING).unlink(missing_ok=True)
    changed = any(what in ("restored", "removed") for what in done.values())
    return {"release": good["release"], "files": done, "changed": changed}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aegis-rollout", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("begin", "commit", "restore"):
        command = commands.add_parser(name)
        command.add_argument("--state", type=Path, required=True, help="the state folder")
        command.add_argument(
            "--current", type=Path, default=Path("/opt/aegis/current"), help="the release link"
        )
        if name != "restore":
            command.add_argument("--release", default="", help="the release being rolled out")
            command.add_argument("--file", action="append", default=[], help="a file, copied")
            command.add_argument(
                "--artifact", action="append", default=[], help="a large file, hard-linked"
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run = {"begin": begin, "commit": commit, "restore": restore}[args.command]
    print(json.dumps(run(args), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
