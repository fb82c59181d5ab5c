#!/usr/bin/env bash
# The delay harvest's SPANK plugin adds to a job step: `srun true` in one allocation on n1, N
# times each, in three configurations interleaved in the same run (so drift on a shared machine
# hits all alike):
#
#   none    the plugin not registered (baseline)
#   agent   the plugin, talking to a fake agent that answers at once (the plugin's own cost)
#   absent  the plugin, no agent listening (connect fails; one warning per step)
#
# and prints median and p99 per configuration and the difference to the baseline.
#
#   spank-plugin/bench/step-start.sh [N]      N defaults to 200
#
# Needs the local cluster (deploy/local-cluster up) and python3 (the fake agent). It points the
# plugin at its own sockets for the run: it rewrites plugstack.conf.d/harvest.conf when `up`
# registered the plugin (restored at exit), or registers its own file (removed at exit).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$PWD
N=${1:-200}
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "step-start.sh: N must be a positive number, not '$N'" >&2; exit 2; }

eval "$(deploy/local-cluster env)"
DIR=$HARVEST_CLUSTER_DIR
CONFD=$DIR/etc/plugstack.conf.d
WORK=$(mktemp -d /tmp/harvest-bench.XXXXXX)
agent_pid=""

if [ -f "$CONFD/harvest.conf" ]; then
    CONF=$CONFD/harvest.conf
    cp "$CONF" "$WORK/harvest.conf.orig"
    SO=$(awk '{print $2}' "$WORK/harvest.conf.orig")
    added=0
else
    cargo build --quiet --release -p harvest-spank
    sum=$(sha256sum target/release/libharvest_spank.so | cut -c1-16)
    SO=$DIR/lib/libharvest_spank-$sum.so
    mkdir -p "$DIR/lib"
    [ -e "$SO" ] || { cp target/release/libharvest_spank.so "$SO.tmp" && mv "$SO.tmp" "$SO"; }
    CONF=$CONFD/harvest-bench.conf
    added=1
fi

set_conf() { # TEXT: replace the registration atomically (slurmstepd re-reads it at every step)
    printf '%s\n' "$1" >"$CONF.tmp" && mv "$CONF.tmp" "$CONF"
}

cleanup() {
    [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null || true
    if [ $added -eq 1 ]; then
        rm -f "$CONF"
        deploy/local-cluster up >/dev/null 2>&1 || true
    else
        cp "$WORK/harvest.conf.orig" "$CONF.tmp" && mv "$CONF.tmp" "$CONF"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/agent" "$WORK/absent"
cat >"$WORK/agent.py" <<'EOF'
import os, socket, sys, threading
def serve(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(128)
    while True:
        c, _ = s.accept()
        c.makefile("rb").readline()
        c.sendall(b'{"v":1,"ok":true}\n')
        c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(p,), daemon=True).start()
threading.Event().wait()
EOF
python3 "$WORK/agent.py" "$WORK/agent/harvestd-n1.sock" "$WORK/agent/harvestd-n2.sock" &
agent_pid=$!
for _ in $(seq 50); do [ -S "$WORK/agent/harvestd-n1.sock" ] && break; sleep 0.1; done

NONE="# harvest plugin off for the baseline"
AGENT="optional $SO socket=$WORK/agent/harvestd-%n.sock default=on timeout_ms=100"
ABSENT="optional $SO socket=$WORK/absent/harvestd-%n.sock default=on timeout_ms=100"
if [ $added -eq 1 ]; then
    set_conf "$NONE"
    deploy/local-cluster up >/dev/null 2>&1
fi

run_one() { # NAME CONF
    set_conf "$2"
    local t0 t1
    t0=$(date +%s%N)
    srun true
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000)) >>"$WORK/$1.us"
}

# The steps run inside one allocation, so that queueing behind other users' jobs and the job
# allocation itself stay out of the figures: what is timed is a step's launch and end, where the
# plugin's user_init and exit run.
echo "step-start.sh: $N x 3 steps of 'srun true' in one allocation on n1 (interleaved)..." >&2
export -f run_one set_conf
export WORK CONF NONE AGENT ABSENT N
salloc --quiet -w n1 -n1 --mem=200M bash -c '
    set -eu
    srun true # warm-up
    for ((i = 0; i < N; i++)); do
        run_one none "$NONE"
        run_one agent "$AGENT"
        run_one absent "$ABSENT"
    done'

stat() { # FILE -> "median p99" in ms
    sort -n "$1" | awk '{a[NR]=$1} END {
        m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2
        i = int(NR * 0.99 + 0.999999); if (i > NR) i = NR; if (i < 1) i = 1
        printf "%.2f %.2f", m / 1000, a[i] / 1000 }'
}
read -r base_med base_p99 <<<"$(stat "$WORK/none.us")"
printf '%-8s %10s %10s %14s %14s\n' config median_ms p99_ms median_added p99_added
for c in none agent absent; do
    read -r med p99 <<<"$(stat "$WORK/$c.us")"
    awk -v c="$c" -v m="$med" -v p="$p99" -v bm="$base_med" -v bp="$base_p99" \
        'BEGIN { printf "%-8s %10.2f %10.2f %14.2f %14.2f\n", c, m, p, m - bm, p - bp }'
done
