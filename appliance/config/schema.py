"""The tables of the config file, declared: types, bounds and choices on the fields, the rules
that tie fields together as explicit validators.

The same schema validates the file and models declared from Python (`ModelConfig(...)`,
`registry.register`); both raise `ConfigError` naming the key and why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from appliance.config import runtime_table
from appliance.config.errors import ConfigError, broken_rule, config_error, invalid
from appliance.tensors import (
    TensorSpec,
    cast_in_range,
    numpy_dtype,
)
from appliance.units import MiB

Device = Literal["cpu", "cuda", "tpu"]
CpuFallback = Literal["off", "unavailable", "overflow", "latency"]
# What warmup does when padding a named dimension changes the model's outputs.
PaddingCheck = Literal["refuse", "warn"]
Datatype = Literal[
    "BF16", "BOOL", "BYTES", "FP16", "FP32", "FP64", "INT16", "INT32", "INT64", "INT8",
    "UINT16", "UINT32", "UINT64", "UINT8",
]  # fmt: skip

Integer = Annotated[int, Strict()]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
Text = Annotated[str, Strict()]
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
NonNegativeNumber = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]


def _shape_element(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise invalid(f"must be an integer or a dimension name, got {value!r}")
    return value


ShapeElement = Annotated[int | str, BeforeValidator(_shape_element)]
PadValue = Annotated[bool, Strict()] | Annotated[int, Strict()] | Annotated[float, Strict()]


def _known_runtime(name: str) -> str:
    known = runtime_table.runtime_names()
    if name not in known:
        raise invalid(f"must be one of {', '.join(known)}; got {name!r}")
    return name


# A name from the runtime table, read when a config is validated (not a Literal fixed at import).
RuntimeName = Annotated[str, Strict(), AfterValidator(_known_runtime)]


def _compiles_per_shape(runtime: object) -> bool:
    names = runtime_table.runtime_names()
    return runtime in names and runtime_table.runtime_row(str(runtime)).compiles_per_shape


def _either(choices: Sequence[str]) -> str:
    """'a', 'b' or 'c'."""
    quoted = [repr(choice) for choice in choices]
    return " or ".join(quoted) if len(quoted) < 3 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _a(noun: str) -> str:
    return f"{'an' if noun[0].lower() in 'aeiou' else 'a'} {noun}"


def _both(choices: Sequence[str]) -> str:
    """.a, .b and .c."""
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} and {choices[-1]}"


class _Table(BaseModel):
    """A table of the config file: unknown keys refused, immutable once validated, and a
    construction from Python raises `ConfigError` like the file does."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise config_error(error, type(self)) from None


class TensorDeclaration(_Table):
    """A `[[models.inputs]]` or `[[models.outputs]]` table."""

    name: Annotated[Text, Field(min_length=1)]
    datatype: Datatype
    shape: tuple[ShapeElement, ...]
    pad_value: PadValue = 0

    @field_validator("shape")
    @classmethod
    def _batch_first(cls, shape: tuple[int | str, ...]) -> tuple[int | str, ...]:
        if not shape:
            raise invalid("must be a non-empty list of integers and dimension names")
        for dim in shape:
            if isinstance(dim, str):
                if not dim.isidentifier():
                    raise invalid(f"a dimension name must be an identifier, got {dim!r}")
            elif dim < 1 and dim != -1:
                raise invalid(f"dimensions must be >= 1, -1 or a dimension name, got {dim!r}")
        if shape[0] != -1:
            raise invalid("the first dimension is the batch dimension and must be -1")
        return shape

    @model_validator(mode="after")
    def _pad_value_fits(self) -> TensorDeclaration:
        value, datatype = self.pad_value, self.datatype
        if datatype == "BYTES":
            if value != 0 or isinstance(value, bool):
                raise broken_rule("pad_value", "BYTES tensors are padded with empty strings")
        elif datatype == "BOOL":
            if value not in (0, 1):
                raise broken_rule(
                    "pad_value", f"a BOOL tensor pads with true or false, got {value!r}"
                )
        elif datatype.startswith(("INT", "UINT")):
            if isinstance(value, float):
                raise broken_rule(
                    "pad_value", f"an {datatype} tensor pads with an integer, got {value!r}"
                )
            info = np.iinfo(numpy_dtype(datatype))
            if not info.min <= value <= info.max:
                raise broken_rule(
                    "pad_value", f"{value} does not fit {datatype} ({info.min} .. {info.max})"
                )
        elif cast_in_range(np.array([float(value)]), datatype) is None:
            # inf and -inf are values to pad with (a max that padding must not win); a finite
            # number past the type's largest would silently pad with infinity.
            raise broken_rule("pad_value", f"{value} does not fit {datatype}")
        return self

    @property
    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.datatype, self.shape, self.pad_value)


