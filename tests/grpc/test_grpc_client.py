"""The real server driven over gRPC by tritonclient.grpc: every RPC it has for the protocol."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.support.config import model_table, server_config, tensor_table
from tests.support.models import ECHO_DATATYPES, Echo, Mlp, onnx_strings, script_pt
from tests.support.server import ServerProcess, running_server

TOKEN = "grpc-admin-token-0123456789"
BEARER = {"authorization": f"Bearer {TOKEN}"}
# What collect() queues: each answer's (result, error).
Answers = queue.Queue[tuple[grpcclient.InferResult, InferenceServerException | None]]


def echo_tables(path: Path) -> str:
    tables = model_table("echo", path, "max_batch_size = 8")
    for datatype in ECHO_DATATYPES:
        tables += tensor_table("inputs", f"in_{datatype}", datatype, [-1, 3])
    for datatype in ECHO_DATATYPES:
        tables += tensor_table("outputs", f"out_{datatype}", datatype, [-1, 3])
    return tables


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("grpc")
    token_file = workdir / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    models = (
        model_table("mlp", artifacts["mlp.pt2"], "max_batch_size = 16")
        + model_table("mixed", artifacts["mixed.pt2"], "max_batch_size = 8")
        + echo_tables(script_pt(Echo(), workdir / "echo.pt"))
        + model_table("strings", onnx_strings(workdir / "strings.onnx"), 'runtime = "onnx"')
        # A named dimension: padded to its bucket for the model, sliced back for the reply.
        + model_table("doubler", artifacts["failing.pt"], "max_batch_size = 4\n")
        + "[models.dims]\nseq = [4, 8]\n"
        + '[[models.inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [-1, "seq"]\n'
        + '[[models.outputs]]\nname = "y"\ndatatype = "FP32"\nshape = [-1, "seq"]\n'
    )
    text = server_config(workdir, models, f'admin_token_file = "{token_file}"')
    with running_server(text, workdir) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    yield client
    client.close()


def mlp_reference(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return cast(np.ndarray, Mlp()(torch.from_numpy(x)).numpy())


def collect(answers: Answers) -> Callable[..., None]:
    """A tritonclient callback that queues (result, error)."""

    def callback(result: object, error: InferenceServerException | None) -> None:
        answers.put((result, error))

    return callback


def mlp_input(x: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def test_health_and_server_metadata(
    client: grpcclient.InferenceServerClient, server: ServerProcess
) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    metadata = client.get_server_metadata()
    assert metadata.name == "aegis"
    assert "model_repository" in metadata.extensions


def test_grpc_health_v1_reports_serving_when_ready(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as raised:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_health_v1_watch_answers_at_once_serving_or_service_unknown(
    server: ServerProcess,
) -> None:
    expected = {
        "": health_pb2.HealthCheckResponse.SERVING,
        "inference.GRPCInferenceService": health_pb2.HealthCheckResponse.SERVING,
        # Where Check answers NOT_FOUND: the spec keeps such a Watch open, the service may come.
        "nope": health_pb2.HealthCheckResponse.SERVICE_UNKNOWN,
    }
    with grpc.insecure_channel(server.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service, status in expected.items():
            stream = health.Watch(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert next(stream).status == status
            stream.cancel()


def test_model_metadata_and_config_match_http(
    client: grpcclient.InferenceServerClient, server: ServerProcess
) -> None:
    http = httpclient.InferenceServerClient(server.address)
    try:
        for name in ("mlp", "mixed", "doubler"):
            metadata = client.get_model_metadata(name, as_json=True)
            over_http = http.get_model_metadata(name)
            assert metadata["name"] == over_http["name"]
            assert metadata["platform"] == over_http["platform"]
            assert metadata["versions"] == over_http["versions"]
            for kind in ("inputs", "outputs"):
                assert [
                    (t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in metadata[kind]
                ] == [(t["name"], t["datatype"], t["shape"]) for t in over_http[kind]]
            config = client.get_model_config(name, as_json=True)["config"]
            config_http = http.get_model_config(name)
            assert int(config["max_batch_size"]) == config_http["max_batch_size"]
            for kind in ("input", "output"):
                assert [
                    (t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config[kind]
                ] == [(t["name"], t["data_type"], t["dims"]) for t in config_http[kind]]
    finally:
        http.close()
    # A named dimension is "any size" (-1) in every description.
    assert [int(d) for d in client.get_model_metadata("doubler").inputs[0].shape] == [-1, -1]


def test_sync_infer_matches_the_model(client: grpcclient.InferenceServerClient) -> None:
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    result = client.infer("mlp", [mlp_input(x)], request_id="r-1")
    np.testing.assert_allclose(result.as_numpy("output__0"), mlp_reference(x), rtol=1e-5)
    assert result.get_response().id == "r-1"
    assert result.get_response().model_version == "1"


def test_async_infer_answers_through_the_callback(client: grpcclient.InferenceServerClient) -> None:
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    answers: Answers = queue.Queue()
    client.async_infer("mlp", [mlp_input(x)], collect(answers))
    result, error = answers.get(timeout=30)
    assert error is None
    np.testing.assert_allclose(result.as_numpy("output__0"), mlp_reference(x), rtol=1e-5)


def test_stream_answers_every_request_by_id(client: grpcclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(2)
    inputs = {f"s{i}": rng.standard_normal((1, 8)).astype(np.float32) for i in range(20)}
    answers: Answers = queue.Queue()
    client.start_stream(collect(answers))
    try:
        for request_id, x in inputs.items():
            client.async_stream_infer("mlp", [mlp_input(x)], request_id=request_id)
        got = {}
        for _ in inputs:
            result, error = answers.get(timeout=30)
            assert error is None
            got[result.get_response().id] = result.as_numpy("output__0")
    finally:
        client.stop_stream()
    assert set(got) == set(inputs)
    for request_id, x in inputs.items():
        np.testing.assert_allclose(got[request_id], mlp_reference(x), rtol=1e-5)


def test_a_bad_request_in_a_stream_gets_its_error_and_the_stream_goes_on(
    client: grpcclient.InferenceServerClient,
) -> None:
    answers: Answers = queue.Queue()
    client.start_stream(collect(answers))
    try:
        bad = grpcclient.InferInput("nope", [1, 8], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 8), np.float32))
        client.async_stream_infer("mlp", [bad], request_id="bad")
        _, error = answers.get(timeout=30)
        assert error is not None
        assert "has no input 'nope'" in error.message()
        x = np.ones((1, 8), np.float32)
        client.async_stream_infer("mlp", [mlp_input(x)], request_id="good")
        result, error = answers.get(timeout=30)
        assert error is None and result.get_response().id == "good"
    finally:
        client.stop_stream()


def test_multi_input_multi_output_model(client: grpcclient.InferenceServerClient) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.arange(6, dtype=np.int64).reshape(2, 3)
    c = np.array([[True, False], [False, True]])
    inputs = []
    for name, array, datatype in (("a", a, "FP32"), ("b", b, "INT64"), ("c", c, "BOOL")):
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = client.get_model_metadata("mixed").outputs
    result = client.infer("mixed", inputs)
    got = {output.name: result.as_numpy(output.name) for output in outputs}
    expected = [a * 2.0, b + 1, np.logical_not(c)]
    assert len(got) == 3
    for (_, array), want in zip(sorted(got.items()), expected, strict=True):
        np.testing.assert_array_equal(array, want)
    # Asking for one output gets only that one.
    only = client.infer("mixed", inputs, outputs=[grpcclient.InferRequestedOutput(outputs[1].name)])
    assert [o.name for o in only.get_response().outputs] == [outputs[1].name]


def echo_values(datatype: str) -> np.ndarray:
    """Two rows of three values of `datatype`, including each type's extremes."""
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, True, False]])
    if datatype == "BF16":
        # bfloat16 bit patterns: 1.0, -2.0, 0.5, 3.0, +inf, the smallest normal.
        return np.array([[0x3F80, 0xC000, 0x3F00], [0x4040, 0x7F80, 0x0080]], dtype=np.uint16)
    dtype = np.dtype(datatype.lower().replace("fp", "float"))
    if dtype.kind == "f":
        info = np.finfo(dtype)
        values = [info.min, info.max, info.tiny, -1.5, 0.0, np.inf]
    else:
        iinfo = np.iinfo(dtype)
        values = [iinfo.min, iinfo.max, 0, 1, iinfo.max - 1, iinfo.min + 1]
    return np.array(values, dtype=dtype).reshape(2, 3)


