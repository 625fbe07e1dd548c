"""`ConfigError`, and pydantic's validation errors said in the config file's words.

Every table validates through its own constructor, nested ones included, so each error arrives
with a location inside the table that raised it; an enclosing table prefixes its own key.
"""

from __future__ import annotations

from typing import get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError


class ConfigError(ValueError):
    """A configuration value that cannot be used, with where it came from and why."""

    def __init__(self, key: str, reason: str, file: str | None = None) -> None:
        self.key = key
        self.reason = reason
        self.file = file
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.key}: {self.reason}"

    def within(self, prefix: str, file: str | None = None) -> ConfigError:
        """The same error, with its key nested under `prefix` and its file set."""
        key = f"{prefix}.{self.key}" if prefix else self.key
        return ConfigError(key, self.reason, file or self.file)


def invalid(reason: str) -> PydanticCustomError:
    """A value refused by one of our validators, `reason` said as it is (no template)."""
    return PydanticCustomError("config_value", "{reason}", {"reason": reason})


def broken_rule(key: str, reason: str) -> PydanticCustomError:
    """A cross-field rule's failure, attributed to `key` of the table being validated."""
    return PydanticCustomError("config_rule", "{reason}", {"key": key, "reason": reason})


def _key(location: tuple[int | str, ...]) -> str:
    """('inputs', 1, 'shape') -> 'inputs[1].shape'."""
    key = ""
    for part in location:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else part)
    return key


_INTEGER_TYPES = {"int_type", "int_parsing", "int_from_float"}
_NUMBER_TYPES = {"float_type", "float_parsing", "finite_number"}
_LIST_TYPES = {"tuple_type", "list_type", "iterable_type"}
_TABLE_TYPES = {"model_type", "model_attributes_type", "dict_type"}


def _explain(error: ErrorDetails, table: type[BaseModel]) -> str:
    kind, given, context = error["type"], error.get("input"), error.get("ctx", {})
    field = table.model_fields.get(str(error["loc"][0])) if error["loc"] else None
    if kind == "config_value":
        return str(context["reason"])
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return f"unknown key (known: {', '.join(sorted(table.model_fields))})"
    if kind == "literal_error":
        choices = get_args(field.annotation) if field is not None else ()
        return f"must be one of {', '.join(choices) or context['expected']}; got {given!r}"
    if kind in _INTEGER_TYPES:
        return f"must be an integer, got {given!r}"
    if kind in _NUMBER_TYPES:
        return f"must be a finite number, got {given!r}"
    if kind == "string_type":
        return f"must be a string, got {given!r}"
    if kind == "greater_than_equal":
        return f"must be >= {context['ge']}, got {given}"
    if kind == "greater_than":
        return f"must be > {context['gt']}, got {given}"
    if kind in ("string_too_short", "too_short"):
        return "must not be empty"
    if kind in _LIST_TYPES:
        return f"must be a list, got {given!r}"
    if kind in _TABLE_TYPES:
        return "must be a table"
    return str(error["msg"])


def config_error(error: ValidationError, table: type[BaseModel]) -> ConfigError:
    """The first problem pydantic found while validating `table`, as a key path and a reason."""
    first = error.errors(include_url=False)[0]
    location = tuple(first["loc"])
    context = first.get("ctx", {})
    nested = context.get("error")
    if isinstance(nested, ConfigError):
        return nested.within(_key(location))
    if first["type"] == "config_rule":
        return ConfigError(_key((*location, context["key"])), context["reason"])
    return ConfigError(_key(location) or "(file)", _explain(first, table))
