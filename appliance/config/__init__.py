"""The appliance's configuration: the TOML file of the contract, as a declared schema.

`schema` declares the tables, `errors` says pydantic's findings in the file's words (file, key
path such as `models[0].max_batch_size`, and why), `file` reads and validates the file. An
operator never has to read a traceback to fix a typo.
"""

from appliance.config.errors import ConfigError
from appliance.config.file import (
    DEFAULT_CONFIG_PATH,
    load_config,
    parse_config,
    with_binds,
    with_extra_models,
)
from appliance.config.runtime_table import artifact_suffixes
from appliance.config.schema import (
    AppConfig,
    DeclaredModel,
    ModelConfig,
    ServerConfig,
    StorageConfig,
    TensorDeclaration,
    XlaConfig,
    default_buckets,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AppConfig",
    "ConfigError",
    "DeclaredModel",
    "ModelConfig",
    "ServerConfig",
    "StorageConfig",
    "TensorDeclaration",
    "XlaConfig",
    "artifact_suffixes",
    "default_buckets",
    "load_config",
    "parse_config",
    "with_binds",
    "with_extra_models",
]
