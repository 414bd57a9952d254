#!/usr/bin/env bash
# The push-latency benchmark of issue #4: the time from `edgewardctl policy apply` to every
# subscriber holding the change, with 1 (node 1's real proxy, and one simulated), 100 and 1,000
# subscribers, plus the control plane's memory and CPU at 1,000. About a minute. The table
# goes into BENCHMARKS.md at the repository root, replacing only this benchmark's section.
# Needs root.
#
#   bash bench/push.sh                  # release build, then the run
#   bash bench/push.sh --debug          # debug binaries (slower figures)
#   bash bench/push.sh --no-build       # use the binaries already built
#   ... -- --watchers 1,100 --rounds 10 --out FILE   # after --, arguments for the benchmark
set -euo pipefail
# ip lives in sbin, which a non-login root shell may not have on PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

if [[ $(id -u) -ne 0 ]]; then
    echo "bench/push.sh: run as root (network namespaces)" >&2
    exit 1
fi

profile=release
build=1
while (($#)); do
    case $1 in
        --debug) profile=debug ;;
        --no-build) build=0 ;;
        --) shift; break ;;
        *) echo "bench/push.sh: unknown option $1 (see the head of this file)" >&2; exit 1 ;;
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

# 1,000 TLS connections on each side: this process and the control plane it starts (which
# inherits the limit) need more open files than the usual 1024. The soft limit goes up to the
# hard one; the benchmark itself says so if that is still too low.
ulimit -n "$(ulimit -Hn)"

# The lab runs the edgeward binaries of the same build as the benchmark itself.
export EDGEWARD_BIN_DIR=$target/$profile
exec "$target/$profile/edgeward-bench-push" "$@"
