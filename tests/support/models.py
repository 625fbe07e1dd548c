"""Real model artifacts for tests, built with the torch in the running venv."""

from __future__ import annotations

from pathlib import Path

import torch


class Mlp(torch.nn.Module):
    def __init__(self, inputs: int = 8, outputs: int = 3, seed: int = 7) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(inputs, outputs, generator=generator))
        self.bias = torch.nn.Parameter(torch.randn(outputs, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.weight + self.bias)


class MixedTypes(torch.nn.Module):
    """FP32, INT64 and BOOL in and out."""

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return a * 2.0, b + 1, torch.logical_not(c)


class Slow(torch.nn.Module):
    """Runs `x[0, 0]` rounds of a 256x256 matmul: a model whose duration a test controls."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(256))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rounds = int(x[0, 0].item())
        acc = torch.ones(256, 256)
        for _ in range(rounds):
            acc = torch.mm(acc, self.weight)
        return x + acc[0, 0] - 1.0


class Failing(torch.nn.Module):
    """Raises when any input is negative, else doubles."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise ValueError("negative input")
        return x * 2.0


class Echo(torch.nn.Module):
    """Gives back a copy of each of its inputs: one per datatype torch has (ECHO_DATATYPES)."""

    def forward(
        self,
        bool_: torch.Tensor,
        uint8: torch.Tensor,
        uint16: torch.Tensor,
        uint32: torch.Tensor,
        uint64: torch.Tensor,
        int8: torch.Tensor,
        int16: torch.Tensor,
        int32: torch.Tensor,
        int64: torch.Tensor,
        fp16: torch.Tensor,
        fp32: torch.Tensor,
        fp64: torch.Tensor,
        bf16: torch.Tensor,
    ) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
        torch.Tensor,
    ]:  # fmt: skip
        return (
            *(bool_.clone(), uint8.clone(), uint16.clone(), uint32.clone(), uint64.clone()),
            *(int8.clone(), int16.clone(), int32.clone(), int64.clone()),
            *(fp16.clone(), fp32.clone(), fp64.clone(), bf16.clone()),
        )


# Echo's inputs in order; the config names them in_<datatype> and its outputs out_<datatype>.
ECHO_DATATYPES = (
    *("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"),
    *("FP16", "FP32", "FP64", "BF16"),
)


def export_pt2(module: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = tuple({0: batch} for _ in example)
    program = torch.export.export(module.eval(), example, dynamic_shapes=dynamic)
    torch.export.save(program, str(path))
    return path


def script_pt(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


def mlp_pt2(path: Path, inputs: int = 8, outputs: int = 3, seed: int = 7) -> Path:
    return export_pt2(Mlp(inputs, outputs, seed), (torch.zeros(2, inputs),), path)


def mixed_pt2(path: Path) -> Path:
    example = (
        torch.zeros(2, 4),
        torch.zeros(2, 3, dtype=torch.int64),
        torch.zeros(2, 2, dtype=torch.bool),
    )
    return export_pt2(MixedTypes(), example, path)


def onnx_mlp(path: Path, inputs: int = 8, outputs: int = 3, seed: int = 7) -> Path:
    """The same function as `Mlp`, written as an ONNX graph with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    reference = Mlp(inputs, outputs, seed)
    weight = numpy_helper.from_array(reference.weight.detach().numpy(), "weight")
    bias = numpy_helper.from_array(reference.bias.detach().numpy(), "bias")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "weight"], ["xw"]),
            helper.make_node("Add", ["xw", "bias"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", outputs])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def onnx_strings(path: Path) -> Path:
    """An ONNX Identity on a string (BYTES) tensor of shape [batch, 1]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"])],
        "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["batch", 1])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, ["batch", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def build_artifacts(root: Path) -> dict[str, Path]:
    """The test models under `root`, by file name: what the `artifacts` fixture hands out."""
    return {
        "mlp.pt2": mlp_pt2(root / "mlp.pt2"),
        "mlp.pt": script_pt(Mlp(), root / "mlp.pt"),
        "mlp.onnx": onnx_mlp(root / "mlp.onnx"),
        "mixed.pt2": mixed_pt2(root / "mixed.pt2"),
        "slow.pt": script_pt(Slow(), root / "slow.pt"),
        "failing.pt": script_pt(Failing(), root / "failing.pt"),
    }
