"""The appliance's configuration: the TOML file of the contract, validated on load.

Every problem is reported as a `ConfigError` that names the file, the key and why, so an operator
never has to read a traceback to fix a typo.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from appliance.tensors import DATATYPES, TensorSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on older TPU VM images
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/aegis/aegis.toml")

RUNTIMES = ("torch", "onnx", "tpu")
DEVICES = ("cpu", "cuda", "tpu")
CPU_FALLBACK_MODES = ("off", "unavailable", "overflow")
ARTIFACT_SUFFIXES = (".pt2", ".pt", ".onnx")


class ConfigError(ValueError):
    """A configuration value that cannot be used, with where it came from and why."""

    def __init__(self, key: str, reason: str, file: str | None = None) -> None:
        self.key = key
        self.reason = reason
        self.file = file
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.key}: {self.reason}"

    def within(self, prefix: str, file: str | None = None) -> ConfigError:
        """The same error, with its key nested under `prefix` and its file set."""
        key = f"{prefix}.{self.key}" if prefix else self.key
        return ConfigError(key, self.reason, file or self.file)


def _check_positive_int(key: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {value}")
    return value


def _check_number(key: str, value: object, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    if value < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {value}")
    return float(value)


def _check_choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def _check_str(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}")
    return value


def _tensor_specs(key: str, value: object) -> tuple[TensorSpec, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(key, "must be a list of tables with name, datatype and shape")
    specs = []
    for index, item in enumerate(value):
        item_key = f"{key}[{index}]"
        if isinstance(item, TensorSpec):
            item = {"name": item.name, "datatype": item.datatype, "shape": list(item.shape)}
        if not isinstance(item, Mapping):
            raise ConfigError(item_key, "must be a table with name, datatype and shape")
        unknown = set(item) - {"name", "datatype", "shape"}
        if unknown:
            raise ConfigError(f"{item_key}.{sorted(unknown)[0]}", "unknown key")
        for required in ("name", "datatype", "shape"):
            if required not in item:
                raise ConfigError(f"{item_key}.{required}", "is required")
        name = _check_str(f"{item_key}.name", item["name"])
        if not name:
            raise ConfigError(f"{item_key}.name", "must not be empty")
        datatype = _check_choice(f"{item_key}.datatype", item["datatype"], tuple(sorted(DATATYPES)))
        shape = item["shape"]
        if not isinstance(shape, (list, tuple)) or not shape:
            raise ConfigError(f"{item_key}.shape", "must be a non-empty list of integers")
        for dim in shape:
            if isinstance(dim, bool) or not isinstance(dim, int) or (dim < 1 and dim != -1):
                raise ConfigError(
                    f"{item_key}.shape", f"dimensions must be >= 1 or -1, got {dim!r}"
                )
        if shape[0] != -1:
            raise ConfigError(
                f"{item_key}.shape", "the first dimension is the batch dimension and must be -1"
            )
        specs.append(TensorSpec(name, datatype, tuple(shape)))
    names = [spec.name for spec in specs]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise ConfigError(key, f"duplicate tensor name {sorted(duplicates)[0]!r}")
    return tuple(specs)


def default_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two up to `max_batch_size`, and `max_batch_size` itself."""
    buckets = []
    size = 1
    while size < max_batch_size:
        buckets.append(size)
        size *= 2
    buckets.append(max_batch_size)
    return tuple(buckets)


