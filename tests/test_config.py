"""The config file of the contract: the example parses, and every bad value names file, key, why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import ConfigError, ModelConfig, ServerConfig, load_config
from appliance.config.schema import access_log_rate

CONTRACT_EXAMPLE = """
[server]
bind = ["0.0.0.0:8080"]
certfile = ""
keyfile = ""
max_request_bytes = 67108864
shutdown_grace_s = 30
admin_token_file = ""

[storage]
cache_dir = "/var/lib/aegis/models"
download_concurrency = 8

[xla]
compilation_cache_dir = "/var/cache/aegis/xla"

[[models]]
name = "heavy_model"
version = "1"
model_path = "gs://bucket/models/heavy_model/1/model.pt2"
runtime = "tpu"
device = "tpu"
max_batch_size = 64
batch_buckets = [1, 8, 16, 32, 64]
max_queue_delay_ms = 2.0
max_concurrency = 2
max_queue_size = 1024
timeout_ms = 5000
warmup_iters = 2
cpu_fallback = "unavailable"
[[models.inputs]]
name = "input__0"
datatype = "FP32"
shape = [-1, 64]
[[models.outputs]]
name = "output__0"
datatype = "FP32"
shape = [-1, 10]
"""

MINIMAL_MODEL = """
[[models]]
name = "m"
model_path = "/models/m.pt2"
"""


TPU_MODEL = """
[[models]]
name = "m"
model_path = "/models/m.pt2"
runtime = "tpu"
device = "tpu"
"""


def tensor(kind: str, name: str, datatype: str, shape: str, extra: str = "") -> str:
    return f'[[models.{kind}]]\nname = "{name}"\ndatatype = "{datatype}"\nshape = {shape}\n{extra}'


SEQ_DIMS = "[models.dims]\nseq = [16, 32]\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aegis.toml"
    path.write_text(text)
    return path


def test_the_contract_example_is_valid(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CONTRACT_EXAMPLE))
    (model,) = config.models
    assert (model.name, model.version) == ("heavy_model", "1")
    assert model.config.batch_buckets == (1, 8, 16, 32, 64)
    assert model.config.inputs[0].shape == (-1, 64)
    assert config.server.bind == ("0.0.0.0:8080",)


def test_named_dimensions_carry_their_buckets_and_pad_values(tmp_path: Path) -> None:
    text = (
        TPU_MODEL
        + "[models.dims]\nseq = [16, 32, 64]\n"
        + tensor("inputs", "ids", "INT64", '[-1, "seq"]', "pad_value = 1\n")
        + tensor("inputs", "mask", "BOOL", '[-1, "seq"]', "pad_value = false\n")
        + tensor("outputs", "states", "FP32", '[-1, "seq", 8]')
    )
    config = load_config(write(tmp_path, text)).models[0].config
    assert config.dims == {"seq": (16, 32, 64)}
    ids, mask = config.input_specs
    assert (ids.shape, ids.pad_value) == ((-1, "seq"), 1)
    assert (mask.shape, mask.pad_value) == ((-1, "seq"), False)
    assert config.output_specs[0].to_json()["shape"] == [-1, -1, 8]


@pytest.mark.parametrize(
    ("path", "device"),
    [("/models/m.jax", "tpu"), ("/models/m.pt2", "tpu"), ("/models/m.jax", "cpu"), ("/m/", "tpu")],
)
def test_the_jax_runtime_takes_jax_exports_and_torch_exports(
    tmp_path: Path, path: str, device: str
) -> None:
    text = f'[[models]]\nname = "m"\nmodel_path = "{path}"\nruntime = "jax"\ndevice = "{device}"\n'
    (model,) = load_config(write(tmp_path, text)).models
    assert (model.config.runtime, model.config.device) == ("jax", device)


def test_buckets_default_to_powers_of_two_up_to_max_batch_size(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL_MODEL + "max_batch_size = 24\n"))
    assert config.models[0].config.batch_buckets == (1, 2, 4, 8, 16, 24)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (MINIMAL_MODEL + "max_batch_size = 0\n", "models[0].max_batch_size", "must be >= 1"),
        (MINIMAL_MODEL + 'runtime = "tensorflow"\n', "models[0].runtime", "must be one of"),
        (MINIMAL_MODEL + "batch_buckets = [4, 2]\n", "models[0].batch_buckets", "increasing"),
        (
            MINIMAL_MODEL + "max_batch_size = 8\nbatch_buckets = [1, 4]\n",
            "models[0].batch_buckets",
            "must equal max_batch_size",
        ),
        (MINIMAL_MODEL + "max_queue_size = -3\n", "models[0].max_queue_size", "must be >= 1"),
        (MINIMAL_MODEL + "timeout_ms = 0\n", "models[0].timeout_ms", "must be > 0"),
        (MINIMAL_MODEL + "max_batch_sise = 8\n", "models[0].max_batch_sise", "unknown key"),
        (MINIMAL_MODEL + 'device = "tpu"\n', "models[0].device", "needs runtime = 'tpu' or 'jax'"),
        (
            MINIMAL_MODEL + 'runtime = "jax"\ndevice = "cuda"\n',
            "models[0].device",
            "runtime 'jax' runs on device 'tpu' or 'cpu'",
        ),
        (
            '[[models]]\nname = "m"\nmodel_path = "/m.onnx"\nruntime = "jax"\n',
            "models[0].model_path",
            "runtime 'jax' loads .jax and .pt2 files",
        ),
        (
            '[[models]]\nname = "m"\nmodel_path = "/m.jax"\n',
            "models[0].runtime",
            "is a jax.export file: use runtime = 'jax'",
        ),
        (
            '[[models]]\nname = "m"\nmodel_path = "/m.pt"\n',
            "models[0].inputs",
            "TorchScript (.pt) artifacts carry no signature",
        ),
        (
            '[[models]]\nname = "m"\nmodel_path = "/m.bin"\n',
            "models[0].model_path",
            "must end in one of",
        ),
        ('[[models]]\nname = "m"\n', "models[0].model_path", "is required"),
        ('[server]\nbind = ["nope"]\n', "server.bind", "HOST:PORT"),
        ('[server]\ncertfile = "/c.pem"\n', "server.certfile", "both certfile and keyfile"),
        (
            '[server]\nbind = "127.0.0.1:9000"\ngrpc_bind = "127.0.0.1:9000"\n',
            "server.grpc_bind",
            "'127.0.0.1:9000' takes the port of bind '127.0.0.1:9000'",
        ),
        (
            '[server]\nbind = "127.0.0.1:9000"\ngrpc_bind = "0.0.0.0:9000"\n',
            "server.grpc_bind",
            "HTTP and gRPC each need a port of their own",
        ),
        ("[storage]\ndownload_concurrency = 0\n", "storage.download_concurrency", ">= 1"),
        (
            "[server]\nshutdown_grace_s = 10\nunready_window_s = 10\n",
            "server.unready_window_s",
            "less than shutdown_grace_s (10)",
        ),
        ("[serve]\n", "serve", "unknown section"),
        (MINIMAL_MODEL + MINIMAL_MODEL, "models[1]", "declared twice"),
        (
            MINIMAL_MODEL + '[[models.inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [3]\n',
            "models[0].inputs[0].shape",
            "batch dimension",
        ),
        ("[server\n", "(syntax)", "not valid TOML"),
        (
            TPU_MODEL + tensor("inputs", "ids", "INT64", "[-1, -1]"),
            "models[0].inputs[0].shape",
            "input 'ids' dimension 1 is dynamic without buckets",
        ),
        (
            MINIMAL_MODEL + SEQ_DIMS + tensor("inputs", "ids", "INT64", '[-1, "sq"]'),
            "models[0].inputs[0].shape",
            "unknown dimension 'sq'",
        ),
        (
            MINIMAL_MODEL
            + "[models.dims]\nseq = [32, 16]\n"
            + tensor("inputs", "x", "FP32", '[-1, "seq"]'),
            "models[0].dims.seq",
            "strictly increasing",
        ),
        (
            MINIMAL_MODEL + SEQ_DIMS + tensor("inputs", "x", "FP32", "[-1, 4]"),
            "models[0].dims.seq",
            "no input has this dimension",
        ),
        (
            MINIMAL_MODEL
            + SEQ_DIMS
            + tensor("inputs", "x", "FP32", '[-1, "seq"]')
            + tensor("outputs", "y", "FP32", '[-1, "tokens"]'),
            "models[0].outputs[0].shape",
            "unknown dimension 'tokens'",
        ),
        (
            MINIMAL_MODEL + tensor("inputs", "ids", "INT32", "[-1, 4]", "pad_value = 0.5\n"),
            "models[0].inputs[0].pad_value",
            "pads with an integer",
        ),
        (
            MINIMAL_MODEL + tensor("inputs", "x", "FP16", "[-1, 4]", "pad_value = 70000\n"),
            "models[0].inputs[0].pad_value",
            "70000 does not fit FP16",
        ),
        (
            MINIMAL_MODEL + tensor("inputs", "x", "BF16", "[-1, 4]", "pad_value = 3.4e38\n"),
            "models[0].inputs[0].pad_value",
            "does not fit BF16",
        ),
        (
            MINIMAL_MODEL + tensor("inputs", "x", "FP32", "[-1, 1.5]"),
            "models[0].inputs[0].shape[1]",
            "must be an integer or a dimension name",
        ),
    ],
)
def test_bad_values_name_the_file_key_and_reason(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.file == str(path)
    assert caught.value.key == key
    assert reason in caught.value.reason


def test_an_infinite_pad_value_is_a_value_to_pad_with(tmp_path: Path) -> None:
    """-inf pads for a max that padding must not win; only a finite value past the type's
    largest is refused (it would pad with infinity unasked)."""
    text = (
        MINIMAL_MODEL
        + SEQ_DIMS
        + tensor("inputs", "x", "FP16", '[-1, "seq"]', "pad_value = -inf\n")
    )
    [model] = load_config(write(tmp_path, text)).models
    assert model.config.inputs[0].pad_value == float("-inf")


def test_grpc_may_take_an_http_port_number_on_another_address() -> None:
    server = ServerConfig(bind=("127.0.0.1:9000",), grpc_bind=("127.0.0.2:9000",))
    assert server.grpc_bind == ("127.0.0.2:9000",)
    assert ServerConfig(bind=("unix:/run/aegis.sock",), grpc_bind=("0.0.0.0:8081",)).grpc_bind


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")


def test_python_api_validates_too() -> None:
    with pytest.raises(ConfigError, match="max_concurrency"):
        ModelConfig(model_path="/m.pt2", max_concurrency=0)


@pytest.mark.parametrize(
    ("runtime", "device", "in_flight"), [("tpu", "tpu", 2), ("jax", "cpu", 2), ("torch", "cpu", 1)]
)
def test_max_concurrency_defaults_to_two_batches_in_flight_on_compiled_runtimes(
    runtime: str, device: str, in_flight: int
) -> None:
    assert ModelConfig(model_path="/m.pt2", runtime=runtime, device=device).max_concurrency == (
        in_flight
    )
    given = ModelConfig(model_path="/m.pt2", runtime=runtime, device=device, max_concurrency=1)
    assert given.max_concurrency == 1


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_exits_0_when_valid(tmp_path: Path) -> None:
    result = check_config(write(tmp_path, CONTRACT_EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_check_config_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_MODEL + 'max_concurrency = "two"\n')
    result = check_config(path)
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "models[0].max_concurrency" in result.stderr
    assert "Traceback" not in result.stderr


def test_relative_model_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[[models]]\nname = "m"\nmodel_path = "models/m.pt2"\n'))
    assert config.models[0].config.model_path == str(tmp_path.resolve() / "models" / "m.pt2")


@pytest.mark.parametrize("value", ["some", "sampled", "sampled:0", "sampled:1.5", "sampled:x", 1])
def test_access_log_must_be_all_errors_or_a_sampled_rate(value: object) -> None:
    with pytest.raises(ConfigError, match="access_log"):
        ServerConfig(access_log=value)


def test_access_log_rates() -> None:
    assert access_log_rate("all") == 1.0
    assert access_log_rate("errors") is None
    assert access_log_rate("sampled:0.01") == 0.01
