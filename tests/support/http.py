"""The tests' HTTP client: one request on its own loopback connection, the wire as written.

Built on http.client, which sends the path and the header values exactly as given: the tests
that probe dot segments, escaped slashes and odd header bytes need that, and clients that
normalise URLs (httpx collapses `..`) or refuse non-ASCII header values would change what they
test.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

LOOPBACK = "127.0.0.1"


# How many ports below the kernel's ephemeral range `free_port` picks from, and how many it
# tries before giving up.
_PORT_SPAN = 12000
_PORT_TRIES = 200
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The lowest port the kernel gives a connection that binds none (Linux's default 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port nobody is bound to right now, below the kernel's ephemeral range, and
    not handed out before by this process.

    Binding port 0 and letting it go, as before, could hand two calls the same port (a CI run's
    server was given one port for HTTP and gRPC, and its gRPC bind failed), and a port from the
    ephemeral range can be taken, before the server binds it, as the local port of any
    connection made meanwhile. Below the range, only an explicit bind can take it.
    """
    high = _ephemeral_low()
    low = max(1024, high - _PORT_SPAN)
    for _ in range(_PORT_TRIES):
        port = random.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {low}-{high - 1} after {_PORT_TRIES} tries")


class Address(Protocol):
    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        return self.body.decode()

    def error(self) -> str:
        """The message of an error reply, checking that it is exactly {"error": "<string>"}."""
        document = self.json()
        assert isinstance(document, dict) and set(document) == {"error"}, document
        assert isinstance(document["error"], str) and document["error"], document
        return document["error"]


def request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> Reply:
    """One request on its own connection, closed before returning."""
    if tls is None:
        connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    else:
        connection = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=tls)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        names = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, names, response.read())
    finally:
        connection.close()


def call(
    server: Address,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> Reply:
    """One request to a test server on its own connection."""
    return request(server.host, server.port, method, path, body, headers, timeout_s, tls)


def get_json(server: Address, path: str, timeout_s: float = 30.0) -> Any:
    """The JSON document a GET answers with 200."""
    reply = call(server, "GET", path, timeout_s=timeout_s)
    assert reply.status == 200, reply
    return reply.json()


def get_text(server: Address, path: str, timeout_s: float = 30.0) -> str:
    """The text a GET answers with 200 (the metrics page)."""
    reply = call(server, "GET", path, timeout_s=timeout_s)
    assert reply.status == 200, reply
    return reply.text()


def wait_http_ok(port: int, path: str, timeout_s: float) -> None:
    """Poll GET `path` on the loopback `port` until it answers 200 (a server that has started)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if request(LOOPBACK, port, "GET", path, timeout_s=1.0).status == 200:
                return
        except OSError as error:
            last = error
        time.sleep(0.05)
    raise RuntimeError(
        f"{LOOPBACK}:{port}{path} did not answer 200 within {timeout_s} s (last error: {last})"
    )
