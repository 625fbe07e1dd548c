"""docs/configuration.md names every key of the schema, with the schema's default, and no other."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from appliance.config import ServerConfig, StorageConfig, TensorDeclaration, XlaConfig
from appliance.config.schema import ModelTable

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
SECTIONS: dict[str, type[BaseModel]] = {
    "[server]": ServerConfig,
    "[storage]": StorageConfig,
    "[xla]": XlaConfig,
    "[[models]]": ModelTable,
    "[[models.inputs]]": TensorDeclaration,
}
ROW = re.compile(r"^\| `(?P<key>\w+)` \| [^|]+ \| (?P<default>[^|]+) \|", re.MULTILINE)


def documented() -> dict[str, dict[str, str]]:
    """Section heading -> {key: default as written}."""
    tables: dict[str, dict[str, str]] = {}
    for part in re.split(r"^## ", REFERENCE.read_text(), flags=re.MULTILINE)[1:]:
        heading = part.splitlines()[0].split(",")[0].strip("` ")
        rows = {m["key"]: m["default"].strip() for m in ROW.finditer(part)}
        if rows:
            tables[heading] = rows
    return tables


def test_every_section_of_the_schema_is_documented() -> None:
    assert set(documented()) == set(SECTIONS)


@pytest.mark.parametrize("section", SECTIONS)
def test_each_key_is_documented_with_its_default(section: str) -> None:
    rows = documented()[section]
    fields = SECTIONS[section].model_fields
    assert set(rows) == set(fields)
    for key, info in fields.items():
        written = rows[key]
        if info.default is PydanticUndefined and info.default_factory is None:
            assert written == "required", key
        elif written.startswith("`"):
            value = tomllib.loads(f"v = {written.strip('`')}")["v"]
            default = info.get_default(call_default_factory=True)
            assert value == (list(default) if isinstance(default, tuple) else default), key
