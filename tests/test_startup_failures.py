"""A model that cannot come up stops the process with a clear message and a non-zero exit."""

from __future__ import annotations

import pickle
from pathlib import Path

from tests.support.config import model_table
from tests.support.server import run_until_exit


def test_missing_artifact_fails_the_start(tmp_path: Path) -> None:
    code, log = run_until_exit(tmp_path, model_table("ghost", tmp_path / "absent.pt2"))
    assert code == 1
    assert "ghost" in log and "absent.pt2" in log


def test_a_pickle_is_never_loaded(tmp_path: Path) -> None:
    """A .pt that is a plain pickle (not TorchScript) is refused, and its code never runs."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, ...]:
            return (Path.touch, (marker,))

    artifact = tmp_path / "evil.pt"
    artifact.write_bytes(pickle.dumps(Payload()))
    models = model_table(
        "evil",
        artifact,
        '[[models.inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [-1, 1]\n'
        '[[models.outputs]]\nname = "y"\ndatatype = "FP32"\nshape = [-1, 1]\n',
    )
    code, log = run_until_exit(tmp_path, models)
    assert code == 1
    assert "not a TorchScript archive" in log
    assert not marker.exists()
