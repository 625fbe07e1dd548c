"""The HTTP ceiling: a bare ASGI app on Hypercorn + uvloop, the stack Aegis runs on.

It parses each V2 JSON request body (orjson, as Aegis does) and answers with a fixed body of the
size Aegis answers with, so its throughput is what this HTTP stack allows before any model,
batching, validation, logging or metrics work. With PROCESSES > 1 that many processes serve one
listening socket, as Aegis's replicas do. Run with the dev venv's python:

    python bench/http_ceiling.py HOST:PORT RESPONSE_FILE [PROCESSES]
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def make_app(reply: bytes) -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(reply))]

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if body:
            orjson.loads(body)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply})

    return app


def main(argv: list[str]) -> None:
    bind, reply_file, *rest = argv
    processes = int(rest[0]) if rest else 1
    app = make_app(Path(reply_file).read_bytes())
    config = Config()
    config.accesslog = None
    config.keep_alive_timeout = 75
    if processes == 1:
        config.bind = [bind]
        uvloop.run(serve(app, config))  # type: ignore[arg-type]
        return
    host, port = bind.rsplit(":", 1)
    listener = socket.create_server((host, int(port)), backlog=1024)
    config.bind = [f"fd://{listener.fileno()}"]
    children = []
    for _ in range(processes):
        child = os.fork()
        if child == 0:
            uvloop.run(serve(app, config))  # type: ignore[arg-type]
            os._exit(0)
        children.append(child)
    # The harness stops the whole process group; the parent only waits for its children.
    for child in children:
        os.waitpid(child, 0)


if __name__ == "__main__":
    main(sys.argv[1:])
