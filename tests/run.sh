#!/usr/bin/env bash
# The edgeward test suite, end-to-end tests included: installs what is missing, builds every
# binary, then runs every test of the workspace. Needs root (network namespaces, iptables).
set -euo pipefail
# iptables, tcpdump and ip live in sbin, which a non-login root shell may not have on PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/run.sh: the end-to-end tests need root (network namespaces, veth, iptables);" >&2
    echo "run it as root: bash tests/run.sh" >&2
    exit 1
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tests/setup.sh
cargo build --workspace --bins --locked
cargo test --workspace --locked -- --test-threads=2
