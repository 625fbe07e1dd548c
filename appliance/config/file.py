"""Reading the config file: TOML in, a validated `AppConfig` out, every error naming the file."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from appliance.config.errors import ConfigError, config_error
from appliance.config.schema import AppConfig, ConfigFile, DeclaredModel, ServerConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 on older TPU VM images
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/aegis/aegis.toml")
SECTIONS = tuple(sorted(ConfigFile.model_fields))


def _anchored(model_path: object, base: Path | None) -> object:
    """A relative local model_path, taken relative to the config file's folder."""
    if base is None or not isinstance(model_path, str) or "://" in model_path:
        return model_path
    path = Path(model_path)
    return model_path if path.is_absolute() or not model_path else str(base / path)


def _anchor_models(data: Mapping[str, Any], base: Path | None) -> dict[str, Any]:
    document = dict(data)
    tables = document.get("models")
    if isinstance(tables, list):
        document["models"] = [
            {**table, "model_path": _anchored(table["model_path"], base)}
            if isinstance(table, Mapping) and "model_path" in table
            else table
            for table in tables
        ]
    return document


def parse_config(data: Mapping[str, Any], source: str | None = None) -> AppConfig:
    """Validate a parsed TOML document; errors carry `source` as their file."""
    base = Path(source).resolve().parent if source else None
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown section (known: {', '.join(SECTIONS)})", source)
    tables = data.get("models", [])
    if not isinstance(tables, list):
        raise ConfigError("models", "must be an array of tables ([[models]])", source)
    try:
        document = ConfigFile.model_validate(_anchor_models(data, base))
    except ValidationError as error:
        raise config_error(error, ConfigFile).within("", source) from None
    models = tuple(table.declared() for table in document.models)
    return AppConfig(document.server, document.storage, document.xla, models, source)


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


def with_extra_models(config: AppConfig, extra: Iterable[DeclaredModel]) -> AppConfig:
    """`config` plus the model versions of `extra` (declared from Python) that it does not
    declare itself: the file's declaration of a version wins."""
    declared = {(model.name, model.version) for model in config.models}
    added = tuple(m for m in extra if (m.name, m.version) not in declared)
    return replace(config, models=config.models + added) if added else config


def with_binds(
    config: AppConfig,
    bind: Sequence[str] | None = None,
    grpc_bind: Sequence[str] | None = None,
) -> AppConfig:
    """`config` with `[server] bind` and `grpc_bind` replaced where given (`--bind`,
    `--grpc-bind`), checked again as the file's would be: an address from the command line
    that takes the other protocol's port is refused here, not by a failed bind at start."""
    if bind is None and grpc_bind is None:
        return config
    fields = config.server.model_dump()
    if bind is not None:
        fields["bind"] = tuple(bind)
    if grpc_bind is not None:
        fields["grpc_bind"] = tuple(grpc_bind)
    try:
        server = ServerConfig(**fields)
    except ConfigError as error:
        raise error.within("server", config.source) from None
    return replace(config, server=server)
