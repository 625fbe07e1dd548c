"""A front end's shared-memory arena: input tensors are written here once and read in place.

The memory is a memfd (no name in /dev/shm, so nothing is left behind by a process that dies):
the front end passes its descriptor to each engine when it connects, and both map it. Space is
handed out as a ring: requests are answered roughly in the order they were sent, so freeing
mostly advances the tail; a region freed out of order is released once those before it are.
A request that does not fit travels inside its control message instead.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections import deque

import numpy as np

# Regions start on cache-line boundaries, so an engine's reads of one never share a line with
# another's writes.
ALIGN = 64


class Arena:
    def __init__(self, size: int, name: str = "aegis-arena") -> None:
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self._map = mmap.mmap(self.fd, size)
        self._buffer = np.frombuffer(self._map, dtype=np.uint8)
        self._head = 0  # where the next region starts
        self._live: deque[list[int]] = deque()  # [offset, end, freed] in allocation order
        self._by_offset: dict[int, list[int]] = {}

    def allocate(self, nbytes: int) -> int | None:
        """The offset of a free region of `nbytes`, or None when the arena has no room now."""
        size = -(-max(nbytes, 1) // ALIGN) * ALIGN
        if not self._live:
            start = 0 if size <= self.size else None
        elif self._head > self._live[0][0]:  # free: [head, end) and [0, tail)
            if self._head + size <= self.size:
                start = self._head
            else:
                start = 0 if size <= self._live[0][0] else None
        else:  # wrapped: free is [head, tail)
            start = self._head if self._head + size <= self._live[0][0] else None
        if start is None:
            return None
        region = [start, start + size, 0]
        self._live.append(region)
        self._by_offset[start] = region
        self._head = start + size
        return start

    def free(self, offset: int) -> None:
        region = self._by_offset.pop(offset, None)
        if region is None:
            return
        region[2] = 1
        while self._live and self._live[0][2]:
            self._live.popleft()

    def write(self, array: np.ndarray) -> int | None:
        """Copy `array` into a new region; its offset, or None when there is no room."""
        offset = self.allocate(array.nbytes)
        if offset is not None:
            # One array over the region, as the engine reads it (a slice, a view and a reshape
            # cost nearly twice as much on a front end's hot path).
            np.ndarray(array.shape, array.dtype, self._buffer, offset)[...] = array
        return offset

    @property
    def in_use(self) -> int:
        return len(self._by_offset)

    def close(self) -> None:
        self._buffer = np.empty(0, dtype=np.uint8)
        self._map.close()
        os.close(self.fd)


class MappedArena:
    """An engine's view of a front end's arena, from the descriptor the front end sent."""

    def __init__(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        self._map = mmap.mmap(fd, size)
        os.close(fd)
        self._buffer = np.frombuffer(self._map, dtype=np.uint8)

    def array(self, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor at `offset`, read in place (valid until its request is answered)."""
        # One constructor over the mapping: a third of frombuffer-then-reshape's cost.
        array: np.ndarray = np.ndarray(shape, dtype, self._buffer, offset)
        return array

    def close(self) -> None:
        self._buffer = np.empty(0, dtype=np.uint8)
        # An array of a request still in a batch keeps it mapped; it goes with the process.
        with contextlib.suppress(BufferError):
            self._map.close()
