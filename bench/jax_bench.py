"""The `jax` runtime against `torch` (and `tpu` on XLA:CPU) on the same `.pt2` files.

Two measurements, each process pinned to core 0 (`taskset -c 0`, one intra-op thread):

- per batch: milliseconds per `Runtime.run` by bucket, in-process, for the JAX tier's models
  (`deep.pt2`: 48 residual blocks of width 64; `demo.pt2`; `mixed.pt2`), on `jax` (JAX CPU
  backend), `torch` (torch 2.9, the JAX venv's; and torch 2.13, the main venv's) and `tpu`
  (torch_xla 2.9 on XLA:CPU, the XLA venv's) where those venvs exist;
- over HTTP: requests/s of `deep.pt2` served by `runtime = "jax"` and by `runtime = "torch"`
  (same file, same config otherwise: batch 32, 5 ms delay), the torch one both on torch 2.9
  (the JAX venv's) and torch 2.13 (the main venv's), one row per request, wrk on core 1.

Run from the repository root with the JAX tier's venv (`make test-jax` builds it):

    .venv-jax/bin/python bench/jax_bench.py [--out bench/out/jax] [--window 15] [--concurrency 64]

Results: OUT/results.json and a markdown table on stdout. All traffic stays on 127.0.0.1; every
server runs in its own process group and is killed on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))  # the appliance and the JAX tier's models, from this checkout
HOST = "127.0.0.1"
SERVER_CORE = "0"
CLIENT_CORE = "1"
BUCKETS = (1, 2, 4, 8, 16, 32)
MODELS = ("deep.pt2", "demo.pt2", "mixed.pt2")
# One core, one compute thread: torch's intra-op pool and XLA's CPU (Eigen) pool alike.
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "PYTHONUNBUFFERED": "1",
}
# (label, venv, runtime, extra environment) of the per-batch runs.
PER_BATCH_RUNS: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    ("jax", ".venv-jax", "jax", {"JAX_PLATFORMS": "cpu"}),
    ("torch 2.9", ".venv-jax", "torch", {}),
    ("torch 2.13", ".venv", "torch", {}),
    ("tpu (XLA:CPU)", ".venv-xla", "tpu", {"PJRT_DEVICE": "CPU"}),
)


ROUNDS = 2
# (label, runtime, venv) of the servers: the same deep.pt2 and config, one after another.
HTTP_RUNS = (
    ("jax", "jax", ".venv-jax"),
    ("torch 2.9", "torch", ".venv-jax"),
    ("torch 2.13", "torch", ".venv"),
)


def _venv_python(venv: str, venv_root: Path) -> Path | None:
    for root in (REPO, venv_root):
        python = root / venv / "bin" / "python"
        if python.exists():
            return python
    return None


def log(message: str) -> None:
    print(f"[jax-bench] {message}", file=sys.stderr, flush=True)


def per_batch(runtime_name: str, artifacts: Path, repeats: int) -> dict[str, dict[str, float]]:
    """In this process: median ms per run, by model and bucket."""
    import torch

    torch.set_num_threads(1)
    from appliance.config import ModelConfig
    from appliance.repository.loader import warm_up
    from appliance.runtimes import create_runtime
    from tests.jax_tier.jax_models import example_inputs

    device = "tpu" if runtime_name == "tpu" else "cpu"
    timings: dict[str, dict[str, float]] = {}
    for artifact in MODELS:
        path = artifacts / artifact
        config = ModelConfig(
            model_path=str(path), runtime=runtime_name, device=device, max_batch_size=BUCKETS[-1]
        )
        runtime = create_runtime(config, path)
        runtime.load()
        warm_up(runtime, BUCKETS, config.dims, iterations=2)
        assert runtime.signature is not None
        names = [spec.name for spec in runtime.signature.inputs]
        timings[artifact] = {}
        for bucket in BUCKETS:
            batch = dict(zip(names, example_inputs(artifact, bucket), strict=True))
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                runtime.run(batch)
                samples.append(time.perf_counter() - started)
            timings[artifact][str(bucket)] = round(float(np.median(samples)) * 1000, 3)
        runtime.close()
    return timings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def model_toml(runtime: str, artifact: Path, work: Path, max_batch_size: int) -> str:
    return (
        f'[storage]\ncache_dir = "{work / "models"}"\n'
        f'[xla]\ncompilation_cache_dir = "{work / "xla-cache"}"\n'
        f'[[models]]\nname = "deep"\nmodel_path = "{artifact}"\nruntime = "{runtime}"\n'
        f'device = "cpu"\nmax_batch_size = {max_batch_size}\nmax_queue_delay_ms = 5.0\n'
        "max_concurrency = 1\n"
    )


@contextlib.contextmanager
def served(runtime: str, python: Path, artifact: Path, work: Path, max_batch_size: int) -> Any:
    work.mkdir(parents=True, exist_ok=True)
    config = work / "aegis.toml"
    config.write_text(model_toml(runtime, artifact, work, max_batch_size))
    port = free_port()
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(REPO)}
    command = ["taskset", "-c", SERVER_CORE, str(python), "-m", "appliance", "serve"]
    command += ["--config", str(config), "--bind", f"{HOST}:{port}"]
    command += ["--grpc-bind", f"{HOST}:{free_port()}"]
    with open(work / "server.log", "wb") as server_log:
        process = subprocess.Popen(
            command, stdout=server_log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{runtime} server exited: {(work / 'server.log').read_text()}")
            with contextlib.suppress(OSError):
                url = f"http://{HOST}:{port}/v2/health/ready"
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            time.sleep(0.2)
        else:
            raise TimeoutError(f"{runtime} server not ready")
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def wrk(port: int, body: Path, concurrency: int, seconds: int) -> dict[str, Any]:
    env = {**os.environ, "WRK_BODY_FILE": str(body), "WRK_HEADERS": ""}
    command = ["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s"]
    command += ["--timeout", "10s", "-s", str(BENCH / "wrk_post.lua")]
    command += [f"http://{HOST}:{port}/v2/models/deep/infer"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("WRK_RESULT "))
            return result
    raise RuntimeError(f"wrk gave no result: {done.stdout[-500:]} {done.stderr[-500:]}")


def http_run(
    artifacts: Path,
    out: Path,
    concurrency: int,
    window: int,
    venv_root: Path,
    max_batch_size: int,
) -> dict[str, Any]:
    from tests.jax_tier.jax_models import eager, example_inputs

    (rows,) = example_inputs("deep.pt2", 1, seed=64)
    (expected,) = eager("deep.pt2", (rows,))
    tensor = {"name": "x", "shape": [1, rows.shape[1]], "datatype": "FP32", "data": rows.ravel()}
    body = out / "deep-body.json"
    body.write_bytes(orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY))
    results: dict[str, Any] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    # Two rounds, servers alternating: the machine's load drifts over minutes, and each runtime
    # should see the same drift.
    for round_, (label, runtime, venv) in itertools.product(range(ROUNDS), HTTP_RUNS):
        python = _venv_python(venv, venv_root)
        if python is None:
            log(f"http {label}: {venv} is not there, skipped")
            continue
        work = out / f"server-{label.replace(' ', '-')}-{max_batch_size}-{round_}"
        with served(runtime, python, artifacts / "deep.pt2", work, max_batch_size) as port:
            request = urllib.request.Request(
                f"http://{HOST}:{port}/v2/models/deep/infer", data=body.read_bytes()
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                [output] = json.load(response)["outputs"]
            np.testing.assert_allclose(
                np.asarray(output["data"], np.float32).reshape(expected.shape),
                expected,
                rtol=1e-4,
                atol=1e-5,
            )
            wrk(port, body, concurrency, 3)  # warm the connections and the batcher
            measured = wrk(port, body, concurrency, window)
            seconds = measured["duration_us"] / 1e6
            row = {
                "requests_per_s": round(measured["requests"] / seconds, 1),
                "p50_ms": measured["p50_us"] / 1000,
                "p99_ms": measured["p99_us"] / 1000,
                "non2xx": measured["non2xx"],
                "socket_errors": measured["socket_errors"],
                "load": os.getloadavg()[0],
            }
            runs.setdefault(label, []).append(row)
            log(f"http {label} round {round_}: {row}")
    for label, rounds in runs.items():
        # The better of the rounds: the one the machine's other load disturbed least.
        best = max(rounds, key=lambda row: row["requests_per_s"])
        results[label] = {**best, "rounds": rounds}
    for label, _, _ in HTTP_RUNS[1:]:
        if label in results and "jax" in results:
            ratio = results["jax"]["requests_per_s"] / results[label]["requests_per_s"]
            results[f"jax_over_{label}"] = round(ratio, 2)
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = ["| model | runtime | " + " | ".join(f"b={b}" for b in BUCKETS) + " |"]
    lines.append("| --- | --- | " + " | ".join("---" for _ in BUCKETS) + " |")
    for artifact in MODELS:
        for label, timings in results["per_batch"].items():
            row = timings.get(artifact)
            if row:
                cells = " | ".join(f"{row[str(b)]:.3f}" for b in BUCKETS)
                lines.append(f"| {artifact} | {label} | {cells} |")
    for max_batch_size, http in results.get("http", {}).items():
        lines += ["", f"max_batch_size {max_batch_size}:", ""]
        lines += ["| runtime | req/s | p50 ms | p99 ms | non-2xx |"]
        lines += ["| --- | --- | --- | --- | --- |"]
        for label, _, _ in HTTP_RUNS:
            row = http.get(label)
            if row:
                lines.append(
                    f"| {label} | {row['requests_per_s']} | {row['p50_ms']:.1f} | "
                    f"{row['p99_ms']:.1f} | {row['non2xx']} |"
                )
        for label, _, _ in HTTP_RUNS[1:]:
            if f"jax_over_{label}" in http:
                lines.append(f"\njax / {label} requests/s: {http[f'jax_over_{label}']}x")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BENCH / "out" / "jax")
    parser.add_argument("--window", type=int, default=15)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument(
        "--max-batch-sizes",
        type=lambda text: [int(size) for size in text.split(",")],
        default=[8, 32],
        help="max_batch_size of the served model, one HTTP run each",
    )
    parser.add_argument("--skip-per-batch", action="store_true")
    parser.add_argument(
        "--venv-root",
        type=Path,
        default=REPO,
        help="where to look for .venv and .venv-xla when this checkout has none",
    )
    parser.add_argument("--per-batch", dest="runtime", help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runtime:  # a child: one runtime, this venv
        print(json.dumps(per_batch(args.runtime, args.artifacts, args.repeats)))
        return 0
    out: Path = args.out.resolve()
    artifacts = out / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    from tests.jax_tier.jax_models import build_torch_artifacts

    build_torch_artifacts(artifacts)
    results: dict[str, Any] = {"per_batch": {}, "load": os.getloadavg()}
    for label, venv, runtime, extra in () if args.skip_per_batch else PER_BATCH_RUNS:
        python = _venv_python(venv, args.venv_root)
        if python is None:
            log(f"per batch {label}: {venv} is not there, skipped")
            continue
        command = ["taskset", "-c", SERVER_CORE, str(python), str(Path(__file__).resolve())]
        command += ["--per-batch", runtime, "--artifacts", str(artifacts)]
        command += ["--repeats", str(args.repeats)]
        env = {**os.environ, **ONE_THREAD, **extra, "PYTHONPATH": str(REPO)}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            log(f"per batch {label} failed: {done.stderr[-2000:]}")
            continue
        results["per_batch"][label] = json.loads(done.stdout.strip().splitlines()[-1])
        log(f"per batch {label}: {results['per_batch'][label]['deep.pt2']}")
    results["http"] = {
        str(size): http_run(artifacts, out, args.concurrency, args.window, args.venv_root, size)
        for size in args.max_batch_sizes
    }
    results["load_after"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
