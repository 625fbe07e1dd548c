"""Fixtures of the JAX tier. Loaded by any pytest run over tests/: nothing here imports jax."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

_FIGURES: list[str] = []


@pytest.fixture(scope="session")
def jax_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.jax_tier.jax_models import build_jax_artifacts

    return build_jax_artifacts(tmp_path_factory.mktemp("jax-artifacts"))


@pytest.fixture(scope="session")
def jax_figures() -> Callable[[str], None]:
    """Adds a line to the figures printed at the end of the run (compile times, counters)."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("JAX figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
