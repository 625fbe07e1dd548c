"""How many serving processes (replicas) a host runs, and what each one is given.

A TPU chip is opened by one process only, so TPU models are served by one replica per chip, each
seeing only its own chip (the single-chip topology of the PJRT docs) with its own libtpu port and
its own XLA compilation cache. CPU replicas split the host's cores: torch's intra-op threads per
replica are the cores over the replicas, so they do not fight over the same cores.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from appliance.config import AppConfig

# libtpu's own default port for its process server; replica i takes the i-th one after it.
TPU_PROCESS_BASE_PORT = 8476


# What a process of the host does: "replica" serves the ports and runs the models (no front
# ends); "engine" runs the models for the front ends; "frontend" serves the ports from engines.
Role = Literal["replica", "engine", "frontend"]
# `frontends = "auto"` runs none below this many cores: one process does the work best there.
AUTO_FRONTENDS_MIN_CPUS = 4
AUTO_FRONTENDS_PER_ENGINE = 4
AUTO_FRONTENDS_MAX = 16


@dataclass(frozen=True)
class ReplicaPlan:
    index: int
    threads: int  # torch intra-op threads
    chip: str | None  # the PCI address of the TPU chip it owns
    environment: dict[str, str]  # set on top of the supervisor's own environment
    role: Role = "replica"

    @property
    def name(self) -> str:
        return f"{self.role if self.role == 'frontend' else 'replica'}-{self.index}"

    @property
    def label(self) -> str:
        """The label its metrics and log lines carry its index under."""
        return "frontend" if self.role == "frontend" else "replica"

    def xla_cache_dir(self, base: str) -> str:
        """Its own XLA cache folder: compiled programs are per chip, and two writers would race."""
        return str(Path(base) / f"replica-{self.index}") if base else ""


def runs_on_tpu(config: AppConfig) -> bool:
    return any(model.config.device == "tpu" for model in config.models)  # runtime tpu or jax


def replica_count(config: AppConfig, chips: int) -> int:
    """The number of replicas `[server] replicas` asks for on a host with `chips` TPU chips."""
    setting = config.server.replicas
    on_tpu = runs_on_tpu(config) and chips > 0
    if setting == "auto":
        return chips if on_tpu else 1
    if on_tpu and setting > chips:
        raise ValueError(
            f"server.replicas = {setting}, but this host has {chips} TPU chip(s) and a model "
            "runs on the TPU: each replica owns one chip"
        )
    return setting


def usable_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may run on: its affinity mask (systemd's CPUAffinity), or fewer
    when its cgroup's CPU quota says so (a container's CPU limit, systemd's CPUQuota), since a
    pod sees every core of its node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max" or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return cores
    return max(1, min(cores, math.ceil(int(quota) / int(period))))


def frontend_count(config: AppConfig, cpus: int, engines: int) -> int:
    """The front ends `[server] frontends` asks for on a host with `cpus` cores.

    "auto": none below AUTO_FRONTENDS_MIN_CPUS cores; else up to AUTO_FRONTENDS_PER_ENGINE per
    engine (an engine batches for about that many front ends' HTTP work), leaving a core to
    each engine, and at most AUTO_FRONTENDS_MAX.
    """
    setting = config.server.frontends
    if setting != "auto":
        return setting
    if cpus < AUTO_FRONTENDS_MIN_CPUS:
        return 0
    return max(1, min(cpus - engines, AUTO_FRONTENDS_PER_ENGINE * engines, AUTO_FRONTENDS_MAX))


def plan_frontends(count: int) -> list[ReplicaPlan]:
    """Front ends run no model: one thread each for numpy."""
    return [ReplicaPlan(i, 1, None, {"OMP_NUM_THREADS": "1"}, "frontend") for i in range(count)]


def operator_threads(environ: Mapping[str, str] = os.environ) -> int | None:
    """The intra-op threads the operator set with `OMP_NUM_THREADS` (a whole number above 0),
    which every model process keeps; None when unset or not one number (OpenMP's nested lists
    are left to OpenMP)."""
    value = environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def plan_replicas(
    config: AppConfig, chips: list[str], cpus: int, threads: int | None = None
) -> list[ReplicaPlan]:
    """The model processes of the host; each runs `threads` intra-op threads, by default its
    share of the `cpus` usable cores."""
    count = replica_count(config, len(chips))
    threads = threads or max(1, cpus // count)
    on_tpu = runs_on_tpu(config) and bool(chips)
    plans = []
    for index in range(count):
        environment = {"OMP_NUM_THREADS": str(threads)}
        if on_tpu:
            environment |= {
                "TPU_VISIBLE_CHIPS": str(index),
                "TPU_PROCESS_BOUNDS": "1,1,1",
                "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,1,1",
                "TPU_PROCESS_PORT": str(TPU_PROCESS_BASE_PORT + index),
            }
        chip = chips[index] if on_tpu else None
        plans.append(ReplicaPlan(index, threads, chip, environment))
    return plans
