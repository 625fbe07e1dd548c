"""How many replicas a host runs and what each is given, from a fake PCI tree."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from appliance.chips import tpu_chips
from appliance.config import AppConfig, ConfigError, parse_config
from appliance.lifecycle.replicas import (
    frontend_count,
    operator_threads,
    plan_frontends,
    plan_replicas,
    replica_count,
    usable_cpus,
)
from tests.support.pci import pci_tree, tpu_host

TPU_MODEL = '[[models]]\nname = "t"\nmodel_path = "/m/t.pt2"\nruntime = "tpu"\ndevice = "tpu"\n'
CPU_MODEL = '[[models]]\nname = "c"\nmodel_path = "/m/c.pt2"\n'


def config(server: str = "", models: str = TPU_MODEL) -> AppConfig:
    return parse_config(tomllib.loads(f"[server]\n{server}\n{models}"))


def test_chips_are_google_tpu_functions_in_address_order(tmp_path: Path) -> None:
    root = tpu_host(tmp_path, 4, device="0x005e")
    assert tpu_chips(root) == [f"0000:00:{4 + i:02x}.0" for i in range(4)]


def test_no_pci_bus_means_no_chips(tmp_path: Path) -> None:
    assert tpu_chips(tmp_path) == []
    assert tpu_chips(pci_tree(tmp_path / "vm", {"0000:00:03.0": ("0x1ae0", "0x0042")})) == []


@pytest.mark.parametrize("chips", [4, 8])
def test_auto_is_one_replica_per_chip_each_owning_its_chip(tmp_path: Path, chips: int) -> None:
    found = tpu_chips(tpu_host(tmp_path, chips))
    plans = plan_replicas(config(), found, cpus=224)
    assert [plan.chip for plan in plans] == found
    ports = set()
    for index, plan in enumerate(plans):
        env = plan.environment
        assert env["TPU_VISIBLE_CHIPS"] == str(index)
        assert env["TPU_PROCESS_BOUNDS"] == "1,1,1"
        assert env["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "1,1,1"
        assert env["OMP_NUM_THREADS"] == str(224 // chips) == str(plan.threads)
        ports.add(env["TPU_PROCESS_PORT"])
    assert len(ports) == chips
    caches = {plan.xla_cache_dir("/var/cache/aegis/xla") for plan in plans}
    assert len(caches) == chips


def test_auto_is_one_replica_without_a_tpu_model_or_without_chips(tmp_path: Path) -> None:
    assert replica_count(config(models=CPU_MODEL), chips=8) == 1
    assert replica_count(config(), chips=0) == 1
    assert replica_count(config(models=""), chips=8) == 1


def test_a_number_of_cpu_replicas_splits_the_cores() -> None:
    plans = plan_replicas(config("replicas = 3", CPU_MODEL), [], cpus=8)
    assert [plan.threads for plan in plans] == [2, 2, 2]
    assert all("TPU_VISIBLE_CHIPS" not in plan.environment for plan in plans)
    assert [p.threads for p in plan_replicas(config("replicas = 4", CPU_MODEL), [], 2)] == [1] * 4


def test_the_operators_omp_num_threads_is_kept_by_every_replica() -> None:
    threads = operator_threads({"OMP_NUM_THREADS": "5"})
    plans = plan_replicas(config("replicas = 3", CPU_MODEL), [], cpus=8, threads=threads)
    assert [(plan.threads, plan.environment["OMP_NUM_THREADS"]) for plan in plans] == [(5, "5")] * 3


@pytest.mark.parametrize("value", [None, "", "0", "-2", "4,2", "four"])
def test_no_whole_omp_num_threads_leaves_the_split_of_the_cores(value: str | None) -> None:
    environ = {} if value is None else {"OMP_NUM_THREADS": value}
    threads = operator_threads(environ)
    assert threads is None
    plans = plan_replicas(config("replicas = 3", CPU_MODEL), [], cpus=8, threads=threads)
    assert [plan.threads for plan in plans] == [2, 2, 2]


def test_more_tpu_replicas_than_chips_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="replicas = 5, but this host has 4 TPU chip"):
        plan_replicas(config("replicas = 5"), tpu_chips(tpu_host(tmp_path, 4)), cpus=8)


@pytest.mark.parametrize("value", ["0", "-1", '"two"', "true", "1.5", '"AUTO"'])
def test_replicas_must_be_auto_or_a_positive_integer(value: str) -> None:
    with pytest.raises(ConfigError, match=r'server\.replicas: must be "auto" or an integer >= 1'):
        config(f"replicas = {value}")


@pytest.mark.parametrize(
    ("cpus", "engines", "frontends"),
    [(2, 1, 0), (3, 1, 0), (4, 1, 3), (16, 1, 4), (24, 1, 4), (240, 4, 16), (224, 8, 16)],
)
def test_auto_frontends_follow_the_cores_and_the_engines(
    cpus: int, engines: int, frontends: int
) -> None:
    assert frontend_count(config(models=CPU_MODEL), cpus, engines) == frontends


def test_frontends_set_to_a_number_are_that_many_and_zero_is_one_process() -> None:
    assert frontend_count(config("frontends = 3", CPU_MODEL), 2, 1) == 3
    assert frontend_count(config("frontends = 0", CPU_MODEL), 64, 1) == 0
    plans = plan_frontends(2)
    assert [(plan.name, plan.label, plan.role) for plan in plans] == [
        ("frontend-0", "frontend", "frontend"),
        ("frontend-1", "frontend", "frontend"),
    ]


@pytest.mark.parametrize("value", ["-1", '"many"', "true", "1.5"])
def test_frontends_must_be_auto_or_a_count(value: str) -> None:
    with pytest.raises(ConfigError, match="frontends"):
        config(f"frontends = {value}", CPU_MODEL)


@pytest.mark.parametrize(
    ("cpu_max", "limited"),
    [("max 100000\n", False), ("200000 100000\n", True), ("50000 100000\n", True), ("", False)],
)
def test_usable_cores_are_capped_by_the_cgroup_cpu_quota(
    tmp_path: Path, cpu_max: str, limited: bool
) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    cores = usable_cpus(tmp_path / "absent")
    expected = {"200000 100000\n": 2, "50000 100000\n": 1}.get(cpu_max, cores)
    assert usable_cpus(path) == (min(cores, expected) if limited else cores)