def _declarations(value: object) -> object:
    """Tensor declarations may be given as `TensorSpec`s from Python."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [
            {
                "name": item.name,
                "datatype": item.datatype,
                "shape": item.shape,
                "pad_value": item.pad_value,
            }
            if isinstance(item, TensorSpec)
            else item
            for item in value
        ]
    return value


def _unique_names(declarations: tuple[TensorDeclaration, ...]) -> tuple[TensorDeclaration, ...]:
    names = [declaration.name for declaration in declarations]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise invalid(f"duplicate tensor name {duplicates[0]!r}")
    return declarations


TensorDeclarations = Annotated[tuple[TensorDeclaration, ...], BeforeValidator(_declarations)]
DimName = Annotated[Text, Field(min_length=1)]
Buckets = tuple[PositiveInt, ...]


def default_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two up to `max_batch_size`, and `max_batch_size` itself."""
    buckets = []
    size = 1
    while size < max_batch_size:
        buckets.append(size)
        size *= 2
    buckets.append(max_batch_size)
    return tuple(buckets)


class ModelConfig(_Table):
    """How to load, batch and serve a model version: a `[[models]]` table less name, version."""

    model_path: Text
    runtime: RuntimeName = "torch"
    device: Device = "cpu"
    max_batch_size: PositiveInt = 32
    batch_buckets: tuple[PositiveInt, ...] = ()
    max_queue_delay_ms: NonNegativeNumber = 2.0
    max_concurrency: PositiveInt = 1
    max_queue_size: PositiveInt = 1024
    timeout_ms: Annotated[Number, Field(gt=0)] = 5000.0
    warmup_iters: NonNegativeInt = 2
    cpu_fallback: CpuFallback = "unavailable"
    dims: dict[DimName, Buckets] = Field(default_factory=dict)
    padding_check: PaddingCheck = "refuse"
    inputs: TensorDeclarations = ()
    outputs: TensorDeclarations = ()

    _unique = field_validator("inputs", "outputs")(_unique_names)

    @model_validator(mode="before")
    @classmethod
    def _compiled_runtimes_double_buffer(cls, data: object) -> object:
        """`max_concurrency` left out: 2 for runtimes that compile per shape, 1 for the rest.

        A compiled runtime launches its program and waits on the device; a second batch in
        flight does its host work (decode, pad, copy in) meanwhile, so the chip is not left idle
        between batches. A CPU runtime's batch already fills its cores.
        """
        if (
            isinstance(data, dict)
            and "max_concurrency" not in data
            and _compiles_per_shape(data.get("runtime"))
        ):
            return {**data, "max_concurrency": 2}
        return data

    @field_validator("model_path")
    @classmethod
    def _artifact_format(cls, path: str) -> str:
        if not path:
            raise invalid("must not be empty")
        suffixes = runtime_table.artifact_suffixes()
        if not path.endswith("/") and not path.endswith(suffixes):
            raise invalid(
                f"must end in one of {', '.join(suffixes)} (the artifact format), "
                f"or '/' for a folder; got {path!r}"
            )
        return path

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        path = self.model_path
        row = runtime_table.runtime_row(self.runtime)
        if self.device not in row.devices:
            runners = runtime_table.runtimes_on(self.device)
            needs = f"; {self.device!r} needs runtime = {_either(runners)}" if runners else ""
            raise broken_rule(
                "device",
                f"runtime {self.runtime!r} runs on device {_either(row.devices)}, "
                f"not {self.device!r}{needs}",
            )
        suffix = PurePosixPath(path).suffix
        if not path.endswith("/") and suffix not in row.suffixes:
            # Blame what the file says: a runtime it names, else the default runtime.
            key = "model_path" if "runtime" in self.model_fields_set else "runtime"
            raise broken_rule(
                key,
                f"{path!r} is {_a(runtime_table.artifact_format(suffix))} file: use runtime = "
                f"{_either(runtime_table.runtimes_loading(suffix))} (runtime {self.runtime!r} "
                f"loads {_both(row.suffixes)} files)",
            )
        buckets = self.batch_buckets or default_buckets(self.max_batch_size)
        if list(buckets) != sorted(set(buckets)):
            raise broken_rule("batch_buckets", f"must be strictly increasing, got {list(buckets)}")
        if buckets[-1] != self.max_batch_size:
            raise broken_rule(
                "batch_buckets",
                f"the largest bucket must equal max_batch_size ({self.max_batch_size}), "
                f"got {buckets[-1]}",
            )
        # Frozen, and the defaulted buckets are part of what the model is: set them once here.
        object.__setattr__(self, "batch_buckets", buckets)
        self._check_named_dims()
        if path.endswith(".pt") and (not self.inputs or not self.outputs):
            key = "inputs" if not self.inputs else "outputs"
            raise broken_rule(
                key, "TorchScript (.pt) artifacts carry no signature: declare inputs and outputs"
            )
        return self

    def _check_named_dims(self) -> None:
        """Every dimension name is declared in `dims`, and used by an input; an output's named
        dimension comes from an input (it is sliced back to each request's length); a runtime
        that compiles per shape gets no dynamic dimension without buckets."""
        for name, dim_buckets in self.dims.items():
            if not name.isidentifier():
                raise broken_rule("dims", f"a dimension name must be an identifier, got {name!r}")
            if not dim_buckets:
                raise broken_rule(f"dims.{name}", "needs at least one bucket")
            if list(dim_buckets) != sorted(set(dim_buckets)):
                raise broken_rule(
                    f"dims.{name}", f"buckets must be strictly increasing, got {list(dim_buckets)}"
                )
        used: set[str] = set()
        for kind, declarations in (("inputs", self.inputs), ("outputs", self.outputs)):
            for index, declaration in enumerate(declarations):
                key = f"{kind}[{index}].shape"
                for axis, dim in enumerate(declaration.shape):
                    if isinstance(dim, str):
                        if dim not in self.dims:
                            known = ", ".join(self.dims) or "none declared"
                            raise broken_rule(
                                key,
                                f"unknown dimension {dim!r}: [models.dims] names {known}",
                            )
                        if kind == "outputs" and dim not in used:
                            raise broken_rule(
                                key, f"dimension {dim!r} is on no input, so no length to slice to"
                            )
                        used.add(dim)
                    elif (
                        dim == -1
                        and axis > 0
                        and kind == "inputs"
                        and runtime_table.runtime_row(self.runtime).compiles_per_shape
                    ):
                        raise broken_rule(
                            key,
                            f"input {declaration.name!r} dimension {axis} is dynamic without "
                            f"buckets; runtime {self.runtime!r} compiles one program per shape: "
                            'name it (e.g. "seq") and give its buckets in [models.dims]',
                        )
        for name in self.dims:
            if name not in used:
                raise broken_rule(f"dims.{name}", "no input has this dimension")

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        return tuple(declaration.spec for declaration in self.inputs)

    @property
    def output_specs(self) -> tuple[TensorSpec, ...]:
        return tuple(declaration.spec for declaration in self.outputs)


