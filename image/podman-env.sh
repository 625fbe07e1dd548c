# Sourced by image/build.sh and the k8s tier: Debian's podman with runc, the settings this kind of
# host needs (crun cannot set RLIMIT_NOFILE here; with runc the default ulimits must be empty).
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v catatonit >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman runc catatonit zstd debootstrap >/dev/null
fi
AEGIS_CONTAINERS_CONF=${AEGIS_CONTAINERS_CONF:-$PWD/.cache/image/containers.conf}
mkdir -p "$(dirname "$AEGIS_CONTAINERS_CONF")"
printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' >"$AEGIS_CONTAINERS_CONF"
export CONTAINERS_CONF=$AEGIS_CONTAINERS_CONF
