"""Hugging Face models as users export them, for every runtime's tests: built by `transformers`
from tiny configs with random weights (a fixed seed; nothing is downloaded), exported with
torch.export as they come, inputs by name (`model(**inputs)`), outputs the model's own
`ModelOutput`, the batch and (for text) the sequence length dynamic.

- `bert`: BertModel: `last_hidden_state` and `pooler_output`.
- `distilbert`: DistilBertForSequenceClassification: `logits` per row.
- `gpt2`: GPT2LMHeadModel without its cache: `logits` per token.
- `vit`: ViTForImageClassification on 32x32 images: `logits` per row.

Each entry is a `ZooModel` (tests/support/zoo.py): its declaration for a `[[models]]` table, its
examples and its eager reference work as for the own zoo. `python -m tests.support.hf_zoo DIR`
exports them all, with whichever torch runs it; `export_with_main_venv` runs that in the main
venv, whose torch is newer than the 2.9 of the XLA and JAX tiers, as a user's machine may be.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

import torch
import transformers

from appliance.tensors import TensorSpec
from tests.support.zoo import MAX_SEQ, ZooModel, export_zoo

WIDTH = 32
VOCAB = 256
LABELS = 3
CLASSES = 10
IMAGE = 32
SEQ_BUCKETS = (8, 16, 32)
MAIN_PYTHON = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python"


class _EncoderSizes(TypedDict):
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int


def _encoder_sizes() -> _EncoderSizes:
    return {
        "vocab_size": VOCAB,
        "hidden_size": WIDTH,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 2 * WIDTH,
        "max_position_embeddings": MAX_SEQ,
    }


def bert() -> torch.nn.Module:
    return transformers.BertModel(transformers.BertConfig(**_encoder_sizes()))


def distilbert() -> torch.nn.Module:
    config = transformers.DistilBertConfig(
        vocab_size=VOCAB,
        dim=WIDTH,
        n_layers=2,
        n_heads=2,
        hidden_dim=2 * WIDTH,
        max_position_embeddings=MAX_SEQ,
        # A keyword of PreTrainedConfig.__post_init__, which the dataclass's signature omits.
        num_labels=LABELS,  # type: ignore[call-arg]
    )
    return transformers.DistilBertForSequenceClassification(config)


def gpt2() -> torch.nn.Module:
    # Without the key/value cache the model returns its logits alone, as a server wants them.
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=WIDTH,
        n_layer=2,
        n_head=2,
        n_positions=MAX_SEQ,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        use_cache=False,
    )
    return transformers.GPT2LMHeadModel(config)


def vit() -> torch.nn.Module:
    config = transformers.ViTConfig(
        image_size=IMAGE,
        patch_size=8,
        num_channels=3,
        hidden_size=WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * WIDTH,
        num_labels=CLASSES,  # type: ignore[call-arg]  # as in distilbert()
    )
    return transformers.ViTForImageClassification(config)


def _spec(name: str, datatype: str, *shape: int | str) -> TensorSpec:
    return TensorSpec(name, datatype, (-1, *shape), 0)


def _text(
    name: str, module: Callable[[], torch.nn.Module], outputs: tuple[TensorSpec, ...]
) -> ZooModel:
    """A text model: token ids and an attention mask over the named dimension `seq`."""
    return ZooModel(
        name,
        module,
        (_spec("input_ids", "INT64", "seq"), _spec("attention_mask", "INT64", "seq")),
        outputs,
        dims={"seq": SEQ_BUCKETS},
        ranges={"input_ids": (1, VOCAB)},
        masks=("attention_mask",),
        keyword=True,
    )


HF_ZOO: dict[str, ZooModel] = {
    model.name: model
    for model in (
        _text(
            "bert",
            bert,
            (
                _spec("last_hidden_state", "FP32", "seq", WIDTH),
                _spec("pooler_output", "FP32", WIDTH),
            ),
        ),
        _text("distilbert", distilbert, (_spec("logits", "FP32", LABELS),)),
        _text("gpt2", gpt2, (_spec("logits", "FP32", "seq", VOCAB),)),
        ZooModel(
            "vit",
            vit,
            (_spec("pixel_values", "FP32", 3, IMAGE, IMAGE),),
            (_spec("logits", "FP32", CLASSES),),
            keyword=True,
        ),
    )
}


def export_with_main_venv(root: Path) -> dict[str, Path]:
    """Every model exported by the main venv's torch, in a process of its own (`make venv`
    builds it; the tiers' make targets do so first)."""
    if not MAIN_PYTHON.is_file():
        raise FileNotFoundError(f"{MAIN_PYTHON}: the main venv exports the models: run make venv")
    subprocess.run(
        [str(MAIN_PYTHON), "-m", "tests.support.hf_zoo", str(root)],
        check=True,
        timeout=600,
        cwd=MAIN_PYTHON.parents[2],
    )
    return {name: root / f"{name}.pt2" for name in HF_ZOO}


if __name__ == "__main__":
    export_zoo(Path(sys.argv[1]), tuple(sys.argv[2:]) or tuple(HF_ZOO), HF_ZOO)
