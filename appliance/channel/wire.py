"""Frames on the channel's Unix socket: a 4-byte length, then a pickled list of messages.

Each side gathers what it has to send during one turn of its event loop and sends it as one
frame: a front end's requests of the moment in one write, an engine's replies to one batch in one
write. Messages are tuples whose first field says what they are; tensors in them are numpy
arrays, or, for a request's inputs, where they are in the sender's arena (`Placed`). The peer is
a process of the same host and installation (the supervisor starts both), so pickle is safe here.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import numpy as np

HEADER = struct.Struct("!I")

# Message kinds.
HELLO = "hello"  # front end -> engine: (HELLO, frontend index); the arena fd rides beside it
MODELS = "models"  # engine -> front end: (MODELS, [ModelView], [(name, version) expected])
INFER = "infer"  # front end -> engine: see `Infer`
# engine -> front end: (DONE, id, {output: array}, batch size, queue_s, compute_s, fallback,
# batch number)
DONE = "done"
FAILED = "failed"  # engine -> front end: (FAILED, id, error class name, message)
# engine -> front end: (STARTED, [id, ...]): their batches started, so they are not retried
# elsewhere should the engine die (they may be what killed it); one message a frame
STARTED = "started"
# front end -> engine: (CANCEL, id): its client left; withdrawn if its batch has not started
CANCEL = "cancel"

Message = tuple[Any, ...]


# An input tensor in the sender's arena: (offset, numpy dtype string, shape). Messages are plain
# tuples on the wire: a named tuple pickles its class with every message, several times slower.
Placed = tuple[int, str, tuple[int, ...]]
# A tensor in a reply: (numpy dtype string, shape, bytes), or an object array (BYTES) as is.
Packed = tuple[str, tuple[int, ...], bytes] | np.ndarray


class Infer(NamedTuple):
    """The fields of an INFER message, in order (sent as a plain tuple, read with `_make`)."""

    kind: str  # INFER
    id: int
    model: str
    version: str
    fingerprint: str  # of the version the front end checked the inputs against
    rows: int
    timeout_s: float
    inputs: dict[str, Placed | np.ndarray]
    datatypes: dict[str, str]
    wanted: tuple[str, ...]  # outputs to send back


def pack(array: np.ndarray) -> Packed:
    if array.dtype.hasobject:
        return array
    return (array.dtype.str, array.shape, array.tobytes())


def unpack(packed: Packed) -> np.ndarray:
    if isinstance(packed, np.ndarray):
        return packed
    dtype, shape, data = packed
    return np.frombuffer(data, dtype).reshape(shape)


def encode(messages: list[Message]) -> bytes:
    body = pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


class FrameProtocol(asyncio.Protocol):
    """Reads frames and hands each frame's messages to `on_messages`; sends what `queue`
    gathered at the end of the loop's turn, as one frame."""

    def __init__(
        self,
        on_messages: Callable[[list[Message]], None],
        on_lost: Callable[[Exception | None], None],
    ) -> None:
        self._on_messages = on_messages
        self._on_lost = on_lost
        self._received = bytearray()
        self._needed = 0  # the bytes `_received` must hold before a frame can be read
        self._outgoing: list[Message] = []
        self._flush_scheduled = False
        self.transport: asyncio.Transport | None = None
        self.sent_bytes = 0
        self.sent_frames = 0

    # -- receiving -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._received:
            self._received += data
            if len(self._received) < self._needed:
                return  # a large frame still arriving: no parse, no copy, until it is whole
            data = bytes(self._received)
            self._received.clear()
        start = 0
        while len(data) - start >= HEADER.size:
            (length,) = HEADER.unpack_from(data, start)
            end = start + HEADER.size + length
            if end > len(data):
                break
            self._on_messages(pickle.loads(memoryview(data)[start + HEADER.size : end]))
            start = end
        if start < len(data):
            self._received += memoryview(data)[start:]
            self._needed = HEADER.size
            if len(self._received) >= HEADER.size:
                self._needed += HEADER.unpack_from(self._received)[0]

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)

    # -- sending ---------------------------------------------------------------------------

    def queue(self, message: Message) -> None:
        self._outgoing.append(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        messages, self._outgoing = self._outgoing, []
        if self.transport is None or self.transport.is_closing() or not messages:
            return
        frame = encode(messages)
        self.sent_bytes += len(frame)
        self.sent_frames += 1
        self.transport.write(frame)
