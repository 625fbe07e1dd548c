"""A Debian root booted by systemd-nspawn, reached over real ssh inside its network namespace.

Everything a container makes carries its machine name (cgroups, network namespace, temp folder),
so `cleanup(prefix)` can remove what a killed run left behind. Every wait here is bounded.
Measured facts these choices rest on: ../shared/notes/field-notes.md ("systemd and Ansible").
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

REPO = Path(__file__).resolve().parents[2]
# The unified (v2) one first: its cgroup.kill ends every process of a subtree at once.
CGROUP_HIERARCHIES = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"))
NETNS_DIR = Path("/run/netns")
WORK_DIR = Path("/var/tmp")


class HarnessError(RuntimeError):
    """The container could not be brought up or reached."""


def run(
    argv: list[str], timeout: float, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion within `timeout` seconds, capturing its output."""
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    if check and result.returncode != 0:
        raise HarnessError(
            f"{' '.join(argv)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def wait_until(
    what: str, predicate: Callable[[], bool], timeout: float, interval: float = 0.2
) -> None:
    """Poll `predicate()` until it is true; HarnessError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}")


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a UNIX socket: the host end of the forwarder into the container's namespace."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.socket_path))
        self.sock = sock


@dataclass
class Container:
    """One booted container: its root, its ssh identity and the processes that keep it up."""

    name: str
    workdir: Path
    rootfs_tarball: Path
    root: Path = field(init=False)
    key: Path = field(init=False)
    known_hosts: Path = field(init=False)
    http_socket: Path = field(init=False)
    nspawn: subprocess.Popen[bytes] | None = field(default=None, init=False)
    forwarder: subprocess.Popen[bytes] | None = field(default=None, init=False)
    leader: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.root = self.workdir / "root"
        self.key = self.workdir / "id_ed25519"
        self.known_hosts = self.workdir / "known_hosts"
        self.http_socket = self.workdir / "http.sock"

    # -- bring up --------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Unpack the root and give it a host name, fresh host keys and our client key."""
        self.root.mkdir(parents=True)
        run(["tar", "--zstd", "-xpf", str(self.rootfs_tarball), "-C", str(self.root)], 120)
        (self.root / "etc/hostname").write_text(f"{self.name}\n")
        # Host keys are made per container (the cached root has none) and pinned below.
        run(["ssh-keygen", "-A", "-f", str(self.root)], 60)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], 30)
        ssh_dir = self.root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        authorized = ssh_dir / "authorized_keys"
        authorized.write_text(self.key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        host_key = (self.root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
        self.known_hosts.write_text(f"{self.name} {host_key[0]} {host_key[1]}\n")

    def boot(self, timeout: float = 60) -> None:
        """Boot with systemd as PID 1 on a private network, in a cgroup subtree of its own."""
        for hierarchy in CGROUP_HIERARCHIES:
            (hierarchy / self.name).mkdir()
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
        log = (self.workdir / "nspawn.log").open("wb")
        self.nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                f"--directory={self.root}",
                f"--machine={self.name}",
                "--boot",
                "--private-network",
                # Without these two, nspawn asks the host's (absent) systemd for a scope.
                "--keep-unit",
                "--register=no",
                # BPF-based filters (IPAddressDeny=, the syscall filter) work inside.
                "--system-call-filter=bpf",
                # Never the host's tty: a getty on it would change the host node's mode.
                "--console=passive",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=self._enter_cgroup,
        )
        log.close()
        wait_until("the container's PID 1", self._find_leader, timeout)
        run(["ip", "netns", "attach", self.name, str(self.leader)], 30)
        wait_until("systemd to finish booting", self._booted, timeout, interval=0.5)
        self.forwarder = subprocess.Popen(
            [
                *("ip", "netns", "exec", self.name, "socat"),
                f"UNIX-LISTEN:{self.http_socket},fork,mode=600",
                "TCP:127.0.0.1:8080",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until("the HTTP forwarder", self.http_socket.exists, 10)

    def _enter_cgroup(self) -> None:
        for hierarchy in CGROUP_HIERARCHIES:
            (hierarchy / self.name / "cgroup.procs").write_text("0")

    def _find_leader(self) -> bool:
        if self.nspawn is not None and self.nspawn.poll() is not None:
            raise HarnessError(f"systemd-nspawn exited {self.nspawn.returncode}: {self.boot_log()}")
        procs = CGROUP_HIERARCHIES[0] / self.name / "payload/init.scope/cgroup.procs"
        with contextlib.suppress(OSError):
            pids = procs.read_text().split()
            if pids:
                self.leader = int(pids[0])
                return True
        return False

    def _booted(self) -> bool:
        result = self.ssh("systemctl is-system-running", timeout=10, check=False)
        return result.stdout.strip() in ("running", "degraded")

    def boot_log(self) -> str:
        log = self.workdir / "nspawn.log"
        return log.read_text(errors="replace")[-4000:] if log.exists() else ""

    # -- use ------------------------------------------------------------------------------------

    def ssh_config(self) -> dict[str, str]:
        """ssh options: through the namespace (no route exists), the pinned host key only."""
        return {
            "ProxyCommand": f"ip netns exec {self.name} socat STDIO TCP:127.0.0.1:22",
            "UserKnownHostsFile": str(self.known_hosts),
            "StrictHostKeyChecking": "yes",
            "BatchMode": "yes",
        }

    def ssh_options(self) -> list[str]:
        return [arg for key, value in self.ssh_config().items() for arg in ("-o", f"{key}={value}")]

    def ansible_ssh_args(self) -> str:
        """ANSIBLE_SSH_ARGS: connection sharing, with the masters' sockets in our folder."""
        return f"-o ControlMaster=auto -o ControlPersist=60s -o ControlPath={self.workdir}/ssh-%C"

    def ssh(
        self, command: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command in the container as root, over ssh."""
        return run(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-i",
                str(self.key),
                *self.ssh_options(),
                f"root@{self.name}",
                command,
            ],
            timeout,
            check,
        )

    def http(
        self, method: str, path: str, body: object = None, timeout: float = 10
    ) -> tuple[int, object]:
        """One request to the service through the namespace; (status, decoded JSON or text)."""
        connection = UnixHTTPConnection(self.http_socket, timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            connection.request(method, path, body=payload)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode(errors="replace")

    def inventory(self, path: Path, variables: dict[str, object]) -> None:
        """An Ansible inventory with this container as the only host of group `aegis`."""
        options = " ".join(shlex.quote(arg) for arg in self.ssh_options())
        host = {
            "ansible_host": self.name,
            "ansible_user": "root",
            "ansible_become": False,
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": f"-F /dev/null {options}",
            "ansible_python_interpreter": "/usr/bin/python3",
        }
        inventory = {"aegis": {"hosts": {self.name: host}, "vars": variables}}
        path.write_text(json.dumps(inventory, indent=2))

    # -- tear down ------------------------------------------------------------------------------

    def destroy(self) -> list[str]:
        """Remove everything this container made; the problems met, if any."""
        problems = []
        if self.forwarder is not None:
            _stop(self.forwarder, signal.SIGTERM, 5)
        # Ansible's shared ssh connection would otherwise linger after the container is gone.
        run(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-o",
                f"ControlPath={self.workdir}/ssh-%C",
                "-O",
                "exit",
                f"root@{self.name}",
            ],
            10,
            check=False,
        )
        # nspawn turns SIGTERM into SIGRTMIN+3 for the container's systemd: a clean poweroff.
        running = self.nspawn is not None and self.nspawn.poll() is None
        if running and self.nspawn is not None and not _stop(self.nspawn, signal.SIGTERM, 30):
            problems.append(f"{self.name}: no clean poweroff within 30s, killed")
        problems += cleanup_machine(self.name, self.workdir)
        return problems


def _stop(process: subprocess.Popen[bytes], signum: int, timeout: float) -> bool:
    """Signal `process`, wait up to `timeout` s, then kill it; True when it exited in time."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)
    try:
        process.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        return False


def _remove_cgroup(path: Path) -> None:
    """Kill what is left in a cgroup subtree and remove it, deepest first."""
    if not path.is_dir():
        return
    kill = path / "cgroup.kill"
    if kill.exists():
        kill.write_text("1")
    else:
        for procs in path.rglob("cgroup.procs"):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    subtree = [p for p in path.rglob("*") if p.is_dir()] + [path]
    for cgroup in sorted(subtree, key=lambda p: -len(p.parts)):
        # The default binds this loop's cgroup, which mypy cannot type in a lambda.
        wait_until(f"{cgroup} to empty", cast("Callable[[], bool]", lambda c=cgroup: _rmdir(c)), 10)


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def cleanup_machine(name: str, workdir: Path | None) -> list[str]:
    """Remove a machine's cgroups, network namespace, mounts and folder; the problems met."""
    problems = []
    for hierarchy in CGROUP_HIERARCHIES:
        try:
            _remove_cgroup(hierarchy / name)
        except (OSError, HarnessError) as error:
            problems.append(f"{name}: cgroup {hierarchy}: {error}")
    if (NETNS_DIR / name).exists():
        result = run(["ip", "netns", "delete", name], 30, check=False)
        if result.returncode != 0:
            problems.append(f"{name}: ip netns delete: {result.stderr.strip()}")
    if workdir is not None:
        # Our helpers outside the container (the HTTP forwarder, ssh masters, an orphaned
        # ansible-playbook) all name the machine's folder on their command line.
        for pid in _processes_naming(str(workdir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if workdir is not None and workdir.exists():
        mounts = [
            line.split()[1]
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(workdir) + "/")
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            run(["umount", "--lazy", mount], 30, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
        if workdir.exists():
            problems.append(f"{name}: could not remove {workdir}")
    return problems


def _processes_naming(text: str) -> list[int]:
    """Processes (not this one) whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def cleanup(prefix: str) -> list[str]:
    """Remove every machine whose name starts with `prefix` (a killed run's leftovers)."""
    names = {p.name for h in CGROUP_HIERARCHIES if h.is_dir() for p in h.glob(f"{prefix}*")}
    names |= {p.name for p in NETNS_DIR.glob(f"{prefix}*")} if NETNS_DIR.is_dir() else set()
    problems = []
    for name in sorted(names):
        problems += cleanup_machine(name, None)
    for workdir in WORK_DIR.glob(f"{prefix}*"):
        problems += cleanup_machine(workdir.name.split(".")[0], workdir)
    return problems


@contextlib.contextmanager
def booted_container(name: str, rootfs_tarball: Path) -> Iterator[Container]:
    """A booted, reachable container, torn down on exit whatever happened inside."""
    if not re.fullmatch(r"[a-z0-9-]{1,60}", name):
        raise ValueError(f"machine name {name!r}: lowercase letters, digits and '-' only")
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=WORK_DIR))
    container = Container(name, workdir, rootfs_tarball)
    try:
        container.prepare()
        container.boot()
        yield container
    finally:
        problems = container.destroy()
        if problems:
            print("teardown problems:\n  " + "\n  ".join(problems), file=sys.stderr)


if __name__ == "__main__":
    # run_tier.sh's trap: `python harness.py cleanup PREFIX` after a run that could not clean up.
    if len(sys.argv) != 3 or sys.argv[1] != "cleanup":
        sys.exit("usage: harness.py cleanup PREFIX")
    leftovers = cleanup(sys.argv[2])
    for problem in leftovers:
        print(problem, file=sys.stderr)
    sys.exit(1 if leftovers else 0)
