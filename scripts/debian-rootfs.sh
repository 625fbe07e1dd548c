#!/usr/bin/env bash
# A Debian root file system from debootstrap, as a zstd tarball cached per suite, mirror, package
# list and ISO week (a fresh week picks up security updates). Used by the deploy tier (a booted
# systemd root) and by `make image` (the image's base, imported into podman): one copy of the logic.
#
#   scripts/debian-rootfs.sh CACHE_DIR PACKAGES   -> prints the tarball's path (root; debootstrap)
#
# SUITE (default bookworm) and MIRROR (default: this host's apt source) come from the environment.
# Only the newest tarball of each suite stays in CACHE_DIR.
set -euo pipefail
cache=$1 packages=$2
suite=${SUITE:-bookworm}
mirror=${MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}
# "root 0755": tarballs made before the root's mode was set had a 0700 "/" (see below).
key=$(printf '%s\n' "$suite" "$mirror" "$packages" "root 0755" | sha256sum | cut -c1-12)
tarball=$cache/rootfs-$suite-$key-$(date +%G-W%V).tar.zst
if [[ ! -f $tarball ]]; then
    command -v debootstrap >/dev/null || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap zstd >/dev/null
    }
    mkdir -p "$cache"
    root=$(mktemp -d "/var/tmp/debian-rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    # mktemp makes the directory 0700, and the tarball's "." carries that mode to the root of
    # every container made from it: no service user could reach /run, and dbus (as messagebus)
    # never answers systemd, whose boot then never finishes.
    chmod 0755 "$root"
    echo "debootstrap $suite ($packages)" >&2
    debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" \
        >"$cache/debootstrap.log" 2>&1 || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    # Each user of the root makes its own machine id and ssh host keys; the package cache is dead
    # weight.
    : >"$root/etc/machine-id"
    rm -f "$root"/var/lib/dbus/machine-id "$root"/etc/ssh/ssh_host_* "$root"/var/cache/apt/archives/*.deb
    rm -f "$cache"/rootfs-"$suite"-*.tar.zst
    tar -C "$root" -cf - . | zstd -3 -T0 -q -o "$tarball.part"
    mv "$tarball.part" "$tarball"
fi
echo "$tarball"
