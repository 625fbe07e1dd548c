"""The JAX tier's models, built by the running venv, with references computed independently.

- `scorer.jax`: a JAX function (two inputs, a dict of two outputs, one of them INT32) exported with
  `jax.export` and a symbolic batch dimension; its reference is the same arithmetic in numpy.
- `masked.jax`, `masked.pt2`: a masked mean over a second dynamic dimension (`seq`), as a JAX
  export and as a torch.export program, served with named dimensions; the reference is numpy.
- `demo.pt2`, `deep.pt2`, `mixed.pt2`: torch.export programs; their reference is the eager torch
  module. `deep` is 48 residual blocks of width 64: host overhead per op is what it measures.

Importing this module needs torch; `build_jax_artifacts` needs jax too (the JAX tier's venv).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from appliance.demo import build_demo_module, export_demo_model

SCORER_FEATURES = 16
SCORER_HIDDEN = 32
SCORER_CLASSES = 5
DEEP_BLOCKS = 48
DEEP_WIDTH = 64
DEEP_OUTPUTS = 10


def _scorer_weights() -> dict[str, np.ndarray]:
    generator = np.random.default_rng(11)
    return {
        "w1": generator.standard_normal((SCORER_FEATURES, SCORER_HIDDEN)).astype(np.float32),
        "b1": generator.standard_normal(SCORER_HIDDEN).astype(np.float32),
        "w2": generator.standard_normal((SCORER_HIDDEN, SCORER_CLASSES)).astype(np.float32),
    }


def scorer_reference(features: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """What `scorer.jax` computes, in numpy: scores (batch, classes) and their argmax (batch,)."""
    weights = _scorer_weights()
    hidden = np.tanh(features @ weights["w1"] + weights["b1"])
    scores = (hidden @ weights["w2"]) * scale
    return {"scores": scores.astype(np.float32), "best": scores.argmax(axis=1).astype(np.int32)}


def export_scorer(path: Path, platforms: tuple[str, ...] = ("cpu",)) -> Path:
    """`scorer.jax`: inputs (b, 16) and (b, 1) FP32; outputs {"best": (b,), "scores": (b, 5)}."""
    import jax
    import jax.export
    import jax.numpy as jnp

    weights = _scorer_weights()

    def scorer(features: jax.Array, scale: jax.Array) -> dict[str, jax.Array]:
        hidden = jnp.tanh(features @ weights["w1"] + weights["b1"])
        scores = (hidden @ weights["w2"]) * scale
        return {"scores": scores, "best": jnp.argmax(scores, axis=1).astype(jnp.int32)}

    (batch,) = jax.export.symbolic_shape("batch")
    exported = jax.export.export(jax.jit(scorer), platforms=platforms)(
        jax.ShapeDtypeStruct((batch, SCORER_FEATURES), jnp.float32),
        jax.ShapeDtypeStruct((batch, 1), jnp.float32),
    )
    path.write_bytes(exported.serialize())
    return path


SEQ_FEATURES = 4


def masked_reference(tokens: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """What `masked.jax` computes, in numpy: the masked mean over seq (batch, 4) and each
    position's masked feature sum (batch, seq)."""
    weights = mask.astype(np.float32)[:, :, None]
    pooled = (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
    per_position = (tokens * weights).sum(axis=2)
    return [pooled.astype(np.float32), per_position.astype(np.float32)]


def export_masked(path: Path) -> Path:
    """`masked.jax`: tokens (batch, seq, 4) FP32 and mask (batch, seq) INT32, both symbolic in
    batch and seq; outputs (pooled (batch, 4), per_position (batch, seq))."""
    import jax
    import jax.export
    import jax.numpy as jnp

    def masked(tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        weights = mask.astype(jnp.float32)[:, :, None]
        pooled = (tokens * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)
        return pooled, (tokens * weights).sum(axis=2)

    batch, seq = jax.export.symbolic_shape("batch, seq")
    exported = jax.export.export(jax.jit(masked))(
        jax.ShapeDtypeStruct((batch, seq, SEQ_FEATURES), jnp.float32),
        jax.ShapeDtypeStruct((batch, seq), jnp.int32),
    )
    path.write_bytes(exported.serialize())
    return path


def masked_inputs(rows: int, length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs of `masked.jax`: `rows` requests of `length` positions, the last ones masked."""
    generator = np.random.default_rng(seed)
    tokens = generator.standard_normal((rows, length, SEQ_FEATURES)).astype(np.float32)
    mask = np.ones((rows, length), dtype=np.int32)
    mask[:, max(1, length - 2) :] = 0
    return tokens, mask


class MaskedTorch(torch.nn.Module):
    """`masked.jax`'s arithmetic as a PyTorch module, exported with dynamic batch and seq."""

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weights = mask.to(torch.float32).unsqueeze(-1)
        pooled = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return pooled, (tokens * weights).sum(dim=2)


def export_masked_torch(path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=1, max=512)
    example = (torch.zeros(2, 8, SEQ_FEATURES), torch.ones(2, 8, dtype=torch.int32))
    program = torch.export.export(
        MaskedTorch(), example, dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq})
    )
    torch.export.save(program, str(path))
    return path


class Residual(torch.nn.Module):
    """A pre-norm MLP block: x + W2 gelu(W1 layer_norm(x))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.up = torch.nn.Linear(width, width)
        self.down = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))
        return result


class Deep(torch.nn.Module):
    """48 residual blocks of width 64 and a 10-way head, weights from a fixed seed."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        blocks = [Residual(DEEP_WIDTH) for _ in range(DEEP_BLOCKS)]
        self.blocks = torch.nn.Sequential(*blocks)
        self.head = torch.nn.Linear(DEEP_WIDTH, DEEP_OUTPUTS)
        with torch.no_grad():
            for block in blocks:
                block.down.weight.mul_(0.2)  # keeps activations bounded through 48 blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.head(self.blocks(x))
        return result


class Mixed(torch.nn.Module):
    """Two inputs of two datatypes, a tuple of three outputs: FP32 features, INT64 token ids."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.embedding = torch.nn.Embedding(100, 8)
        self.proj = torch.nn.Linear(8 + 4, 3)

    def forward(
        self, features: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled = self.embedding(tokens).mean(dim=1)
        logits = self.proj(torch.cat([pooled, features], dim=1))
        return logits, logits.argmax(dim=1), tokens.sum(dim=1) + 1


def build_deep_module() -> torch.nn.Module:
    return Deep().eval()


# The eager torch module behind each `.pt2`, and the example inputs it is exported with.
TORCH_REFERENCES: dict[str, Callable[[], torch.nn.Module]] = {
    "demo.pt2": build_demo_module,
    "deep.pt2": build_deep_module,
    "mixed.pt2": lambda: Mixed().eval(),
}


def example_inputs(artifact: str, rows: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Inputs for `artifact` with `rows` rows, from a fixed seed."""
    generator = np.random.default_rng(seed)
    if artifact == "scorer.jax":
        return (
            generator.standard_normal((rows, SCORER_FEATURES)).astype(np.float32),
            generator.uniform(0.5, 2.0, (rows, 1)).astype(np.float32),
        )
    if artifact == "mixed.pt2":
        return (
            generator.standard_normal((rows, 4)).astype(np.float32),
            generator.integers(0, 100, (rows, 6)).astype(np.int64),
        )
    width = DEEP_WIDTH if artifact == "deep.pt2" else 64
    return (generator.standard_normal((rows, width)).astype(np.float32),)


def eager(artifact: str, inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """The reference outputs of `artifact` for `inputs`, in signature order."""
    if artifact == "scorer.jax":
        reference = scorer_reference(*inputs)
        return [reference["best"], reference["scores"]]  # flattened dict: keys in sorted order
    with torch.no_grad():
        result = TORCH_REFERENCES[artifact]()(*(torch.from_numpy(array) for array in inputs))
    results = (result,) if isinstance(result, torch.Tensor) else result
    return [tensor.numpy() for tensor in results]


def _export_torch(artifact: str, path: Path) -> Path:
    module = TORCH_REFERENCES[artifact]()
    batch = torch.export.Dim("batch", min=1, max=1024)
    example = tuple(torch.from_numpy(array) for array in example_inputs(artifact, 4))
    shapes = tuple({0: batch} for _ in example)
    program = torch.export.export(module, example, dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path


def build_torch_artifacts(root: Path) -> dict[str, Path]:
    artifacts = {}
    for artifact in TORCH_REFERENCES:
        if artifact == "demo.pt2":
            artifacts[artifact] = export_demo_model(root / artifact)
        else:
            artifacts[artifact] = _export_torch(artifact, root / artifact)
    return artifacts


def build_jax_artifacts(root: Path) -> dict[str, Path]:
    """Every artifact of the tier: `.pt2` programs and `.jax` exports."""
    return {
        **build_torch_artifacts(root),
        "scorer.jax": export_scorer(root / "scorer.jax"),
        "scorer-tpu-only.jax": export_scorer(root / "scorer-tpu-only.jax", platforms=("tpu",)),
        "masked.jax": export_masked(root / "masked.jax"),
        "masked.pt2": export_masked_torch(root / "masked.pt2"),
    }
