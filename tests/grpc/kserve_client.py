"""KServe's Python SDK against a server over gRPC, run by .venv-kserve's Python (the one with
kserve, see tests/grpc/requirements-kserve.txt), not by the test's:

    kserve_client.py < {"address": HOST:PORT, "model": ..., "input": ..., "good": rows, "bad": rows}

asks through `kserve.InferenceGRPCClient` for liveness, readiness, the model's readiness, one
infer of the rows "good" and one of the rows "bad" as the FP32 input named "input" (sent raw, as the
SDK sends numpy arrays), then for the model's metadata through the SDK's own stub (its client has
no call for it); prints what each gave as JSON, for the test to check. The SDK takes seconds to
import, which it does before it reads its orders: a test can start it before the server.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.grpc.grpc_predict_v2_pb2 import ModelMetadataRequest
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

TIMEOUT_S = 30.0


def request(model: str, name: str, rows: list[list[float]], request_id: str) -> Any:
    array = np.asarray(rows, dtype=np.float32)
    tensor = InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)  # binary_data=True: raw_input_contents
    return InferRequest(model, [tensor], request_id=request_id)


def tensors(described: Any) -> list[dict[str, Any]]:
    return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in described]


async def report(orders: dict[str, Any]) -> dict[str, Any]:
    address, model, name = orders["address"], orders["model"], orders["input"]
    # retries=0: a call that fails is reported as it failed, not tried again.
    async with InferenceGRPCClient(address, timeout=TIMEOUT_S, retries=0) as client:
        found: dict[str, Any] = {
            "server_live": await client.is_server_live(),
            "server_ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready(model),
        }
        answer = await client.infer(request(model, name, orders["good"], "good"))
        found["infer"] = {
            "id": answer.id,
            "model_name": answer.model_name,
            "model_version": answer.model_version,
            "outputs": [
                {
                    "name": output.name,
                    "datatype": output.datatype,
                    "shape": output.shape,
                    "data": output.as_numpy().tolist(),
                }
                for output in answer.outputs
            ],
        }
        try:
            await client.infer(request(model, name, orders["bad"], "bad"))
            found["bad"] = None
        except grpc.aio.AioRpcError as error:
            found["bad"] = {"code": error.code().name, "details": error.details()}
    async with grpc.aio.insecure_channel(address) as channel:
        metadata = await GRPCInferenceServiceStub(channel).ModelMetadata(
            ModelMetadataRequest(name=model), timeout=TIMEOUT_S
        )
    found["metadata"] = {
        "name": metadata.name,
        "platform": metadata.platform,
        "versions": list(metadata.versions),
        "inputs": tensors(metadata.inputs),
        "outputs": tensors(metadata.outputs),
    }
    return found


if __name__ == "__main__":
    print(json.dumps(asyncio.run(report(json.load(sys.stdin)))))
