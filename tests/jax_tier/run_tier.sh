#!/usr/bin/env bash
# The JAX tier (`make test-jax`): the `jax` runtime on JAX's CPU backend, `.jax` artifacts natively
# and torch.export `.pt2` programs through torchax.
#
# torchax only imports against torch 2.9 while the main venv runs a newer torch, and the TPU hosts of
# this path pin a libtpu that torch-xla's set does not (requirements/tpu.txt), so the tier has its
# own venv, .venv-jax, holding the set pinned in ansible/roles/aegis_tpu_runtime/files/requirements-jax.txt plus the appliance
# (editable) and its other dependencies at the versions of constraints.txt.
#
# uv installs it; torch 2.9.0 (the 4 GB CUDA build PyPI serves) comes from uv's cache once the XLA
# tier has downloaded it. A stamp keyed on every input of the install makes a second run install
# nothing at all.
#
# The tests run with four host devices (--xla_force_host_platform_device_count=4), so a server given
# one device can be checked to use that one only, and JAX_PLATFORMS=cpu so that the test process
# (which exports artifacts) never probes for a TPU; the servers set their platforms themselves.
# The folder is not called tests/jax: on the test path it would shadow the jax package.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-python3}
UV_VERSION=0.13.9
VENV=.venv-jax
SET=ansible/roles/aegis_tpu_runtime/files/requirements-jax.txt
PY=$VENV/bin/python
STAMP=$VENV/.installed
started=$SECONDS

inputs=("$SET" constraints.txt pyproject.toml tests/jax_tier/run_tier.sh)
key=$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)

if [[ ! -f $STAMP || $(<"$STAMP") != "$key" ]]; then
    echo "jax tier: installing $VENV (inputs changed or first run)"
    # A venv from an older run is reused: uv only adds or changes what differs.
    [[ -x $PY ]] || "$PYTHON" -m venv "$VENV"
    "$PY" -m pip install --quiet "uv==$UV_VERSION"
    # The appliance's own requirements and its dev extra, less torch (the set
    # pins it), resolved together with the pinned set so nothing can move torch off 2.9.0.
    "$PY" - >"$VENV/appliance-deps.txt" <<'PYTHON_EOF'
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
    if not requirement.lower().startswith("torch"):
        print(requirement)
PYTHON_EOF
    grep -v -i -E '^torch([=<>!~ ;]|$)' constraints.txt >"$VENV/constraints-no-torch.txt"
    "$VENV/bin/uv" pip install --python "$PY" \
        -r "$SET" -r "$VENV/appliance-deps.txt" -c "$VENV/constraints-no-torch.txt"
    "$VENV/bin/uv" pip install --python "$PY" --no-deps -e .
    echo "$key" >"$STAMP"
    echo "jax tier: install took $((SECONDS - started)) s"
else
    echo "jax tier: $VENV is up to date"
fi

tests_started=$SECONDS
status=0
JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=4 ${XLA_FLAGS:-}" \
    "$PY" -m pytest -m jax tests/jax_tier "$@" || status=$?
echo "jax tier: tests took $((SECONDS - tests_started)) s, tier $((SECONDS - started)) s"
if [[ $status -eq 5 ]]; then
    echo "jax tier: FAILED - pytest collected no jax tests" >&2
    exit 1
fi
exit "$status"
