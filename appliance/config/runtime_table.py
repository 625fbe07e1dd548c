"""What Aegis knows of each runtime before importing it: one row per runtime.

The config validates `runtime`, `device` and `model_path` against these rows, the repository
picks a CPU twin from them, the data plane names a model's platform from them, and
`appliance.runtimes` imports the class a row names only when a model asks for it. So this module
imports nothing of Aegis, and adding a runtime is its module and one row here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Artifact:
    """An artifact format a runtime loads, and what serving it that way is called."""

    suffix: str  # the file name's suffix: ".pt2"
    format: str  # what the file is, as messages name it: "torch.export"
    platform: str  # model metadata's `platform` when this runtime serves it
    cpu_runtime: str  # the runtime that serves the same file on the CPU when the device cannot


@dataclass(frozen=True)
class RuntimeRow:
    name: str  # the config's `runtime`, and the class's `name`
    implementation: str  # "module:Class" of the `Runtime` subclass
    devices: tuple[str, ...]  # the config `device`s it runs on, the first its usual one
    artifacts: tuple[Artifact, ...]
    # One program per input shape: every dynamic dimension needs buckets, compilations are
    # metrics, and two batches in flight keep the device busy.
    compiles_per_shape: bool = False
    missing_package_hint: str = ""  # what to install when its module cannot be imported

    @property
    def suffixes(self) -> tuple[str, ...]:
        return tuple(artifact.suffix for artifact in self.artifacts)

    def artifact(self, suffix: str) -> Artifact | None:
        return next((artifact for artifact in self.artifacts if artifact.suffix == suffix), None)


RUNTIMES: tuple[RuntimeRow, ...] = (
    RuntimeRow(
        "torch",
        "appliance.runtimes.torch_runtime:TorchRuntime",
        ("cpu", "cuda"),
        (
            Artifact(".pt2", "torch.export", "pytorch_export", "torch"),
            Artifact(".pt", "TorchScript", "pytorch_torchscript", "torch"),
        ),
    ),
    RuntimeRow(
        "onnx",
        "appliance.runtimes.onnx_runtime:OnnxRuntime",
        ("cpu", "cuda"),
        (Artifact(".onnx", "ONNX", "onnxruntime_onnx", "onnx"),),
        missing_package_hint="install the onnx extra: pip install 'aegis-appliance[onnx]'",
    ),
    RuntimeRow(
        "tpu",
        "appliance.runtimes.xla_runtime:XlaRuntime",
        ("tpu",),
        (
            Artifact(".pt2", "torch.export", "pytorch_xla", "torch"),
            Artifact(".pt", "TorchScript", "pytorch_xla", "torch"),
        ),
        compiles_per_shape=True,
        missing_package_hint=(
            "install torch_xla matching this host's torch (the aegis_tpu_runtime Ansible role does)"
        ),
    ),
    RuntimeRow(
        "jax",
        "appliance.runtimes.jax_runtime:JaxRuntime",
        ("tpu", "cpu"),
        (
            Artifact(".jax", "jax.export", "jax_export", "jax"),
            Artifact(".pt2", "torch.export", "pytorch_torchax", "torch"),
        ),
        compiles_per_shape=True,
        missing_package_hint=(
            "install the aegis_tpu_runtime role's jax flavor (requirements-jax.txt): "
            "jax, torchax and the torch they take"
        ),
    ),
)


# The functions below read RUNTIMES when called, never a copy taken at import.


def runtime_names() -> tuple[str, ...]:
    return tuple(row.name for row in RUNTIMES)


def runtime_row(name: str) -> RuntimeRow:
    """The row of runtime `name`; KeyError when there is none (the config has checked it)."""
    for row in RUNTIMES:
        if row.name == name:
            return row
    raise KeyError(name)


def artifact_suffixes() -> tuple[str, ...]:
    """Every artifact suffix some runtime loads, in table order."""
    return tuple(dict.fromkeys(suffix for row in RUNTIMES for suffix in row.suffixes))


def runtimes_loading(suffix: str) -> tuple[str, ...]:
    """The runtimes that load files ending in `suffix`, in table order: the first is the one a
    bare artifact is served with."""
    return tuple(row.name for row in RUNTIMES if suffix in row.suffixes)


def runtimes_on(device: str) -> tuple[str, ...]:
    """The runtimes that run on `device`, in table order."""
    return tuple(row.name for row in RUNTIMES if device in row.devices)


def artifact_format(suffix: str) -> str:
    """What a file ending in `suffix` is ("torch.export"); KeyError when no runtime loads it."""
    for row in RUNTIMES:
        found = row.artifact(suffix)
        if found is not None:
            return found.format
    raise KeyError(suffix)
