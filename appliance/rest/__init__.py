"""The HTTP layer: Open Inference Protocol v2 over Starlette. Knows nothing of torch."""

from appliance.dataplane import Readiness
from appliance.rest.app import create_app
from appliance.rest.context import AppContext, HttpSettings, RepositoryControl

__all__ = ["AppContext", "HttpSettings", "Readiness", "RepositoryControl", "create_app"]
