"""What a response body must never show a client: paths of this host, tracebacks."""

from __future__ import annotations

from tests.support.http import Reply

# What a response body must never hold unless the client sent it: paths of this host, tracebacks.
LEAK_MARKERS = ("/tmp", "/work", "/home", "/opt", "/var", "/etc", "Traceback", 'File "')


def assert_no_leak(reply: Reply, sent: str = "") -> None:
    """The reply shows no server path or traceback that the client did not send itself."""
    text = reply.body.decode("utf-8", "replace")
    for marker in LEAK_MARKERS:
        assert marker not in text or marker in sent, f"{marker!r} in {text[:300]!r}"
