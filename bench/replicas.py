"""Replicas on this machine: requests/s against `[server] replicas`, Aegis with 2 replicas against
TorchServe with 2 workers, and what a replica's SIGKILL costs.

Unlike compare.py (server on core 0, wrk on core 1), every process here may run on both cores,
servers and wrk alike (`taskset -c 0,1`): replicas are for using every core. Each server gets its
own intra-op threads the way it would be deployed: Aegis splits the cores between its replicas
itself, TorchServe's handler sets one thread per worker.

1. scaling: Aegis JSON at c=64 with replicas = 1 (the single process), 2 and 4, tiny and compute;
2. peers: Aegis replicas = 2 against TorchServe 2 workers (batch 32, 5 ms, as compare.py) and, for
   tiny, two processes of the bare HTTP ceiling on one socket (what Hypercorn allows here), the
   same wrk at c=16 and c=64, one run of alternating rounds; with each figure the server's CPU
   time per request (its process tree's), which other load on the host does not move;
3. restart: replicas = 2, tiny, wrk c=16 for 45 s; replica 1 is SIGKILLed after 5 s. The time
   from the kill until replica 1 answers again (its request counter moves, polled every 20 ms)
   and the requests lost (wrk's socket errors and timeouts; non-2xx answers are counted apart).

    .venv/bin/python bench/replicas.py [--window 10] [--out bench/out/replicas]

The runs are `bench/serving/replicas.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving.replicas import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
