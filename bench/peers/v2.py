"""The V2 (Open Inference Protocol) JSON body every peer reads and answers, without Aegis code.

Peers get the same request body as Aegis and answer with a body of the same shape, so every
server parses and writes the same bytes. Shared by the peers' handlers; stdlib and torch only.
"""

from __future__ import annotations

from typing import Any

import torch


def rows_of(document: dict[str, Any]) -> torch.Tensor:
    tensor = document["inputs"][0]
    return torch.tensor(tensor["data"], dtype=torch.float32).reshape(tensor["shape"])


def answer(model_name: str, output: torch.Tensor) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "model_version": "1",
        "outputs": [
            {
                "name": "output__0",
                "datatype": "FP32",
                "shape": list(output.shape),
                "data": output.reshape(-1).tolist(),
            }
        ],
    }


def run_batch(
    model: torch.jit.ScriptModule, documents: list[dict[str, Any]], model_name: str
) -> list[dict[str, Any]]:
    """One forward pass over every request's rows; each request gets its own rows back."""
    parts = [rows_of(document) for document in documents]
    with torch.no_grad():
        output = model(torch.cat(parts))
    answers = []
    offset = 0
    for part in parts:
        answers.append(answer(model_name, output[offset : offset + part.shape[0]]))
        offset += part.shape[0]
    return answers
