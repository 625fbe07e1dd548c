"""Hot reload: SIGHUP and the admin endpoints swap a changed model in without a failed request."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np

from tests.conftest import ServerFactory
from tests.support.admin import admin, token_file
from tests.support.config import model_table
from tests.support.served_mlp import Load, X, expected, infer, replace_model, run_load


def wait_for_output(client: Load, wanted: np.ndarray, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        last = client.results[-1] if client.results else None
        if last and last[1] == 200 and np.allclose(last[2], wanted.ravel(), atol=1e-5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"the new version's outputs never arrived; last: {client.results[-1:]}")


def test_sighup_swaps_a_changed_model_without_failed_requests(
    serve: ServerFactory, model_file: Path
) -> None:
    server = serve(model_table("m", model_file, "max_batch_size = 8"))
    client = Load(server, limit_count=20000)

    def reload() -> None:
        replace_model(model_file, seed=2)
        os.kill(server.process.pid, signal.SIGHUP)
        wait_for_output(client, expected(X, seed=2), timeout_s=60)
        time.sleep(0.3)

    run_load([client], reload)
    statuses = {status for _, status, _ in client.results}
    assert statuses == {200}, [r for r in client.results if r[1] != 200][:3]
    outputs = [np.asarray(data) for _, _, data in client.results]
    old, new = expected(X, 1).ravel(), expected(X, 2).ravel()
    # Every answer is one version's whole output, and the switch happens once.
    kinds = ["old" if np.allclose(o, old, atol=1e-5) else "new" for o in outputs]
    assert all(np.allclose(o, old, atol=1e-5) or np.allclose(o, new, atol=1e-5) for o in outputs)
    assert kinds == sorted(kinds, key=lambda k: k == "new")
    assert kinds[0] == "old" and kinds[-1] == "new"


def test_failed_reload_keeps_the_serving_version(serve: ServerFactory, model_file: Path) -> None:
    server = serve(model_table("m", model_file, "max_batch_size = 8"))
    x = np.ones((1, 8), dtype=np.float32)
    model_file.write_bytes(b"not a model")
    os.kill(server.process.pid, signal.SIGHUP)
    log = server.wait_for_log("model_reload_failed", timeout_s=30)
    assert "model_reload_failed" in log
    status, body = infer(server, x)
    assert status == 200
    np.testing.assert_allclose(body["outputs"][0]["data"], expected(x, 1).ravel(), atol=1e-5)
    assert server.status("/v2/health/ready") == 200


def test_repository_endpoints_need_the_token(
    serve: ServerFactory, model_file: Path, tmp_path: Path
) -> None:
    server = serve(
        model_table("m", model_file, "max_batch_size = 8"),
        f'admin_token_file = "{token_file(tmp_path)}"',
    )
    assert admin(server, "/v2/repository/index", token=None)[0] == 401
    assert admin(server, "/v2/repository/index", token="wrong-token-of-some-length")[0] == 401
    status, index = admin(server, "/v2/repository/index")
    assert status == 200
    assert index == [{"name": "m", "version": "1", "state": "READY"}]


def test_unload_then_load_through_the_admin_api(
    serve: ServerFactory, model_file: Path, tmp_path: Path
) -> None:
    server = serve(
        model_table("m", model_file, "max_batch_size = 8"),
        f'admin_token_file = "{token_file(tmp_path)}"',
    )
    x = np.ones((1, 8), dtype=np.float32)
    assert admin(server, "/v2/repository/models/m/unload") == (200, {})
    assert infer(server, x)[0] == 404
    replace_model(model_file, seed=3)
    assert admin(server, "/v2/repository/models/m/load") == (200, {})
    status, body = infer(server, x)
    assert status == 200
    np.testing.assert_allclose(body["outputs"][0]["data"], expected(x, 3).ravel(), atol=1e-5)
    assert admin(server, "/v2/repository/models/other/load")[0] == 404


def test_a_failed_admin_load_says_whether_a_version_still_serves(
    serve: ServerFactory, model_file: Path, tmp_path: Path
) -> None:
    server = serve(
        model_table("m", model_file, "max_batch_size = 8"),
        f'admin_token_file = "{token_file(tmp_path)}"',
    )
    model_file.write_bytes(b"not a model")
    status, body = admin(server, "/v2/repository/models/m/load")
    assert status == 500 and "the serving version stays" in body["error"], body
    assert infer(server, np.ones((1, 8), dtype=np.float32))[0] == 200
    assert admin(server, "/v2/repository/models/m/unload") == (200, {})
    status, body = admin(server, "/v2/repository/models/m/load")
    message = body["error"]
    assert status == 500 and "version '1' is not serving" in message, body
    assert "stays" not in message


def test_admin_endpoints_are_off_without_a_token_file(
    serve: ServerFactory, model_file: Path
) -> None:
    server = serve(model_table("m", model_file, "max_batch_size = 8"))
    status, body = admin(server, "/v2/repository/index")
    assert status == 403 and "admin_token_file" in body["error"]
