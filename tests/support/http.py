"""The tests' HTTP client: one request on its own loopback connection, the wire as written.

Built on http.client, which sends the path and the header values exactly as given: the tests
that probe dot segments, escaped slashes and odd header bytes need that, and clients that
normalise URLs (httpx collapses `..`) or refuse non-ASCII header values would change what they
test.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Protocol

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


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
