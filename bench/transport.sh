#!/usr/bin/env bash
# The transport benchmark of issue #3: gRPC through the TCP tunnel, the QUIC tunnel and
# direct (no mesh) at 0, 1, 5 and 10 % loss, in one run of about 10 minutes; the table goes
# into BENCHMARKS.md at the repository root, replacing the previous one. Needs root.
#
#   bash bench/transport.sh                  # release build of everything, then the run
#   bash bench/transport.sh --debug          # debug binaries (slower figures)
#   bash bench/transport.sh --no-build       # use the binaries already built
#   ... -- --paths direct,tcp --out FILE          # after --, arguments for the benchmark
#   EDGEWARD_QUIC_CONGESTION=cubic bash bench/transport.sh -- --paths quic \
#       --section "QUIC with CUBIC"              # the proxies' controller; a section of its own
set -euo pipefail
# iptables, ethtool and ip live in sbin, which a non-login root shell may not have on PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

if [[ $(id -u) -ne 0 ]]; then
    echo "bench/transport.sh: run as root (network namespaces, iptables)" >&2
    exit 1
fi

profile=release
build=1
while (($#)); do
    case $1 in
        --debug) profile=debug ;;
        --no-build) build=0 ;;
        --) shift; break ;;
        *) echo "bench/transport.sh: unknown option $1 (see the head of this file)" >&2; exit 1 ;;
    esac
    shift
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tests/setup.sh
target=${CARGO_TARGET_DIR:-target}
if ((build)); then
    flags=(--locked --bins -p edgeward-proxy -p edgeward-control -p edgeward-lab)
    [[ $profile == release ]] && flags+=(--release)
    cargo build "${flags[@]}"
fi

# The lab runs the edgeward binaries of the same build as the benchmark itself.
export EDGEWARD_BIN_DIR=$target/$profile
exec "$target/$profile/edgeward-bench-transport" "$@"
