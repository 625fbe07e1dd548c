#!/usr/bin/env bash
# make image: the appliance's OCI image, built offline on this machine (root).
#
#   image/build.sh [cpu|tpu|jax]   -> dist/aegis-VERSION-FLAVOR.oci.tar (an OCI archive)
#
# No base image is pulled: a Debian root from debootstrap (scripts/debian-rootfs.sh, cached in
# .cache/image) is imported into podman, and every wheel is fetched on the host into a cached
# wheelhouse, so the build itself runs with --network none. The image is left out of podman's
# storage (the archive is the product); the imported base and the runtime stage stay there as
# caches (localhost/aegis-base, localhost/aegis-runtime), replaced when their inputs change.
set -euo pipefail
SCRIPT=$(realpath "$0")
cd "$(dirname "$SCRIPT")/.."
REPO=$PWD
FLAVOR=${1:-cpu}
case $FLAVOR in cpu | tpu | jax) ;; *) echo "image/build.sh: flavor must be cpu, tpu or jax, not $FLAVOR" >&2; exit 2 ;; esac
PY=${PY:-$REPO/.venv/bin/python}
CACHE=$REPO/.cache/image
mkdir -p "$CACHE" dist
started=$SECONDS
phase() { printf '[image %4ds] %s\n' $((SECONDS - started)) "$*" >&2; }

# shellcheck source=image/podman-env.sh
source image/podman-env.sh

# --- the base: a Debian root with Python 3.11 and venv, imported once per tarball ---------------
rootfs=$(bash scripts/debian-rootfs.sh "$CACHE" python3,python3-venv,ca-certificates)
base=localhost/aegis-base:$(basename "$rootfs" .tar.zst)
if ! podman image exists "$base"; then
    phase "podman import $(basename "$rootfs")"
    zstd -dc "$rootfs" | podman import --quiet - "$base" >/dev/null
    # Older imports of other weeks' roots are dead weight.
    podman images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/aegis-base:' | grep -vxF "$base" |
        xargs -r podman rmi --force >/dev/null || true
fi

# --- the wheels, on the host: the flavor's runtime set and the app's dependencies, one resolve ---
case $FLAVOR in
cpu) runtime=(-c constraints.txt) ;;
tpu) runtime=(-r ansible/roles/aegis_tpu_runtime/files/requirements-tpu.txt) ;;
jax) runtime=(-r ansible/roles/aegis_tpu_runtime/files/requirements-jax.txt) ;;
esac
# Keyed by what decides the wheels: the pins, the runtime sets and the app's declared dependencies.
key=$({
    cat constraints.txt ansible/roles/aegis_tpu_runtime/files/requirements-*.txt
    "$PY" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(p["requires-python"], *p["dependencies"])'
} | sha256sum | cut -c1-12)
wheelhouse=$CACHE/wheels-$FLAVOR-$key
if [[ ! -f $wheelhouse/.complete ]]; then
    phase "wheelhouse ($FLAVOR)"
    rm -rf "$CACHE"/wheels-"$FLAVOR"-*
    "$PY" -m pip wheel --quiet "${runtime[@]}" -w "$wheelhouse" . >"$CACHE/pip.log" 2>&1 ||
        { tail -20 "$CACHE/pip.log" >&2; exit 1; }
    rm -f "$wheelhouse"/aegis_appliance-*.whl
    touch "$wheelhouse/.complete"
fi
# The build context's wheel folder: the cached wheels (hard links) and this tree's app wheel.
rm -rf build/image/wheels
mkdir -p build/image/wheels
cp -l "$wheelhouse"/*.whl build/image/wheels/ 2>/dev/null || cp "$wheelhouse"/*.whl build/image/wheels/
"$PY" -m pip wheel --quiet --no-deps -w build/image/wheels . >"$CACHE/pip.log" 2>&1 ||
    { tail -20 "$CACHE/pip.log" >&2; exit 1; }

# --- the build -------------------------------------------------------------------------------
version=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
[[ -n $(git status --porcelain 2>/dev/null) ]] && revision=$revision-dirty
source_url=${AEGIS_IMAGE_SOURCE:-$(git remote get-url origin 2>/dev/null || echo "file://$REPO")}
tag=localhost/aegis:$version-$FLAVOR
archive=dist/aegis-$version-$FLAVOR.oci.tar
args=(--network none --pull=never -f Containerfile --build-arg BASE="$base" --build-arg FLAVOR="$FLAVOR"
    --build-arg WHEELS=build/image/wheels --build-arg RUNTIME_KEY="$key")
# The runtime stage, tagged so that it stays as the next build's cache (like the base).
runtime_image=localhost/aegis-runtime:$FLAVOR-$key
if ! podman image exists "$runtime_image"; then
    phase "podman build $runtime_image (offline; the runtime, cached)"
    podman build --quiet "${args[@]}" --target runtime -t "$runtime_image" . >/dev/null
    podman images --format '{{.Repository}}:{{.Tag}}' | grep "^localhost/aegis-runtime:$FLAVOR-" |
        grep -vxF "$runtime_image" | xargs -r podman rmi --force >/dev/null || true
fi
phase "podman build $tag (offline)"
podman build --quiet "${args[@]}" --build-arg VERSION="$version" --build-arg REVISION="$revision" \
    --build-arg SOURCE="$source_url" -t "$tag" . >/dev/null
rm -f "$archive"
# Layers gzip-compressed, as registries serve them; AEGIS_IMAGE_UNCOMPRESSED=1 (the k8s tier, which
# loads the archive on this same host) skips the minute that compressing a gigabyte takes here.
compression=()
[[ ${AEGIS_IMAGE_UNCOMPRESSED:-0} == 1 ]] && compression=(--uncompressed)
podman save --quiet --format oci-archive "${compression[@]}" -o "$archive" "$tag"
size=$(podman image inspect --format '{{.Size}}' "$tag")
podman rmi --force "$tag" >/dev/null
rm -rf build/image
phase "$archive: image $((size / 1000000)) MB, archive $(($(stat -c %s "$archive") / 1000000)) MB ($tag)"
echo "$REPO/$archive"
