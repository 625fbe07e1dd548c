"""SIGTERM while a start downloads its artifact (a slow store) exits within shutdown_grace_s plus
a second, with rc 0 and no traceback: the start stops waiting for the download it is in."""

from __future__ import annotations

from pathlib import Path

from tests.support.config import model_table, server_config
from tests.support.proxy import FaultyProxy
from tests.support.stops import assert_stopped_in_time, sigterm_when_logged

GRACE_S = 3.0


def test_sigterm_during_a_sync_exits_within_grace_with_rc_0_and_no_traceback(
    tmp_path: Path, big_object: tuple[str, bytes], gcs_url: str
) -> None:
    source, _ = big_object
    config = server_config(tmp_path, model_table("big", source)).replace(
        "shutdown_grace_s = 5", f"shutdown_grace_s = {GRACE_S:g}"
    )
    with FaultyProxy(gcs_url) as proxy:
        proxy.chunk_delay_s = 0.05  # about 1.3 MB/s per connection: the 50 MB take half a minute
        stopped = sigterm_when_logged(
            config, tmp_path, "model_syncing", GRACE_S, {"STORAGE_EMULATOR_HOST": proxy.url}
        )
    print(f"\nFIGURES sigterm during a sync: exit {stopped.code} in {stopped.seconds:.2f} s")
    assert_stopped_in_time(stopped, GRACE_S)
    assert '"event":"artifact_synced"' not in stopped.log
