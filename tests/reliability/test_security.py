"""Security: the repository endpoints need the bearer token (compared in constant time), secret
files readable by others are refused at start, TLS works with Hypercorn's certfile/keyfile,
artifacts are never unpickled, request ids and names cannot forge log lines, and no endpoint
shows a client a file-system path or a stack trace.
"""

from __future__ import annotations

import asyncio
import hmac
import http.client
import json
import pickle
import ssl
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from appliance.errors import LoadFailed
from appliance.rest.errors import failure_response
from tests.support.asgi import asgi_request
from tests.support.bodies import json_infer
from tests.support.config import model_table, server_config
from tests.support.fault_models import declared_table
from tests.support.http import call
from tests.support.leaks import assert_no_leak
from tests.support.server import ServerProcess, exit_of, running_server, start_server
from tests.support.tls import self_signed

TOKEN = "s3cret-admin-token-0123456789"
MLP = json_infer("x", "FP32", [1, 8], [0.5] * 8)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("security")
    token = workdir / "admin.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    models = model_table("mlp", artifacts["mlp.pt2"], "warmup_iters = 0") + declared_table(
        "failing", artifacts["failing.pt"], 2, "warmup_iters = 0"
    )
    config = server_config(workdir, models, f'admin_token_file = "{token}"\n')
    with running_server(config, workdir) as served:
        yield served


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": f"Bearer {TOKEN[:-1]}"}, 401),
        ({"Authorization": f"Bearer {TOKEN}x"}, 401),
        ({"Authorization": f"Basic {TOKEN}"}, 401),
        ({"Authorization": f"Bearer  {TOKEN}"}, 401),
        ({"Authorization": "Bearer \u00e9\u00e9"}, 401),
        ({"Authorization": f"bearer {TOKEN}"}, 200),
    ],
)
def test_repository_endpoints_need_the_bearer_token(
    server: ServerProcess, headers: dict[str, str], status: int
) -> None:
    for path in ("/v2/repository/index", "/v2/repository/models/nothing/unload"):
        reply = call(server, "POST", path, b"", headers)
        expected = 404 if status == 200 and path.endswith("unload") else status
        assert reply.status == expected, (path, reply)
        if reply.status == 401:
            assert reply.headers["www-authenticate"] == "Bearer"
            assert "token" in reply.error()


