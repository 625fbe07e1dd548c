"""Checks that schemathesis runs on every response, loaded through SCHEMATHESIS_HOOKS.

They replace the stock `not_a_server_error` (a 504 is right when the request's own `timeout`
parameter ran out) and add what the protocol promises beyond the document: every error is
`{"error": "<string>"}`, and no body shows a server file path or a traceback. Each response's
status is appended to the file named by AEGIS_FUZZ_LOG, so the test can count what was tried.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import unquote

import schemathesis
from schemathesis import Case, CheckContext, Response

from tests.support.leaks import LEAK_MARKERS


def _record(response: Response, note: str) -> None:
    path = os.environ.get("AEGIS_FUZZ_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"{response.status_code} {note}\n")


def _requested_timeout_s(case: Case[Any]) -> float | None:
    body = case.body if isinstance(case.body, dict) else {}
    parameters = body.get("parameters")
    timeout = parameters.get("timeout") if isinstance(parameters, dict) else None
    # JSON Schema (and the server) count 154.0 as the integer 154.
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
        return timeout / 1_000_000
    return None


@schemathesis.check
def no_server_fault(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """No 5xx, except a 504 that came after the deadline the request itself asked for."""
    status = response.status_code
    if status < 500:
        _record(response, "ok")
        return None
    timeout_s = _requested_timeout_s(case)
    if status == 504 and timeout_s is not None and response.elapsed >= timeout_s:
        _record(response, f"own-deadline {timeout_s:.6f}s")
        return None
    _record(response, "FAULT")
    raise AssertionError(f"server fault {status}: {response.content[:300]!r}")


@schemathesis.check
def error_body_is_error_object(
    ctx: CheckContext, response: Response, case: Case[Any]
) -> bool | None:
    """Every non-2xx answer (HEAD aside: it has no body) is JSON `{"error": "<string>"}`."""
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return None
    try:
        document = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"error body is not JSON: {response.content[:300]!r}") from None
    if not isinstance(document, dict) or set(document) != {"error"}:
        raise AssertionError(f"error body is not {{'error': ...}}: {document!r}")
    if not isinstance(document["error"], str) or not document["error"]:
        raise AssertionError(f"'error' is not a non-empty string: {document!r}")
    return None


@schemathesis.check
def no_internal_details(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """No body reveals a file system path or a stack trace the client did not send itself."""
    body = response.content.decode("utf-8", "replace")
    request = response.request
    sent = f"{unquote(request.url or '')} {request.body!r}"
    for marker in LEAK_MARKERS:
        if marker in body and marker not in sent:
            raise AssertionError(f"the body reveals {marker!r}: {body[:300]!r}")
    return None
