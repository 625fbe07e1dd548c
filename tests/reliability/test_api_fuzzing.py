"""Schemathesis against the live server, driven by its own /openapi.json: no server fault, every
error is {"error": ...}, and the document is precise enough that requests it calls valid are
served and mutations it calls invalid are refused with a 4xx.

Bounded and repeatable: a fixed seed, at most MAX_EXAMPLES generated cases per operation and
phase, one worker, and each run killed after RUN_TIMEOUT_S. The checks it adds to schemathesis's
own are in schemathesis_hooks.py.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.config import model_table, server_config
from tests.support.http import call
from tests.support.server import ServerProcess, running_server

SEED = 20261128
MAX_EXAMPLES = 10
RUN_TIMEOUT_S = 150
REPO = Path(__file__).resolve().parents[2]
TOKEN = "fuzz-admin-token-0123456789abcdef"

# Every stock check but `not_a_server_error`, which schemathesis_hooks.no_server_fault replaces
# (a 504 after the request's own `timeout` parameter ran out is the right answer). The generic
# `{model_name}` infer operations describe the protocol for any model, not one model's inputs:
# a schema-valid body there can still not fit the model the name happens to hit.
CONFIG = """
[checks]
not_a_server_error.enabled = false
status_code_conformance.enabled = true
content_type_conformance.enabled = true
response_headers_conformance.enabled = true
response_schema_conformance.enabled = true
positive_data_acceptance.enabled = true
negative_data_rejection.enabled = true
missing_required_header.enabled = true
unsupported_method.enabled = true
allow_header_conformance.enabled = true
use_after_free.enabled = true
ensure_resource_availability.enabled = true
ignored_auth.enabled = true

[[operations]]
include-path-regex = "\\\\{model_name\\\\}/(versions/\\\\{model_version\\\\}/)?infer$"
checks.positive_data_acceptance.enabled = false
"""


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, artifacts: dict[str, Path]
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("api-fuzzing")
    token = workdir / "admin.token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    # Small batches keep the document's per-batch-size alternatives, and so the run, short.
    models = model_table(
        "mlp", artifacts["mlp.pt2"], "max_batch_size = 4\nwarmup_iters = 0"
    ) + model_table("mixed", artifacts["mixed.pt2"], "max_batch_size = 4\nwarmup_iters = 0")
    config = server_config(workdir, models, f'admin_token_file = "{token}"\n')
    with running_server(config, workdir) as served:
        yield served


def schemathesis(server: ServerProcess, workdir: Path, *args: str) -> collections.Counter[str]:
    """One bounded run; the outcome counts that the hooks recorded. Fails on any failed check."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    outcomes = workdir / "outcomes.log"
    output = workdir / "schemathesis.out"
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run"),
        f"{server.url}/openapi.json",
        *("--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES), "--workers", "1"),
        *("--phases", "examples,coverage,fuzzing", "--generation-database", "none"),
        *("--request-timeout", "20", "--no-color"),
        *args,
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.reliability.schemathesis_hooks",
        "AEGIS_FUZZ_LOG": str(outcomes),
    }
    with open(output, "wb") as stream:
        code = subprocess.run(
            command,
            cwd=REPO,
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT_S,
            check=False,
        ).returncode
    assert code == 0, output.read_text(errors="replace")[-6000:]
    counts: collections.Counter[str] = collections.Counter()
    for line in outcomes.read_text().splitlines():
        status, note = line.split(" ", 1)
        counts[status] += 1
        counts[note.split(" ")[0]] += 1
    return counts


def test_schemathesis_finds_no_fault_and_the_document_is_precise(
    server: ServerProcess, tmp_path: Path
) -> None:
    # The repository endpoints unload models: they get a run of their own, after the others,
    # with the token (and schemathesis's ignored_auth check tries them without it).
    served = schemathesis(server, tmp_path / "models", "--exclude-path-regex", "^/v2/repository")
    admin = schemathesis(
        server,
        tmp_path / "repository",
        *("--include-path-regex", "^/v2/repository"),
        *("--header", f"Authorization: Bearer {TOKEN}"),
    )
    total = served + admin
    print(
        f"\nFIGURES api-fuzzing: {sum(total[s] for s in total if s.isdigit())} requests, "
        f"by status {sorted((s, n) for s, n in total.items() if s.isdigit())}, "
        f"faults {total['FAULT']}, 504 after the request's own timeout {total['own-deadline']}"
    )
    assert total["FAULT"] == 0
    # The run reached the models: requests served and refused, not only 404s.
    assert served["200"] > 50 and served["400"] > 1000, served
    assert call(server, "GET", "/v2/health/live").status == 200
    assert "unhandled_error" not in server.log()
