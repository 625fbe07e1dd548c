"""JSON responses for the Starlette endpoints."""

from __future__ import annotations

import orjson
from starlette.responses import Response


def json_response(document: object, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status_code=status, media_type="application/json")
