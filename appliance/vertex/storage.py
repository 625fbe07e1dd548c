"""The config Vertex AI's model copy at `AIP_STORAGE_URI` stands for.

The folder holds `aegis.toml` (its relative model paths are taken inside the folder), or a single
artifact, served with the signature it carries under the artifact's own name.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from appliance.config import AppConfig, DeclaredModel, ModelConfig, load_config
from appliance.config.file import parse_config
from appliance.config.runtime_table import artifact_suffixes, runtimes_loading
from appliance.storage.gcs import GcsClient
from appliance.storage.remote import RemoteObject
from appliance.storage.retry import RetryPolicy
from appliance.storage.sources import GcsSource, LocalSource, parse_source
from appliance.vertex.settings import VertexConfigError, VertexSettings, predict_model

CONFIG_NAME = "aegis.toml"

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def serving_config(settings: VertexSettings, config_path: str, explicit: bool) -> AppConfig:
    """What `aegis serve` serves under Vertex AI: the folder at AIP_STORAGE_URI, with the
    container's own config file (if there is one; `explicit`: it was named, so it must exist)
    for the host settings; refused at once when the predict route's model is ambiguous."""
    host = load_config(config_path) if explicit or os.path.exists(config_path) else None
    if settings.storage_uri:
        config = vertex_config(settings.storage_uri, host)
    elif host is not None:
        config = host
    else:
        raise VertexConfigError(
            f"AIP_MODE=PREDICTION: no AIP_STORAGE_URI and no config file at {config_path}"
        )
    predict_model(config)
    return config


def vertex_config(uri: str, host: AppConfig | None = None) -> AppConfig:
    """The config of the folder at `uri` (gs://, or a local path): its aegis.toml, or else
    `host` (the container's own settings; defaults when None) serving the folder's artifact."""
    host = host or AppConfig()
    source = parse_source(uri)
    if isinstance(source, LocalSource):
        return _local_config(source.path, host)
    if not isinstance(source, GcsSource):
        raise VertexConfigError(f"AIP_STORAGE_URI must be a gs:// folder, got {uri!r}")
    folder = source.name if source.is_folder else source.name + "/"
    client = GcsClient(RetryPolicy())
    objects = client.list_objects(GcsSource(source.bucket, folder))
    base = f"gs://{source.bucket}/{folder}"
    for obj in objects:
        if obj.name == folder + CONFIG_NAME:
            try:
                data = tomllib.loads(_read(client, obj).decode())
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
                raise VertexConfigError(f"{base}{CONFIG_NAME}: not valid TOML: {error}") from None
            return parse_config(_anchored(data, base), source=base + CONFIG_NAME)
    names = [PurePosixPath(obj.name).relative_to(folder).as_posix() for obj in objects]
    return _single_artifact(base, names, host)


def _local_config(folder: Path, host: AppConfig) -> AppConfig:
    if (folder / CONFIG_NAME).is_file():
        return load_config(folder / CONFIG_NAME)
    names = [path.relative_to(folder).as_posix() for path in sorted(folder.rglob("*"))]
    return _single_artifact(str(folder) + "/", names, host)


def _single_artifact(base: str, names: list[str], host: AppConfig) -> AppConfig:
    suffixes = artifact_suffixes()
    artifacts = [name for name in names if PurePosixPath(name).suffix in suffixes]
    if len(artifacts) != 1:
        found = ", ".join(artifacts) or "none"
        raise VertexConfigError(
            f"AIP_STORAGE_URI {base} holds no {CONFIG_NAME} and {len(artifacts)} model "
            f"artifacts ({found}): it needs {CONFIG_NAME}, or exactly one artifact "
            f"({', '.join(suffixes)})"
        )
    artifact = PurePosixPath(artifacts[0])
    # The first runtime the table lists for the format: the one that serves it on the CPU.
    runtime = runtimes_loading(artifact.suffix)[0]
    model = ModelConfig(model_path=base + artifacts[0], runtime=runtime)
    return replace(host, models=(DeclaredModel(artifact.stem, "1", model),))


def _anchored(data: dict[str, Any], base: str) -> dict[str, Any]:
    """Relative model paths, taken inside the storage folder."""
    tables = data.get("models")
    if isinstance(tables, list):
        for table in tables:
            path = table.get("model_path") if isinstance(table, dict) else None
            if isinstance(path, str) and "://" not in path and not path.startswith("/"):
                table["model_path"] = base + path
    return data


def _read(client: GcsClient, obj: RemoteObject) -> bytes:
    with tempfile.TemporaryFile() as sink:
        if obj.size:
            client.download_range(obj, sink.fileno(), (0, obj.size), _ignore, threading.Event())
        sink.seek(0)
        return sink.read()


def _ignore(_count: int) -> None:
    """Progress of a config file's download: too small to report."""
