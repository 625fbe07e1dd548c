"""What the HTTP handlers share: the context `create_app` stores on the app, and its accessor.

It lives apart from the app so that handlers import it without importing the app that routes to
them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from starlette.requests import Request

from appliance.dataplane import DataPlane, Readiness
from appliance.metrics import Metrics
from appliance.repository import ModelRepository
from appliance.rest.access import AccessLogSampler
from appliance.rest.client import ClientWatches
from appliance.rest.pacing import OverloadPacing
from appliance.units import MiB


class RepositoryControl(Protocol):
    async def load(self, name: str) -> None: ...

    async def unload(self, name: str) -> None: ...


@dataclass(frozen=True)
class HttpSettings:
    max_request_bytes: int = 64 * MiB
    admin_token: str | None = None
    server_name: str = "aegis"
    server_version: str = "0"


@dataclass(frozen=True)
class AppContext:
    """What every handler may use; stored on `app.state.aegis`."""

    repository: ModelRepository
    metrics: Metrics
    settings: HttpSettings
    readiness: Readiness
    control: RepositoryControl | None
    access_log: AccessLogSampler = field(default_factory=AccessLogSampler)
    pacing: OverloadPacing = field(default_factory=OverloadPacing)
    client_watches: ClientWatches = field(default_factory=ClientWatches)
    plane: DataPlane = field(init=False)

    def __post_init__(self) -> None:
        plane = DataPlane(
            self.repository, self.readiness, self.settings.server_name, self.settings.server_version
        )
        object.__setattr__(self, "plane", plane)  # frozen: set once, here


def app_context(app: object) -> AppContext:
    """The context of an app `create_app` made (a Starlette app, as `scope["app"]` holds it)."""
    context = getattr(getattr(app, "state", None), "aegis", None)
    if not isinstance(context, AppContext):
        raise TypeError(f"{app!r} was not made by appliance.rest.create_app")
    return context


def request_context(request: Request) -> AppContext:
    return app_context(request.app)