@dataclass(frozen=True)
class ModelConfig:
    """How to load, batch and serve a model version: a `[[models]]` table less name, version."""

    model_path: str
    runtime: str = "torch"
    device: str = "cpu"
    max_batch_size: int = 32
    batch_buckets: tuple[int, ...] = ()
    max_queue_delay_ms: float = 2.0
    max_concurrency: int = 1
    max_queue_size: int = 1024
    timeout_ms: float = 5000.0
    warmup_iters: int = 2
    cpu_fallback: str = "unavailable"
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    def __post_init__(self) -> None:
        path = _check_str("model_path", self.model_path)
        if not path:
            raise ConfigError("model_path", "must not be empty")
        if not path.endswith("/") and not path.endswith(ARTIFACT_SUFFIXES):
            raise ConfigError(
                "model_path",
                f"must end in one of {', '.join(ARTIFACT_SUFFIXES)} (the artifact format), "
                f"or '/' for a folder; got {path!r}",
            )
        _check_choice("runtime", self.runtime, RUNTIMES)
        _check_choice("device", self.device, DEVICES)
        _check_choice("cpu_fallback", self.cpu_fallback, CPU_FALLBACK_MODES)
        if self.device == "tpu" and self.runtime != "tpu":
            raise ConfigError("device", f"'tpu' needs runtime = 'tpu', not {self.runtime!r}")
        if self.runtime == "tpu" and self.device != "tpu":
            raise ConfigError("device", f"runtime 'tpu' runs on device 'tpu', not {self.device!r}")
        if self.runtime == "onnx" and not path.endswith((".onnx", "/")):
            raise ConfigError("model_path", f"runtime 'onnx' loads .onnx files, not {path!r}")
        if self.runtime in ("torch", "tpu") and path.endswith(".onnx"):
            raise ConfigError("runtime", f"{path!r} is an ONNX file: use runtime = 'onnx'")
        max_batch = _check_positive_int("max_batch_size", self.max_batch_size)
        buckets = tuple(self.batch_buckets) or default_buckets(max_batch)
        for bucket in buckets:
            _check_positive_int("batch_buckets", bucket)
        if list(buckets) != sorted(set(buckets)):
            raise ConfigError("batch_buckets", f"must be strictly increasing, got {list(buckets)}")
        if buckets[-1] != max_batch:
            raise ConfigError(
                "batch_buckets",
                f"the largest bucket must equal max_batch_size ({max_batch}), got {buckets[-1]}",
            )
        object.__setattr__(self, "batch_buckets", buckets)
        _check_number("max_queue_delay_ms", self.max_queue_delay_ms)
        _check_positive_int("max_concurrency", self.max_concurrency)
        _check_positive_int("max_queue_size", self.max_queue_size)
        _check_number("timeout_ms", self.timeout_ms)
        if self.timeout_ms <= 0:
            raise ConfigError("timeout_ms", f"must be > 0, got {self.timeout_ms}")
        _check_positive_int("warmup_iters", self.warmup_iters, minimum=0)
        object.__setattr__(self, "inputs", _tensor_specs("inputs", self.inputs))
        object.__setattr__(self, "outputs", _tensor_specs("outputs", self.outputs))
        if path.endswith(".pt") and (not self.inputs or not self.outputs):
            key = "inputs" if not self.inputs else "outputs"
            raise ConfigError(
                key, "TorchScript (.pt) artifacts carry no signature: declare inputs and outputs"
            )

    def bucket_for(self, rows: int) -> int:
        """The smallest bucket that holds `rows`."""
        for bucket in self.batch_buckets:
            if bucket >= rows:
                return bucket
        raise ValueError(f"{rows} rows exceed max_batch_size {self.max_batch_size}")


@dataclass(frozen=True)
class DeclaredModel:
    name: str
    version: str
    config: ModelConfig


@dataclass(frozen=True)
class ServerConfig:
    bind: tuple[str, ...] = ("0.0.0.0:8080",)
    certfile: str = ""
    keyfile: str = ""
    max_request_bytes: int = 64 * 1024 * 1024
    shutdown_grace_s: float = 30.0
    admin_token_file: str = ""

    def __post_init__(self) -> None:
        bind = self.bind
        if isinstance(bind, str):
            bind = (bind,)
        if not isinstance(bind, (list, tuple)) or not bind:
            raise ConfigError("bind", "must be a non-empty list of HOST:PORT strings")
        for entry in bind:
            _check_bind("bind", entry)
        object.__setattr__(self, "bind", tuple(bind))
        _check_str("certfile", self.certfile)
        _check_str("keyfile", self.keyfile)
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError("certfile", "TLS needs both certfile and keyfile, or neither")
        _check_positive_int("max_request_bytes", self.max_request_bytes)
        _check_number("shutdown_grace_s", self.shutdown_grace_s)
        _check_str("admin_token_file", self.admin_token_file)


def _check_bind(key: str, value: object) -> str:
    text = _check_str(key, value)
    if text.startswith("unix:") or text.startswith("fd://"):
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"must be HOST:PORT (or unix:PATH), got {text!r}")
    return text


