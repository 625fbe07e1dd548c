"""What `aegis check-config` checks of each model's artifact: the load's device-free half.

Each runtime reads the artifact's own signature (torch.export's graph, ONNX's inputs and outputs,
a `.jax` file's avals) without opening a device, and settles it against the config the way `load`
does: declared datatypes, ranks and fixed sizes, dynamic dimensions without buckets on `tpu` and
`jax`, buckets and `max_batch_size` against the export's limits, outputs that would carry padding.
Reading a `.pt2` or `.onnx` reads its weights into host memory, never onto a device.

Only files on this host are read. A remote model (`gs://`, `s3://`) is checked through its synced
copy in `storage.cache_dir` when one from the same source is there; otherwise it is skipped and
named, and its signature is checked when `serve` loads it. A runtime whose packages are missing
here (onnxruntime, jax for a `.jax` file) skips its models the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from appliance.config import AppConfig, DeclaredModel
from appliance.runtimes import ArtifactError, DeviceUnavailable, runtime_class
from appliance.runtimes.artifacts import resolve_artifact
from appliance.storage.cache import VersionCache
from appliance.storage.sources import LocalSource, parse_source


@dataclass
class ArtifactReport:
    problems: list[str] = field(default_factory=list)  # what serve would refuse
    skipped: list[str] = field(default_factory=list)  # what could not be checked here, and why
    checked: int = 0


def check_artifacts(config: AppConfig) -> ArtifactReport:
    report = ArtifactReport()
    for index, model in enumerate(config.models):
        where = f"models[{index}] ({model.name}:{model.version})"
        path, note = _local_artifact(model, Path(config.storage.cache_dir))
        if path is None:
            report.skipped.append(f"{where}: {note}")
            continue
        try:
            artifact = resolve_artifact(path)
            runtime = runtime_class(model.config.runtime)(model.config, artifact)
            runtime.settle_signature(runtime.read_signature(artifact), artifact.name)
        except ArtifactError as error:
            report.problems.append(f"{where}: {error}{note}")
            continue
        except DeviceUnavailable as error:
            report.skipped.append(f"{where}: not checked: {error}")
            continue
        report.checked += 1
    return report


def _local_artifact(model: DeclaredModel, cache_dir: Path) -> tuple[Path | None, str]:
    """The file to check, and a note on where it came from; or None and why there is none."""
    source = parse_source(model.config.model_path)  # preflight has parsed it already
    if isinstance(source, LocalSource):
        return source.path, ""
    try:
        snapshot = VersionCache(cache_dir, model.name, model.version).current()
    except (OSError, ValueError):
        snapshot = None
    if snapshot is None or snapshot.manifest.source != source.uri:
        return None, (
            f"{model.config.model_path} is not synced on this host, so its signature is checked "
            "when serve loads it (run `aegis sync` first to check it here)"
        )
    return snapshot.artifact, f" (in the copy synced to {snapshot.folder})"
