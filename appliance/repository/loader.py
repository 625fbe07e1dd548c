"""Loading a model version onto its device, the CPU fallback policy, and warmup. Blocking code:
the lifecycle runs it on a worker thread."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from appliance.config import DeclaredModel, XlaConfig
from appliance.config.runtime_table import runtime_row
from appliance.repository.padding_check import check_padding
from appliance.runtimes import DeviceUnavailable, Runtime, create_runtime, runtime_class
from appliance.runtimes.artifacts import resolve_artifact

log = structlog.get_logger("aegis.repository")


# Class labels for Triton's classification extension: one per line, line N naming class N, in
# the folder that holds the artifact (so a folder model_path syncs them with it).
LABELS_FILE = "labels.txt"


@dataclass(frozen=True, slots=True)
class LoadedRuntimes:
    primary: Runtime
    overflow: Runtime | None
    fallback_reason: str | None
    labels: tuple[str, ...] = ()


def read_labels(artifact: Path) -> tuple[str, ...]:
    """The labels beside `artifact`, or none when it has no labels file."""
    path = artifact.parent / LABELS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ()
    except UnicodeDecodeError as error:
        raise OSError(f"{path.name}: not UTF-8 text ({error.reason})") from None
    return tuple(text.splitlines())


def _cpu_runtime(model: DeclaredModel, artifact: Path) -> Runtime:
    """The same artifact on the CPU, on the runtime its table row names for that format."""
    served = runtime_row(model.config.runtime).artifact(artifact.suffix)
    assert served is not None, "the config ties the runtime to the artifact's format"
    runtime = runtime_class(served.cpu_runtime)(model.config, artifact, device="cpu")
    runtime.load()
    return runtime


def load_runtimes(model: DeclaredModel, location: Path, xla: XlaConfig) -> LoadedRuntimes:
    """Load `model` from `location` (file or folder), applying its `cpu_fallback` policy."""
    artifact = resolve_artifact(location)
    labels = read_labels(artifact)
    config = model.config
    runtime = create_runtime(config, artifact, xla)
    try:
        runtime.load()
    except DeviceUnavailable as error:
        if config.cpu_fallback == "off" or config.device == "cpu":
            raise
        log.warning(
            "serving_on_cpu",
            cause="device unavailable",
            model=model.name,
            version=model.version,
            device=config.device,
            reason=str(error),
        )
        return LoadedRuntimes(_cpu_runtime(model, artifact), None, str(error), labels)
    overflow = None
    if (
        config.cpu_fallback in ("overflow", "latency")
        and config.device != "cpu"
        and runtime.device != "cpu"
    ):
        overflow = _cpu_runtime(model, artifact)
    return LoadedRuntimes(runtime, overflow, None, labels)


def warmup_shapes(
    buckets: tuple[int, ...], dims: Mapping[str, tuple[int, ...]]
) -> Iterator[tuple[int, dict[str, int]]]:
    """Every batch bucket with every combination of the named dimensions' buckets."""
    names = list(dims)
    for bucket in buckets:
        for sizes in itertools.product(*(dims[name] for name in names)):
            yield bucket, dict(zip(names, sizes, strict=True))


def warm_up(
    runtime: Runtime,
    buckets: tuple[int, ...],
    dims: Mapping[str, tuple[int, ...]],
    iterations: int,
) -> dict[int, float]:
    """Run every shape the batcher can send `iterations` times, so serving compiles and
    allocates nothing new; the seconds of each bucket's last run (its slowest named sizes).

    With no iterations the smallest bucket still runs once: each warmup run checks the outputs
    against the signature, and a model that breaks its declaration must not come up; nor one
    whose answers change when a named dimension is padded (`check_padding`).
    """
    seconds: dict[int, float] = {}
    for bucket, sizes in warmup_shapes(buckets, dims):
        for _ in range(iterations):
            started = time.perf_counter()
            runtime.warmup(bucket, sizes)
            elapsed = time.perf_counter() - started
        if iterations:
            # The last run: the first of a shape may have compiled.
            seconds[bucket] = max(seconds.get(bucket, 0.0), elapsed)
    if iterations == 0:
        runtime.warmup(buckets[0])
    if dims:
        check_padding(runtime, buckets[0], dims)
    runtime.finish_warmup()
    return seconds
