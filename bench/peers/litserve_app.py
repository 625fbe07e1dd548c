"""LitServe app: the TorchScript model with LitServe's batching, on 127.0.0.1.

python litserve_app.py MODEL.pt PORT MAX_BATCH BATCH_TIMEOUT_S
"""

from __future__ import annotations

import sys
from typing import Any

import litserve as ls
import torch
import v2


class TorchScriptAPI(ls.LitAPI):
    def __init__(self, path: str, model_name: str, max_batch_size: int, timeout_s: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=timeout_s)
        self._path = path
        self._model_name = model_name

    def setup(self, device: str) -> None:
        torch.set_num_threads(1)
        self._model = torch.jit.load(self._path).eval()

    # No annotations here: LitServe reads them to pick the request and response types, and
    # unannotated means "the parsed JSON body" and "a JSON response".
    def decode_request(self, request):
        return request

    def batch(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return inputs

    def predict(self, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return v2.run_batch(self._model, documents, self._model_name)

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output):
        return output


def main(argv: list[str]) -> None:
    path, port, max_batch, timeout_s = argv
    name = path.rsplit("/", 1)[-1].removesuffix(".pt")
    server = ls.LitServer(
        TorchScriptAPI(path, name, int(max_batch), float(timeout_s)),
        accelerator="cpu",
        workers_per_device=1,
    )
    server.run(host="127.0.0.1", port=int(port), generate_client_file=False)


if __name__ == "__main__":
    main(sys.argv[1:])
