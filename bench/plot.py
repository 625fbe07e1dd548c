"""Throughput and p99 against concurrency, one line per server, one column per model.

Runs in the bench tools venv (matplotlib stays out of the serving venv):

    .cache/bench/venvs/tools/bin/python bench/plot.py results.json serving.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot(results: dict, path: str) -> None:
    labels = {target: about["label"] for target, about in results["targets"].items()}
    model_names = list(results["compute_ceiling"])
    figure, axes = plt.subplots(2, len(model_names), figsize=(6.5 * len(model_names), 8.5))
    if len(model_names) == 1:
        axes = [[axes[0]], [axes[1]]]
    for column, model in enumerate(model_names):
        rows = [row for row in results["rows"] if row["model"] == model]
        throughput, latency = axes[0][column], axes[1][column]
        for target in dict.fromkeys(row["target"] for row in rows):
            mine = sorted(
                (row for row in rows if row["target"] == target), key=lambda r: r["concurrency"]
            )
            style = "--" if target == "http-ceiling" else "-"
            xs = [row["concurrency"] for row in mine]
            throughput.plot(xs, [r["rps"] for r in mine], style, marker="o", label=labels[target])
            latency.plot(xs, [r["p99_ms"] for r in mine], style, marker="o", label=labels[target])
        ceiling = results["compute_ceiling"][model]["best_rows_per_s"]
        throughput.axhline(ceiling, color="grey", linestyle=":", label="compute ceiling")
        throughput.set_title(f"{model}: throughput (req/s)")
        latency.set_title(f"{model}: p99 latency (ms)")
        for axis in (throughput, latency):
            axis.set_xscale("log", base=2)
            axis.set_xticks(results["concurrency"], [str(c) for c in results["concurrency"]])
            axis.set_xlabel("concurrent connections")
            axis.grid(True, alpha=0.3)
        throughput.set_yscale("log")
        latency.set_yscale("log")
        throughput.legend(fontsize=8)
    figure.suptitle("Side by side, server on core 0, wrk on core 1 (2-core x86_64)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    with open(sys.argv[1]) as stream:
        plot(json.load(stream), sys.argv[2])
