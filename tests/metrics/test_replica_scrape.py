"""The host's one scrape over every replica's multiprocess files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from appliance.metrics.replicas import ReplicasCollector, replica_folder


def write_counter(folder: Path, value: float) -> None:
    """A real replica's counter file: prometheus-client in multiprocess mode, in a process of
    its own (the mode is chosen when the library is imported)."""
    script = textwrap.dedent(
        f"""
        from prometheus_client import Counter
        Counter("aegis_test_requests", "requests").inc({value})
        """
    )
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    subprocess.run([sys.executable, "-c", script], env=environment, check=True, timeout=60)


def test_a_file_a_replica_is_creating_does_not_fail_the_scrape(tmp_path: Path) -> None:
    folder = replica_folder(tmp_path, 0)
    folder.mkdir()
    write_counter(folder, 3)
    # What another process's new file is between its creation and prometheus-client sizing it.
    (folder / "counter_4242.db").touch()

    samples = [
        (sample.name, sample.labels, sample.value)
        for metric in ReplicasCollector(tmp_path).collect()
        for sample in metric.samples
    ]

    assert ("aegis_test_requests_total", {"replica": "0"}, 3.0) in samples
