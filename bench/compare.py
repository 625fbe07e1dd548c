"""Side-by-side serving benchmark: Aegis, TorchServe, MLServer and LitServe, and two ceilings.

One invocation runs every server on the same model and the same request body, one after another,
each pinned to core 0 with the load generator (wrk) on core 1:

- Aegis with JSON tensors and with binary tensors (Triton's extension), one server process;
- TorchServe 0.12, MLServer 1.7.1 and LitServe 0.2.19, each installed into its own cached venv
  under `.cache/bench/venvs/` and serving a TorchScript file of the same weights;
- the HTTP ceiling (`http_ceiling.py`: bare Hypercorn + uvloop, parses the body, fixed reply);
- the compute ceiling (`models.py ceiling`: the model in-process, best bucket, one thread).

For each model (`tiny`, `compute`) and concurrency: warm-up, then a fixed window; throughput,
p50/p90/p99, mean batch size (Aegis's `aegis_batch_size` histogram) and the server's memory.
Then the overload check (Aegis at 10x the concurrency its queue admits, latency per status) and
the demo model's first figure (issue 2). Results go to `OUT/results.{json,md}` and
`OUT/serving.png`. Every server runs in its own process group and is killed on the way out,
whatever happens; all traffic stays on 127.0.0.1.

    .venv/bin/python bench/compare.py [--concurrency 1,16,64,256] [--window 10] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import envs  # noqa: E402
import models  # noqa: E402
import report  # noqa: E402

REPO = BENCH.parent
PEERS = BENCH / "peers"
HOST = "127.0.0.1"
SERVER_CORE = "0"
CLIENT_CORE = "1"
START_TIMEOUT_S = 180.0
PEER_ENVS = {"torchserve": "torchserve", "mlserver": "mlserver", "litserve": "litserve"}
ALL_TARGETS = (
    "http-ceiling",
    "aegis-json",
    "aegis-binary",
    "torchserve",
    "mlserver",
    "litserve",
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# Processes: every server in its own process group, all killed on exit.


class Fleet:
    """Started processes; `stop_all` kills each one's whole process group."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, command: list[str], log_path: Path, cwd: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as sink:
            proc = subprocess.Popen(
                command,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; anything it left in its group (workers, the JVM) goes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self._procs):
            self.stop(proc, grace_s=3.0)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants (workers, the JVM), in MB."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    total_kb = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        stack.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


# ---------------------------------------------------------------------------------------------
# Payloads: the same V2 body for every server (binary tensors for Aegis binary).


@dataclass
class Payload:
    rows: np.ndarray
    expected: np.ndarray
    json_body: bytes
    binary_body: bytes
    binary_header_length: int
    reply: bytes  # Aegis's JSON reply for this request: the HTTP ceiling returns its size


def make_payload(model_name: str, artifacts: Path) -> Payload:
    import torch

    from appliance.rest.codec import OutputTensor, encode_response

    rows = np.random.default_rng(64).standard_normal((1, models.INPUTS)).astype(np.float32)
    module = torch.export.load(str(artifacts / f"{model_name}.pt2")).module()
    with torch.no_grad():
        expected = module(torch.from_numpy(rows)).numpy()
    tensor = {"name": "input__0", "shape": [1, models.INPUTS], "datatype": "FP32"}
    json_body = orjson.dumps(
        {"inputs": [{**tensor, "data": rows.reshape(-1)}]}, option=orjson.OPT_SERIALIZE_NUMPY
    )
    header = orjson.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": rows.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    )
    reply, _ = encode_response(
        model_name, "1", None, [OutputTensor("output__0", "FP32", expected, False)]
    )
    return Payload(rows, expected, json_body, header + rows.tobytes(), len(header), reply)


def output_of(body: bytes, header_length: str | None) -> np.ndarray:
    """The first output of a V2 reply, JSON or binary."""
    if header_length is None:
        document = orjson.loads(body)
        return np.asarray(document["outputs"][0]["data"], dtype=np.float32)
    split = int(header_length)
    return np.frombuffer(body[split:], dtype="<f4")


