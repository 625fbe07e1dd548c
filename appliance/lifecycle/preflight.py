"""What `serve` checks before it starts, and `check-config` checks too.

One function for both, so the unit's `ExecStartPre=aegis check-config` gate refuses exactly the
configs that the start would: files that do not exist or cannot be read, model sources that cannot
be parsed (schemes, bucket names), TLS files that do not make a key pair or whose key others can
read, an admin token file that is unsafe or too short. Every problem is reported, not just one.
"""

from __future__ import annotations

import os
import ssl
import stat

from appliance.config import AppConfig, DeclaredModel
from appliance.runtimes import ArtifactError
from appliance.runtimes.artifacts import resolve_artifact
from appliance.storage.sources import LocalSource, parse_source

MIN_TOKEN_CHARS = 16


class PreflightFailed(ValueError):
    """The config parses but cannot be served; `problems` says each thing to fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def preflight(config: AppConfig) -> str | None:
    """Check everything that can be checked before loading; returns the admin token (or None).

    Raises PreflightFailed naming each key and why.
    """
    problems: list[str] = []
    _check_tls(config, problems)
    token = _read_admin_token(config.server.admin_token_file, problems)
    for index, model in enumerate(config.models):
        problem = _model_problem(model)
        if problem is not None:
            problems.append(f"models[{index}] ({model.name}:{model.version}).model_path: {problem}")
    if problems:
        raise PreflightFailed(problems)
    return token


def _unreadable(path: str) -> str | None:
    """Why `path` cannot be read as a file by this process, or None."""
    try:
        with open(path, "rb"):
            return None
    except FileNotFoundError:
        return "does not exist"
    except IsADirectoryError:
        return "is a directory"
    except PermissionError:
        return "cannot be read: permission denied"
    except OSError as error:
        return f"cannot be read: {error.strerror}"


def _check_tls(config: AppConfig, problems: list[str]) -> None:
    server = config.server
    if not server.certfile:
        return
    missing = False
    for key, path in (("certfile", server.certfile), ("keyfile", server.keyfile)):
        reason = _unreadable(path)
        if reason is not None:
            problems.append(f"server.{key} {path} {reason}")
            missing = True
    if missing:
        return
    if os.stat(server.keyfile).st_mode & stat.S_IRWXO:
        # Group-readable, as Debian's ssl-cert group has it, is fine.
        problems.append(f"server.keyfile {server.keyfile} is readable by others: chmod o-rwx it")
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(server.certfile, server.keyfile)
    except (ssl.SSLError, ValueError) as error:
        problems.append(
            f"server.certfile {server.certfile} and server.keyfile {server.keyfile} are not a "
            f"PEM certificate and its private key ({error})"
        )


def _read_admin_token(path: str, problems: list[str]) -> str | None:
    """The bearer token, refusing a file that other users could read."""
    if not path:
        return None
    reason = _unreadable(path)
    if reason is not None:
        problems.append(f"server.admin_token_file {path} {reason}")
        return None
    if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        problems.append(
            f"server.admin_token_file {path} is readable by group or others: chmod 600 it"
        )
        return None
    try:
        with open(path, encoding="utf-8") as stream:
            token = stream.read().strip()
    except UnicodeDecodeError:
        problems.append(f"server.admin_token_file {path} is not UTF-8 text")
        return None
    if len(token) < MIN_TOKEN_CHARS:
        problems.append(
            f"server.admin_token_file {path}: the token must be at least "
            f"{MIN_TOKEN_CHARS} characters"
        )
        return None
    return token


def _model_problem(model: DeclaredModel) -> str | None:
    try:
        source = parse_source(model.config.model_path)
    except ValueError as error:
        return str(error)
    if not isinstance(source, LocalSource):
        return None  # remote: its objects are checked when synced
    try:
        resolve_artifact(source.path)
    except ArtifactError as error:
        return str(error)
    except OSError as error:
        return f"{source.path} cannot be read: {error.strerror}"
    return None