@dataclass(frozen=True)
class StorageConfig:
    cache_dir: str = "/var/lib/aegis/models"
    download_concurrency: int = 8

    def __post_init__(self) -> None:
        if not _check_str("cache_dir", self.cache_dir):
            raise ConfigError("cache_dir", "must not be empty")
        _check_positive_int("download_concurrency", self.download_concurrency)


@dataclass(frozen=True)
class XlaConfig:
    compilation_cache_dir: str = "/var/cache/aegis/xla"

    def __post_init__(self) -> None:
        _check_str("compilation_cache_dir", self.compilation_cache_dir)


@dataclass(frozen=True)
class AppConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    xla: XlaConfig = field(default_factory=XlaConfig)
    models: tuple[DeclaredModel, ...] = ()
    source: str | None = None


def _build(cls: type, table: object, prefix: str) -> Any:
    """Construct dataclass `cls` from a TOML table, refusing unknown keys."""
    if not isinstance(table, Mapping):
        raise ConfigError(prefix, "must be a table")
    known = {f.name for f in fields(cls)}
    for key in table:
        if key not in known:
            raise ConfigError(f"{prefix}.{key}", f"unknown key (known: {', '.join(sorted(known))})")
    try:
        return cls(**table)
    except ConfigError as error:
        raise error.within(prefix) from None


def _anchored(model_path: object, base: Path | None) -> object:
    """A relative local model_path, taken relative to the config file's folder."""
    if base is None or not isinstance(model_path, str) or "://" in model_path:
        return model_path
    path = Path(model_path)
    return model_path if path.is_absolute() or not model_path else str(base / path)


def _model_from_table(index: int, table: object, base: Path | None) -> DeclaredModel:
    prefix = f"models[{index}]"
    if not isinstance(table, Mapping):
        raise ConfigError(prefix, "must be a table")
    for required in ("name", "model_path"):
        if required not in table:
            raise ConfigError(f"{prefix}.{required}", "is required")
    name = _check_str(f"{prefix}.name", table["name"])
    if not name or "/" in name or name != name.strip():
        raise ConfigError(f"{prefix}.name", f"must be a non-empty name without '/', got {name!r}")
    version = table.get("version", "1")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    version = _check_str(f"{prefix}.version", version)
    if not version or "/" in version:
        raise ConfigError(
            f"{prefix}.version", f"must be a non-empty string without '/', got {version!r}"
        )
    rest = {key: value for key, value in table.items() if key not in ("name", "version")}
    rest["model_path"] = _anchored(rest["model_path"], base)
    return DeclaredModel(name, version, _build(ModelConfig, rest, prefix))


def parse_config(data: Mapping[str, Any], source: str | None = None) -> AppConfig:
    """Validate a parsed TOML document; errors carry `source` as their file."""
    try:
        for key in data:
            if key not in ("server", "storage", "xla", "models"):
                raise ConfigError(key, "unknown section (known: models, server, storage, xla)")
        server = _build(ServerConfig, data.get("server", {}), "server")
        storage = _build(StorageConfig, data.get("storage", {}), "storage")
        xla = _build(XlaConfig, data.get("xla", {}), "xla")
        tables = data.get("models", [])
        if not isinstance(tables, list):
            raise ConfigError("models", "must be an array of tables ([[models]])")
        base = Path(source).resolve().parent if source else None
        models = tuple(_model_from_table(index, table, base) for index, table in enumerate(tables))
        seen: set[tuple[str, str]] = set()
        for index, model in enumerate(models):
            if (model.name, model.version) in seen:
                raise ConfigError(
                    f"models[{index}]",
                    f"model {model.name!r} version {model.version!r} is declared twice",
                )
            seen.add((model.name, model.version))
    except ConfigError as error:
        raise error.within("", source) from None
    return AppConfig(server, storage, xla, models, source)


def load_config(path: str | Path) -> AppConfig:
    """Read and validate the config file at `path`."""
    source = str(path)
    try:
        with open(path, "rb") as stream:
            data = tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError("(file)", "does not exist", source) from None
    except IsADirectoryError:
        raise ConfigError("(file)", "is a directory, not a TOML file", source) from None
    except PermissionError:
        raise ConfigError("(file)", "cannot be read: permission denied", source) from None
    except UnicodeDecodeError as error:
        raise ConfigError("(file)", f"is not UTF-8 text: {error.reason}", source) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("(syntax)", f"not valid TOML: {error}", source) from None
    return parse_config(data, source)
