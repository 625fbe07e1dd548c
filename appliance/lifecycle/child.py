"""A child of the supervisor, followed across its restarts: its process, its control link, what
it last said, and how its restarts go."""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.lifecycle.link import Link
from appliance.lifecycle.replicas import ReplicaPlan

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
# A child that served this long before it exited is restarted at once.
STABLE_AFTER_S = 60.0
FAILING_AFTER = 5


def backoff_s(failures: int) -> float:
    if failures <= 0:
        return 0.0
    return min(BACKOFF_FIRST_S * 2.0 ** min(failures - 1, 16), BACKOFF_MAX_S)


class Child:
    """One process of the supervisor (a replica, an engine or a front end) as it follows it
    across its restarts."""

    def __init__(self, plan: ReplicaPlan, notify_path: Path, metrics_folder: Path) -> None:
        self.plan = plan
        self.index = plan.index
        self.notify_path = notify_path
        self.metrics_folder = metrics_folder
        self.process: asyncio.subprocess.Process | None = None
        self.link: Link | None = None
        self.exited = asyncio.Event()
        self.warm = False  # its models are up (READY=1 since it started)
        self.warm_since = 0.0
        self.reloading = False
        self.reload_done = asyncio.Event()
        self.status = ""
        self.last_ping = 0.0
        self.failures = 0  # starts in a row that did not last
        self.restarts = 0
        self.failing = False

    @property
    def fields(self) -> dict[str, int]:
        """How its log lines name it: replica=N (engines too), or frontend=N."""
        return {self.plan.label: self.index}

    @property
    def runs_models(self) -> bool:
        return self.plan.role != "frontend"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None
