"""Finding the artifact file of a model version, and telling its format by suffix."""

from __future__ import annotations

from pathlib import Path

from appliance.config import artifact_suffixes
from appliance.runtimes.base import ArtifactError


def resolve_artifact(path: Path) -> Path:
    """The artifact file at `path`, or the single artifact inside the folder `path`."""
    suffixes = artifact_suffixes()
    known = ", ".join(suffixes)
    if path.is_file():
        if path.suffix not in suffixes:
            raise ArtifactError(f"{path.name}: unknown artifact format (want {known})")
        return path
    if path.is_dir():
        found = sorted(
            child for child in path.rglob("*") if child.is_file() and child.suffix in suffixes
        )
        if len(found) == 1:
            return found[0]
        if not found:
            raise ArtifactError(f"folder {path.name}/ holds no artifact ({known})")
        names = ", ".join(str(child.relative_to(path)) for child in found)
        raise ArtifactError(f"folder {path.name}/ holds several artifacts ({names}); point at one")
    raise ArtifactError(f"artifact {path} does not exist")
