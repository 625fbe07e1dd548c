"""The host's rollout state: a rollout that failed, or was cut off, puts back the whole of what ran
(release link, config, unit files, pushed artifacts), and a rerun finds the rollout pending."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, cast

from tests.deploy.roletools import ROLLOUT, run_tool


class Host:
    """A host's managed paths under a temporary root."""

    def __init__(self, root: Path) -> None:
        self.state = root / "state"
        self.current = root / "opt/current"
        self.config = root / "etc/aegis.toml"
        self.dropin = root / "etc/aegis.service.d/20-aws.conf"
        self.artifact = root / "models/m.pt2"
        for path in (self.current, self.config, self.dropin, self.artifact):
            path.parent.mkdir(parents=True, exist_ok=True)
        (root / "releases/old").mkdir(parents=True)
        (root / "releases/new").mkdir(parents=True)
        self.current.symlink_to(root / "releases/old")
        self.config.write_text("[server]\n")
        self.config.chmod(0o640)
        self.artifact.write_bytes(b"old weights")

    def tool(self, command: str, release: str = "") -> dict[str, Any]:
        args = [command, "--state", str(self.state), "--current", str(self.current)]
        if command != "restore":
            args += ["--release", release, "--file", str(self.config), "--file", str(self.dropin)]
            args += ["--artifact", str(self.artifact)]
        result = run_tool(ROLLOUT, *args)
        assert result.returncode == 0, result.stderr
        return cast("dict[str, Any]", json.loads(result.stdout))

    def roll_out_new(self) -> None:
        """What a rollout changes, the way the role changes it (a new file renamed over)."""
        new = self.artifact.with_suffix(".tmp")
        new.write_bytes(b"new weights")
        new.replace(self.artifact)
        self.config.write_text("[server]\nkey_the_old_release_refuses = 1\n")
        self.dropin.write_text("[Service]\n")
        link = self.current.with_suffix(".tmp")
        link.symlink_to(self.current.parent.parent / "releases/new")
        link.replace(self.current)


def test_a_failed_rollout_puts_back_release_config_unit_files_and_artifacts(tmp_path: Path) -> None:
    host = Host(tmp_path)
    begun = host.tool("begin", release=str(tmp_path / "releases/new"))
    assert not begun["resumed"] and (host.state / "pending.json").exists()
    host.roll_out_new()
    restored = host.tool("restore")
    assert restored["changed"] and restored["release"] == str(tmp_path / "releases/old")
    assert os.readlink(host.current) == str(tmp_path / "releases/old")
    assert host.config.read_text() == "[server]\n"
    assert host.config.stat().st_mode & 0o777 == 0o640
    assert not host.dropin.exists(), "a file the rollout added is removed"
    assert host.artifact.read_bytes() == b"old weights"
    assert not (host.state / "pending.json").exists()


def test_a_cut_off_rollout_is_found_pending_and_keeps_the_good_state(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.tool("begin", release=str(tmp_path / "releases/new"))
    host.roll_out_new()  # ... and the controller is gone before the gate
    rerun = host.tool("begin", release=str(tmp_path / "releases/new"))
    assert rerun["resumed"] and not rerun["changed"]
    assert rerun["good"]["release"] == str(tmp_path / "releases/old")
    # The rerun's gate fails: what is put back is what ran before the first attempt.
    host.tool("restore")
    assert host.config.read_text() == "[server]\n"
    assert host.artifact.read_bytes() == b"old weights"


def test_a_passed_rollout_becomes_the_good_state_and_a_rerun_changes_nothing(
    tmp_path: Path,
) -> None:
    host = Host(tmp_path)
    host.tool("begin", release=str(tmp_path / "releases/new"))
    host.roll_out_new()
    committed = host.tool("commit", release=str(tmp_path / "releases/new"))
    assert committed["changed"] and not (host.state / "pending.json").exists()
    again = host.tool("begin", release=str(tmp_path / "releases/new"))
    assert not again["resumed"] and not again["changed"]
    assert not host.tool("commit", release=str(tmp_path / "releases/new"))["changed"]
    # Only what the good state refers to is kept: the old weights' link is gone.
    blobs = sorted(p.name for p in (host.state / "blobs").iterdir())
    assert len(blobs) == 3, blobs  # config, drop-in, artifact
    assert host.tool("restore")["changed"] is False
    assert host.artifact.read_bytes() == b"new weights"


def test_there_is_nothing_to_restore_before_a_first_good_state(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.current.unlink()
    result = run_tool(
        ROLLOUT, "restore", "--state", str(host.state), "--current", str(host.current)
    )
    assert result.returncode == 1
    assert "no good state to restore" in result.stderr
