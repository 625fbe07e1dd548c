"""SIGTERM under a load of clients that open a new connection for each request: every connection
that the server's kernel completed and that carried a request gets an HTTP status (200, or 503
while the server stops), none a reset or a silent close. Connections refused at connect are fine:
they never reached the server, and the client can go elsewhere.

The clients keep sending all through the stop (as clients behind a slow load balancer do), so
connections are arriving in the listen backlog at the moment the server closes its listener.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

from tests.support.bodies import json_infer
from tests.support.config import model_table, server_config
from tests.support.load import ONE_THREAD
from tests.support.server import ServerProcess, running_server

GRACE_S = 5.0
CLIENTS = 24
LIMIT_S = 30.0  # each client's bound on the whole test
BODY = json_infer("x", "FP32", [1, 8], [0.5] * 8)
REQUEST = (
    b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)


def one_request(server: ServerProcess) -> str:
    """'refused' when the connection was never made, else the reply's status line's code, or
    'lost: ...' when a connected request got no status."""
    try:
        sock = socket.create_connection((server.host, server.port), timeout=10)
    except (ConnectionRefusedError, TimeoutError):
        return "refused"
    with sock:
        try:
            sock.sendall(REQUEST)
            head = b""
            while b"\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    return "lost: closed without a status"
                head += chunk
        except OSError as error:
            return f"lost: {type(error).__name__}"
    return head.split(b" ", 2)[1].decode()


class Client(threading.Thread):
    def __init__(self, server: ServerProcess) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.outcomes: list[str] = []

    def run(self) -> None:
        end = time.monotonic() + LIMIT_S
        while time.monotonic() < end:
            outcome = one_request(self.server)
            if outcome == "refused":
                return  # the listener is closed: the client goes elsewhere
            self.outcomes.append(outcome)


def test_sigterm_under_new_connection_load_answers_every_connected_request(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    config = server_config(tmp_path, model_table("mlp", artifacts["mlp.pt2"], "warmup_iters = 0"))
    assert f"shutdown_grace_s = {GRACE_S:g}" in config
    with running_server(config, tmp_path, ONE_THREAD) as server:
        clients = [Client(server) for _ in range(CLIENTS)]
        for client in clients:
            client.start()
        end = time.monotonic() + 10
        while sum(len(c.outcomes) for c in clients) < 200 and time.monotonic() < end:
            time.sleep(0.01)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        for client in clients:
            client.join(LIMIT_S + 5)
        code = server.process.wait(GRACE_S + 10)
        took = time.monotonic() - signalled

    outcomes = [outcome for client in clients for outcome in client.outcomes]
    lost = [outcome for outcome in outcomes if outcome.startswith("lost")]
    print(
        f"\nFIGURES sigterm, new connection per request: {len(outcomes)} connected requests, "
        f"{outcomes.count('200')} x 200, {outcomes.count('503')} x 503, {len(lost)} lost; "
        f"exit {code} {took:.2f} s after SIGTERM"
    )
    assert all(not client.is_alive() for client in clients), "a client never saw the refusal"
    assert not lost, lost[:10]
    assert set(outcomes) <= {"200", "503"}, set(outcomes)
    assert outcomes.count("200") >= 200
    assert code == 0
    assert took <= GRACE_S + 1.0, took
