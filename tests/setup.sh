#!/usr/bin/env bash
# Installs what the end-to-end tests and the local demo need, as root, and only what is
# missing: iproute2, iptables, ethtool, tcpdump, protoc, gcc and python3 (with venv) from
# Debian, and a Python virtual environment with grpcio at <target>/edgeward-pyenv. Safe to run
# again and again.
set -euo pipefail
# iptables, ethtool, tcpdump and ip live in sbin, which a non-login root shell may lack on PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/setup.sh: run as root (it installs Debian packages)" >&2
    exit 1
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target=$repo/$target
venv=$target/edgeward-pyenv
requirements=$repo/tests/apps/requirements.txt

# Debian packages, by the command each one provides.
declare -A package_of=(
    [ip]=iproute2
    [iptables]=iptables
    [ethtool]=ethtool
    [tcpdump]=tcpdump
    [protoc]=protobuf-compiler
    [cc]=gcc
    [python3]=python3
)
missing=()
for command in "${!package_of[@]}"; do
    command -v "$command" >/dev/null 2>&1 || missing+=("${package_of[$command]}")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's own python3 keeps venv in a package of its own.
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "setup: installing python3-venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi

# The Python gRPC peers, in a virtual environment of their own.
stamp=$venv/.edgeward-requirements
if [[ -x $venv/bin/python ]] && cmp -s "$requirements" "$stamp" \
    && "$venv/bin/python" -c 'import grpc, grpc_tools.protoc' 2>/dev/null; then
    exit 0
fi
echo "setup: creating the Python environment for the gRPC test peers in $venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
"$venv/bin/python" -c 'import grpc, grpc_tools.protoc'
cp "$requirements" "$stamp"
