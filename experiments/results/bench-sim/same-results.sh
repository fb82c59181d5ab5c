#!/usr/bin/env bash
# Checks that two builds of harvest-experiments simulate the same thing: every output but the
# timing fields (events/s, wall and CPU seconds, placement latency) byte-identical.
#
#   experiments/results/bench-sim/same-results.sh BEFORE_BINARY AFTER_BINARY [--full]
#
# Runs, with each binary:
# - `simulate --quick` on each SWF trace given in $TRACES (default: RICC-2010-2 and
#   LLNL-Thunder from ../shared/data), comparing every summary.json (timing keys removed),
#   every timeseries.csv and sweep.csv, and every report.md (timing lines removed);
# - `bench-sim --harvest-only --quick` on the synthetic 10,000-node workload, comparing its
#   summary and time series (timing keys removed), the event counts included;
# - with --full, the same on the full synthetic window (about two minutes a binary).
# Exits 1 on the first difference, printing it.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
before=$1
after=$2
full=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
data=${HARVEST_DATA:-$here/../../../../shared/data}
traces=${TRACES:-"$data/traces/swf/RICC-2010-2.swf.gz $data/traces/swf/LLNL-Thunder-2007-1.1-cln.swf.gz"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The keys whose values are measured times (or rates of them), not results; and `trace`, the
# synthetic trace's temporary file (earlier builds of bench-sim name it there).
strip_json() {
    python3 - "$1" <<'EOF'
import json, re, sys
TIMING = re.compile(r"^(events_per_s.*|events_per_cpu_s.*|wall_s|cpu_s|placement_p\d+_us)$")
if "synthetic" in sys.argv[1]:
    TIMING = re.compile(TIMING.pattern[:-2] + r"|trace)$")
def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if not TIMING.match(k)}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x
print(json.dumps(strip(json.load(open(sys.argv[1]))), indent=1, sort_keys=True))
EOF
}

compare_dirs() {
    local a=$1 b=$2 f rel
    (cd "$a" && find . -type f ! -name '*.png' | sort) >"$work/files-a"
    (cd "$b" && find . -type f ! -name '*.png' | sort) >"$work/files-b"
    diff "$work/files-a" "$work/files-b"
    while read -r rel; do
        case "$rel" in
        *.json) diff <(strip_json "$a/$rel") <(strip_json "$b/$rel") ;;
        *.md) diff <(grep -viE 'µs|events/s' "$a/$rel") <(grep -viE 'µs|events/s' "$b/$rel") ;;
        *) cmp "$a/$rel" "$b/$rel" ;;
        esac || {
            echo "DIFFERENT: $rel"
            exit 1
        }
    done <"$work/files-a"
}

for trace in $traces; do
    name=$(basename "$trace")
    for which in before after; do
        bin=$before
        [[ $which == after ]] && bin=$after
        nice -n 19 "$bin" simulate --trace "$trace" --quick --data "$data" \
            --out "$work/$which-$name" >/dev/null 2>&1
    done
    compare_dirs "$work/before-$name" "$work/after-$name"
    echo "same: simulate --quick --trace $name ($(find "$work/before-$name" -name summary.json | wc -l) summaries)"
done

runs=("--quick")
[[ $full == --full ]] && runs+=("")
for q in "${runs[@]}"; do
    for which in before after; do
        bin=$before
        [[ $which == after ]] && bin=$after
        # shellcheck disable=SC2086
        nice -n 19 "$bin" bench-sim --harvest-only $q --repeat 1 --data "$data" \
            --summary-out "$work/$which-synthetic.json" | tee "$work/$which-synthetic.txt"
    done
    diff <(strip_json "$work/before-synthetic.json") <(strip_json "$work/after-synthetic.json") || {
        echo "DIFFERENT: synthetic ${q:-full}"
        exit 1
    }
    echo "same: bench-sim --harvest-only ${q:-(full window)} on the synthetic 10,000 nodes"
done
echo "all the same"
