"""What a replica's death costs the connections still waiting to be accepted: one listening socket
shared by the replicas (what `aegis serve` does) against SO_REUSEPORT (one socket per replica).

Two listener processes accept slowly (ACCEPT_EVERY_S a connection), so that queues build up; a
burst of CONNECTIONS clients connect, each sends a line and waits for the answer; once they are
all queued, one listener is SIGKILLed. Each client ends answered, reset, or timed out. With
SO_REUSEPORT the kernel hashes each connection to one socket's queue, and the killed listener's
queue is reset with it; with a shared socket the queue outlives any one listener.

    .venv/bin/python bench/reuseport_loss.py [--connections 200]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"
ACCEPT_EVERY_S = 0.01
LISTENER = """
import os, socket, sys, time
mode, port, every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
if mode == "shared":
    sock = socket.socket(fileno=int(os.environ["LISTEN_FD"]))
else:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
print("listening", flush=True)
while True:
    conn, _ = sock.accept()
    conn.recv(100)
    conn.sendall(b"ok\\n")
    conn.close()
    time.sleep(every)
"""


def start_listeners(
    mode: str, port: int, shared: socket.socket | None
) -> list[subprocess.Popen[bytes]]:
    listeners = []
    for _ in range(2):
        env = dict(os.environ)
        fds: tuple[int, ...] = ()
        if shared is not None:
            env["LISTEN_FD"] = str(shared.fileno())
            fds = (shared.fileno(),)
        process = subprocess.Popen(
            [sys.executable, "-c", LISTENER, mode, str(port), str(ACCEPT_EVERY_S)],
            stdout=subprocess.PIPE,
            env=env,
            pass_fds=fds,
            start_new_session=True,
        )
        assert process.stdout is not None
        process.stdout.readline()
        listeners.append(process)
    return listeners


def client(port: int, outcomes: list[str], lock: threading.Lock) -> None:
    try:
        with socket.create_connection((HOST, port), timeout=10) as conn:
            conn.sendall(b"hi\n")
            answer = conn.recv(100)
            outcome = "answered" if answer == b"ok\n" else "reset"  # b"": closed unanswered
    except ConnectionResetError:
        outcome = "reset"
    except TimeoutError:
        outcome = "timed out"
    except OSError as error:
        outcome = f"refused: {error}"
    with lock:
        outcomes.append(outcome)


def trial(mode: str, connections: int) -> dict[str, int]:
    shared = None
    probe = socket.socket()
    probe.bind((HOST, 0))
    port = probe.getsockname()[1]
    if mode == "shared":
        shared = probe
        shared.listen(1024)
    else:
        probe.close()
    listeners = start_listeners(mode, port, shared)
    outcomes: list[str] = []
    lock = threading.Lock()
    try:
        threads = [
            threading.Thread(target=client, args=(port, outcomes, lock), daemon=True)
            for _ in range(connections)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # every connection is queued by now; a few are answered
        os.kill(listeners[1].pid, signal.SIGKILL)
        for thread in threads:
            thread.join(30)
    finally:
        for process in listeners:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        if shared is not None:
            shared.close()
    return {kind: outcomes.count(kind) for kind in sorted(set(outcomes))}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=200)
    args = parser.parse_args(argv)
    results = {mode: trial(mode, args.connections) for mode in ("shared", "reuseport")}
    print(json.dumps({"connections": args.connections, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
