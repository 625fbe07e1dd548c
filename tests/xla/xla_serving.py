"""The XLA tier's server: its config, a `[[models]]` table for the tier's reference models on the
`tpu` runtime, and JSON requests for their one FP32 input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import numpy as np

from tests.support.config import tier_config
from tests.support.http import call
from tests.support.server import ServerProcess
from tests.xla.xla_models import SIGNATURE

MAX_BATCH = 16


def model_toml(name: str, path: Path, **fields: object) -> str:
    """A `[[models]]` table for a reference model on the `tpu` runtime; `fields` add or override."""
    settings = {"runtime": "tpu", "device": "tpu", "max_batch_size": MAX_BATCH, **fields}
    lines = ["[[models]]", f'name = "{name}"', f'model_path = "{path}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    for kind in ("inputs", "outputs"):
        for spec in SIGNATURE[kind]:
            lines += [f"[[models.{kind}]]"]
            lines += [f"{key} = {json.dumps(value)}" for key, value in spec.items()]
    return "\n".join(lines) + "\n"


def config_toml(workdir: Path, models: str) -> str:
    """The tier's config around `models`, XLA's persistent cache inside `workdir`."""
    return tier_config(workdir, models, xla_cache=workdir / "xla-cache")


def post_infer(server: ServerProcess, model: str, rows: np.ndarray) -> tuple[int, dict[str, Any]]:
    """The status and JSON answer to `rows` as the model's one FP32 input."""
    body = {
        "inputs": [
            {
                "name": "input__0",
                "datatype": "FP32",
                "shape": list(rows.shape),
                "data": rows.ravel().tolist(),
            }
        ]
    }
    reply = call(server, "POST", f"/v2/models/{model}/infer", json.dumps(body).encode(), None, 60)
    return reply.status, reply.json()


def answer(payload: dict[str, Any]) -> np.ndarray:
    [output] = payload["outputs"]
    return cast(np.ndarray, np.asarray(output["data"], dtype=np.float32).reshape(output["shape"]))


def infer(server: ServerProcess, model: str, rows: np.ndarray) -> np.ndarray:
    """The model's one output for `rows`; anything but a 200 fails the test."""
    status, payload = post_infer(server, model, rows)
    assert status == 200, payload
    return answer(payload)
