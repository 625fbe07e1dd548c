#!/usr/bin/env bash
# The XLA tier (`make test-xla`): the `tpu` runtime on PyTorch/XLA's real code path, on the CPU.
# With XLA_TIER_DEVICE=TPU (`make test-tpu`, on a Cloud TPU VM) the same tests run on the TPU.
#
# torch-xla only imports against the torch it was built with (2.9.0), while the main venv runs a newer
# torch, so the tier has its own venv, .venv-xla, holding the set pinned in the TPU role's
# requirements-tpu.txt (what a TPU VM gets) plus the appliance (editable) and its other
# dependencies at the versions of constraints.txt.
#
# uv installs it (pip takes about three times as long for the 4 GB CUDA build of torch that PyPI
# serves). uv keeps its download cache across runs (UV_CACHE_DIR, default ~/.cache/uv), and a stamp
# keyed on every input of the install makes a second run install nothing at all.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-python3}
UV_VERSION=0.13.9
VENV=.venv-xla
PY=$VENV/bin/python
STAMP=$VENV/.installed
started=$SECONDS
DEVICE=${XLA_TIER_DEVICE:-CPU}

if [[ $DEVICE == TPU ]]; then
    # Counted the way the appliance counts them (Google's vendor id and a TPU device id: the
    # vendor id alone also matches the gVNIC of every GCE VM). Checked before the install, which
    # downloads gigabytes, and before libtpu, which retries for minutes without a chip.
    chips=$("$PYTHON" appliance/chips.py)
    if [[ $chips -eq 0 ]]; then
        echo "xla tier: FAILED - no TPU chip on this host's PCI bus; make test-tpu runs on a" \
            "Cloud TPU VM (make test-xla runs the same tests on XLA:CPU)" >&2
        exit 2
    fi
    echo "xla tier: $chips TPU chip(s) found, running on PJRT_DEVICE=TPU"
elif [[ $DEVICE != CPU ]]; then
    echo "xla tier: XLA_TIER_DEVICE must be CPU or TPU, got '$DEVICE'" >&2
    exit 2
fi

TPU_REQUIREMENTS=ansible/roles/aegis_tpu_runtime/files/requirements-tpu.txt
inputs=("$TPU_REQUIREMENTS" constraints.txt pyproject.toml tests/xla/run_tier.sh)
key=$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)

if [[ ! -f $STAMP || $(<"$STAMP") != "$key" ]]; then
    echo "xla tier: installing $VENV (inputs changed or first run)"
    # A venv from an older run is reused: uv only adds or changes what differs.
    [[ -x $PY ]] || "$PYTHON" -m venv "$VENV"
    "$PY" -m pip install --quiet "uv==$UV_VERSION"
    # The appliance's own requirements and its dev extra, less torch (requirements-tpu.txt pins it),
    # resolved together with the pinned set so nothing can move torch off 2.9.0.
    "$PY" - >"$VENV/appliance-deps.txt" <<'EOF'
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
    if not requirement.lower().startswith("torch"):
        print(requirement)
EOF
    grep -v -i -E '^torch([=<>!~ ;]|$)' constraints.txt >"$VENV/constraints-no-torch.txt"
    "$VENV/bin/uv" pip install --python "$PY" -r "$TPU_REQUIREMENTS" \
        -r "$VENV/appliance-deps.txt" -c "$VENV/constraints-no-torch.txt"
    "$VENV/bin/uv" pip install --python "$PY" --no-deps -e .
    echo "$key" >"$STAMP"
    echo "xla tier: install took $((SECONDS - started)) s"
else
    echo "xla tier: $VENV is up to date"
fi

tests_started=$SECONDS
status=0
PJRT_DEVICE=$DEVICE "$PY" -m pytest -m xla tests/xla "$@" || status=$?
echo "xla tier: tests took $((SECONDS - tests_started)) s, tier $((SECONDS - started)) s"
if [[ $status -eq 5 ]]; then
    echo "xla tier: FAILED - pytest collected no xla tests" >&2
    exit 1
fi
exit "$status"
