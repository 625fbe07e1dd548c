"""The `tpu` runtime on XLA:CPU: per-batch host time, lazy against compiled, and requests/s over
HTTP for the deep model on `tpu` against `torch`. Run with the XLA tier's venv (it has torch 2.9,
torch-xla 2.9 and the appliance), one thread, after `bash tests/xla/run_tier.sh --co -q`:

    PJRT_DEVICE=CPU OMP_NUM_THREADS=1 .venv-xla/bin/python bench/tpu_bench.py host OUT
    PJRT_DEVICE=CPU .venv-xla/bin/python bench/tpu_bench.py http OUT   # root: taskset, wrk
    OMP_NUM_THREADS=1 .venv/bin/python bench/tpu_bench.py torch OUT    # torch 2.13, torch runtime

`host` runs in this process, pinned to one core: for each zoo model and batch bucket, the wall
time of one batch traced lazily (the model's forward and `torch_xla.sync()`, what the runtime did
before), replayed by `XlaRuntime.run`, and the compiled program's own `ExecuteTime`.
`torch` times the torch runtime's exported-program path against the eager module and
`ExportedProgram.module()` in one process, per zoo model and batch.
`http` starts one server pinned to core 0 serving the deep model four times (`torch` at its
default of one batch in flight and with two, `tpu` at its default of two and with one) and drives
each with wrk on core 1, with requests of 1 and of 8 rows, interleaved: windows alternate between
the models, so a change in the machine's load hits every model alike.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.zoo import ZOO, model_toml  # noqa: E402

SERVER_CORE, CLIENT_CORE = "0", "1"
HOST_BUCKETS = (1, 8, 16)
REPEATS = 60
REQUEST_ROWS = (1, 8)  # rows per request: one per client, or a client's own small batch


def export(out: Path) -> Path:
    zoo = out / "zoo"
    # A fresh process: torch_xla, once imported, keeps torch.nn.GRU from exporting.
    subprocess.run([sys.executable, "-m", "tests.support.zoo", str(zoo)], check=True, cwd=ROOT)
    return zoo


def timed(run: object, repeats: int = REPEATS) -> float:
    """Median wall milliseconds of `run()`, after two runs that compile and warm."""
    run()  # type: ignore[operator]
    run()  # type: ignore[operator]
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()  # type: ignore[operator]
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def interleaved(runs: dict[str, Callable[[], object]], repeats: int = REPEATS) -> dict[str, float]:
    """Median wall milliseconds of each run, after two warming calls each, taken in rotation:
    one sample of each per round, so a change in the machine's load hits every run alike."""
    for run in runs.values():
        run()
        run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def host(out: Path) -> None:
    os.sched_setaffinity(0, {int(SERVER_CORE)})
    import torch
    import torch_xla
    import torch_xla.debug.metrics as metrics

    from appliance.config import ModelConfig
    from appliance.runtimes.exported import ExportedForward, load_exported
    from appliance.runtimes.torch_tensors import to_tensor
    from appliance.runtimes.xla_runtime import XlaRuntime

    torch.set_num_threads(1)
    zoo = export(out)
    device = torch_xla.device()
    rows = []
    for name, model in ZOO.items():
        path = zoo / f"{name}.pt2"
        config = ModelConfig(
            model_path=str(path),
            runtime="tpu",
            device="tpu",
            max_batch_size=HOST_BUCKETS[-1],
            batch_buckets=HOST_BUCKETS,
            **model.config(),
        )
        runtime = XlaRuntime(config, path)
        runtime.load()
        lazy = ExportedForward(load_exported(path), device)
        for bucket in HOST_BUCKETS:
            batch = model.example(np.random.default_rng(0), bucket)
            host_tensors = [to_tensor(batch[spec.name], spec.datatype) for spec in model.inputs]

            def traced(
                lazy: ExportedForward = lazy, host_tensors: list[torch.Tensor] = host_tensors
            ) -> None:
                with torch.no_grad():
                    outputs = lazy(*(tensor.to(device) for tensor in host_tensors))
                    torch_xla.sync()
                    [output.cpu() for output in outputs]

            lazy_ms = timed(traced)
            execute_before = metrics.metric_data("ExecuteTime")
            compiled_ms = timed(lambda: runtime.run(batch))  # noqa: B023
            execute_after = metrics.metric_data("ExecuteTime")
            count = execute_after[0] - execute_before[0]
            # The two warming runs are in the window too: ExecuteTime's mean over all of it.
            execute_ms = (execute_after[1] - execute_before[1]) / count / 1e6
            rows.append(
                {
                    "model": name,
                    "batch": bucket,
                    "shape": {spec.name: list(batch[spec.name].shape) for spec in model.inputs},
                    "lazy_ms": round(lazy_ms, 3),
                    "compiled_ms": round(compiled_ms, 3),
                    "execute_ms": round(execute_ms, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        runtime.close()
    (out / "host.json").write_text(json.dumps(rows, indent=1))


def torch_overhead(out: Path) -> None:
    """The torch runtime against the eager module and `ExportedProgram.module()`, per batch."""
    os.sched_setaffinity(0, {int(SERVER_CORE)})
    import torch

    from appliance.config import ModelConfig
    from appliance.runtimes.torch_runtime import TorchRuntime

    torch.set_num_threads(1)
    zoo = export(out)
    rows = []
    for name, model in ZOO.items():
        path = zoo / f"{name}.pt2"
        runtime = TorchRuntime(ModelConfig(model_path=str(path), **model.config()), path)
        runtime.load()
        eager = model.build()
        unlifted = torch.export.load(str(path)).module()
        for bucket in HOST_BUCKETS:
            batch = model.example(np.random.default_rng(0), bucket)
            args = [torch.from_numpy(batch[spec.name]) for spec in model.inputs]
            with torch.no_grad():
                times = interleaved(
                    {
                        "eager_ms": lambda: eager(*args),  # noqa: B023
                        "module_ms": lambda: unlifted(*args),  # noqa: B023
                        "runtime_ms": lambda: runtime.run(batch),  # noqa: B023
                    }
                )
            rows.append(
                {"model": name, "batch": bucket, **{k: round(v, 3) for k, v in times.items()}}
            )
            print(json.dumps(rows[-1]), flush=True)
    (out / f"torch-{torch.__version__.split('+')[0]}.json").write_text(json.dumps(rows, indent=1))


def wrk(port: int, model: str, body: Path, seconds: int, connections: int) -> dict[str, Any]:
    env = {**os.environ, "WRK_BODY_FILE": str(body), "WRK_HEADERS": ""}
    command = [
        "taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
        "--timeout", "10s", "-s", str(ROOT / "bench" / "wrk_post.lua"),
        f"http://127.0.0.1:{port}/v2/models/{model}/infer",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("WRK_RESULT "))
            return result
    raise RuntimeError(f"wrk gave no result: {done.stdout[-500:]} {done.stderr[-500:]}")


def http(out: Path, rounds: int = 3, seconds: int = 10, connections: int = 16) -> None:
    zoo = export(out)
    deep = ZOO["deep"]
    path = zoo / "deep.pt2"
    common = {"max_batch_size": 16, "max_queue_delay_ms": 2.0, "warmup_iters": 2}
    variants = {
        "deep_torch": {"runtime": "torch", "device": "cpu", **common},
        "deep_torch_c2": {"runtime": "torch", "device": "cpu", "max_concurrency": 2, **common},
        "deep_tpu": {"runtime": "tpu", "device": "tpu", **common},  # two in flight by default
        "deep_tpu_c1": {"runtime": "tpu", "device": "tpu", "max_concurrency": 1, **common},
    }
    models = "".join(model_toml(name, path, deep, **fields) for name, fields in variants.items())
    work = Path(tempfile.mkdtemp(prefix="tpu-bench-"))
    config = work / "aegis.toml"
    config.write_text(
        f'[server]\nshutdown_grace_s = 5\n[storage]\ncache_dir = "{work / "cache"}"\n'
        f'[xla]\ncompilation_cache_dir = ""\n{models}'
    )
    port = 18431
    env = {**os.environ, "PJRT_DEVICE": "CPU", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = open(work / "server.log", "wb")  # noqa: SIM115 - held for the server's lifetime
    server = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, sys.executable, "-m", "appliance", "serve",
         "--config", str(config), "--bind", f"127.0.0.1:{port}",
         "--grpc-bind", f"127.0.0.1:{port + 1}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError((work / "server.log").read_text()[-2000:]) from None
                time.sleep(1)
        bodies = {}
        for size in REQUEST_ROWS:
            rows = np.random.default_rng(0).standard_normal((size, 16)).astype(np.float32)
            tensor = {"name": "x", "datatype": "FP32", "shape": [size, 16]}
            bodies[size] = work / f"body-{size}.json"
            bodies[size].write_text(
                json.dumps({"inputs": [{**tensor, "data": rows.ravel().tolist()}]})
            )
        for name in variants:  # warm the connection path of each
            wrk(port, name, bodies[1], 2, connections)
        results: dict[str, list[float]] = {
            f"{name}@{size}": [] for size in REQUEST_ROWS for name in variants
        }
        for round_ in range(rounds):
            for size in REQUEST_ROWS:
                for name in variants:
                    result = wrk(port, name, bodies[size], seconds, connections)
                    assert result["non2xx"] == 0 and result["socket_errors"] == 0, result
                    rps = result["requests"] / (result["duration_us"] / 1e6)
                    results[f"{name}@{size}"].append(rps)
                    print(json.dumps({"round": round_, "model": name, "rows": size,
                                      "rps": round(rps, 1), "p50_ms": result["p50_us"] / 1000}),
                          flush=True)  # fmt: skip
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            compiles = [
                line
                for line in response.read().decode().splitlines()
                if line.startswith("aegis_xla_compilations_total")
            ]
        summary = {
            "connections": connections,
            "window_s": seconds,
            "rounds": rounds,
            "rps": {name: [round(v, 1) for v in values] for name, values in results.items()},
            "median_rps": {name: round(statistics.median(v), 1) for name, v in results.items()},
            "over_torch": {
                f"{name}@{size}": round(
                    statistics.median(results[f"{name}@{size}"])
                    / statistics.median(results[f"deep_torch@{size}"]),
                    2,
                )
                for size in REQUEST_ROWS
                for name in variants
                if name != "deep_torch"
            },
            "compilations": compiles,
        }
        print(json.dumps(summary, indent=1))
        (out / "http.json").write_text(json.dumps(summary, indent=1))
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


if __name__ == "__main__":
    mode, target = sys.argv[1], Path(sys.argv[2])
    target.mkdir(parents=True, exist_ok=True)
    {"host": host, "http": http, "torch": torch_overhead}[mode](target)
