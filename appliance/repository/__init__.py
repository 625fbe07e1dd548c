"""Served model versions: loading onto devices, warmup, lookup and swapping."""

from appliance.repository.loader import LoadedRuntimes, load_runtimes, warm_up, warmup_shapes
from appliance.repository.model import (
    LocalModel,
    ModelState,
    ModelView,
    Replica,
    ServedModel,
    make_replica,
)
from appliance.repository.repository import ModelRepository

__all__ = [
    "LoadedRuntimes",
    "LocalModel",
    "ModelRepository",
    "ModelState",
    "ModelView",
    "Replica",
    "ServedModel",
    "load_runtimes",
    "make_replica",
    "warm_up",
    "warmup_shapes",
]
