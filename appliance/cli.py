"""The `aegis` command: serve, demo, check-config, inspect, sync."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from appliance.config import DEFAULT_CONFIG_PATH, AppConfig, ConfigError, load_config
from appliance.lifecycle.preflight import PreflightFailed
from appliance.logs import capture_native_output, configure_logging
from appliance.storage.errors import SyncError

EXIT_INVALID_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aegis", description="Aegis inference appliance")
    parser.add_argument("--log-level", default=os.environ.get("AEGIS_LOG_LEVEL", "info"))
    parser.add_argument("--version", action="version", version=f"aegis {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    config_help = f"config file (default: $AEGIS_CONFIG or {DEFAULT_CONFIG_PATH})"
    serve = commands.add_parser("serve", help="sync, load, warm and serve the configured models")
    serve.add_argument("--config", help=config_help)
    serve.add_argument("--bind", action="append", help="HOST:PORT, overrides [server].bind")
    serve.add_argument(
        "--grpc-bind", action="append", help="HOST:PORT, overrides [server].grpc_bind"
    )
    demo = commands.add_parser("demo", help="serve the built-in demo model on the CPU")
    demo.add_argument("--bind", default="127.0.0.1:8080", help="HOST:PORT (default %(default)s)")
    demo.add_argument(
        "--grpc-bind", default="127.0.0.1:8081", help="gRPC HOST:PORT (default %(default)s)"
    )
    check = commands.add_parser(
        "check-config", help="validate a config file and its models' artifacts: exit 0, or 2"
    )
    check.add_argument("path")
    check.add_argument(
        "--no-artifacts",
        action="store_true",
        help="check the file alone, without reading any artifact's signature",
    )
    inspect = commands.add_parser(
        "inspect",
        help="print an artifact's inputs, outputs and dynamic dimensions, and a [[models]] table",
    )
    inspect.add_argument("artifact", help="a .pt2, .pt, .onnx or .jax file")
    sync = commands.add_parser("sync", help="pull and verify model artifacts, then exit")
    sync.add_argument("--config", help=config_help)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("aegis-appliance")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _config_path(given: str | None) -> str:
    return given or os.environ.get("AEGIS_CONFIG") or str(DEFAULT_CONFIG_PATH)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    serving = args.command in ("serve", "demo")
    configure_logging(args.log_level, capture_native_output() if serving else None)
    code = _run(args)
    if serving:
        from appliance.lifecycle.process import exit_process

        exit_process(code)
    return code


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command == "check-config":
            from appliance.lifecycle.preflight import preflight

            config = load_config(args.path)
            preflight(config)
            return (
                _check_artifacts(args.path, config)
                if not args.no_artifacts
                else _valid(args.path, config)
            )
        if args.command == "inspect":
            return _inspect(args.artifact)
        if args.command == "demo":
            from appliance.demo import demo_config
            from appliance.lifecycle.server import run

            return run(demo_config(args.bind, args.grpc_bind))
        path = _config_path(args.config)
        if args.command == "sync":
            from appliance.storage import run_sync_command

            return run_sync_command(load_config(path))
        from appliance.api import serve
        from appliance.vertex import VertexSettings, serving_config

        vertex = VertexSettings.from_environment()
        if vertex is not None:
            # Vertex AI: the models come from its copy of them, HTTP goes to its port.
            config = serving_config(vertex, path, explicit=args.config is not None)
            return serve(config, args.bind or [vertex.bind], grpc_bind=args.grpc_bind)
        return serve(path, args.bind, grpc_bind=args.grpc_bind)
    except ConfigError as error:
        _report(args.command, f"invalid configuration: {error}")
        return EXIT_INVALID_CONFIG
    except PreflightFailed as error:
        where = f"{args.path}: " if args.command == "check-config" else ""
        for problem in error.problems:
            _report(args.command, f"invalid configuration: {where}{problem}")
        return EXIT_INVALID_CONFIG if args.command == "check-config" else 1
    except (OSError, ValueError, SyncError) as error:
        _report(args.command, str(error))
        return 1


def _inspect(artifact: str) -> int:
    from appliance.inspection import InspectError, inspect

    try:
        print(inspect(Path(artifact)))
    except InspectError as error:
        print(f"aegis: {error}", file=sys.stderr)
        return 1
    return 0


def _valid(path: str, config: AppConfig, checked: str = "") -> int:
    print(f"{path}: valid ({len(config.models)} model(s){checked})")
    return 0


def _check_artifacts(path: str, config: AppConfig) -> int:
    from appliance.lifecycle.artifact_check import check_artifacts

    report = check_artifacts(config)
    for skipped in report.skipped:
        print(f"aegis: note: {path}: {skipped}", file=sys.stderr)
    if report.problems:
        raise PreflightFailed(report.problems)
    return _valid(path, config, f", {report.checked} artifact(s) checked")


def _report(command: str, message: str) -> None:
    """check-config speaks to a person; the serving commands write to the JSON log stream."""
    if command == "check-config":
        print(f"aegis: {message}", file=sys.stderr)
    else:
        structlog.get_logger("aegis.cli").error("start_failed", command=command, reason=message)


if __name__ == "__main__":
    sys.exit(main())
