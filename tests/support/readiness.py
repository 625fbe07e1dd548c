"""The readiness a data plane built in a test is given, as the server's own starts out."""

from __future__ import annotations

from appliance.repository import ModelRepository


class RepositoryReadiness:
    """Ready once every declared model serves, as the server's own readiness starts out."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def is_ready(self) -> bool:
        return self.repository.ready

    def not_ready_reason(self) -> str:
        return "loading"

    def is_draining(self) -> bool:
        return False
