#!/usr/bin/env bash
# The local edgeward demo, on a fresh machine, as root: installs what is missing, builds the
# binaries, then shows a gRPC call between two edge nodes carried through the mesh.
set -euo pipefail
# iptables, tcpdump and ip live in sbin, which a non-login root shell may not have on PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

if [[ $(id -u) -ne 0 ]]; then
    echo "deploy/local/demo.sh: the demo needs root (network namespaces, veth, iptables);" >&2
    echo "run it as root: bash deploy/local/demo.sh" >&2
    exit 1
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target=$repo/$target

echo "== Installing what the demo needs (only what is missing)"
bash tests/setup.sh
echo "== Building edgeward (cargo build --workspace --bins)"
cargo build --workspace --bins --locked
echo
exec "$target/debug/edgeward-demo"