def test_every_datatype_round_trips_raw(client: grpcclient.InferenceServerClient) -> None:
    inputs = []
    for datatype in ECHO_DATATYPES:
        tensor = grpcclient.InferInput(f"in_{datatype}", [2, 3], datatype)
        values = echo_values(datatype)
        if datatype == "BF16":
            tensor._raw_content = values.astype("<u2").tobytes()  # tritonclient needs ml_dtypes
            tensor._input.ClearField("contents")
        else:
            tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    result = client.infer("echo", inputs)
    response = result.get_response()
    assert len(response.raw_output_contents) == len(ECHO_DATATYPES)
    for datatype in ECHO_DATATYPES:
        expected = echo_values(datatype)
        if datatype == "BF16":
            index = [o.name for o in response.outputs].index("out_BF16")
            got = np.frombuffer(response.raw_output_contents[index], "<u2").reshape(2, 3)
        else:
            got = result.as_numpy(f"out_{datatype}")
        assert got.dtype == expected.dtype, datatype
        np.testing.assert_array_equal(got, expected, err_msg=datatype)


def test_bytes_tensors_round_trip_raw(client: grpcclient.InferenceServerClient) -> None:
    values = np.array([[b"hello"], [b""], ["\u00e9t\u00e9".encode()]], dtype=np.object_)
    tensor = grpcclient.InferInput("s", [3, 1], "BYTES")
    tensor.set_data_from_numpy(values)
    result = client.infer("strings", [tensor])
    assert result.as_numpy("t").tolist() == values.tolist()


