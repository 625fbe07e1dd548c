"""MLServer custom runtime: the TorchScript model behind MLServer's own V2 endpoint.

MLServer's adaptive batcher merges requests along the first dimension before `predict` and
splits the response after, so `predict` sees one batch.
"""

from __future__ import annotations

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class TorchScriptModel(MLModel):
    async def load(self) -> bool:
        torch.set_num_threads(1)
        self._model = torch.jit.load(self.settings.parameters.uri).eval()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        with torch.no_grad():
            output = self._model(torch.from_numpy(rows)).numpy()
        return InferenceResponse(
            model_name=self.name,
            model_version="1",
            outputs=[NumpyCodec.encode_output("output__0", output)],
        )
