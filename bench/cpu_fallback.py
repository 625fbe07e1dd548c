"""`cpu_fallback = "latency"` against `"unavailable"` on XLA:CPU as the device: one-row probes'
latency and the background load's throughput, in one run. With the XLA tier's venv (built by
`bash tests/xla/run_tier.sh --co -q`):

    PJRT_DEVICE=CPU .venv-xla/bin/python bench/cpu_fallback.py

Two servers, each started once, serve the XLA tier's `Wide` model (seven 512-wide layers) on the
device: A with `cpu_fallback = "unavailable"` (every request on the device), B with `"latency"`
(a small request that would wait on a busy device goes to the CPU replica when that is predicted
to answer first). Rounds alternate A B A B ..., so a change in the machine's load hits both
alike. In a round, `--clients` clients send 16-row requests back to back (the device's queue stays
deep) until `--background` of them have been answered, while one-row probes arrive on a fixed
schedule, one every `--probe-interval-ms`: open loop, so both modes see the same probe rate, and a
probe's latency counts from its scheduled time. Figures per mode: the probes' p50/p99 over every
round, the background's requests/s, and the server's CPU (utime + stime from /proc, probes'
work included) per background request. Every probe's answer is checked against the device path's
for the same row (the A server, idle, at the end).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.demo import DEMO_INPUTS, DEMO_OUTPUTS  # noqa: E402
from tests.support.server import ServerProcess, running_server  # noqa: E402
from tests.xla.wide import export_wide  # noqa: E402

MODES = {"A": "unavailable", "B": "latency"}
MODEL = "wide"
LOAD_ROWS = 16  # every background request is a full batch
PROBE_WORKERS = 8  # probes in flight at once, so a slow one does not hold back the schedule
TOLERANCE = 1e-5  # XLA:CPU against torch on the CPU
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def config(workdir: Path, artifact: Path, cpu_fallback: str) -> str:
    settings: dict[str, object] = {
        "runtime": "tpu",
        "device": "tpu",
        "max_batch_size": LOAD_ROWS,
        "max_queue_delay_ms": 2.0,
        "max_queue_size": 256,
        "timeout_ms": 60000,
        "cpu_fallback": cpu_fallback,
    }
    lines = [
        "[server]",
        "shutdown_grace_s = 5",
        "[storage]",
        f'cache_dir = "{workdir / "models"}"',
        "[xla]",
        f'compilation_cache_dir = "{workdir / "xla-cache"}"',
        "[[models]]",
        f'name = "{MODEL}"',
        f'model_path = "{artifact}"',
        *(f"{key} = {json.dumps(value)}" for key, value in settings.items()),
    ]
    for kind, name, width in (
        ("inputs", "input__0", DEMO_INPUTS),
        ("outputs", "output__0", DEMO_OUTPUTS),
    ):
        lines += [
            f"[[models.{kind}]]",
            f'name = "{name}"',
            'datatype = "FP32"',
            f"shape = [-1, {width}]",
        ]
    return "\n".join(lines) + "\n"


def body(rows: np.ndarray) -> bytes:
    tensor = {"name": "input__0", "datatype": "FP32", "shape": list(rows.shape)}
    return json.dumps({"inputs": [{**tensor, "data": rows.ravel().tolist()}]}).encode()


class Client:
    """One keep-alive connection to a server's infer route."""

    def __init__(self, server: ServerProcess) -> None:
        self._connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
        self._path = f"/v2/models/{MODEL}/infer"

    def infer(self, payload: bytes) -> np.ndarray:
        self._connection.request("POST", self._path, payload, {"Content-Type": "application/json"})
        response = self._connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"infer answered {response.status}: {data[:300]!r}")
        [output] = json.loads(data)["outputs"]
        answer: np.ndarray = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        return answer

    def close(self) -> None:
        self._connection.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid`, all its threads."""
    # The command name, in parentheses, may hold spaces: fields are counted after it.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def moved_to_cpu(server: ServerProcess) -> float:
    """Requests the CPU replica answered because it was predicted to answer first."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    for line in text.splitlines():
        if line.startswith("aegis_cpu_fallback_requests_total{") and 'reason="latency"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@dataclass
class Round:
    mode: str
    background: int = 0
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    moved: float = 0.0
    probe_s: list[float] = field(default_factory=list)
    probes: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # row, answer


def run_round(
    server: ServerProcess,
    mode: str,
    clients: int,
    background: int,
    interval_s: float,
    rng: np.random.Generator,
) -> Round:
    result = Round(mode)
    load_body = body(rng.standard_normal((LOAD_ROWS, DEMO_INPUTS)).astype(np.float32))
    pid = server.process.pid
    lock = threading.Lock()
    first_answered = threading.Barrier(clients + 1)
    measuring = threading.Event()
    counted = threading.Event()  # `background` requests answered since measuring began
    stop = threading.Event()
    failures: list[BaseException] = []
    window: dict[str, float] = {}

    def load() -> None:
        client = Client(server)
        try:
            client.infer(load_body)
            first_answered.wait()
            while not stop.is_set():
                client.infer(load_body)
                if not measuring.is_set():
                    continue
                with lock:
                    result.background += 1
                    if result.background == background:
                        window["end"] = time.perf_counter()
                        window["cpu_end"] = cpu_seconds(pid)
                        counted.set()
        except BaseException as error:  # reported by the round, not lost
            failures.append(error)
            first_answered.abort()
            counted.set()
        finally:
            client.close()

    local = threading.local()
    opened: list[Client] = []

    def probe(scheduled: float, row: np.ndarray) -> None:
        if not hasattr(local, "client"):
            local.client = Client(server)
            opened.append(local.client)
        answer = local.client.infer(body(row))
        result.probe_s.append(time.perf_counter() - scheduled)
        result.probes.append((row, answer))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    probes: list[Future[None]] = []
    try:
        # Every client has had an answer: the device's queue is deep from here on.
        first_answered.wait()
        moved_before = moved_to_cpu(server)
        window["cpu_start"] = cpu_seconds(pid)
        started = window["start"] = time.perf_counter()
        measuring.set()
        with ThreadPoolExecutor(PROBE_WORKERS) as pool:
            index = 0
            while not counted.is_set():
                scheduled = started + index * interval_s
                if counted.wait(max(scheduled - time.perf_counter(), 0.0)):
                    break
                row = rng.standard_normal((1, DEMO_INPUTS)).astype(np.float32)
                probes.append(pool.submit(probe, scheduled, row))
                index += 1
            for future in probes:
                future.result()  # the load goes on meanwhile: late probes still meet a deep queue
        result.moved = moved_to_cpu(server) - moved_before
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
        for client in opened:
            client.close()
    if failures:
        raise RuntimeError(f"a background client failed: {failures[0]!r}")
    result.elapsed_s = window["end"] - window["start"]
    result.cpu_s = window["cpu_end"] - window["cpu_start"]
    return result


def check_answers(device: ServerProcess, rounds: list[Round]) -> float:
    """The largest difference between a probe's answer and the device path's for its row."""
    client = Client(device)
    worst = 0.0
    try:
        for round_ in rounds:
            for row, answer in round_.probes:
                expected = client.infer(body(row))
                np.testing.assert_allclose(answer, expected, rtol=TOLERANCE, atol=TOLERANCE)
                worst = max(worst, float(np.abs(answer - expected).max()))
    finally:
        client.close()
    return worst


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3


def summarize(rounds: list[Round]) -> dict[str, dict[str, float]]:
    summary = {}
    for mode in MODES:
        mine = [r for r in rounds if r.mode == mode]
        latencies = [s for r in mine for s in r.probe_s]
        background = sum(r.background for r in mine)
        summary[mode] = {
            "probes": len(latencies),
            "p50_ms": percentile_ms(latencies, 50),
            "p99_ms": percentile_ms(latencies, 99),
            "moved": sum(r.moved for r in mine),
            "background": background,
            "rps": background / sum(r.elapsed_s for r in mine),
            "median_round_rps": statistics.median(r.background / r.elapsed_s for r in mine),
            "cpu_ms_per_request": sum(r.cpu_s for r in mine) / background * 1e3,
        }
    return summary


def table(summary: dict[str, dict[str, float]]) -> str:
    lines = [
        "| mode | probes | moved to CPU | probe p50 ms | probe p99 ms | background req/s"
        " | CPU ms / background req |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, cpu_fallback in MODES.items():
        row = summary[mode]
        lines.append(
            f"| {mode}: {cpu_fallback} | {row['probes']:.0f} | {row['moved']:.0f}"
            f" | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['rps']:.1f}"
            f" | {row['cpu_ms_per_request']:.2f} |"
        )
    a, b = summary["A"], summary["B"]
    p99 = b["p99_ms"] / a["p99_ms"]
    rps = b["rps"] / a["rps"]
    lines += [
        "",
        f"B/A: probe p50 {b['p50_ms'] / a['p50_ms']:.2f}x, probe p99 {p99:.2f}x"
        f" (target <= 0.5: {'met' if p99 <= 0.5 else 'MISSED'}),"
        f" background req/s {rps:.2f}x (target >= 0.9: {'met' if rps >= 0.9 else 'MISSED'}),"
        f" CPU per background request {b['cpu_ms_per_request'] / a['cpu_ms_per_request']:.2f}x",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each mode, A B A B ...")
    parser.add_argument("--clients", type=int, default=6, help="background clients")
    parser.add_argument(
        "--background", type=int, default=600, help="background requests a round counts"
    )
    parser.add_argument("--probe-interval-ms", type=float, default=25.0)
    args = parser.parse_args()
    interval_s = args.probe_interval_ms / 1e3
    work = Path(tempfile.mkdtemp(prefix="cpu-fallback-bench-"))
    artifact = export_wide(work / "wide.pt2")
    environment = {"PJRT_DEVICE": os.environ.get("PJRT_DEVICE", "CPU")}
    rng = np.random.default_rng(0)
    with ExitStack() as stack:
        servers = {
            mode: stack.enter_context(
                running_server(
                    config(work / mode, artifact, cpu_fallback), work / mode, environment, 600
                )
            )
            for mode, cpu_fallback in MODES.items()
        }
        step: Callable[[str, int], Round] = lambda mode, background: run_round(  # noqa: E731
            servers[mode], mode, args.clients, background, interval_s, rng
        )
        for mode in MODES:  # not counted: the first batches of each server's connections
            step(mode, args.background // 4)
        rounds = []
        for index in range(args.rounds):
            for mode in MODES:
                done = step(mode, args.background)
                rounds.append(done)
                print(
                    json.dumps(
                        {
                            "round": index,
                            "mode": mode,
                            "probes": len(done.probe_s),
                            "moved": done.moved,
                            "p50_ms": round(percentile_ms(done.probe_s, 50), 2),
                            "p99_ms": round(percentile_ms(done.probe_s, 99), 2),
                            "rps": round(done.background / done.elapsed_s, 1),
                            "cpu_ms_per_request": round(done.cpu_s / done.background * 1e3, 3),
                            "loadavg": os.getloadavg()[0],
                        }
                    ),
                    flush=True,
                )
        worst = check_answers(servers["A"], rounds)
    print(f"probe answers equal the device path's (largest difference {worst:.1e})")
    print(table(summarize(rounds)))


if __name__ == "__main__":
    main()
