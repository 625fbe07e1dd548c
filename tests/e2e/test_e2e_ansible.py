"""The playbooks themselves: lint (production profile, offline) and provisioning in check mode."""

from __future__ import annotations

import json
import os
import re
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
    code, output = provision(
        tier,
        tmp_path,
        "aegis_tpu_vm_project: aegis-e2e\n"
        "aegis_tpu_vm_nodes:\n"
        "  - name: tpu-serve-1\n"
        "  - {name: tpu-serve-2, accelerator_type: v5litepod-4, spot: true}\n"
        "  - {name: tpu-serve-3, queued: true}\n"
        # A gcloud that does not exist: check mode must not call it.
        "aegis_tpu_vm_gcloud: /nonexistent/gcloud\n",
        "--check",
    )
    assert code == 0, output[-4000:]
    assert "tpu-vm create tpu-serve-1 --project=aegis-e2e" in output
    assert "--accelerator-type=v5litepod-4" in output and "--spot" in output
    assert "queued-resources create tpu-serve-3 --node-id=tpu-serve-3 --project=aegis-e2e" in output


FAKE_GCLOUD = """#!/bin/sh
# Records each call and answers as a project would where: tpu-serve-1 is READY, tpu-spot a
# preempted Spot VM, tpu-q-wait a queued request waiting for capacity, tpu-q-failed a queued
# request that FAILED; nothing else exists.
echo "$*" >> "$(dirname "$0")/calls"
case "$*" in
  *"tpu-vm describe tpu-serve-1 "*)
    echo '{"state": "READY", "acceleratorType": "v5litepod-8"}' ;;
  *"tpu-vm describe tpu-spot "*)
    echo '{"state": "PREEMPTED", "acceleratorType": "v5litepod-8"}' ;;
  *"queued-resources describe tpu-q-wait "*)
    echo '{"state": {"state": "WAITING_FOR_RESOURCES"}}' ;;
  *"queued-resources describe tpu-q-failed "*)
    echo '{"state": {"state": "FAILED"}}' ;;
  *describe*) echo "ERROR: (gcloud.compute.tpus) NOT_FOUND: not found" >&2; exit 1 ;;
esac
"""


def provision(tier: Tier, tmp_path: Path, fleet_yaml: str, *options: str) -> tuple[int, str]:
    fleet = tmp_path / "fleet.yml"
    fleet.write_text(fleet_yaml)
    result = subprocess.run(
        [
            f"{tier.deploy_venv}/bin/ansible-playbook",
            *options,
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
    return result.returncode, result.stdout + result.stderr


def test_provision_creates_what_is_missing_and_replaces_what_cannot_serve(
    tier: Tier, tmp_path: Path
) -> None:
    gcloud = tmp_path / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(0o755)
    code, output = provision(
        tier,
        tmp_path,
        "aegis_tpu_vm_project: aegis-e2e\n"
        "aegis_tpu_vm_service_account: aegis-serve@aegis-e2e.iam.gserviceaccount.com\n"
        "aegis_tpu_vm_nodes:\n"
        "  - {name: tpu-serve-1}\n"
        "  - {name: tpu-serve-2}\n"
        "  - {name: tpu-spot, spot: true}\n"
        "  - {name: tpu-q-wait, queued: true}\n"
        "  - {name: tpu-q-failed, queued: true, spot: true}\n"
        "  - {name: tpu-q-new, queued: true, accelerator_type: v6e-8}\n"
        f"aegis_tpu_vm_gcloud: {gcloud}\n",
    )
    assert code == 0, output[-4000:]
    calls = (tmp_path / "calls").read_text().splitlines()
    changes = [call for call in calls if " create " in call or " delete " in call]
    assert [" ".join(call.split()[:5]) for call in changes] == [
        "compute tpus tpu-vm create tpu-serve-2",
        "compute tpus tpu-vm delete tpu-spot",
        "compute tpus tpu-vm create tpu-spot",
        "compute tpus queued-resources delete tpu-q-failed",
        "compute tpus queued-resources create tpu-q-failed",
        "compute tpus queued-resources create tpu-q-new",
    ], calls
    assert "--force" in changes[3] and "--quiet" in changes[3]
    new = changes[-1]
    assert "--node-id=tpu-q-new" in new and "--accelerator-type=v6e-8" in new, new
    assert "--runtime-version=v2-alpha-tpuv5-lite" in new, new
    assert "--spot" in changes[4] and "--spot" not in new
    for create in (changes[0], changes[2], new):
        assert "--service-account=aegis-serve@aegis-e2e.iam.gserviceaccount.com" in create
        assert "--scopes=https://www.googleapis.com/auth/devstorage.read_only," in create
    assert "tpu-q-wait: queued resource WAITING_FOR_RESOURCES, waiting for capacity" in output
    assert PlaybookRun(code, output, 0).recap("localhost")["changed"] == 6


def test_provision_refuses_a_vm_of_another_accelerator_type(tier: Tier, tmp_path: Path) -> None:
    gcloud = tmp_path / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(0o755)
    code, output = provision(
        tier,
        tmp_path,
        "aegis_tpu_vm_project: aegis-e2e\n"
        "aegis_tpu_vm_nodes: [{name: tpu-serve-1, accelerator_type: v6e-8}]\n"
        f"aegis_tpu_vm_gcloud: {gcloud}\n",
    )
    assert code != 0
    assert "tpu-serve-1 exists as v5litepod-8, not v6e-8" in output, output[-3000:]
    assert not [c for c in (tmp_path / "calls").read_text().splitlines() if " create " in c]


def test_deploy_batches_follow_the_inventory_canaries_first(tier: Tier, tmp_path: Path) -> None:
    """aegis_deploy_serial set in the inventory (not -e) is honoured, and group aegis_canary makes
    the first batch. Five local hosts; only the tags-always parts run (no host is changed)."""
    host = {
        "ansible_connection": "local",
        "ansible_become": False,
        "ansible_python_interpreter": f"{tier.deploy_venv}/bin/python",
    }
    inventory = {
        "aegis": {
            "hosts": {name: dict(host) for name in "abcde"},
            "vars": {
                "aegis_deploy_serial": 2,
                # The roles check their settings in every run, whatever the tags.
                "aegis_appliance_wheel": "/nonexistent/aegis_appliance-0-py3-none-any.whl",
                "aegis_appliance_models": [{"name": "m", "model_path": "/m.pt2"}],
                "aegis_appliance_runtime_site_packages": "/nonexistent",
            },
        },
        "aegis_canary": {"hosts": {"c": {}}},
    }
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(inventory))
    result = subprocess.run(
        [
            f"{tier.deploy_venv}/bin/ansible-playbook",
            "-i",
            str(path),
            "--tags",
            "aegis_no_such_tag",
            "ansible/deploy.yml",
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
    # Ansible starts the play again for each batch: the hosts of each start are one batch.
    batches = [
        sorted(set(re.findall(r"^ok: \[(\w)\]", section, re.MULTILINE)))
        for section in output.split("PLAY [Deploy the Aegis inference appliance]")[1:]
    ]
    assert batches == [["c"], ["a", "b"], ["d", "e"]], output[-4000:]
