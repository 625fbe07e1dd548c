"""A closed-loop gRPC load generator for `bench/grpc_http.py`: grpc.aio on the default asyncio
loop, with the committed stubs' messages (appliance/grpc/proto), spread over several channels,
each its own TCP connection.

- `unary`: `concurrency` workers, each sending ModelInfer and waiting for its reply before the
  next, round-robin over the channels;
- `stream`: one bidirectional ModelStreamInfer stream per channel, each keeping
  `concurrency / channels` requests in flight (a request goes out as soon as a reply comes back),
  matched by `id` as tritonclient matches them.

The request is serialized once (it never changes); a unary reply is taken as bytes (its gRPC
status says whether it succeeded), a stream reply is parsed (its `error_message` says so, and its
`id` says which request it answers). Over the window it counts replies and their latencies, and
reads the server's CPU time (utime + stime of its process tree, from /proc) and its own. One JSON
line on stdout. Run with the dev venv's python, pinned to the client core:

    python bench/grpc_load.py ADDRESS REQUEST_FILE SERVER_PID MODE CONCURRENCY CHANNELS \
        WARMUP WINDOW
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from serving.procs import tree_cpu_s

from appliance.grpc.proto import inference_pb2 as pb

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
# Separate subchannel pools: without it, channels to one address share one TCP connection.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class Tally:
    recording: bool = False
    stopping: bool = False
    replies: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    def done(self, started: float) -> None:
        if self.recording:
            self.replies += 1
            self.latencies.append(time.perf_counter() - started)

    def failed(self) -> None:
        if self.recording:
            self.errors += 1


async def unary_worker(channel: grpc.aio.Channel, body: bytes, tally: Tally) -> None:
    call = channel.unary_unary(INFER)
    while not tally.stopping:
        started = time.perf_counter()
        try:
            await call(body)
        except grpc.aio.AioRpcError:
            tally.failed()
        else:
            tally.done(started)


async def stream_worker(
    channel: grpc.aio.Channel, request: pb.ModelInferRequest, depth: int, tally: Tally
) -> None:
    # One request id per slot: each slot has one request in flight, resent when it is answered.
    bodies = []
    for slot in range(depth):
        request.id = str(slot)
        bodies.append(request.SerializeToString())
    sent_at = [0.0] * depth
    call = channel.stream_stream(
        STREAM, response_deserializer=pb.ModelStreamInferResponse.FromString
    )
    stream = call()
    for slot in range(depth):
        sent_at[slot] = time.perf_counter()
        await stream.write(bodies[slot])
    in_flight = depth
    while in_flight:
        reply = await stream.read()
        if reply is grpc.aio.EOF:
            raise RuntimeError("the server ended the stream")
        slot = int(reply.infer_response.id)
        if reply.error_message:
            tally.failed()
        else:
            tally.done(sent_at[slot])
        if tally.stopping:
            in_flight -= 1
            continue
        sent_at[slot] = time.perf_counter()
        await stream.write(bodies[slot])
    await stream.done_writing()


async def run(
    address: str,
    request: pb.ModelInferRequest,
    server_pid: int,
    mode: str,
    concurrency: int,
    channel_count: int,
    warmup_s: float,
    window_s: float,
) -> dict[str, object]:
    channels = [
        grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(channel_count)
    ]
    tally = Tally()
    if mode == "unary":
        body = request.SerializeToString()
        workers = [
            unary_worker(channels[index % channel_count], body, tally)
            for index in range(concurrency)
        ]
    else:
        depth, rest = divmod(concurrency, channel_count)
        if rest:
            raise SystemExit("stream: concurrency must be a multiple of the channel count")
        workers = [stream_worker(channel, request, depth, tally) for channel in channels]
    tasks = [asyncio.ensure_future(worker) for worker in workers]
    await asyncio.sleep(warmup_s)
    server_cpu, own_cpu, started = tree_cpu_s(server_pid), time.process_time(), time.perf_counter()
    tally.recording = True
    await asyncio.sleep(window_s)
    tally.recording = False
    elapsed = time.perf_counter() - started
    server_cpu_s, own_cpu_s = tree_cpu_s(server_pid) - server_cpu, time.process_time() - own_cpu
    tally.stopping = True
    await asyncio.gather(*tasks)
    for channel in channels:
        await channel.close()
    latencies_ms = np.asarray(tally.latencies) * 1000
    p50, p99 = np.percentile(latencies_ms, [50, 99]) if len(latencies_ms) else (0.0, 0.0)
    return {
        "replies": tally.replies,
        "errors": tally.errors,
        "duration_s": elapsed,
        "server_cpu_s": server_cpu_s,
        "client_cpu_s": own_cpu_s,
        "p50_ms": float(p50),
        "p99_ms": float(p99),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 8:
        print(__doc__, file=sys.stderr)
        return 2
    address, request_file, pid, mode, concurrency, channels, warmup, window = argv
    if mode not in ("unary", "stream"):
        print(f"mode is unary or stream, not {mode!r}", file=sys.stderr)
        return 2
    request = pb.ModelInferRequest.FromString(Path(request_file).read_bytes())
    result = asyncio.run(
        run(
            address,
            request,
            int(pid),
            mode,
            int(concurrency),
            int(channels),
            float(warmup),
            float(window),
        )
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
