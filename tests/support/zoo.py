"""A model zoo that looks like what users serve, for every runtime's tests and the benchmark.

Each model is built from a fixed seed, exported with torch.export (batch and sequence lengths as
`Dim(min, max)`), and carries its declaration (inputs, outputs, named dimensions) and an eager
reference. Only torch is needed: nothing here imports torch_xla or JAX.

- `cnn`: convolutions with batch norm, max and average pooling.
- `encoder`: token and position embeddings (an `arange` the graph makes), one attention block with
  a padding mask, layer norms and a masked mean; named dimension "seq"; returns a dict.
- `gru`: a GRU over a fixed-length series (its initial state is made by the graph).
- `tabular`: two inputs (features and a category id) and three outputs, returned as a tuple.
- `deep`: 48 residual blocks of width 64: cheap per op, so host overhead is all of its cost.

torch_xla replaces `torch.nn.GRU` when imported, after which the GRU neither exports nor runs on the
CPU: export in a process that has not imported it (`python -m tests.support.zoo DIR` does), and
where torch_xla is loaded take `exported_reference`, the artifact itself run by eager CPU torch
(its graph calls aten's GRU, not the module), as the reference.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
import torch.utils._pytree as pytree

from appliance.tensors import TensorSpec, numpy_dtype

MAX_BATCH = 64
MAX_SEQ = 64
VOCAB = 1000


class Tolerance(TypedDict):
    """How closely outputs must match a reference: keywords of np.testing.assert_allclose."""

    rtol: float
    atol: float


class Cnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
        )
        self.head = torch.nn.Linear(16, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(torch.flatten(self.features(image), 1))
        return logits


class Encoder(torch.nn.Module):
    """One pre-norm transformer block over token ids; positions where `mask` is 0 are padding."""

    def __init__(self, width: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.tokens = torch.nn.Embedding(VOCAB, width, padding_idx=0)
        self.positions = torch.nn.Embedding(MAX_SEQ, width)
        self.norm1 = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.project = torch.nn.Linear(width, width)
        self.norm2 = torch.nn.LayerNorm(width)
        self.ffn = torch.nn.Sequential(
            torch.nn.Linear(width, 2 * width), torch.nn.GELU(), torch.nn.Linear(2 * width, width)
        )
        self.norm3 = torch.nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, seq = ids.shape
        positions = torch.arange(seq, device=ids.device)
        hidden = self.tokens(ids) + self.positions(positions)
        q, k, v = self.qkv(self.norm1(hidden)).chunk(3, dim=-1)
        split = (batch, seq, self.heads, -1)
        q, k, v = (t.reshape(split).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5)
        padding = (mask == 0)[:, None, None, :]
        attention = torch.softmax(scores.masked_fill(padding, -1e9), dim=-1)
        mixed = (attention @ v).transpose(1, 2).reshape(batch, seq, -1)
        hidden = hidden + self.project(mixed)
        hidden = self.norm3(hidden + self.ffn(self.norm2(hidden)))
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return {"pooled": pooled, "tokens": hidden}


class Gru(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.GRU(4, 16, batch_first=True)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        states, _last = self.rnn(series)
        scores: torch.Tensor = self.head(states[:, -1])
        return scores


class Tabular(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.category = torch.nn.Embedding(5, 4)
        self.body = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU())
        self.score = torch.nn.Linear(32, 1)
        self.classes = torch.nn.Linear(32, 3)

    def forward(
        self, features: torch.Tensor, category: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.body(torch.cat([features, self.category(category)], dim=1))
        probabilities = torch.softmax(self.classes(hidden), dim=-1)
        return self.score(hidden), probabilities, probabilities.argmax(dim=-1)


class Deep(torch.nn.Module):
    def __init__(self, blocks: int = 48, width: int = 64) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(16, width)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(
                torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, width)
            )
            for _ in range(blocks)
        )
        self.out = torch.nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.inp(x)
        for block in self.blocks:
            hidden = hidden + block(hidden) * 0.1
        out: torch.Tensor = self.out(hidden)
        return out


@dataclass(frozen=True)
class ZooModel:
    name: str
    module: Callable[[], torch.nn.Module]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # Per input, the value range of its elements in examples (ids, categories); floats: normal.
    ranges: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    # Inputs that mark padding (1 real, 0 padding): examples pad a random tail of each row.
    masks: tuple[str, ...] = ()
    # Inputs go in by name, as `model(**inputs)` (Hugging Face models), else by position.
    keyword: bool = False

    def build(self) -> torch.nn.Module:
        torch.manual_seed(sum(map(ord, self.name)))
        module = self.module()
        with torch.no_grad():
            for name, buffer in module.named_buffers():
                # Batch norm with the statistics of a trained model, so eval mode matters.
                if name.endswith("running_mean"):
                    buffer.copy_(torch.randn(buffer.shape) * 0.1)
                elif name.endswith("running_var"):
                    buffer.copy_(torch.rand(buffer.shape) + 0.5)
        return module.eval()

    def config(self) -> dict[str, object]:
        """The ModelConfig fields that declare this model: inputs, outputs, dims."""
        return {"inputs": self.inputs, "outputs": self.outputs, "dims": dict(self.dims)}

    def example(
        self, rng: np.random.Generator, rows: int, lengths: Mapping[str, int] | None = None
    ) -> dict[str, np.ndarray]:
        """A request of `rows` rows, each named dimension at `lengths` (default: its largest
        bucket); each of `masks` marks a random tail of each row as padding."""
        sizes = {name: buckets[-1] for name, buckets in self.dims.items()} | dict(lengths or {})
        batch: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            shape = (rows, *(sizes[d] if isinstance(d, str) else d for d in spec.shape[1:]))
            dtype = numpy_dtype(spec.datatype)
            if spec.name in self.masks:
                filled = rng.integers(1, shape[1] + 1, rows)
                batch[spec.name] = (np.arange(shape[1]) < filled[:, None]).astype(dtype)
            elif spec.name in self.ranges:
                low, high = self.ranges[spec.name]
                batch[spec.name] = rng.integers(low, high, shape).astype(dtype)
            else:
                batch[spec.name] = rng.standard_normal(shape).astype(dtype)
        return batch

    def export(self, path: Path) -> Path:
        rng = np.random.default_rng(0)
        # Example sizes away from 0, 1 and the dimension's bounds, so none of them specializes.
        example = self.example(rng, 3, {name: 5 for name in self.dims})
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        seq = torch.export.Dim("seq", min=1, max=MAX_SEQ)
        axes = {
            spec.name: {0: batch, **{axis: seq for axis, _ in spec.named_axes()}}
            for spec in self.inputs
        }
        tensors = {name: torch.from_numpy(array) for name, array in example.items()}
        if self.keyword:
            program = torch.export.export(self.build(), (), tensors, dynamic_shapes=axes)
        else:
            program = torch.export.export(
                self.build(),
                tuple(tensors[spec.name] for spec in self.inputs),
                dynamic_shapes=tuple(axes[spec.name] for spec in self.inputs),
            )
        torch.export.save(program, str(path))
        return path

    def call(self, module: Callable[..., object], inputs: Mapping[str, np.ndarray]) -> object:
        """`module` on a request's inputs, passed the way the model was exported."""
        tensors = [(spec.name, torch.from_numpy(inputs[spec.name])) for spec in self.inputs]
        with torch.no_grad():
            return module(**dict(tensors)) if self.keyword else module(*(t for _, t in tensors))

    def eager(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The module's own outputs on the CPU, by output name."""
        return self.eager_reference()(inputs)

    def eager_reference(
        self, weights: Path | None = None
    ) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
        """`eager` as a function of a request's inputs, the module built once; with the weights
        of the artifact `weights` where given: another torch version may draw other initial
        weights from the same seed (ViT's truncated normals do under torch 2.9 and 2.13)."""
        module = self.build()
        if weights is not None:
            # After build(): loading needs the output classes the model's library registers.
            module.load_state_dict(torch.export.load(str(weights)).state_dict)
        return lambda inputs: self._by_name(self.call(module, inputs))

    def exported_reference(
        self, artifact: Path
    ) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
        """The exported artifact run on the CPU by `ExportedProgram.module()`, as a function
        of a request's inputs."""
        module = torch.export.load(str(artifact)).module()

        def reference(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return self._by_name(self.call(module, inputs))

        return reference

    def _by_name(self, result: object) -> dict[str, np.ndarray]:
        if isinstance(result, dict):
            return {spec.name: result[spec.name].numpy() for spec in self.outputs}
        leaves = pytree.tree_leaves(result)
        return {spec.name: leaf.numpy() for spec, leaf in zip(self.outputs, leaves, strict=True)}


def _spec(name: str, datatype: str, *shape: int | str, pad_value: int = 0) -> TensorSpec:
    return TensorSpec(name, datatype, (-1, *shape), pad_value)


ZOO: dict[str, ZooModel] = {
    model.name: model
    for model in (
        ZooModel("cnn", Cnn, (_spec("image", "FP32", 3, 16, 16),), (_spec("logits", "FP32", 10),)),
        ZooModel(
            "encoder",
            Encoder,
            (_spec("ids", "INT64", "seq"), _spec("mask", "INT64", "seq")),
            (_spec("pooled", "FP32", 32), _spec("tokens", "FP32", "seq", 32)),
            dims={"seq": (8, 16, 32)},
            ranges={"ids": (1, VOCAB)},
            masks=("mask",),
        ),
        ZooModel("gru", Gru, (_spec("series", "FP32", 12, 4),), (_spec("scores", "FP32", 3),)),
        ZooModel(
            "tabular",
            Tabular,
            (_spec("features", "FP32", 6), _spec("category", "INT64")),
            (
                _spec("score", "FP32", 1),
                _spec("probabilities", "FP32", 3),
                _spec("top_class", "INT64"),
            ),
            ranges={"category": (0, 5)},
        ),
        ZooModel("deep", Deep, (_spec("x", "FP32", 16),), (_spec("y", "FP32", 4),)),
    )
}


def model_toml(name: str, artifact: Path, model: ZooModel, **fields: object) -> str:
    """A `[[models]]` table serving `model` from `artifact`, with its declarations."""
    lines = ["[[models]]", f'name = "{name}"', f'model_path = "{artifact}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    if model.dims:
        lines.append("[models.dims]")
        lines += [f"{dim} = {list(buckets)}" for dim, buckets in model.dims.items()]
    for kind, specs in (("inputs", model.inputs), ("outputs", model.outputs)):
        for spec in specs:
            lines += [
                f"[[models.{kind}]]",
                f'name = "{spec.name}"',
                f'datatype = "{spec.datatype}"',
                f"shape = {json.dumps(list(spec.shape))}",
                f"pad_value = {json.dumps(spec.pad_value)}",
            ]
    return "\n".join(lines) + "\n"


def export_zoo(
    root: Path, names: tuple[str, ...] = tuple(ZOO), zoo: Mapping[str, ZooModel] = ZOO
) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    return {name: zoo[name].export(root / f"{name}.pt2") for name in names}


if __name__ == "__main__":
    export_zoo(Path(sys.argv[1]), tuple(sys.argv[2:]) or tuple(ZOO))
