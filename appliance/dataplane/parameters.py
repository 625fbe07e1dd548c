"""Request parameters: each one the server receives is implemented or refused, by name.

A parameter a server ignores is a silent wrong answer (a client asking for the top 3 classes
getting raw scores with a 200). The transports take out their own keys (HTTP's binary_data,
binary_data_size and binary_data_output; the V2 `timeout`); what reaches the data plane is
checked here.
"""

from __future__ import annotations

from appliance.errors import InvalidInput
from appliance.tensors import TensorSpec

# The output parameter of Triton's classification extension (dataplane/classification.py).
CLASSIFICATION = "classification"


def _integer(value: object) -> int | None:
    """`value` as an integer where it is one (3, or JSON's 3.0); None otherwise, booleans too."""
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    return None


def check_request(parameters: dict[str, object]) -> None:
    for key, value in parameters.items():
        if key == "priority":
            # One queue per model: every request has the default priority, and a client that
            # asks for another must not believe it got it.
            if _integer(value) != 0:
                raise InvalidInput(
                    f"request parameter 'priority' is {value!r}: priorities are not supported "
                    "(send 0 or leave it out)"
                )
        elif key.startswith("sequence_"):
            raise InvalidInput(
                f"request parameter {key!r} is not supported: this server has no sequence "
                "batching (stateful models)"
            )
        else:
            raise InvalidInput(
                f"request parameter {key!r} is not supported (supported: timeout, priority 0"
                ", and the binary extension's binary_data_output)"
            )


def check_input(name: str, parameters: dict[str, object]) -> None:
    for key in parameters:
        raise InvalidInput(
            f"input {name!r}: parameter {key!r} is not supported (supported: binary_data_size)"
        )


def classification_count(spec: TensorSpec, parameters: dict[str, object]) -> int | None:
    """The top-K asked for on output `spec`, or None for its raw tensor."""
    count: int | None = None
    for key, value in parameters.items():
        if key != CLASSIFICATION:
            raise InvalidInput(
                f"output {spec.name!r}: parameter {key!r} is not supported "
                "(supported: classification, binary_data)"
            )
        count = _integer(value)
        if count is None or count < 1:
            raise InvalidInput(
                f"output {spec.name!r}: 'classification' must be a positive integer (the number "
                f"of top classes), got {value!r}"
            )
        if spec.datatype == "BYTES":
            raise InvalidInput(f"output {spec.name!r}: 'classification' needs a numeric output")
        if len(spec.shape) < 2:
            raise InvalidInput(
                f"output {spec.name!r}: 'classification' needs a class dimension after the "
                f"batch dimension, the output has shape {list(spec.shape)}"
            )
        classes = spec.shape[-1]
        if isinstance(classes, int) and classes >= 0 and count > classes:
            raise InvalidInput(
                f"output {spec.name!r}: 'classification' asks for {count} classes, "
                f"the output has {classes}"
            )
    return count
