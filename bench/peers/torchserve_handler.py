"""TorchServe handler: a batch of V2 JSON bodies through the TorchScript model in one call.

Module-level `handle(data, context)` is TorchServe's plain-function handler form; `v2.py` travels
in the model archive as an extra file.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import v2

_model: torch.jit.ScriptModule | None = None


def _load(context: Any) -> torch.jit.ScriptModule:
    # One intra-op thread, as every server in the comparison gets (one core each).
    torch.set_num_threads(1)
    model_dir = context.system_properties["model_dir"]
    serialized = context.manifest["model"]["serializedFile"]
    return torch.jit.load(os.path.join(model_dir, serialized)).eval()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[dict[str, Any]] | None:
    global _model
    if _model is None:
        _model = _load(context)
    if data is None:
        return None
    documents = []
    for request in data:
        body = request.get("body", request.get("data"))
        # TorchServe parses application/json bodies itself; anything else arrives as bytes.
        documents.append(body if isinstance(body, dict) else json.loads(body))
    return v2.run_batch(_model, documents, context.model_name)
