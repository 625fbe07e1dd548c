"""The results of one `compare.py` run as Markdown: the table, the ratios and the overload check."""

from __future__ import annotations

from typing import Any

FOCUS = 64  # the concurrency the targets are stated at


def _row(row: dict[str, Any], labels: dict[str, str]) -> str:
    batch = f"{row['mean_batch']:.1f}" if row["mean_batch"] else "-"
    return (
        f"| {row['model']} | {labels[row['target']]} | {row['concurrency']} | {row['rps']:,.0f} "
        f"| {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['p99_ms']:.2f} | {row['errors']} "
        f"| {batch} | {row['rss_mb']:,.0f} |"
    )


def _table(rows: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    lines = [
        "| model | server | c | req/s | p50 ms | p90 ms | p99 ms | errors | mean batch | RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    return lines + [_row(row, labels) for row in rows]


def _find(rows: list[dict[str, Any]], model: str, target: str, c: int) -> dict[str, Any] | None:
    for row in rows:
        if (row["model"], row["target"], row["concurrency"]) == (model, target, c):
            return row
    return None


def _ratios(results: dict[str, Any], model: str) -> list[str]:
    rows = results["rows"]
    labels = _labels(results)
    lines = [f"**{model}**, c={FOCUS}:", ""]
    peers = [r for p in _of_role(results, "peer") if (r := _find(rows, model, p, FOCUS))]
    best = max(peers, key=lambda r: r["rps"], default=None)
    http = _find(rows, model, "http-ceiling", FOCUS)
    compute = results["compute_ceiling"].get(model)
    for name in _of_role(results, "aegis"):
        mine = _find(rows, model, name, FOCUS)
        if mine is None:
            continue
        parts = []
        if best is not None:
            parts.append(
                f"{mine['rps'] / best['rps']:.2f}x the best peer ({labels[best['target']]}), "
                f"p99 {mine['p99_ms']:.1f} vs {best['p99_ms']:.1f} ms"
            )
        torchserve = _find(rows, model, "torchserve", FOCUS)
        if torchserve is not None and torchserve is not best:
            parts.append(f"{mine['rps'] / torchserve['rps']:.2f}x TorchServe")
        if http is not None:
            parts.append(f"{mine['rps'] / http['rps']:.2f}x the HTTP ceiling")
        if compute is not None:
            parts.append(f"{mine['rps'] / compute['best_rows_per_s']:.2f}x the compute ceiling")
        lines.append(f"- {labels[name]}: " + "; ".join(parts))
    one = _find(rows, model, "aegis-json", 1)
    if one is not None and compute is not None:
        lines.append(
            f"- c=1: Aegis JSON p50 {one['p50_ms']:.2f} ms; minus the model's batch-1 time "
            f"({compute['batch1_ms']:.3f} ms): {one['p50_ms'] - compute['batch1_ms']:.2f} ms"
        )
    return [*lines, ""]


def _labels(results: dict[str, Any]) -> dict[str, str]:
    return {target: about["label"] for target, about in results["targets"].items()}


def _of_role(results: dict[str, Any], role: str) -> list[str]:
    return [target for target, about in results["targets"].items() if about["role"] == role]


def _overload(report: dict[str, Any]) -> list[str]:
    lines = [
        f"Aegis, tiny model, `max_queue_size = {report['max_queue_size']}`, wrk closed loop. "
        "Client columns: wrk over all responses; per-status columns: Aegis's access log "
        "(arrival at the app to the reply).",
        "",
        "| run | c | ok/s | refused/s | client p50 / p99 ms | status: count, p50 / p99 / max ms "
        "| RSS MB first / max / last |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for label in ("baseline", "overload"):
        run = report.get(label)
        if run is None:
            continue
        rss = run["rss_mb"]
        memory = " / ".join(f"{rss[k]:.0f}" if rss[k] else "-" for k in ("first", "max", "last"))
        statuses = "; ".join(
            f"{status}: {s['count']:,}, {s['p50_ms']:.2f} / {s['p99_ms']:.2f} / {s['max_ms']:.1f}"
            for status, s in run["server_by_status"].items()
        )
        lines.append(
            f"| {label} | {run['connections']} | {run['ok_per_s']:,.0f} "
            f"| {run['refused_per_s']:,.0f} "
            f"| {run['client_p50_ms']:.2f} / {run['client_p99_ms']:.2f} | {statuses} | {memory} |"
        )
    return [*lines, ""]


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Machine: {results['machine']}.",
        f"Command: `{results['command']}`; warm-up {results['warmup_s']:g} s, "
        f"window {results['window_s']:g} s per point.",
        "",
    ]
    lines += [*_table(results["rows"], _labels(results)), ""]
    for model, ceiling in results["compute_ceiling"].items():
        per_bucket = ", ".join(
            f"{bucket}: {rate:,.0f}" for bucket, rate in ceiling["rows_per_s"].items()
        )
        lines.append(
            f"Compute ceiling, {model}: {ceiling['best_rows_per_s']:,.0f} rows/s at bucket "
            f"{ceiling['best_bucket']} (rows/s by bucket: {per_bucket}); "
            f"batch 1 takes {ceiling['batch1_ms']:.3f} ms."
        )
    lines.append("")
    for model in results["compute_ceiling"]:
        lines += _ratios(results, model)
    if results.get("overload"):
        lines += _overload(results["overload"])
    if results.get("demo"):
        lines += ["Demo model (`aegis demo`: batch 32, 2 ms delay):", ""]
        lines += [*_table(results["demo"], _labels(results)), ""]
    if results.get("failures"):
        lines += ["Failures:", ""] + [f"- {failure}" for failure in results["failures"]] + [""]
    return "\n".join(lines)
