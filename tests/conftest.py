"""Shared fixtures: real model artifacts and real servers on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess, running_server

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.support import models

    root = tmp_path_factory.mktemp("artifacts")
    return {
        "mlp.pt2": models.mlp_pt2(root / "mlp.pt2"),
        "mlp.pt": models.script_pt(models.Mlp(), root / "mlp.pt"),
        "mlp.onnx": models.onnx_mlp(root / "mlp.onnx"),
        "mixed.pt2": models.mixed_pt2(root / "mixed.pt2"),
        "slow.pt": models.script_pt(models.Slow(), root / "slow.pt"),
        "failing.pt": models.script_pt(models.Failing(), root / "failing.pt"),
    }


def model_table(name: str, path: Path, extra: str = "", version: str = "1") -> str:
    return f'[[models]]\nname = "{name}"\nversion = "{version}"\nmodel_path = "{path}"\n{extra}\n'


def tensor_table(kind: str, name: str, datatype: str, shape: list[int]) -> str:
    return f'[[models.{kind}]]\nname = "{name}"\ndatatype = "{datatype}"\nshape = {shape}\n'


def server_config(workdir: Path, models_toml: str, server_toml: str = "") -> str:
    """A config for tests: quick drain, a private artifact cache, the given models."""
    return (
        f"[server]\nshutdown_grace_s = 5\n{server_toml}\n"
        f'[storage]\ncache_dir = "{workdir / "cache"}"\n\n{models_toml}'
    )


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServerFactory]:
    """serve(models_toml, server_toml="", env=None) -> a ready server, stopped at teardown."""
    with contextlib.ExitStack() as stack:
        count = 0

        def start(
            models_toml: str,
            server_toml: str = "",
            env: dict[str, str] | None = None,
            **kwargs: object,
        ) -> ServerProcess:
            nonlocal count
            count += 1
            workdir = tmp_path / f"server{count}"
            text = server_config(workdir, models_toml, server_toml)
            return stack.enter_context(running_server(text, workdir, env, **kwargs))  # type: ignore[arg-type]

        yield start
