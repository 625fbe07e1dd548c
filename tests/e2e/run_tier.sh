#!/usr/bin/env bash
# The deploy tier (make test-e2e; root): boot a Debian root with systemd as PID 1 in systemd-nspawn,
# deploy it with ansible/deploy.yml over ssh into its network namespace, then operate it
# (tests/e2e/test_e2e_*.py). Sets up what it needs; caches live in .cache/e2e (git-ignored).
set -euo pipefail
SCRIPT=$(realpath "$0")
cd "$(dirname "$SCRIPT")/../.."
REPO=$PWD
started=$SECONDS

if [[ $EUID -ne 0 ]]; then
    echo "tests/e2e/run_tier.sh: needs root (systemd-nspawn, network namespaces, cgroups)" >&2
    exit 1
fi

CACHE=$REPO/.cache/e2e
PY=$REPO/.venv/bin/python
DEPLOY_VENV=$REPO/.venv-deploy
# Each run's machines, namespaces, cgroups and folders start with this, so a trap can find them.
export AEGIS_E2E_PREFIX="aegis-e2e-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
export AEGIS_E2E_LOGS=$CACHE/logs/$AEGIS_E2E_PREFIX
mkdir -p "$CACHE" "$AEGIS_E2E_LOGS"
scratch=$(mktemp -d "/var/tmp/$AEGIS_E2E_PREFIX-build.XXXXXX")

cleanup() {
    # The tests tear down their own containers; this catches what a killed pytest left.
    "$PY" tests/e2e/harness.py cleanup "$AEGIS_E2E_PREFIX" || true
    rm -rf "$scratch"
}
trap cleanup EXIT

phase() { printf '[e2e %4ds] %s\n' $((SECONDS - started)) "$*"; }

# --- host tools ---------------------------------------------------------------------------------
# dpkg name -> a command it provides; apt runs (one update first) only for what is missing.
declare -A tools=(
    [systemd-container]=systemd-nspawn [debootstrap]=debootstrap [iproute2]=ip [socat]=socat
    [openssh-client]=ssh [zstd]=zstd [util-linux]=unshare
)
missing=()
for package in "${!tools[@]}"; do
    command -v "${tools[$package]}" >/dev/null || missing+=("$package")