# ---------------------------------------------------------------------------------------------
# Servers


@dataclass
class Server:
    key: str
    proc: subprocess.Popen[bytes]
    port: int
    paths: dict[str, str]  # target -> request path
    metrics_model: str | None = None  # the model name in Aegis's /metrics, for batch sizes


@dataclass
class Target:
    name: str
    path: str
    body: bytes
    headers: dict[str, str]
    check: bool = True


class Launcher:
    """Writes each server's config and starts it pinned to the server core."""

    def __init__(self, fleet: Fleet, work: Path, artifacts: Path) -> None:
        self.fleet = fleet
        self.work = work
        self.artifacts = artifacts

    def _pinned(self, *command: str | Path) -> list[str]:
        return ["taskset", "-c", SERVER_CORE, *map(str, command)]

    def _dir(self, name: str) -> Path:
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def _env(self) -> dict[str, str]:
        # Every server gets one intra-op thread on its one core (field notes: stable latency).
        return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def start(self, key: str, model: str, payload: Payload) -> Server:
        return getattr(self, "_start_" + key.replace("-", "_"))(model, payload)

    def _start_aegis(self, model: str, _payload: Payload, queue_size: int = 1024) -> Server:
        home = self._dir(f"aegis-{model}-{queue_size}")
        spec = models.MODELS[model]
        port = free_port()
        config = home / "aegis.toml"
        config.write_text(
            f'[server]\nbind = ["{HOST}:{port}"]\nshutdown_grace_s = 2\n\n'
            f'[storage]\ncache_dir = "{home / "cache"}"\n\n'
            f'[[models]]\nname = "{model}"\nversion = "1"\n'
            f'model_path = "{self.artifacts / (model + ".pt2")}"\n'
            f'runtime = "torch"\ndevice = "cpu"\nmax_batch_size = {spec.max_batch_size}\n'
            f"max_queue_delay_ms = {spec.max_queue_delay_ms}\nmax_queue_size = {queue_size}\n"
            f'[[models.inputs]]\nname = "input__0"\ndatatype = "FP32"\n'
            f"shape = [-1, {models.INPUTS}]\n"
            f'[[models.outputs]]\nname = "output__0"\ndatatype = "FP32"\n'
            f"shape = [-1, {models.OUTPUTS}]\n"
        )
        aegis = Path(sys.executable).parent / "aegis"
        proc = self.fleet.start(
            self._pinned(aegis, "serve", "--config", config, "--bind", f"{HOST}:{port}"),
            home / "server.log",
            home,
            self._env(),
        )
        path = f"/v2/models/{model}/infer"
        return Server("aegis", proc, port, {"aegis-json": path, "aegis-binary": path}, model)

    def _start_aegis_demo(self, _model: str, _payload: Payload) -> Server:
        home = self._dir("aegis-demo")
        port = free_port()
        aegis = Path(sys.executable).parent / "aegis"
        proc = self.fleet.start(
            self._pinned(aegis, "demo", "--bind", f"{HOST}:{port}"),
            home / "server.log",
            home,
            {**self._env(), "AEGIS_DEMO_DIR": str(home)},
        )
        return Server("aegis-demo", proc, port, {"aegis-demo": "/v2/models/demo/infer"}, "demo")

    def _start_http_ceiling(self, model: str, payload: Payload) -> Server:
        home = self._dir(f"http-ceiling-{model}")
        (home / "reply.json").write_bytes(payload.reply)
        port = free_port()
        proc = self.fleet.start(
            self._pinned(
                sys.executable, BENCH / "http_ceiling.py", f"{HOST}:{port}", home / "reply.json"
            ),
            home / "server.log",
            home,
            self._env(),
        )
        return Server("http-ceiling", proc, port, {"http-ceiling": f"/v2/models/{model}/infer"})

    def _start_torchserve(self, model: str, _payload: Payload) -> Server:
        home = self._dir(f"torchserve-{model}")
        python = envs.ensure("torchserve")
        bin_dir = python.parent
        store = home / "store"
        store.mkdir()
        spec = models.MODELS[model]
        subprocess.run(
            [
                bin_dir / "torch-model-archiver",
                "--model-name",
                model,
                "--version",
                "1",
                "--serialized-file",
                self.artifacts / f"{model}.pt",
                "--handler",
                PEERS / "torchserve_handler.py",
                "--extra-files",
                PEERS / "v2.py",
                "--export-path",
                store,
                "--archive-format",
                "no-archive",
            ],
            check=True,
            timeout=300,
        )
        port, management, metrics = free_port(), free_port(), free_port()
        registered = {
            model: {
                "1": {
                    "defaultVersion": True,
                    "marName": model,
                    "minWorkers": 1,
                    "maxWorkers": 1,
                    "batchSize": spec.max_batch_size,
                    "maxBatchDelay": int(spec.max_queue_delay_ms),
                    "responseTimeout": 120,
                }
            }
        }
        (home / "config.properties").write_text(
            f"inference_address=http://{HOST}:{port}\n"
            f"management_address=http://{HOST}:{management}\n"
            f"metrics_address=http://{HOST}:{metrics}\n"
            f"grpc_inference_address={HOST}\ngrpc_management_address={HOST}\n"
            f"grpc_inference_port={free_port()}\ngrpc_management_port={free_port()}\n"
            "disable_token_authorization=true\nenable_model_api=false\n"
            "disable_system_metrics=true\ndefault_workers_per_model=1\n"
            f"model_store={store}\nload_models={model}\n"
            f"models={json.dumps(registered)}\n"
        )
        proc = self.fleet.start(
            self._pinned(
                bin_dir / "torchserve",
                "--start",
                "--foreground",
                "--ncs",
                "--disable-token-auth",
                "--ts-config",
                home / "config.properties",
                "--model-store",
                store,
            ),
            home / "server.log",
            home,
            {**self._env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        )
        return Server("torchserve", proc, port, {"torchserve": f"/predictions/{model}"})

    def _start_mlserver(self, model: str, _payload: Payload) -> Server:
        home = self._dir(f"mlserver-{model}")
        python = envs.ensure("mlserver")
        spec = models.MODELS[model]
        port = free_port()
        (home / "settings.json").write_text(
            json.dumps(
                {
                    "host": HOST,
                    "http_port": port,
                    "grpc_port": free_port(),
                    "metrics_port": free_port(),
                    "debug": False,
                }
            )
        )
        (home / model).mkdir()
        (home / model / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": model,
                    "implementation": "mlserver_runtime.TorchScriptModel",
                    "max_batch_size": spec.max_batch_size,
                    "max_batch_time": spec.max_queue_delay_ms / 1000,
                    "parameters": {"uri": str(self.artifacts / f"{model}.pt")},
                }
            )
        )
        proc = self.fleet.start(
            self._pinned(python.parent / "mlserver", "start", home),
            home / "server.log",
            home,
            {**self._env(), "PYTHONPATH": str(PEERS)},
        )
        return Server("mlserver", proc, port, {"mlserver": f"/v2/models/{model}/infer"})

    def _start_litserve(self, model: str, _payload: Payload) -> Server:
        home = self._dir(f"litserve-{model}")
        python = envs.ensure("litserve")
        spec = models.MODELS[model]
        port = free_port()
        proc = self.fleet.start(
            self._pinned(
                python,
                PEERS / "litserve_app.py",
                self.artifacts / f"{model}.pt",
                str(port),
                str(spec.max_batch_size),
                str(spec.max_queue_delay_ms / 1000),
            ),
            home / "server.log",
            home,
            {**self._env(), "PYTHONPATH": str(PEERS)},
        )
        return Server("litserve", proc, port, {"litserve": "/predict"})


