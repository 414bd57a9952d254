#!/usr/bin/env bash
# Removes what an interrupted lab run left behind (a killed test or demo runs no clean-up):
# the namespaces named ew<pid>x<n>-... whose creating process is gone, with the processes
# still inside them. Namespaces of a lab run that is still alive are left alone.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/clean.sh: run as root" >&2
    exit 1
fi

removed=0
for ns in $(ip netns list | awk '{print $1}'); do
    [[ $ns =~ ^ew([0-9]+)x[0-9]+- ]] || continue
    [[ -d /proc/${BASH_REMATCH[1]} ]] && continue
    for pid in $(ip netns pids "$ns"); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns del "$ns"
    removed=$((removed + 1))
done
echo "tests/clean.sh: removed $removed leftover namespaces"
