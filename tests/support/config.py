"""Config text for tests: model and tensor tables, and a server config around them."""

from __future__ import annotations

from pathlib import Path


def model_table(name: str, path: Path | str, extra: str = "", version: str = "1") -> str:
    return f'[[models]]\nname = "{name}"\nversion = "{version}"\nmodel_path = "{path}"\n{extra}\n'


def tensor_table(kind: str, name: str, datatype: str, shape: list[int | str]) -> str:
    return f'[[models.{kind}]]\nname = "{name}"\ndatatype = "{datatype}"\nshape = {shape}\n'


def server_config(workdir: Path, models_toml: str, server_toml: str = "") -> str:
    """A config for tests: quick drain, a private artifact cache, the given models."""
    return (
        f"[server]\nshutdown_grace_s = 5\n{server_toml}\n"
        f'[storage]\ncache_dir = "{workdir / "cache"}"\n\n{models_toml}'
    )


def tier_config(workdir: Path, models_toml: str, xla_cache: Path) -> str:
    """A config for the XLA and JAX tiers: quick drain, the artifact cache in `workdir`, XLA's
    persistent compilation cache in `xla_cache`, the given models."""
    return (
        f'[server]\nshutdown_grace_s = 5\n[storage]\ncache_dir = "{workdir / "models"}"\n'
        f'[xla]\ncompilation_cache_dir = "{xla_cache}"\n{models_toml}'
    )
