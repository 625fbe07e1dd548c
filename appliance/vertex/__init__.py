"""Vertex AI prediction (`AIP_MODE=PREDICTION`): the health and predict routes Vertex calls,
beside the /v2 routes, and the models from `AIP_STORAGE_URI`."""

from appliance.vertex.settings import VertexSettings
from appliance.vertex.storage import vertex_config

__all__ = ["VertexSettings", "vertex_config"]