def typed_request(model: str) -> service_pb2.ModelInferRequest:
    return service_pb2.ModelInferRequest(model_name=model)


def test_typed_contents_are_read_and_answered_typed(server: ServerProcess) -> None:
    """KServe's clients send typed `contents`; the reply then is typed too."""
    request = typed_request("mixed")
    a = request.inputs.add(name="a", datatype="FP32", shape=[1, 4])
    a.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    b = request.inputs.add(name="b", datatype="INT64", shape=[1, 3])
    b.contents.int64_contents.extend([-1, 0, 2**40])
    c = request.inputs.add(name="c", datatype="BOOL", shape=[1, 2])
    c.contents.bool_contents.extend([True, False])
    request.parameters["priority"].uint64_param = 0  # as KServe's clients send it
    with grpc.insecure_channel(server.grpc_address) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        assert not reply.raw_output_contents
        by_name = {output.name: output for output in reply.outputs}
        assert list(by_name["output__0"].contents.fp32_contents) == [2.0, 4.0, 6.0, 8.0]
        assert list(by_name["output__1"].contents.int64_contents) == [0, 1, 2**40 + 1]
        assert list(by_name["output__2"].contents.bool_contents) == [False, True]
        # The narrow integers travel in the 32-bit fields; out of range is refused.
        echo = typed_request("echo")
        for datatype in ECHO_DATATYPES:
            if datatype in ("FP16", "BF16"):
                continue
            tensor = echo.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=[1, 3])
            field = {
                "BOOL": "bool_contents",
                "UINT64": "uint64_contents",
                "INT64": "int64_contents",
                "FP32": "fp32_contents",
                "FP64": "fp64_contents",
            }.get(datatype, "uint_contents" if datatype.startswith("U") else "int_contents")
            getattr(tensor.contents, field).extend(echo_values(datatype)[0].tolist())
        echo.inputs.add(name="in_FP16", datatype="FP16", shape=[1, 3])
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(echo, timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "FP16 tensors travel as raw_input_contents only" in raised.value.details()
        del echo.inputs[-1]
        narrow = next(t for t in echo.inputs if t.datatype == "INT8")
        narrow.contents.int_contents[0] = 300
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(echo, timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.details() == (
            "input 'in_INT8': int_contents has values out of range for INT8"
        )


def test_named_dimension_is_padded_and_sliced_back(
    client: grpcclient.InferenceServerClient,
) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)  # seq = 3, padded to the bucket of 4
    tensor = grpcclient.InferInput("x", [2, 3], "FP32")
    tensor.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("doubler", [tensor]).as_numpy("y"), x * 2)
    too_long = grpcclient.InferInput("x", [1, 9], "FP32")
    too_long.set_data_from_numpy(np.zeros((1, 9), np.float32))
    with pytest.raises(InferenceServerException) as raised:
        client.infer("doubler", [too_long])
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "past the largest bucket of 'seq' (8)" in raised.value.message()


