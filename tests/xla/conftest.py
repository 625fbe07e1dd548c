"""Fixtures of the XLA tier. Loaded by any pytest run over tests/: nothing here needs torch_xla."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.xla.xla_models import build_artifacts

_FIGURES: list[str] = []


@pytest.fixture(scope="session")
def xla_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_artifacts(tmp_path_factory.mktemp("xla-artifacts"))


@pytest.fixture(scope="session")
def figures() -> Callable[[str], None]:
    """Adds a line to the figures printed at the end of the run (compile times, counters)."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("XLA figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