done
if ((${#missing[@]})); then
    phase "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- the controller's Ansible, pinned -----------------------------------------------------------
lock=ansible/requirements-controller.txt
if ! cmp -s "$lock" "$DEPLOY_VENV/.installed" 2>/dev/null; then
    phase "ansible venv ($DEPLOY_VENV)"
    rm -rf "$DEPLOY_VENV"
    python3 -m venv "$DEPLOY_VENV"
    "$DEPLOY_VENV/bin/pip" install --quiet -r "$lock"
    cp "$lock" "$DEPLOY_VENV/.installed"
fi

# --- the Debian root, cached per package list and ISO week (scripts/debian-rootfs.sh) ----------
# What the target needs: systemd as PID 1, sshd, a python for Ansible (with packaging for the pip
# module, apt for the apt module), venv for the releases, procps for ExecReload's kill.
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,python3-packaging,python3-apt,openssh-server,ca-certificates,procps
phase "Debian root ($PACKAGES)"
AEGIS_E2E_ROOTFS=$(SUITE=bookworm bash scripts/debian-rootfs.sh "$CACHE" "$PACKAGES")
export AEGIS_E2E_ROOTFS

# --- wheels: the container has no network -------------------------------------------------------
# The runtime (a CPU torch, as aegis_tpu_runtime installs with flavor cpu), pinned by constraints.txt.
torch_pin=$(grep -E '^torch==' constraints.txt)
wheels_key=$(cat constraints.txt pyproject.toml "$SCRIPT" | sha256sum | cut -c1-12)
export AEGIS_E2E_RUNTIME_WHEELS=$CACHE/wheels-$wheels_key/runtime
export AEGIS_E2E_APP_WHEELS=$CACHE/wheels-$wheels_key/app
if [[ ! -d $AEGIS_E2E_APP_WHEELS ]]; then
    phase "wheelhouses ($torch_pin and the app's dependencies)"
    rm -rf "$CACHE"/wheels-*
    "$PY" -m pip download --quiet --only-binary=:all: -c constraints.txt -d "$scratch/runtime" "$torch_pin"
    "$PY" -m pip wheel --quiet -c constraints.txt -w "$scratch/app" .
    # The runtime venv provides torch, so the app's wheelhouse leaves out that big wheel. torch's
    # small dependencies stay: a release venv's own older copies (ensurepip's setuptools) shadow
    # the runtime's, and pip upgrades them from here.
    rm -f "$scratch"/app/torch-*.whl "$scratch"/app/aegis_appliance-*.whl
    mkdir -p "$CACHE/wheels-$wheels_key"
    mv "$scratch/runtime" "$AEGIS_E2E_RUNTIME_WHEELS"
    mv "$scratch/app" "$AEGIS_E2E_APP_WHEELS"
fi

# The app itself, built from the working tree every run.
phase "app wheel"
"$PY" -m pip wheel --quiet --no-deps -w "$scratch/dist" .
export AEGIS_E2E_APP_WHEEL=$(ls "$scratch"/dist/aegis_appliance-*.whl)

# Two more releases of the same code, built from copies of the tree under other versions.
variant() {  # variant NAME VERSION: a copy of the tree, its version changed; prints its folder
    local tree=$scratch/$1
    mkdir -p "$tree"
    cp -r pyproject.toml appliance "$tree"/
    [[ -f README.md ]] && cp README.md "$tree"/
    sed -i "s/^version = .*/version = \"$2\"/" "$tree/pyproject.toml"
    echo "$tree"
}
# The next release, for the interrupted rollout.
next=$(variant next "0.1.0+next")
"$PY" -m pip wheel --quiet --no-deps -w "$scratch/dist-next" "$next"
export AEGIS_E2E_NEXT_WHEEL=$(ls "$scratch"/dist-next/aegis_appliance-*.whl)
# A release that knows a [server] key the live one refuses, passes check-config with it, and exits
# before READY=1: its rollback must put back the old config too, or the old release cannot start.
unready=$(variant unready "0.0.0+unready")
cat >>"$unready/appliance/__init__.py" <<'EOF'


# tests/e2e fixture: this release knows one more [server] key, and cannot become ready.
def _accept_e2e_key() -> None:
    # In the module whose load_config calls it: parse_config drops the key before validating.
    import importlib

    from appliance.config import load_config

    module = importlib.import_module(load_config.__module__)
    parse = module.parse_config

    def parse_config(data, source=None):  # noqa: ANN001, ANN202
        server = {k: v for k, v in data.get("server", {}).items() if k != "e2e_release_marker"}
        return parse({**data, "server": server}, source)

    module.parse_config = parse_config


_accept_e2e_key()

import sys as _sys

if "serve" in _sys.argv[1:]:
    raise SystemExit("aegis: this e2e release exits before it is ready")
EOF
"$PY" -m pip wheel --quiet --no-deps -w "$scratch/dist-unready" "$unready"
export AEGIS_E2E_UNREADY_WHEEL=$(ls "$scratch"/dist-unready/aegis_appliance-*.whl)
export AEGIS_E2E_DEPLOY_VENV=$DEPLOY_VENV

# --- the tests ----------------------------------------------------------------------------------
phase "pytest -m e2e tests/e2e (logs: $AEGIS_E2E_LOGS)"
status=0
"$PY" -m pytest -m e2e -p no:cacheprovider -v tests/e2e || status=$?
phase "done (pytest exit $status)"
[[ -f $AEGIS_E2E_LOGS/results.txt ]] && sed 's/^/  /' "$AEGIS_E2E_LOGS/results.txt"
# pytest's 5 (nothing collected) is a failure too: every non-zero status fails the tier.
exit "$status"
