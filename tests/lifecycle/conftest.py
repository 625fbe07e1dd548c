"""Fixtures of the lifecycle tests: the served Mlp's file, and systemd's notify socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.models import mlp_pt2
from tests.support.notify import NotifySocket


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "m.pt2"
    path.parent.mkdir()
    mlp_pt2(path, seed=1)
    return path


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify.sock")
    listener.start()
    yield listener
    listener.close()
