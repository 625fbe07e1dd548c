"""SIGTERM with keep-alive clients: every reply from SIGTERM on carries `Connection: close`, so a
client closes its connection after it and opens its next one elsewhere (here: nowhere, as a load
balancer that has seen readiness fail); no request sent on an open connection is dropped."""

from __future__ import annotations

import http.client
import signal
import threading
import time
from pathlib import Path

from tests.support.bodies import json_infer
from tests.support.config import model_table, server_config
from tests.support.http import call
from tests.support.load import ONE_THREAD
from tests.support.server import ServerProcess, running_server

CLIENTS = 6
BODY = json_infer("x", "FP32", [1, 8], [0.5] * 8)
LIMIT_S = 30.0


class KeepAliveClient(threading.Thread):
    """Sends back to back on one connection; reconnects only when told to close, and only while
    `may_open` is set. Records each outcome: a status, or how a sent request was lost."""

    def __init__(self, server: ServerProcess, may_open: threading.Event) -> None:
        super().__init__(daemon=True)
        self.server, self.may_open = server, may_open
        self.outcomes: list[tuple[float, str, bool]] = []  # (when, status or error, closed)

    def run(self) -> None:
        end = time.monotonic() + LIMIT_S
        connection: http.client.HTTPConnection | None = None
        while time.monotonic() < end:
            if connection is None:
                if not self.may_open.is_set():
                    return
                connection = http.client.HTTPConnection(self.server.host, self.server.port, 10)
                try:
                    connection.connect()
                except ConnectionRefusedError:
                    return  # nothing sent: the client goes elsewhere
            try:
                connection.request("POST", "/v2/models/mlp/infer", body=BODY)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as error:
                self.outcomes.append((time.monotonic(), f"lost: {type(error).__name__}", True))
                connection.close()
                connection = None
                continue
            closes = (response.getheader("connection") or "").lower() == "close"
            self.outcomes.append((time.monotonic(), str(response.status), closes))
            if closes:
                connection.close()
                connection = None


def test_sigterm_asks_keepalive_clients_to_close_and_drops_nothing(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    config = server_config(tmp_path, model_table("mlp", artifacts["mlp.pt2"], "warmup_iters = 0"))
    with running_server(config, tmp_path, ONE_THREAD) as server:
        may_open = threading.Event()
        may_open.set()
        clients = [KeepAliveClient(server, may_open) for _ in range(CLIENTS)]
        for client in clients:
            client.start()
        time.sleep(0.5)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        while time.monotonic() - signalled < 5:
            try:
                if call(server, "GET", "/v2/health/ready", timeout_s=5).status == 503:
                    break
            except OSError:
                break
            time.sleep(0.01)
        may_open.clear()  # what a load balancer does once readiness fails
        for client in clients:
            client.join(LIMIT_S + 5)
        code = server.process.wait(15)

    outcomes = [outcome for client in clients for outcome in client.outcomes]
    lost = [outcome for outcome in outcomes if outcome[1].startswith("lost")]
    closing = [outcome for outcome in outcomes if outcome[2]]
    print(
        f"\nFIGURES sigterm keep-alive: {len(outcomes)} requests on {CLIENTS} keep-alive clients, "
        f"{len(lost)} lost; {len(closing)} replies with Connection: close, the first "
        f"{(min(when for when, _, _ in closing) - signalled) * 1000:.0f} ms after SIGTERM; "
        f"exit {code}"
    )
    assert not lost, lost[:5]
    assert {status for _, status, _ in outcomes} == {"200"}
    # Each client stopped because a reply told it to close its connection, after SIGTERM.
    for client in clients:
        when, _, closes = client.outcomes[-1]
        assert closes and when > signalled, client.outcomes[-3:]
    assert all(when > signalled for when, _, _ in closing)
    assert code == 0
