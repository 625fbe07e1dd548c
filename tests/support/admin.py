"""The admin API's token, in a file as the server reads it, and calls to the API with it."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from tests.support.server import ServerProcess

TOKEN = "s3cret-token-for-tests-only"


def token_file(tmp_path: Path, mode: int = 0o600) -> Path:
    """`TOKEN` in a file of `mode`, for `[server] admin_token_file`."""
    path = tmp_path / "admin.token"
    path.write_text(TOKEN + "\n")
    path.chmod(mode)
    return path


def admin(server: ServerProcess, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
    """POST to an admin endpoint with `token` (None: without one): the status and JSON answer."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=120)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        connection.request("POST", path, body=b"", headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()
