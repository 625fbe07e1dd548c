"""The HTTP layer: Open Inference Protocol v2 over Starlette. Knows nothing of torch."""

from appliance.dataplane import Readiness
from appliance.rest.app import AppContext, HttpSettings, RepositoryControl, create_app

__all__ = ["AppContext", "HttpSettings", "Readiness", "RepositoryControl", "create_app"]
