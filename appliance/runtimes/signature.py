"""What a model serves: the artifact's own signature, named and checked by the config.

An artifact's signature ("found") gives each dynamic dimension as the export's symbol where the
format has one: torch.export's shape symbols (`s27`, or `2*s27` for a derived size), ONNX's
`dim_param` names, `jax.export`'s symbolic dimensions. -1 is a dynamic dimension the artifact says
nothing about (ONNX without a `dim_param`); TorchScript carries no signature at all.

The config names the dimensions it pads (`[models.dims]`) on its inputs. An output dimension that
is the same symbol as a padded input dimension is that dimension: it is named, so the batcher cuts
it back to each request's own length, whether the output was declared or read from the artifact.
Where the artifact cannot say which output dimensions follow a padded one, or says a dimension
grows with one without being it, the load fails: a reply must never carry padding.
"""

from __future__ import annotations

import dataclasses
import re

from appliance.config import ModelConfig
from appliance.runtimes.base import ArtifactError
from appliance.tensors import Dim, Signature, TensorSpec


def _symbol(dim: Dim | None) -> bool:
    """A plain symbol of the export (an identifier), not a size derived from symbols."""
    return isinstance(dim, str) and dim.isidentifier()


def _uses(expression: str, symbol: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(symbol)}(?![\w])", expression) is not None


def merge_signature(found: Signature, config: ModelConfig, artifact: str) -> Signature:
    """The artifact's signature, named and checked by the config's declaration where given, each
    symbolic dimension resolved: a padded dimension's name, else -1 (any size)."""
    _check_declared(found, config, artifact)
    inputs = config.input_specs or found.inputs
    names = _padded_symbols(found.inputs, config.input_specs, artifact)
    resolved_inputs = tuple(
        _resolve_input(spec, actual, names)
        for spec, actual in _paired(inputs, found.inputs, bool(config.input_specs))
    )
    padded = {dim for spec in resolved_inputs for _axis, dim in spec.named_axes()}
    outputs = config.output_specs or found.outputs
    resolved_outputs = tuple(
        _resolve_output(spec, actual, names, padded, artifact)
        for spec, actual in _paired(outputs, found.outputs, bool(config.output_specs))
    )
    # Limits follow the inputs by position: the declaration may rename them.
    renamed = {
        actual.name: spec.name for spec, actual in zip(resolved_inputs, found.inputs, strict=False)
    }
    limits = tuple(
        dataclasses.replace(limit, input=renamed.get(limit.input, limit.input))
        for limit in found.limits
    )
    return Signature(resolved_inputs, resolved_outputs, limits)


def check_batch_dims(
    signature: Signature, config: ModelConfig, artifact: str, *, remedy: str
) -> None:
    """Every input and output takes the batch on its first axis as a dynamic dimension: an export
    that fixed it cannot serve batches of other sizes. `remedy` says how to export it instead, in
    the terms of the runtime's export tool."""
    for spec in (*signature.inputs, *signature.outputs):
        if spec.shape and spec.shape[0] != -1 and config.max_batch_size > 1:
            raise ArtifactError(
                f"{artifact}: {spec.name!r} has a fixed batch dimension {spec.shape[0]}; {remedy}"
            )


def output_order(found: Signature, config: ModelConfig) -> tuple[int, ...] | None:
    """Where each declared output sits among the graph's outputs, when the declaration names
    the keys of a dict the model returns (in any order); None: by position."""
    declared = [spec.name for spec in config.output_specs]
    have = [spec.name for spec in found.outputs]
    if declared and sorted(declared) == sorted(have) and declared != have:
        return tuple(have.index(name) for name in declared)
    return None


def _paired(
    specs: tuple[TensorSpec, ...], found: tuple[TensorSpec, ...], declared: bool
) -> list[tuple[TensorSpec, TensorSpec | None]]:
    """Each spec with the artifact's tensor at its position (None where the artifact has none);
    an undeclared spec is the artifact's own."""
    if not declared:
        return [(spec, spec) for spec in specs]
    return [(spec, found[i] if i < len(found) else None) for i, spec in enumerate(specs)]


def _check_declared(found: Signature, config: ModelConfig, artifact: str) -> None:
    """A declaration agrees with the artifact in count, datatype, rank and fixed sizes."""
    for kind, have, declared in (
        ("inputs", found.inputs, config.input_specs),
        ("outputs", found.outputs, config.output_specs),
    ):
        if not declared or not have:
            continue
        if len(have) != len(declared):
            raise ArtifactError(
                f"{artifact}: config declares {len(declared)} {kind}, the model has {len(have)}"
            )
        verb = "takes" if kind == "inputs" else "returns"
        for index, (spec, actual) in enumerate(zip(declared, have, strict=True)):
            if actual.datatype != spec.datatype:
                raise ArtifactError(
                    f"{artifact}: {kind} {spec.name!r} is declared {spec.datatype}, "
                    f"the model {verb} {actual.datatype}"
                )
            key = f"{kind}[{index}].shape"
            if len(spec.shape) != len(actual.shape):
                raise ArtifactError(
                    f"{artifact}: {key} of {spec.name!r} is declared {list(spec.shape)} "
                    f"({len(spec.shape)} dimensions), the model {verb} "
                    f"{len(actual.shape)} dimensions: {_shown(actual.shape)}"
                )
            for axis, (want, have_dim) in enumerate(zip(spec.shape, actual.shape, strict=True)):
                if not isinstance(have_dim, int) or have_dim == -1:
                    continue
                if isinstance(want, str):
                    raise ArtifactError(
                        f"{artifact}: {kind} {spec.name!r} dimension {axis} is declared "
                        f"{want!r}, but the model fixes it at {have_dim}"
                    )
                if want not in (-1, have_dim):
                    raise ArtifactError(
                        f"{artifact}: {key} of {spec.name!r} is declared {list(spec.shape)}, "
                        f"the model {verb} {_shown(actual.shape)} (dimension {axis} is "
                        f"{have_dim}, not {want})"
                    )


