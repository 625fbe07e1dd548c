#!/usr/bin/env bash
# The XLA and JAX tiers, each in its own venv: `tests/support/run_tier.sh xla|jax [pytest args]`.
#
# xla (`make test-xla`): the `tpu` runtime on PyTorch/XLA's real code path, on the CPU. With
# XLA_TIER_DEVICE=TPU (`make test-tpu`, on a Cloud TPU VM) the same tests run on the TPU.
# torch-xla only imports against the torch it was built with (2.9.0), while the main venv runs a
# newer torch, so the tier has its own venv, .venv-xla, holding the set pinned in the TPU role's
# requirements-tpu.txt (what a TPU VM gets).
#
# jax (`make test-jax`): the `jax` runtime on JAX's CPU backend, `.jax` artifacts natively and
# torch.export `.pt2` programs through torchax. torchax only imports against torch 2.9 while the
# main venv runs a newer torch, and the TPU hosts of this path pin a libtpu that torch-xla's set
# does not (requirements-tpu.txt), so the tier has its own venv, .venv-jax, holding the set pinned
# in the TPU role's requirements-jax.txt. The tests run with four host devices
# (--xla_force_host_platform_device_count=4), so a server given one device can be checked to use
# that one only, and JAX_PLATFORMS=cpu so that the test process (which exports artifacts) never
# probes for a TPU; the servers set their platforms themselves. The folder is not called
# tests/jax: on the test path it would shadow the jax package.
#
# Each venv holds its pinned set plus the appliance (editable) and its other dependencies at the
# versions of constraints.txt. uv installs it (pip takes about three times as long for the 4 GB
# CUDA build of torch that PyPI serves; the JAX tier gets the same torch 2.9.0 from uv's cache
# once the XLA tier has downloaded it). uv keeps its download cache across runs (UV_CACHE_DIR,
# default ~/.cache/uv), and a stamp keyed on every input of the install makes a second run
# install nothing at all.
#
# tests/xla/run_tier.sh and tests/jax_tier/run_tier.sh run this with their tier's name.
set -euo pipefail
cd "$(dirname "$0")/../.."

TIER=${1:-}
shift || true
PYTHON=${PYTHON:-python3}
UV_VERSION=0.13.9
ROLE_FILES=ansible/roles/aegis_tpu_runtime/files
started=$SECONDS

case $TIER in
    xla)
        VENV=.venv-xla
        SET=$ROLE_FILES/requirements-tpu.txt
        TESTS=tests/xla
        DEVICE=${XLA_TIER_DEVICE:-CPU}
        PYTEST_ENV=("PJRT_DEVICE=$DEVICE")
        if [[ $DEVICE == TPU ]]; then
            # Counted the way the appliance counts them (Google's vendor id and a TPU device id:
            # the vendor id alone also matches the gVNIC of every GCE VM). Checked before the
            # install, which downloads gigabytes, and before libtpu, which retries for minutes
            # without a chip.
            chips=$("$PYTHON" appliance/chips.py)
            if [[ $chips -eq 0 ]]; then
                echo "xla tier: FAILED - no TPU chip on this host's PCI bus;" \
                    "make test-tpu runs on a Cloud TPU VM" \
                    "(make test-xla runs the same tests on XLA:CPU)" >&2
                exit 2
            fi
            echo "xla tier: $chips TPU chip(s) found, running on PJRT_DEVICE=TPU"
        elif [[ $DEVICE != CPU ]]; then
            echo "xla tier: XLA_TIER_DEVICE must be CPU or TPU, got '$DEVICE'" >&2
            exit 2
        fi
        ;;
    jax)
        VENV=.venv-jax
        SET=$ROLE_FILES/requirements-jax.txt
        TESTS=tests/jax_tier
        PYTEST_ENV=(
            JAX_PLATFORMS=cpu
            "XLA_FLAGS=--xla_force_host_platform_device_count=4 ${XLA_FLAGS:-}"
        )
        ;;
    *)
        echo "usage: tests/support/run_tier.sh xla|jax [pytest arguments] (got '$TIER')" >&2
        exit 2
        ;;
esac
PY=$VENV/bin/python
STAMP=$VENV/.installed

inputs=("$SET" constraints.txt pyproject.toml tests/support/run_tier.sh)
key=$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1)

if [[ ! -f $STAMP || $(<"$STAMP") != "$key" ]]; then
    echo "$TIER tier: installing $VENV (inputs changed or first run)"
    # A venv from an older run is reused: uv only adds or changes what differs.
    [[ -x $PY ]] || "$PYTHON" -m venv "$VENV"
    "$PY" -m pip install --quiet "uv==$UV_VERSION"
    # The appliance's own requirements and its dev extra, less torch (the pinned set pins it),
    # resolved together with the pinned set so nothing can move torch off 2.9.0.
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
    echo "$TIER tier: install took $((SECONDS - started)) s"
else
    echo "$TIER tier: $VENV is up to date"
fi

tests_started=$SECONDS
status=0
env "${PYTEST_ENV[@]}" "$PY" -m pytest -m "$TIER" "$TESTS" "$@" || status=$?
echo "$TIER tier: tests took $((SECONDS - tests_started)) s, tier $((SECONDS - started)) s"
if [[ $status -eq 5 ]]; then
    echo "$TIER tier: FAILED - pytest collected no $TIER tests" >&2
    exit 1
fi
exit "$status"
