#!/usr/bin/env bash
# The app's dependency pins for hosts, one set per supported Python: the aegis_appliance role
# installs a release with the set for the host's interpreter (Cloud TPU VM images: Ubuntu 22.04
# with 3.10, 24.04 with 3.12; Debian 12 3.11, Debian 13 3.13). torch is not in them: the runtime
# venv of aegis_tpu_runtime provides it.
#
#   ansible/host_requirements.sh compile   regenerate after a dependency changed in pyproject.toml
#                                          (keeps each set's pins where they still fit)
#   ansible/host_requirements.sh upgrade   the same, taking the newest versions that fit
#   ansible/host_requirements.sh check     each set resolves with binary wheels for its Python and
#                                          satisfies pyproject.toml (make test runs this)
#
# The 3.11 and newer sets follow constraints.txt (the dev/CI freeze, a 3.11 set) wherever it
# resolves for them; 3.10 cannot take it (starlette 1.10 and pycparser 3.12 need 3.11).
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/.."
mode=${1:-check}
PYTHONS=(3.10 3.11 3.12 3.13)
SETS=ansible/roles/aegis_appliance/files/requirements
PLATFORM=x86_64-manylinux_2_28
UV_VERSION=0.13.9
UV_VENV=.venv-uv
UV=$UV_VENV/bin/uv

if [[ ! -x $UV ]] || [[ $("$UV" --version | cut -d' ' -f2) != "$UV_VERSION" ]]; then
    rm -rf "$UV_VENV"
    python3 -m venv "$UV_VENV"
    "$UV_VENV/bin/pip" install --quiet "uv==$UV_VERSION"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The app's runtime requirements less torch, read from pyproject.toml.
python3 - >"$work/requirements.in" <<'PY'
import re
import tomllib

with open("pyproject.toml", "rb") as stream:
    dependencies = tomllib.load(stream)["project"]["dependencies"]
print("\n".join(d for d in dependencies if not re.match(r"torch\s*($|[<>=!~;\[])", d)))
PY

resolve() {  # resolve PYTHON OUTPUT [uv options...]: the pins for one Python
    local python=$1 output=$2
    shift 2
    "$UV" pip compile --quiet "$work/requirements.in" --python-version "$python" \
        --python-platform "$PLATFORM" --only-binary :all: "$@" -o "$output"
}

status=0
for python in "${PYTHONS[@]}"; do
    set_file=$SETS/py$python.txt
    case $mode in
    compile | upgrade)
        mkdir -p "$SETS"
        options=(--custom-compile-command "ansible/host_requirements.sh compile")
        [[ $mode == upgrade ]] && options+=(--upgrade)
        [[ -f $set_file ]] && cp "$set_file" "$work/out.txt"
        if [[ $python != 3.10 ]] && resolve "$python" "$work/with-constraints.txt" \
            -c constraints.txt --no-header 2>/dev/null; then
            options+=(-c constraints.txt)
        fi
        resolve "$python" "$work/out.txt" "${options[@]}"
        mv "$work/out.txt" "$set_file"
        echo "$set_file: $(grep -c '==' "$set_file") pins"
        ;;
    check)
        if [[ ! -f $set_file ]]; then
            echo "$set_file: missing; run ansible/host_requirements.sh compile" >&2
            status=1
            continue
        fi
        # What pyproject.toml needs, resolved within the set: the set itself when it is complete.
        if ! resolve "$python" "$work/resolved.txt" -c "$set_file" --no-header --no-annotate \
            2>"$work/error.txt"; then
            echo "$set_file: does not resolve for Python $python with binary wheels:" >&2
            cat "$work/error.txt" >&2
            status=1
            continue
        fi
        pins() {  # name==version lines, names normalized (PEP 503)
            grep -E '^[A-Za-z0-9]' "$1" | sed 's/ *;.*//' |
                awk -F'==' '{ name = tolower($1); gsub(/[-_.]+/, "-", name); print name "==" $2 }' |
                sort
        }
        if ! diff <(pins "$set_file") <(pins "$work/resolved.txt") >"$work/diff.txt"; then
            echo "$set_file: stale for pyproject.toml (< set, > needed); run" \
                "ansible/host_requirements.sh compile:" >&2
            cat "$work/diff.txt" >&2
            status=1
            continue
        fi
        echo "$set_file: resolves for Python $python ($PLATFORM, binary wheels only)"
        ;;
    *)
        echo "usage: ansible/host_requirements.sh compile|upgrade|check" >&2
        exit 2
        ;;
    esac
done
exit $status