def _shown(shape: tuple[Dim, ...]) -> list[Dim]:
    return [dim if isinstance(dim, int) else -1 for dim in shape]


def _padded_symbols(
    found: tuple[TensorSpec, ...], inputs: tuple[TensorSpec, ...], artifact: str
) -> dict[str, str]:
    """The config's name for each export symbol it pads, matched by input and axis; one symbol
    gets one name."""
    names: dict[str, str] = {}
    for actual, spec in zip(found, inputs, strict=False):
        for axis, dim in spec.named_axes():
            symbol = actual.shape[axis] if axis < len(actual.shape) else None
            if not _symbol(symbol):
                continue
            assert isinstance(symbol, str)
            name = names.setdefault(symbol, dim)
            if name != dim:
                raise ArtifactError(
                    f"{artifact}: input {spec.name!r} dimension {axis} is declared {dim!r}, but "
                    f"the export ties it to {name!r} (both are {symbol!r}): give them one name"
                )
    return names


def _resolve_input(
    spec: TensorSpec, actual: TensorSpec | None, names: dict[str, str]
) -> TensorSpec:
    """A declared name stays; an axis the export ties to a padded dimension takes its name; any
    other symbol of the export is -1."""
    declared = actual is not spec
    shape: list[Dim] = []
    for axis, dim in enumerate(spec.shape):
        have = actual.shape[axis] if actual is not None and axis < len(actual.shape) else None
        if declared and isinstance(dim, str):
            shape.append(dim)
        elif isinstance(have, str) and have in names:
            shape.append(names[have])
        else:
            shape.append(dim if isinstance(dim, int) else -1)
    return dataclasses.replace(spec, shape=tuple(shape))


def _resolve_output(
    spec: TensorSpec,
    actual: TensorSpec | None,
    names: dict[str, str],
    padded: set[str],
    artifact: str,
) -> TensorSpec:
    declared = actual is not spec
    shape: list[Dim] = []
    for axis, dim in enumerate(spec.shape):
        have = actual.shape[axis] if actual is not None and axis < len(actual.shape) else None
        want = dim if declared else None  # what the config says of this axis
        where = f"{artifact}: output {spec.name!r} dimension {axis}"
        if isinstance(have, str) and have in names:
            name = names[have]
            if want not in (None, -1, name):
                raise ArtifactError(
                    f"{where} is declared {want!r}, but the export makes it the inputs' {name!r}"
                )
            shape.append(name)
        elif _symbol(have) or (isinstance(have, str) and not _uses_any(have, names)):
            if isinstance(want, str) and axis > 0:
                raise ArtifactError(
                    f"{where} is declared {want!r}, but the export gives it a size of its own "
                    f"({have}), not the inputs' {want!r}: declare it -1"
                )
            shape.append(want if isinstance(want, int) else -1)
        elif isinstance(have, str):
            derived = re.sub(r"\w+", lambda word: names.get(word[0], word[0]), have)
            raise ArtifactError(
                f"{where} is {derived} in the export: it grows with the padded dimension "
                f"{_named(have, names)} without being it, so padding cannot be cut back from it; "
                "return it at the input's length, or serve the model without buckets for that "
                "dimension (runtime 'torch', no [models.dims] entry)"
            )
        elif want is not None and want != -1:
            shape.append(want)  # a declared name or fixed size the artifact does not contradict
        elif axis > 0 and padded and have in (None, -1):
            dims = " or ".join(repr(name) for name in sorted(padded))
            raise ArtifactError(
                f"{where} is dynamic, and the artifact does not say whether it follows the padded "
                f"dimension {dims}: declare the output in [[models.outputs]] with that "
                "dimension's name at this axis to cut it back to each request's length, or with "
                "its fixed size"
            )
        else:
            shape.append(want if want is not None else (have if isinstance(have, int) else -1))
    return dataclasses.replace(spec, shape=tuple(shape))


def _uses_any(expression: str, names: dict[str, str]) -> bool:
    return any(_uses(expression, symbol) for symbol in names)


def _named(expression: str, names: dict[str, str]) -> str:
    return " and ".join(repr(name) for symbol, name in names.items() if _uses(expression, symbol))
