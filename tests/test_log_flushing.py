"""Log lines written on the event loop's thread leave together at the end of its turn; warnings,
other threads' lines and lines written while no loop runs leave at once; the timestamp is ISO 8601
UTC to the microsecond."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import pytest

from appliance.logs import LineWriter, add_timestamp


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[TextIO]:
    with (tmp_path / "log").open("w", buffering=1 << 16, encoding="utf-8") as opened:
        yield opened


def on_disk(stream: TextIO) -> str:
    """What has reached the file, read through a descriptor of its own."""
    return Path(stream.name).read_text()


def test_lines_of_the_loop_thread_leave_together_when_its_turn_ends(stream: TextIO) -> None:
    writer = LineWriter(stream)

    async def main() -> None:
        writer.flush_after_each_turn(asyncio.get_running_loop())
        writer.write("one\n", urgent=False)
        writer.write("two\n", urgent=False)
        assert on_disk(stream) == ""
        await asyncio.sleep(0)  # the rest of this turn runs, the flush among it
        assert on_disk(stream) == "one\ntwo\n"
        writer.write("three\n", urgent=False)
        await asyncio.sleep(0)
        assert on_disk(stream) == "one\ntwo\nthree\n"

    asyncio.run(main())


def test_warnings_and_other_threads_lines_leave_at_once(stream: TextIO) -> None:
    writer = LineWriter(stream)

    async def main() -> None:
        writer.flush_after_each_turn(asyncio.get_running_loop())
        writer.write("info\n", urgent=False)
        writer.write("warning\n", urgent=True)  # takes the info line before it along
        assert on_disk(stream) == "info\nwarning\n"
        thread = threading.Thread(target=writer.write, args=("from a thread\n", False))
        thread.start()
        thread.join()
        assert on_disk(stream) == "info\nwarning\nfrom a thread\n"

    asyncio.run(main())


def test_lines_written_after_the_loop_stopped_leave_at_once(stream: TextIO) -> None:
    writer = LineWriter(stream)

    async def main() -> None:
        writer.flush_after_each_turn(asyncio.get_running_loop())

    asyncio.run(main())
    writer.write("after the loop\n", urgent=False)
    assert on_disk(stream) == "after the loop\n"


def test_the_timestamp_is_iso_utc_to_the_microsecond_and_now() -> None:
    stamps = [str(add_timestamp(None, "info", {})["timestamp"]) for _ in range(1000)]
    for stamp in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
    read = datetime.strptime(stamps[-1], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs(read.timestamp() - time.time()) < 5.0
