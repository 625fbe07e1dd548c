"""Fixtures of the deploy tier; tests/e2e/run_tier.sh prepares what they read."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import REPO, Container


@dataclass(frozen=True)
class Tier:
    """What run_tier.sh built: the cached root, the wheels, the controller's Ansible."""

    prefix: str
    rootfs: Path
    runtime_wheels: Path
    app_wheels: Path
    app_wheel: Path
    unready_wheel: Path
    next_wheel: Path
    deploy_venv: Path
    logs: Path

    def record(self, line: str) -> None:
        """Append a result line (scores, timings) for run_tier.sh to print at the end."""
        with (self.logs / "results.txt").open("a") as results:
            results.write(line + "\n")


@pytest.fixture(scope="session")
def tier() -> Tier:
    names = {
        "prefix": "AEGIS_E2E_PREFIX",
        "rootfs": "AEGIS_E2E_ROOTFS",
        "runtime_wheels": "AEGIS_E2E_RUNTIME_WHEELS",
        "app_wheels": "AEGIS_E2E_APP_WHEELS",
        "app_wheel": "AEGIS_E2E_APP_WHEEL",
        "unready_wheel": "AEGIS_E2E_UNREADY_WHEEL",
        "next_wheel": "AEGIS_E2E_NEXT_WHEEL",
        "deploy_venv": "AEGIS_E2E_DEPLOY_VENV",
        "logs": "AEGIS_E2E_LOGS",
    }
    missing = [env for env in names.values() if not os.environ.get(env)]
    if missing:
        pytest.fail(f"run this tier with tests/e2e/run_tier.sh (unset: {', '.join(missing)})")
    values = {key: os.environ[env] for key, env in names.items()}
    return Tier(prefix=values.pop("prefix"), **{key: Path(value) for key, value in values.items()})


@dataclass(frozen=True)
class PlaybookRun:
    returncode: int
    output: str
    seconds: float

    def recap(self, host: str) -> dict[str, int]:
        """The PLAY RECAP counters of `host` (ok, changed, failed, ...)."""
        match = re.search(rf"^{re.escape(host)}\s+:\s+(.*)$", self.output, re.MULTILINE)
        assert match, f"no PLAY RECAP line for {host}:\n{self.output[-3000:]}"
        return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}


def _environment(tier: Tier, container: Container, log_name: str) -> dict[str, str]:
    home = container.workdir / "ansible-home"
    return dict(
        os.environ,
        PATH=f"{tier.deploy_venv}/bin:{os.environ['PATH']}",
        ANSIBLE_HOME=str(home),
        ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
        ANSIBLE_SSH_ARGS=container.ansible_ssh_args(),
        # One ssh round trip per task instead of several: the first deploy runs ~80 tasks.
        ANSIBLE_PIPELINING="true",
        ANSIBLE_NOCOLOR="true",
        ANSIBLE_RETRY_FILES_ENABLED="false",
        # The same output again, each line timestamped: where a slow run spent its time.
        ANSIBLE_LOG_PATH=str(tier.logs / f"{log_name}.timed.log"),
    )


def _argv(
    tier: Tier,
    playbook: str,
    inventory: Path,
    extra_vars: dict[str, object] | None,
    options: list[str],
) -> list[str]:
    argv = [f"{tier.deploy_venv}/bin/ansible-playbook", "-i", str(inventory), *options, playbook]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    return argv


def ansible_playbook(
    tier: Tier,
    container: Container,
    playbook: str,
    inventory: Path,
    log_name: str,
    extra_vars: dict[str, object] | None = None,
    timeout: float = 900,
    options: list[str] | None = None,
) -> PlaybookRun:
    """Run ansible-playbook from the controller's venv; the full output goes to the tier's logs."""
    started = time.monotonic()
    result = subprocess.run(
        _argv(tier, playbook, inventory, extra_vars, options or []),
        cwd=REPO,
        env=_environment(tier, container, log_name),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    run = PlaybookRun(result.returncode, result.stdout + result.stderr, time.monotonic() - started)
    (tier.logs / f"{log_name}.log").write_text(run.output)
    tier.record(f"{log_name}: rc={run.returncode} {run.seconds:.0f}s")
    return run


@contextlib.contextmanager
def started_playbook(
    tier: Tier,
    container: Container,
    playbook: str,
    inventory: Path,
    log_name: str,
    extra_vars: dict[str, object] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """ansible-playbook in a process group of its own, killed with it on exit (a controller that
    dies mid-rollout, its ssh connections with it). Its output goes to the tier's logs."""
    with (tier.logs / f"{log_name}.log").open("wb") as log:
        process = subprocess.Popen(
            _argv(tier, playbook, inventory, extra_vars, []),
            cwd=REPO,
            env=_environment(tier, container, log_name),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