def test_inference_statistics_count_what_was_served(
    client: grpcclient.InferenceServerClient,
) -> None:
    before = client.get_inference_statistics("mlp").model_stats[0]
    x = np.ones((4, 8), np.float32)
    client.infer("mlp", [mlp_input(x)])
    after = client.get_inference_statistics("mlp", "1").model_stats[0]
    stats, was = after.inference_stats, before.inference_stats
    assert after.name == "mlp" and after.version == "1"
    assert stats.success.count == was.success.count + 1
    assert after.inference_count == before.inference_count + 4
    assert after.execution_count == before.execution_count + 1
    assert stats.success.ns > was.success.ns
    everything = client.get_inference_statistics()
    assert {s.name for s in everything.model_stats} >= {"mlp", "mixed", "echo", "strings"}
    with pytest.raises(InferenceServerException) as raised:
        client.get_inference_statistics("nope")
    assert raised.value.status() == "StatusCode.NOT_FOUND"


def test_repository_rpcs_need_the_bearer_token(client: grpcclient.InferenceServerClient) -> None:
    call: Callable[[dict[str, str] | None], object]
    for call in (
        lambda headers: client.get_model_repository_index(headers=headers),
        lambda headers: client.unload_model("strings", headers=headers),
        lambda headers: client.load_model("strings", headers=headers),
    ):
        for headers in (None, {"authorization": "Bearer wrong"}):
            with pytest.raises(InferenceServerException) as raised:
                call(headers)
            assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
            assert raised.value.message() == "missing or wrong bearer token"
    index = client.get_model_repository_index(headers=BEARER, as_json=True)["models"]
    assert {"name": "mlp", "version": "1", "state": "READY"} in index
    client.unload_model("strings", headers=BEARER)
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_metadata("strings")
    assert raised.value.status() == "StatusCode.NOT_FOUND"
    client.load_model("strings", headers=BEARER)
    assert client.is_model_ready("strings")


def test_classification_answers_as_over_http(
    client: grpcclient.InferenceServerClient, server: ServerProcess
) -> None:
    x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    over_grpc = client.infer(
        "mlp", [mlp_input(x)], outputs=[grpcclient.InferRequestedOutput("output__0", class_count=2)]
    ).as_numpy("output__0")
    http = httpclient.InferenceServerClient(server.address)
    try:
        given = httpclient.InferInput("x", [2, 8], "FP32")
        given.set_data_from_numpy(x)
        wanted = httpclient.InferRequestedOutput("output__0", class_count=2)
        over_http = http.infer("mlp", [given], outputs=[wanted]).as_numpy("output__0")
    finally:
        http.close()
    assert over_grpc.shape == (2, 2)
    assert over_grpc.tolist() == over_http.tolist()
