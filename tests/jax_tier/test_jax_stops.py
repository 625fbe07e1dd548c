"""SIGTERM at any moment of a `jax` start (JAX set up, `.pt2` load and torchax conversion, XLA
compiles of the warmup) exits within shutdown_grace_s plus a second, with rc 0 and no traceback:
the start stops waiting for the native step it is in, and the process exits past it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.jax_tier.jax_serving import model_toml
from tests.support.stops import assert_stopped_in_time, sigterm_when_logged

pytestmark = pytest.mark.jax

GRACE_S = 3.0
# Eight shapes of the 48-block model, compiled afresh (no cache): a warmup of tens of seconds.
BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]


@pytest.mark.parametrize("event", ["model_loading", "jax_model_loaded", "model_warming"])
def test_sigterm_during_a_jax_start_exits_within_grace_with_rc_0_and_no_traceback(
    tmp_path: Path, jax_artifacts: dict[str, Path], event: str
) -> None:
    models = model_toml(
        "deep", jax_artifacts["deep.pt2"], batch_buckets=BUCKETS, max_batch_size=BUCKETS[-1]
    )
    cache = tmp_path / "models"
    config = f'[server]\nshutdown_grace_s = {GRACE_S:g}\n[storage]\ncache_dir = "{cache}"\n{models}'
    stopped = sigterm_when_logged(config, tmp_path, event, GRACE_S)
    print(f"\nFIGURES sigterm at {event} on jax: exit {stopped.code} in {stopped.seconds:.2f} s")
    assert_stopped_in_time(stopped, GRACE_S)
    assert '"event":"model_ready"' not in stopped.log
