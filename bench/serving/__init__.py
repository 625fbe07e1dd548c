"""Side-by-side serving benchmark: Aegis, TorchServe, MLServer and LitServe, and two ceilings.

One invocation runs every server on the same model and the same request body, one after another,
each pinned to core 0 with the load generator (wrk) on core 1:

- Aegis with JSON tensors and with binary tensors (Triton's extension), one server process;
- TorchServe 0.12, MLServer 1.7.1 and LitServe 0.2.19, each installed into its own cached venv
  under `.cache/bench/venvs/` and serving a TorchScript file of the same weights;
- the HTTP ceiling (`http_ceiling.py`: bare Hypercorn + uvloop, parses the body, fixed reply);
- the compute ceiling (`models.py ceiling`: the model in-process, best bucket, one thread).

For each model (`tiny`, `compute`) and concurrency: warm-up, then a fixed window; throughput,
p50/p90/p99, mean batch size (Aegis's `aegis_batch_size` histogram) and the server's memory.
Then the overload check (Aegis at 10x the concurrency its queue admits, latency per status) and
the demo model's first figure (issue 2). Results go to `OUT/results.{json,md}` and
`OUT/serving.png`. Every server runs in its own process group and is killed on the way out,
whatever happens; all traffic stays on 127.0.0.1.

The package: `peers` is the table of servers (each module here owns one server's start), `load`
drives wrk and reads Aegis's metrics, `overload` is the overload run, `run` the command line.

    .venv/bin/python bench/compare.py [--concurrency 1,16,64,256] [--window 10] [--quick]
"""