def post(port: int, target: Target, timeout_s: float = 10.0) -> tuple[int, bytes, str | None]:
    request = urllib.request.Request(
        f"http://{HOST}:{port}{target.path}", data=target.body, headers=target.headers
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return (
                response.status,
                response.read(),
                response.headers.get("Inference-Header-Content-Length"),
            )
    except urllib.error.HTTPError as error:
        return error.code, error.read(), None


def wait_ready(server: Server, target: Target, payload: Payload, log_path: Path) -> None:
    """Until the server answers the benchmark request correctly; fails fast if it died."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.key} exited ({server.proc.returncode}); see {log_path}")
        try:
            status, body, header_length = post(server.port, target)
        except (OSError, urllib.error.URLError) as error:
            last = str(error)
        else:
            if status == 200:
                if target.check:
                    got = output_of(body, header_length)
                    if not np.allclose(got, payload.expected.reshape(-1), rtol=1e-4, atol=1e-4):
                        raise RuntimeError(f"{target.name} computes a different function: {got}")
                return
            last = f"HTTP {status}: {body[:200]!r}"
            if status in (405, 415, 422):
                # The server is up and refuses the request: waiting will not change that.
                raise RuntimeError(f"{target.name} refuses the benchmark request: {last}")
        time.sleep(0.5)
    raise RuntimeError(f"{server.key} not ready after {START_TIMEOUT_S:.0f} s ({last})")


def targets_for(server: Server, payload: Payload) -> list[Target]:
    json_headers = {"Content-Type": "application/json"}
    made = []
    for name, path in server.paths.items():
        if name == "aegis-binary":
            headers = {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(payload.binary_header_length),
            }
            made.append(Target(name, path, payload.binary_body, headers))
        else:
            made.append(Target(name, path, payload.json_body, json_headers, name != "http-ceiling"))
    return made


# ---------------------------------------------------------------------------------------------
# Load: wrk on the client core, and Aegis's batch-size histogram around each window.


@dataclass
class Row:
    model: str
    target: str
    concurrency: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    mean_batch: float | None
    rss_mb: float


def run_wrk(port: int, target: Target, concurrency: int, seconds: float, work: Path) -> dict:
    body_file = work / f"body-{target.name}.bin"
    body_file.write_bytes(target.body)
    env = {
        **os.environ,
        "WRK_BODY_FILE": str(body_file),
        "WRK_HEADERS": "|".join(f"{name}: {value}" for name, value in target.headers.items()),
    }
    command = [
        "taskset",
        "-c",
        CLIENT_CORE,
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / "wrk_post.lua"),
        f"http://{HOST}:{port}{target.path}",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_RESULT "):
            return json.loads(line.removeprefix("WRK_RESULT "))
    raise RuntimeError(f"wrk gave no result: {done.stdout[-500:]} {done.stderr[-500:]}")


def batch_histogram(port: int, model: str) -> tuple[float, float]:
    """(sum, count) of aegis_batch_size for `model`."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if f'model="{model}"' not in line:
            continue
        if line.startswith("aegis_batch_size_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith("aegis_batch_size_count"):
            count = float(line.rsplit(" ", 1)[1])
    return total, count


def measure(
    server: Server,
    target: Target,
    model: str,
    concurrency: int,
    args: argparse.Namespace,
    work: Path,
) -> Row:
    run_wrk(server.port, target, concurrency, args.warmup, work)
    scraped = server.metrics_model
    before = batch_histogram(server.port, scraped) if scraped else None
    result = run_wrk(server.port, target, concurrency, args.window, work)
    mean_batch = None
    if before is not None and scraped:
        after = batch_histogram(server.port, scraped)
        batches = after[1] - before[1]
        mean_batch = (after[0] - before[0]) / batches if batches else None
    duration_s = result["duration_us"] / 1e6
    errors = result["non2xx"] + result["socket_errors"] + result["timeouts"]
    row = Row(
        model=model,
        target=target.name,
        concurrency=concurrency,
        rps=(result["requests"] - result["non2xx"]) / duration_s,
        p50_ms=result["p50_us"] / 1000,
        p90_ms=result["p90_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        errors=errors,
        mean_batch=mean_batch,
        rss_mb=tree_rss_mb(server.proc.pid),
    )
    log(
        f"{model:8s} {target.name:13s} c={concurrency:<4d} {row.rps:9.1f} req/s  "
        f"p50 {row.p50_ms:7.2f}  p99 {row.p99_ms:7.2f} ms  errors {errors}"
        + (f"  batch {mean_batch:.1f}" if mean_batch else "")
    )
    return row


# ---------------------------------------------------------------------------------------------
# Overload: Aegis with a 64-deep queue at 10x that concurrency. wrk gives the client's view of all
# responses; Aegis's access log (one JSON line per request, with status and duration) gives the
# time to answer each status apart, from arrival at the app to the reply.


def _access_log(path: Path, offset: int) -> dict[str, dict[str, float]]:
    durations: dict[int, list[float]] = {}
    with open(path, "rb") as stream:
        stream.seek(offset)
        for line in stream:
            if b'"event":"infer"' not in line:
                continue
            entry = orjson.loads(line)
            durations.setdefault(entry["status"], []).append(entry["duration_ms"])
    summary = {}
    for status, values in sorted(durations.items()):
        values.sort()

        def at(fraction: float, ordered: list[float] = values) -> float:
            return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

        summary[str(status)] = {
            "count": len(values),
            "p50_ms": at(0.5),
            "p99_ms": at(0.99),
            "max_ms": values[-1],
        }
    return summary


def overload(launcher: Launcher, payload: Payload, args: argparse.Namespace) -> dict[str, Any]:
    queue = 64
    server = launcher._start_aegis("tiny", payload, queue_size=queue)
    target = targets_for(server, payload)[0]
    log_path = launcher.work / f"aegis-tiny-{queue}" / "server.log"
    report: dict[str, Any] = {"max_queue_size": queue}
    try:
        wait_ready(server, target, payload, log_path)
        for label, connections in (("baseline", queue), ("overload", queue * 10)):
            run_wrk(server.port, target, connections, args.warmup, launcher.work)
            samples: list[float] = []
            stop = threading.Event()

            def sample(into: list[float] = samples, until: threading.Event = stop) -> None:
                while not until.wait(0.25):
                    into.append(tree_rss_mb(server.proc.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            time.sleep(0.5)  # the warm-up's last lines (its cut-off requests, 499) come first
            offset = log_path.stat().st_size
            sampler.start()
            try:
                result = run_wrk(server.port, target, connections, args.window, launcher.work)
            finally:
                stop.set()
                sampler.join()
            time.sleep(0.5)  # the last access-log lines are written after their replies
            duration_s = result["duration_us"] / 1e6
            report[label] = {
                "connections": connections,
                "ok_per_s": (result["requests"] - result["non2xx"]) / duration_s,
                "refused_per_s": result["non2xx"] / duration_s,
                "client_p50_ms": result["p50_us"] / 1000,
                "client_p99_ms": result["p99_us"] / 1000,
                "server_by_status": _access_log(log_path, offset),
                "rss_mb": {
                    "first": samples[0] if samples else None,
                    "max": max(samples) if samples else None,
                    "last": samples[-1] if samples else None,
                },
            }
            log(
                f"overload {label}: c={connections} {report[label]['ok_per_s']:.0f} ok/s, "
                f"{report[label]['refused_per_s']:.0f} refused/s, "
                f"server-side {report[label]['server_by_status']}"
            )
    finally:
        launcher.fleet.stop(server.proc)
    return report


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Results:
    machine: str
    command: str
    concurrency: list[int]
    warmup_s: float
    window_s: float
    rows: list[Row] = field(default_factory=list)
    compute_ceiling: dict[str, Any] = field(default_factory=dict)
    overload: dict[str, Any] | None = None
    demo: list[Row] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} cores ({cpu}), {os.uname().machine}, "
        f"load average at start {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}"
    )


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    log("installing wrk from Debian")
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, timeout=600)


def compute_ceiling(artifacts: Path, model: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            "taskset",
            "-c",
            SERVER_CORE,
            sys.executable,
            str(BENCH / "models.py"),
            "ceiling",
            str(artifacts),
            model,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    log(
        f"{model:8s} compute ceiling {result['best_rows_per_s']:.0f} rows/s at bucket "
        f"{result['best_bucket']}; batch 1 takes {result['batch1_ms']:.3f} ms"
    )
    return result


def run_server(
    launcher: Launcher,
    key: str,
    wanted: list[str],
    model: str,
    payload: Payload,
    concurrency: list[int],
    args: argparse.Namespace,
    results: list[Row],
    failures: list[str],
) -> None:
    log(f"{model}: starting {key}")
    try:
        server = launcher.start(key, model, payload)
    except Exception as error:  # a peer that fails to install or start is reported, not fatal
        failures.append(f"{model}/{key}: {error}")
        log(f"{model}: {key} failed to start: {error}")
        return
    try:
        targets = [t for t in targets_for(server, payload) if t.name in wanted]
        for target in targets:
            wait_ready(server, target, payload, launcher.work)
        for target in targets:
            for c in concurrency:
                results.append(measure(server, target, model, c, args, launcher.work))
    except Exception as error:
        failures.append(f"{model}/{key}: {error}")
        log(f"{model}: {key} failed: {error}")
    finally:
        launcher.fleet.stop(server.proc)


SERVER_OF = {
    "http-ceiling": "http-ceiling",
    "aegis-json": "aegis",
    "aegis-binary": "aegis",
    "torchserve": "torchserve",
    "mlserver": "mlserver",
    "litserve": "litserve",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,compute")
    parser.add_argument("--targets", default=",".join(ALL_TARGETS))
    parser.add_argument("--concurrency", default="1,16,64,256")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before each window")
    parser.add_argument("--window", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--no-overload", action="store_true")
    parser.add_argument("--no-demo", action="store_true")
    parser.add_argument("--quick", action="store_true", help="c=1,64, 1 s warm-up, 3 s windows")
    parser.add_argument("--out", type=Path, default=BENCH / "out" / "latest")
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.warmup, args.window = "1,64", 1.0, 3.0
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    wanted = [t for t in args.targets.split(",") if t]
    unknown = set(wanted) - set(ALL_TARGETS)
    if unknown:
        sys.exit(f"bench: unknown targets {sorted(unknown)}; known: {', '.join(ALL_TARGETS)}")
    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        sys.exit("bench: needs two cores (server on core 0, load generator on core 1)")
    ensure_wrk()
    for key in {SERVER_OF[t] for t in wanted} & set(PEER_ENVS):
        envs.ensure(PEER_ENVS[key])
    envs.ensure("tools")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    artifacts = REPO / ".cache" / "bench" / "models"
    models.export(artifacts)
    results = Results(
        machine=machine(),
        command="python bench/compare.py " + " ".join(argv),
        concurrency=concurrency,
        warmup_s=args.warmup,
        window_s=args.window,
    )
    fleet = Fleet()
    launcher = Launcher(fleet, work, artifacts)

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        for model in args.models.split(","):
            payload = make_payload(model, artifacts)
            results.compute_ceiling[model] = compute_ceiling(artifacts, model)
            for key in dict.fromkeys(SERVER_OF[t] for t in wanted):
                run_server(
                    launcher,
                    key,
                    wanted,
                    model,
                    payload,
                    concurrency,
                    args,
                    results.rows,
                    results.failures,
                )
        if not args.no_overload:
            results.overload = overload(launcher, make_payload("tiny", artifacts), args)
        if not args.no_demo:
            run_server(
                launcher,
                "aegis-demo",
                ["aegis-demo"],
                "tiny",
                make_payload("tiny", artifacts),
                [1, 64],
                args,
                results.demo,
                results.failures,
            )
    finally:
        fleet.stop_all()
    (out / "results.json").write_text(json.dumps(asdict(results), indent=2))
    (out / "results.md").write_text(report.markdown(asdict(results)))
    subprocess.run(
        [
            str(envs.python_of("tools")),
            str(BENCH / "plot.py"),
            str(out / "results.json"),
            str(out / "serving.png"),
        ],
        check=True,
        timeout=300,
    )
    log(f"results: {out / 'results.md'}, plot: {out / 'serving.png'}")
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
