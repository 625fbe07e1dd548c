"""The set of served model versions, looked up by the HTTP layer and changed by the lifecycle."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from appliance.errors import ModelNotFound, ModelNotReady
from appliance.repository.model import ServedModel


def _version_order(version: str) -> tuple[int, int, str]:
    """Numeric versions sort numerically and above named ones, so "10" beats "9"."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


def _highest(versions: dict[str, ServedModel]) -> ServedModel:
    return versions[max(versions, key=_version_order)]


class ModelRepository:
    def __init__(self) -> None:
        self._models: dict[str, dict[str, ServedModel]] = {}
        # Each name's highest version, what a request that names no version gets: kept here
        # rather than found again for every request.
        self._latest: dict[str, ServedModel] = {}
        self._expected: set[tuple[str, str]] = set()
        self._watchers: list[Callable[[], None]] = []

    def watch(self, changed: Callable[[], None]) -> None:
        """Call `changed` after every change of what is served or expected (engines publish
        their models to the front ends from it)."""
        self._watchers.append(changed)

    def _changed(self) -> None:
        for changed in self._watchers:
            changed()

    def expect(self, name: str, version: str) -> None:
        """Declare a version that readiness must wait for."""
        self._expected.add((name, version))
        self._changed()

    def forget(self, name: str, version: str) -> None:
        self._expected.discard((name, version))
        self._changed()

    @property
    def ready(self) -> bool:
        """True when every expected version is loaded and warm."""
        return all(
            (model := self._models.get(name, {}).get(version)) is not None and model.ready
            for name, version in self._expected
        )

    def expected(self) -> list[tuple[str, str]]:
        """Every version readiness waits for, as (name, version)."""
        return sorted(self._expected)

    def pending(self) -> list[tuple[str, str]]:
        """Expected versions not served yet, as (name, version)."""
        return sorted(
            (name, version)
            for name, version in self._expected
            if version not in self._models.get(name, {})
        )

    def put(self, model: ServedModel) -> ServedModel | None:
        """Serve `model`; returns the version object it replaces, if any."""
        versions = self._models.setdefault(model.name, {})
        previous = versions.get(model.version)
        versions[model.version] = model
        self._latest[model.name] = _highest(versions)
        if previous is not None:
            previous.successor = model
        self._changed()
        return previous

    def remove(self, name: str, version: str) -> ServedModel | None:
        versions = self._models.get(name, {})
        model = versions.pop(version, None)
        if versions:
            self._latest[name] = _highest(versions)
        else:
            self._models.pop(name, None)
            self._latest.pop(name, None)
        self._expected.discard((name, version))
        self._changed()
        return model

    def get(self, name: str, version: str | None = None) -> ServedModel:
        versions = self._models.get(name)
        if not versions:
            if any(expected == name for expected, _ in self._expected):
                raise ModelNotReady(f"model {name!r} is still loading")
            raise ModelNotFound(f"unknown model {name!r}")
        if version is None:
            return self._latest[name]
        try:
            return versions[version]
        except KeyError:
            if (name, version) in self._expected:
                raise ModelNotReady(
                    f"model {name!r} version {version!r} is still loading"
                ) from None
            known = ", ".join(sorted(versions, key=_version_order))
            raise ModelNotFound(
                f"model {name!r} has no version {version!r} (versions: {known})"
            ) from None

    def versions(self, name: str) -> list[str]:
        return sorted(self._models.get(name, {}), key=_version_order)

    def __iter__(self) -> Iterator[ServedModel]:
        for versions in self._models.values():
            yield from versions.values()

    def index(self) -> list[dict[str, str]]:
        """Triton's repository index: every known version and its state."""
        rows = [
            {
                "name": model.name,
                "version": model.version,
                "state": "READY" if model.ready else "UNAVAILABLE",
            }
            for model in self
        ]
        for name, version in self.pending():
            rows.append({"name": name, "version": version, "state": "LOADING"})
        return sorted(rows, key=lambda row: (row["name"], row["version"]))
