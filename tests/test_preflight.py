"""`aegis check-config` refuses every config that `aegis serve` refuses before loading (the unit's
ExecStartPre gate), naming the key and why; both run the one preflight."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.config import model_table, server_config
from tests.support.server import start_server
from tests.support.tls import self_signed

TOKEN = "a-token-of-more-than-sixteen-characters"


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def serve_exit(path: Path, log: Path) -> tuple[int, str]:
    server = start_server(path, log)
    try:
        code = server.process.wait(60)
    finally:
        server.stop()
    return code, server.log()


def mode(path: Path, bits: int) -> Path:
    path.chmod(bits)
    return path


def token_file(directory: Path, text: str, bits: int = 0o600) -> Path:
    path = directory / "token"
    path.write_text(text)
    return mode(path, bits)


# (case, models TOML given the artifact, [server] TOML given the work folder, what both must say)
CASES: dict[str, tuple[Callable[[Path, Path], str], Callable[[Path], str], str]] = {
    "missing local file": (
        lambda a, d: model_table("m", d / "absent.pt2"),
        lambda d: "",
        "absent.pt2 does not exist",
    ),
    "unknown scheme": (
        lambda a, d: model_table("m", "s4://bucket/m.pt2"),
        lambda d: "",
        "unsupported scheme",
    ),
    "invalid bucket name": (
        lambda a, d: model_table("m", "gs://Not_A_Bucket!/m.pt2"),
        lambda d: "",
        "is not a valid bucket name",
    ),
    "invalid S3 bucket name": (
        lambda a, d: model_table("m", "s3://Not_A_Bucket!/m.pt2"),
        lambda d: "",
        "is not a valid bucket name",
    ),
    "missing certificate": (
        lambda a, d: model_table("m", a),
        lambda d: f'certfile = "{d / "absent.crt"}"\nkeyfile = "{self_signed(d)[1]}"\n',
        "absent.crt does not exist",
    ),
    "missing key": (
        lambda a, d: model_table("m", a),
        lambda d: f'certfile = "{self_signed(d)[0]}"\nkeyfile = "{d / "absent.key"}"\n',
        "absent.key does not exist",
    ),
    "key readable by others": (
        lambda a, d: model_table("m", a),
        lambda d: f'certfile = "{self_signed(d)[0]}"\nkeyfile = "{mode(d / "key.pem", 0o604)}"\n',
        "is readable by others",
    ),
    "missing token file": (
        lambda a, d: model_table("m", a),
        lambda d: f'admin_token_file = "{d / "absent-token"}"\n',
        "absent-token does not exist",
    ),
    "short token": (
        lambda a, d: model_table("m", a),
        lambda d: f'admin_token_file = "{token_file(d, "short")}"\n',
        "at least 16 characters",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_config_refuses_what_serve_refuses(
    case: str, tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    models, server, says = CASES[case]
    config = tmp_path / "aegis.toml"
    config.write_text(
        server_config(tmp_path, models(artifacts["mlp.pt2"], tmp_path), server(tmp_path))
    )
    checked = check_config(config)
    assert checked.returncode == 2, checked
    assert says in checked.stderr and str(config) in checked.stderr, checked.stderr
    assert "Traceback" not in checked.stderr
    code, log = serve_exit(config, tmp_path / "server.log")
    assert code == 1, log[-2000:]
    assert says in log, log[-2000:]


def test_check_config_passes_what_serve_serves(tmp_path: Path, artifacts: dict[str, Path]) -> None:
    cert, key = self_signed(tmp_path)
    server = (
        f'certfile = "{cert}"\nkeyfile = "{key}"\n'
        f'admin_token_file = "{token_file(tmp_path, TOKEN)}"\n'
    )
    config = tmp_path / "aegis.toml"
    config.write_text(server_config(tmp_path, model_table("m", artifacts["mlp.pt2"]), server))
    checked = check_config(config)
    assert checked.returncode == 0, checked.stderr
