"""Shared fixtures: real model artifacts and real servers on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.config import server_config
from tests.support.server import ServerProcess, running_server

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.support.models import build_artifacts  # torch only once a test needs models

    return build_artifacts(tmp_path_factory.mktemp("artifacts"))


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
