"""The two benchmark models, their artifacts, and the compute ceiling.

- `tiny`: the built-in demo MLP (64 -> 128 -> 10), overhead-bound: a batch of 32 takes tens of
  microseconds, so a server's throughput is its per-request cost.
- `compute`: a 4-layer 4096-wide MLP (64 -> 4096 -> 4096 -> 4096 -> 10, 33.6 M parameters) from a
  fixed seed. At this width one row costs milliseconds on one core, so the model, not HTTP,
  bounds throughput (a 1024-wide one runs about as fast as an HTTP server answers here).

Both are written as torch.export `.pt2` (what Aegis serves) and TorchScript `.pt` (what the peers
load), from the same weights. Run with the dev venv's python:

    python bench/models.py export DIR            # writes DIR/{tiny,compute}.{pt2,pt}
    python bench/models.py ceiling DIR NAME      # prints the compute ceiling as JSON
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from appliance.demo import build_demo_module

COMPUTE_WIDTH = 4096
COMPUTE_SEED = 6
INPUTS = 64
OUTPUTS = 10


@dataclass(frozen=True)
class BenchModel:
    name: str
    max_batch_size: int
    max_queue_delay_ms: float


MODELS = {
    "tiny": BenchModel("tiny", max_batch_size=32, max_queue_delay_ms=5.0),
    "compute": BenchModel("compute", max_batch_size=32, max_queue_delay_ms=5.0),
}


def build(name: str) -> torch.nn.Module:
    if name == "tiny":
        return build_demo_module()
    generator = torch.Generator().manual_seed(COMPUTE_SEED)
    widths = (INPUTS, COMPUTE_WIDTH, COMPUTE_WIDTH, COMPUTE_WIDTH, OUTPUTS)
    layers: list[torch.nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    module = torch.nn.Sequential(*layers[:-1])
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(
                torch.randn(parameter.shape, generator=generator) / fan_scale(parameter)
            )
    return module.eval()


def fan_scale(parameter: torch.Tensor) -> float:
    # Keeps activations O(1) through the layers, so outputs are finite and comparable.
    scale: float = float(parameter.shape[-1]) ** 0.5
    return scale


def export(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        pt2, script = directory / f"{name}.pt2", directory / f"{name}.pt"
        if pt2.exists() and script.exists():
            continue
        module = build(name)
        example = torch.zeros(2, INPUTS)
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        staging = directory / f"{name}.partial.pt2"
        torch.export.save(program, str(staging))
        staging.replace(pt2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(module, example)
            torch.jit.save(traced, str(directory / f"{name}.partial.pt"))
        (directory / f"{name}.partial.pt").replace(script)


def ceiling(directory: Path, name: str, seconds: float = 2.0) -> dict[str, object]:
    """Rows/s of the served artifact at each bucket, in this process, on one torch thread."""
    torch.set_num_threads(1)
    module = torch.export.load(str(directory / f"{name}.pt2")).module()
    buckets = []
    size = 1
    while size <= MODELS[name].max_batch_size:
        buckets.append(size)
        size *= 2
    per_bucket: dict[int, float] = {}
    batch1_ms = 0.0
    with torch.no_grad():
        for bucket in buckets:
            x = torch.randn(bucket, INPUTS)
            for _ in range(3):
                module(x)
            times: list[float] = []
            end = time.perf_counter() + seconds
            while time.perf_counter() < end and len(times) < 100_000:
                started = time.perf_counter()
                module(x)
                times.append(time.perf_counter() - started)
            median = sorted(times)[len(times) // 2]
            per_bucket[bucket] = bucket / median
            if bucket == 1:
                batch1_ms = median * 1000
    best = max(per_bucket, key=lambda bucket: per_bucket[bucket])
    return {
        "model": name,
        "rows_per_s": per_bucket,
        "best_bucket": best,
        "best_rows_per_s": per_bucket[best],
        "batch1_ms": batch1_ms,
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["export"] and len(argv) == 2:
        export(Path(argv[1]))
        return 0
    if argv[:1] == ["ceiling"] and len(argv) == 3:
        print(json.dumps(ceiling(Path(argv[1]), argv[2])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
