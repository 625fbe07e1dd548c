"""What Vertex AI tells a custom container, in its environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from appliance.config import AppConfig

DEFAULT_PORT = 8080
DEFAULT_HEALTH_ROUTE = "/health"
DEFAULT_PREDICT_ROUTE = "/predict"


class VertexConfigError(ValueError):
    """The environment or the config cannot serve Vertex AI's predict route."""


@dataclass(frozen=True)
class VertexSettings:
    port: int
    health_route: str
    predict_route: str
    storage_uri: str | None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> VertexSettings | None:
        """The settings when `AIP_MODE=PREDICTION`, else None."""
        env = os.environ if env is None else env
        if env.get("AIP_MODE") != "PREDICTION":
            return None
        raw_port = env.get("AIP_HTTP_PORT", str(DEFAULT_PORT))
        if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
            raise VertexConfigError(f"AIP_HTTP_PORT must be a port number, got {raw_port!r}")
        routes = {}
        for key, default in (
            ("AIP_HEALTH_ROUTE", DEFAULT_HEALTH_ROUTE),
            ("AIP_PREDICT_ROUTE", DEFAULT_PREDICT_ROUTE),
        ):
            route = env.get(key) or default
            if not route.startswith("/") or route.startswith("/v2/") or route == "/v2":
                raise VertexConfigError(f"{key} must be a path outside /v2, got {route!r}")
            routes[key] = route
        if routes["AIP_HEALTH_ROUTE"] == routes["AIP_PREDICT_ROUTE"]:
            raise VertexConfigError("AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE must differ")
        return cls(
            port=int(raw_port),
            health_route=routes["AIP_HEALTH_ROUTE"],
            predict_route=routes["AIP_PREDICT_ROUTE"],
            storage_uri=env.get("AIP_STORAGE_URI") or None,
        )

    @property
    def bind(self) -> str:
        return f"0.0.0.0:{self.port}"


def predict_model(config: AppConfig) -> str:
    """The model that answers the predict route: `[server] vertex_model`, or the only one."""
    names = sorted({model.name for model in config.models})
    chosen = config.server.vertex_model
    if chosen:
        if chosen not in names:
            raise VertexConfigError(
                f"server.vertex_model is {chosen!r}, which is not a configured model "
                f"(models: {', '.join(names) or 'none'})"
            )
        return chosen
    if len(names) != 1:
        raise VertexConfigError(
            f"{len(names)} models are served ({', '.join(names) or 'none'}): set "
            "server.vertex_model to the one that answers the predict route"
        )
    return names[0]