def _name(value: object) -> object:
    if isinstance(value, str) and (not value or "/" in value or value != value.strip()):
        raise invalid(f"must be a non-empty name without '/', got {value!r}")
    return value


def _version(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and (not value or "/" in value):
        raise invalid(f"must be a non-empty string without '/', got {value!r}")
    return value


ModelName = Annotated[Text, BeforeValidator(_name)]
ModelVersion = Annotated[Text, BeforeValidator(_version)]


class ModelTable(ModelConfig):
    """A `[[models]]` table as the file has it: a model config with its name and version."""

    name: ModelName
    version: ModelVersion = "1"

    def declared(self) -> DeclaredModel:
        # Validated already: the copy keeps every value as it is, buckets resolved included.
        settings = {key: getattr(self, key) for key in ModelConfig.model_fields}
        return DeclaredModel(self.name, self.version, ModelConfig.model_construct(**settings))


@dataclass(frozen=True)
class DeclaredModel:
    name: str
    version: str
    config: ModelConfig

    @classmethod
    def of(cls, name: object, version: object, config: ModelConfig) -> DeclaredModel:
        """A model declared from Python, under the same name and version rules as the file."""
        if not isinstance(config, ModelConfig):
            raise ConfigError("config", f"must be a ModelConfig, got {type(config).__name__}")
        table = _NameAndVersion(name=name, version=version)
        return cls(table.name, table.version, config)


class _NameAndVersion(_Table):
    name: ModelName
    version: ModelVersion


def _replicas(value: object) -> object:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise invalid(f'must be "auto" or an integer >= 1, got {value!r}')


# "auto": one replica per TPU chip when a model runs on the TPU, else 1.
Replicas = Annotated[Literal["auto"] | int, BeforeValidator(_replicas)]


def _frontends(value: object) -> object:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise invalid(f'must be "auto" or an integer >= 0 (0: one process), got {value!r}')


# "auto": none on hosts with few cores, else some per engine (appliance.lifecycle.replicas).
Frontends = Annotated[Literal["auto"] | int, BeforeValidator(_frontends)]


# Hosts that listen on every address, so that they share a port with any other host.
_ANY_ADDRESS = frozenset({"0.0.0.0", "::", "[::]"})


def _bind_list(value: object) -> object:
    # A single bind string is a list of one.
    return [value] if isinstance(value, str) else value


class ServerConfig(_Table):
    bind: Annotated[tuple[Text, ...], BeforeValidator(_bind_list)] = ("0.0.0.0:8080",)
    certfile: Text = ""
    keyfile: Text = ""
    max_request_bytes: PositiveInt = 64 * MiB
    shutdown_grace_s: NonNegativeNumber = 30.0
    # SIGTERM: how long readiness says 503 while requests are still served, out of shutdown_grace_s
    # (a load balancer needs several probe intervals to take the host out).
    unready_window_s: NonNegativeNumber = 1.0
    admin_token_file: Text = ""
    replicas: Replicas = "auto"
    frontends: Frontends = "auto"
    access_log: Text = "all"
    grpc_bind: Annotated[tuple[Text, ...], BeforeValidator(_bind_list)] = ("0.0.0.0:8081",)
    # gRPC's own limit is a signed 32-bit length; None: max_request_bytes.
    grpc_max_message_bytes: Annotated[int, Strict(), Field(ge=1, le=2**31 - 1)] | None = None
    # The model that answers Vertex AI's predict route (AIP_MODE=PREDICTION); needed only when
    # several models are served.
    vertex_model: Text = ""

    @field_validator("access_log")
    @classmethod
    def _access_log(cls, value: str) -> str:
        try:
            access_log_rate(value)
        except ValueError as error:
            raise invalid(str(error)) from None
        return value

    @field_validator("bind")
    @classmethod
    def _host_port(cls, bind: tuple[str, ...]) -> tuple[str, ...]:
        if not bind:
            raise invalid("must be a non-empty list of HOST:PORT strings")
        for entry in bind:
            if entry.startswith(("unix:", "fd://")):
                continue
            host, sep, port = entry.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise invalid(f"must be HOST:PORT (or unix:PATH), got {entry!r}")
        return bind

    @field_validator("grpc_bind")
    @classmethod
    def _grpc_host_port(cls, bind: tuple[str, ...]) -> tuple[str, ...]:
        for entry in bind:
            host, sep, port = entry.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise invalid(
                    f"must be a list of HOST:PORT strings ([] turns gRPC off), got {entry!r}"
                )
        if len(set(bind)) != len(bind):
            raise invalid("lists the same HOST:PORT twice")
        return bind

    @property
    def grpc_message_limit(self) -> int:
        """The largest gRPC message either way: grpc_max_message_bytes, else max_request_bytes."""
        if self.grpc_max_message_bytes is not None:
            return self.grpc_max_message_bytes
        return min(self.max_request_bytes, 2**31 - 1)

    @model_validator(mode="after")
    def _grpc_port_of_its_own(self) -> ServerConfig:
        for grpc_entry in self.grpc_bind:
            grpc_host, _, grpc_port = grpc_entry.rpartition(":")
            for http_entry in self.bind:
                if http_entry.startswith(("unix:", "fd://")):
                    continue
                http_host, _, http_port = http_entry.rpartition(":")
                if http_port == grpc_port and (
                    http_host == grpc_host or {http_host, grpc_host} & _ANY_ADDRESS
                ):
                    raise broken_rule(
                        "grpc_bind",
                        f"{grpc_entry!r} takes the port of bind {http_entry!r}: HTTP and gRPC"
                        " each need a port of their own",
                    )
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if bool(self.certfile) != bool(self.keyfile):
            raise broken_rule("certfile", "TLS needs both certfile and keyfile, or neither")
        return self

    @model_validator(mode="after")
    def _unready_window_within_grace(self) -> ServerConfig:
        if self.unready_window_s >= self.shutdown_grace_s:
            raise broken_rule(
                "unready_window_s",
                f"must be less than shutdown_grace_s ({self.shutdown_grace_s:g}), which it is part"
                f" of; got {self.unready_window_s:g}",
            )
        return self


def access_log_rate(setting: str) -> float | None:
    """`server.access_log` as the share of successful requests logged: "all" (1.0), "errors"
    (None: error lines only) or "sampled:RATE" with 0 < RATE <= 1. Error lines are always logged.
    ValueError for anything else."""
    if setting == "all":
        return 1.0
    if setting == "errors":
        return None
    kind, _, rate = setting.partition(":")
    try:
        share = float(rate) if kind == "sampled" else math.nan
    except ValueError:
        share = math.nan
    if not 0.0 < share <= 1.0:
        raise ValueError(
            f'must be "all", "errors" or "sampled:RATE" (0 < RATE <= 1), got {setting!r}'
        )
    return share


class StorageConfig(_Table):
    cache_dir: Annotated[Text, Field(min_length=1)] = "/var/lib/aegis/models"
    download_concurrency: PositiveInt = 8
    # Free space a sync leaves beyond its download (the larger of this and 5% of the download):
    # a disk filled to the last byte breaks the journal and the compile cache, not only the sync.
    disk_reserve_bytes: NonNegativeInt = 64 * MiB


class XlaConfig(_Table):
    compilation_cache_dir: Text = "/var/cache/aegis/xla"


class ConfigFile(_Table):
    """The whole file, as TOML gives it."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    xla: XlaConfig = Field(default_factory=XlaConfig)
    models: list[ModelTable] = []

    @model_validator(mode="after")
    def _declared_once(self) -> ConfigFile:
        seen: set[tuple[str, str]] = set()
        for index, model in enumerate(self.models):
            if (model.name, model.version) in seen:
                raise broken_rule(
                    f"models[{index}]",
                    f"model {model.name!r} version {model.version!r} is declared twice",
                )
            seen.add((model.name, model.version))
        return self


@dataclass(frozen=True)
class AppConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    xla: XlaConfig = field(default_factory=XlaConfig)
    models: tuple[DeclaredModel, ...] = ()
    source: str | None = None
