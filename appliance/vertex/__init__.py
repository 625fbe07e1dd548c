"""Vertex AI prediction (`AIP_MODE=PREDICTION`): the health and predict routes Vertex calls,
beside the /v2 routes, and the models from `AIP_STORAGE_URI`. An HTTP front door on the data
plane: it shares the HTTP layer's body reading and error responses."""

from appliance.vertex.settings import VertexSettings
from appliance.vertex.storage import serving_config, vertex_config

__all__ = ["VertexSettings", "serving_config", "vertex_config"]
