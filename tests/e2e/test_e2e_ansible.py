"""The playbooks themselves: lint (production profile, offline) and provisioning in check mode."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import PlaybookRun, Tier
from tests.e2e.harness import REPO

pytestmark = pytest.mark.e2e


def test_ansible_lint_production_profile_offline(tier: Tier) -> None:
    # No network at all: a lint that needed Galaxy would fail here, not in some air-gapped CI.
    result = subprocess.run(
        [
            "unshare",
            "--net",
            f"{tier.deploy_venv}/bin/ansible-lint",
            "-c",
            "ansible/.ansible-lint",
            "ansible/",
        ],
        cwd=REPO,
        env=dict(os.environ, PATH=f"{tier.deploy_venv}/bin:{os.environ['PATH']}", NO_COLOR="1"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Profile 'production' was required, and it passed" in output, output[-4000:]


def test_provision_check_mode_needs_no_gcloud(tier: Tier, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yml"
    fleet.write_text(
        "aegis_tpu_vm_project: aegis-e2e\n"
        "aegis_tpu_vm_nodes:\n"
        "  - name: tpu-serve-1\n"
        "  - {name: tpu-serve-2, accelerator_type: v5litepod-4, spot: true}\n"
        # A gcloud that does not exist: check mode must not call it.
        "aegis_tpu_vm_gcloud: /nonexistent/gcloud\n"
    )
    result = subprocess.run(
        [
            f"{tier.deploy_venv}/bin/ansible-playbook",
            "--check",
            "ansible/provision.yml",
            "-e",
            f"@{fleet}",
        ],
        cwd=REPO,
        env=dict(
            os.environ,
            ANSIBLE_HOME=str(tmp_path / "ansible-home"),
            ANSIBLE_LOCALHOST_WARNING="false",
            ANSIBLE_NOCOLOR="true",
        ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "tpu-vm create tpu-serve-1 --project=aegis-e2e" in output
    assert "--accelerator-type=v5litepod-4" in output and "--spot" in output


FAKE_GCLOUD = """#!/bin/sh
# Records each call; tpu-serve-1 exists, every other VM does not.
echo "$*" >> "$(dirname "$0")/calls"
case "$*" in
  *"describe tpu-serve-1 "*) echo '{"acceptedBy": "fake", "acceleratorType": "v5litepod-8"}' ;;
  *describe*) echo "ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: node" >&2; exit 1 ;;
esac
"""


def test_provision_creates_only_missing_vms(tier: Tier, tmp_path: Path) -> None:
    gcloud = tmp_path / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(0o755)
    fleet = tmp_path / "fleet.yml"
    fleet.write_text(
        "aegis_tpu_vm_project: aegis-e2e\n"
        "aegis_tpu_vm_nodes: [{name: tpu-serve-1}, {name: tpu-serve-2}]\n"
        f"aegis_tpu_vm_gcloud: {gcloud}\n"
    )
    result = subprocess.run(
        [f"{tier.deploy_venv}/bin/ansible-playbook", "ansible/provision.yml", "-e", f"@{fleet}"],
        cwd=REPO,
        env=dict(
            os.environ,
            ANSIBLE_HOME=str(tmp_path / "ansible-home"),
            ANSIBLE_LOCALHOST_WARNING="false",
            ANSIBLE_NOCOLOR="true",
        ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    calls = (tmp_path / "calls").read_text().splitlines()
    creates = [call for call in calls if " create " in f" {call} "]
    assert len(creates) == 1 and "create tpu-serve-2 " in creates[0], calls
    assert PlaybookRun(result.returncode, output, 0).recap("localhost")["changed"] == 1
