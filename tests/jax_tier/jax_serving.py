"""The JAX tier's server: its config, with the XLA cache its servers share, a `[[models]]` table on
the `jax` runtime, and the device label a model served on JAX's CPU backend reports."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.config import tier_config

MAX_BATCH = 8
BUCKETS = (1, 2, 4, 8)
CPU = "jax:cpu:0"


def model_toml(name: str, path: Path, **fields: object) -> str:
    """A `[[models]]` table on the `jax` runtime's CPU backend; `fields` add or override."""
    settings = {
        "runtime": "jax",
        "device": "cpu",
        "max_batch_size": MAX_BATCH,
        "batch_buckets": list(BUCKETS),
        **fields,
    }
    lines = ["[[models]]", f'name = "{name}"', f'model_path = "{path}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def config_toml(workdir: Path, models: str) -> str:
    """The tier's config around `models`."""
    # Beside the workdir: servers in sibling workdirs share it (a restart reads its programs).
    return tier_config(workdir, models, xla_cache=workdir.parent / "xla-cache")
