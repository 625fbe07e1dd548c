#!/usr/bin/env bash
# The k8s tier (make test-k8s; root): the Helm chart rendered by Helm's engine and validated
# offline against the Kubernetes schemas, then its Deployment run for real under podman with the
# image `make image` builds (cpu flavor; FLAVOR=jax for the jax one). Sets up what it needs:
# podman, runc and catatonit from apt, the tier's venv (.venv-k8s, tests/k8s/requirements.txt),
# the image.
set -euo pipefail
SCRIPT=$(realpath "$0")
cd "$(dirname "$SCRIPT")/../.."
REPO=$PWD
started=$SECONDS
phase() { printf '[k8s %4ds] %s\n' $((SECONDS - started)) "$*"; }

if [[ $EUID -ne 0 ]]; then
    echo "tests/k8s/run_tier.sh: needs root (podman, rootful)" >&2
    exit 1
fi
PY=${PY:-$REPO/.venv/bin/python}
K8S_VENV=$REPO/.venv-k8s
# shellcheck source=image/podman-env.sh
source image/podman-env.sh

lock=tests/k8s/requirements.txt
if ! cmp -s "$lock" "$K8S_VENV/.installed" 2>/dev/null; then
    phase "tier venv ($K8S_VENV)"
    rm -rf "$K8S_VENV"
    python3 -m venv "$K8S_VENV"
    "$K8S_VENV/bin/pip" install --quiet --no-deps -r "$lock"
    cp "$lock" "$K8S_VENV/.installed"
fi

# FLAVOR=jax (make test-k8s FLAVOR=jax): the same tests on the jax image, whose runtime compiles.
flavor=${FLAVOR:-cpu}
phase "make image ($flavor)"
archive=$(PY=$PY AEGIS_IMAGE_UNCOMPRESSED=1 bash image/build.sh "$flavor" | tail -1)

export AEGIS_K8S_PYTHON=$K8S_VENV/bin/python
export AEGIS_K8S_IMAGE_ARCHIVE=$archive
export AEGIS_K8S_FLAVOR=$flavor
export AEGIS_K8S_PREFIX="aegis-k8s-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
export AEGIS_K8S_LOGS=$REPO/.cache/k8s/logs/$AEGIS_K8S_PREFIX
mkdir -p "$AEGIS_K8S_LOGS"

cleanup() {
    # The tests bring their pods down and remove their volumes and image; this catches what a
    # killed pytest left (every name starts with this run's prefix).
    for pod in $(podman pod ls --format '{{.Name}}' | grep "^$AEGIS_K8S_PREFIX-" || true); do
        podman pod rm --force --time 5 "$pod" >/dev/null 2>&1 || true
    done
    for volume in $(podman volume ls --format '{{.Name}}' | grep "^$AEGIS_K8S_PREFIX-" || true); do
        podman volume rm --force "$volume" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

phase "pytest -m k8s tests/k8s (logs: $AEGIS_K8S_LOGS)"
status=0
"$PY" -m pytest -m k8s -p no:cacheprovider -v tests/k8s || status=$?
phase "done (pytest exit $status)"
[[ -f $AEGIS_K8S_LOGS/results.txt ]] && sed 's/^/  /' "$AEGIS_K8S_LOGS/results.txt"
exit "$status"
