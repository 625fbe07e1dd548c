"""One scrape for every replica of a host: their multiprocess files, each series labelled.

The supervisor gives replica i the folder `ROOT/replica-i` as PROMETHEUS_MULTIPROC_DIR; a
restarted replica writes beside its predecessors' files, so its counters and histograms go on
from where they were (prometheus-client sums a folder's files) while the gauges of dead processes
are dropped (`forget_process`). What is not in those files is written as text beside them:
the runtimes' own counters by each replica (`RUNTIME_FILE`), the supervisor's by the supervisor
(`SUPERVISOR_FILE`, in ROOT).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

RUNTIME_FILE = "runtime.prom"
SUPERVISOR_FILE = "supervisor.prom"
_FOLDER = re.compile(r"^(replica|frontend)-(\d+)$")


def replica_folder(root: Path, index: int, role: str = "replica") -> Path:
    """The metric folder of replica (or engine) `index`, or of front end `index`."""
    return root / f"{role}-{index}"


def forget_process(folder: Path, pid: int) -> None:
    """A replica process is gone: its gauges and runtime counters no longer count."""
    # prometheus-client's multiprocess module carries no annotations.
    mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
    (folder / RUNTIME_FILE).unlink(missing_ok=True)


def write_text(path: Path, collectors: Iterable[Collector]) -> None:
    """Write what `collectors` give now, atomically (a scrape never reads half a file)."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_bytes(generate_latest(registry))
    staging.replace(path)


class ReplicasCollector(Collector):
    """Every process's series under ROOT, labelled `replica` (engines too) or `frontend`, plus
    the supervisor's."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def _replicas(self) -> list[tuple[str, str, Path]]:
        found = []
        for folder in self._root.iterdir():
            match = _FOLDER.match(folder.name)
            if match and folder.is_dir():
                found.append((match.group(1), match.group(2), folder))
        return sorted(found, key=lambda item: (item[0], int(item[1])))

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for label, index, folder in self._replicas():
            files = _files_with_samples(folder)
            merged = list(
                MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
            )
            merged += _read_text(folder / RUNTIME_FILE)
            for metric in merged:
                family = families.get(metric.name)
                if family is None:
                    family = Metric(metric.name, metric.documentation, metric.type, metric.unit)
                    families[metric.name] = family
                family.samples.extend(
                    Sample(s.name, {**s.labels, label: index}, s.value, s.timestamp)
                    for s in metric.samples
                )
        yield from families.values()
        yield from _read_text(self._root / SUPERVISOR_FILE)


def _files_with_samples(folder: Path) -> list[str]:
    """The folder's multiprocess files, less any a process is creating at this moment:
    prometheus-client creates a file empty and then sizes it, and a scrape that read it in
    between failed whole (struct.error, a 500 from /metrics) while it held no sample yet."""
    files = []
    for path in folder.glob("*.db"):
        try:
            if path.stat().st_size > 0:
                files.append(str(path))
        except FileNotFoundError:  # a dead process's live gauge, removed since the glob
            continue
    return files


def _read_text(path: Path) -> list[Metric]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return list(text_string_to_metric_families(text))