def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check goes through hmac.compare_digest, whose time does not depend on where the
    given token first differs (a timing test would be flaky on shared cores)."""
    from appliance.metrics import Metrics
    from appliance.repository import ModelRepository
    from appliance.rest import AppContext, HttpSettings, create_app

    compared: list[tuple[bytes, bytes]] = []
    constant_time = hmac.compare_digest

    def recording(given: bytes, expected: bytes) -> bool:
        compared.append((given, expected))
        return constant_time(given, expected)

    monkeypatch.setattr("appliance.rest.admin.hmac.compare_digest", recording)

    class Ready:
        def is_ready(self) -> bool:
            return True

        def not_ready_reason(self) -> str:
            return ""

        def is_draining(self) -> bool:
            return False

    class Control:
        async def load(self, name: str) -> None: ...

        async def unload(self, name: str) -> None: ...

    context = AppContext(
        ModelRepository(), Metrics(), HttpSettings(admin_token=TOKEN), Ready(), Control()
    )
    app = create_app(context)
    statuses = [
        asyncio.run(asgi_request(app, "POST", "/v2/repository/index", b"", [auth]))[0]
        for auth in (
            (b"authorization", b"Bearer nope"),
            (b"authorization", f"Bearer {TOKEN}".encode()),
        )
    ]
    assert statuses == [401, 200]
    assert compared == [(b"nope", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


@pytest.mark.parametrize(
    ("mode", "key", "message"),
    [
        (0o640, "admin_token_file", "readable by group or others: chmod 600 it"),
        (0o604, "admin_token_file", "readable by group or others: chmod 600 it"),
        (0o604, "keyfile", "readable by others: chmod o-rwx it"),
    ],
)
def test_secret_files_readable_by_others_are_refused_at_start(
    tmp_path: Path, artifacts: dict[str, Path], mode: int, key: str, message: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_text(TOKEN)
    secret.chmod(mode)
    server_toml = f'admin_token_file = "{secret}"\n'
    if key == "keyfile":
        cert, private_key = self_signed(tmp_path)
        private_key.chmod(mode)
        server_toml = f'certfile = "{cert}"\nkeyfile = "{private_key}"\n'
    models = model_table("mlp", artifacts["mlp.pt2"], "warmup_iters = 0")
    code, log = exit_of(tmp_path, server_config(tmp_path, models, server_toml))
    assert code != 0
    assert message in log and f"server.{key}" in log


def test_tls_with_a_self_signed_certificate(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    cert, key = self_signed(tmp_path)
    models = model_table("mlp", artifacts["mlp.pt2"], "warmup_iters = 0")
    config = tmp_path / "aegis.toml"
    config.write_text(server_config(tmp_path, models, f'certfile = "{cert}"\nkeyfile = "{key}"\n'))
    tls = ssl.create_default_context(cafile=str(cert))
    server = start_server(config, tmp_path / "server.log")
    try:
        ready = wait_ready_over_tls(server, tls)
        assert ready == 200, server.log()
        reply = call(server, "POST", "/v2/models/mlp/infer", MLP, tls=tls)
        assert reply.status == 200 and reply.json()["outputs"][0]["shape"] == [1, 3]
        # Verification is real: a client that does not trust the certificate is refused.
        with pytest.raises(ssl.SSLCertVerificationError):
            call(server, "GET", "/v2/health/live", tls=ssl.create_default_context())
        # And the port speaks only TLS: plain HTTP gets no HTTP answer.
        with pytest.raises((OSError, http.client.HTTPException)):
            call(server, "GET", "/v2/health/live", timeout_s=5)
    finally:
        assert server.stop() == 0


def wait_ready_over_tls(server: ServerProcess, tls: ssl.SSLContext, timeout_s: float = 90) -> int:
    end = time.monotonic() + timeout_s
    status = 0
    while time.monotonic() < end and server.process.poll() is None:
        try:
            status = call(server, "GET", "/v2/health/ready", tls=tls, timeout_s=5).status
        except OSError:
            status = 0
        if status == 200:
            break
        time.sleep(0.1)
    return status


def evil_pickle(marker: Path) -> bytes:
    """A pickle that touches `marker` when loaded."""

    class Payload:
        def __reduce__(self) -> tuple[object, ...]:
            return (Path.touch, (marker,))

    return pickle.dumps(Payload())


@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_a_torch_save_archive_carrying_a_pickle_is_never_unpickled(
    tmp_path: Path, suffix: str
) -> None:
    """A zip laid out like torch.save's, whose data.pkl runs code when unpickled, refused with a
    clear error under either suffix (tests/test_startup_failures.py covers a bare pickle)."""
    marker = tmp_path / "pwned"
    artifact = tmp_path / f"evil{suffix}"
    with zipfile.ZipFile(artifact, "w") as archive:
        archive.writestr("evil/data.pkl", evil_pickle(marker))
        archive.writestr("evil/byteorder", "little")
        archive.writestr("evil/version", "3\n")
    models = declared_table("evil", artifact, 1, "warmup_iters = 0")
    code, log = exit_of(tmp_path, server_config(tmp_path, models))
    assert code == 1
    expected = "not a TorchScript archive" if suffix == ".pt" else "not a loadable torch.export"
    assert expected in log
    assert not marker.exists()


def test_request_ids_and_names_cannot_forge_log_lines(server: ServerProcess) -> None:
    forged = '\n{"level":"error","event":"forged"}'
    # A header value cannot hold a line break; these are what can get through HTTP.
    for request_id in ("ok\x1b[2Jid", "a" * 500, 'x"},{"forged":1', "id\x85line"):
        reply = call(server, "POST", "/v2/models/mlp/infer", MLP, {"X-Request-Id": request_id})
        assert reply.status == 200
        assert reply.headers["x-request-id"] != request_id
    quoted = "".join(f"%{byte:02X}" for byte in forged.encode())
    assert call(server, "POST", f"/v2/models/{quoted}/infer", MLP).status == 404
    log = server.wait_for_log('"status":404')
    assert '"status":404' in log
    for line in log.splitlines():
        event = json.loads(line)  # every line one JSON object: nothing forged a line
        assert event.get("event") != "forged"


def test_no_endpoint_shows_a_path_or_a_stack_trace(server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    requests = [
        ("GET", "/v2", b"", {}),
        ("GET", "/v2/health/live", b"", {}),
        ("GET", "/v2/health/ready", b"", {}),
        ("GET", "/healthz", b"", {}),
        ("GET", "/readyz", b"", {}),
        ("GET", "/metrics", b"", {}),
        ("GET", "/openapi.json", b"", {}),
        ("GET", "/v2/models/mlp", b"", {}),
        ("GET", "/v2/models/mlp/config", b"", {}),
        ("GET", "/v2/models/mlp/ready", b"", {}),
        ("GET", "/v2/models/mlp/versions/9", b"", {}),
        ("GET", "/v2/models/ghost", b"", {}),
        ("GET", "/nowhere", b"", {}),
        ("DELETE", "/v2", b"", {}),
        ("POST", "/v2/models/mlp/infer", b"{not json", {}),
        ("POST", "/v2/models/mlp/infer", b"\x1f\x8b junk", {"Content-Encoding": "gzip"}),
        ("POST", "/v2/models/failing/infer", json_infer("x", "FP32", [1, 2], [-1, 1]), {}),
        ("POST", "/v2/repository/index", b"", auth),
        ("POST", "/v2/repository/models/ghost/load", b"", auth),
    ]
    for method, path, body, headers in requests:
        reply = call(server, method, path, body, headers)
        assert_no_leak(reply)
        if reply.status >= 400:
            reply.error()


def test_a_load_failure_reaches_the_admin_client_without_paths() -> None:
    """Admin load failures carry the loader's message, which names files: the client sees it
    with paths redacted (the server's log keeps them)."""
    error = LoadFailed("load of 'm' failed: cannot open /var/lib/aegis/models/m/1/model.pt")
    # A JSON response: its body is bytes, not the memoryview a Response may hold.
    message = json.loads(cast(bytes, failure_response(error).body))["error"]
    assert message == "load of 'm' failed: cannot open <path>"
