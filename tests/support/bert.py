"""A tiny BERT as `transformers` builds it (seeded weights, nothing downloaded), and inputs for it,
for the tests of a Hugging Face `ModelOutput` served as it comes."""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
import transformers


def bert() -> torch.nn.Module:
    """A two-layer BertModel of width 32 over a vocabulary of 100, the same weights each call."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return cast(torch.nn.Module, transformers.BertModel(config).eval())


def bert_example(rows: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """`rows` random token rows of `length`, the first one's second half masked out."""
    rng = np.random.default_rng(seed)
    mask = np.ones((rows, length), dtype=np.int64)
    mask[0, length // 2 :] = 0
    return {"input_ids": rng.integers(1, 100, (rows, length)), "attention_mask": mask}
