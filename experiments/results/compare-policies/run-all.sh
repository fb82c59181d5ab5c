#!/usr/bin/env bash
# The commands that produced the policy comparisons in this directory (docs/simulator.md).
# Run from the repository root; the traces are read from ../shared/data (HARVEST_DATA).
set -euo pipefail
cargo build --release -p harvest-experiments --locked
T=${HARVEST_DATA:-../shared/data}/traces/swf
R=experiments/results/compare-policies
cmp() { target/release/harvest-experiments compare-policies --seeds 5 "$@"; }
# 10 copies of RICC: almost no idle capacity (policies under scarcity).
cmp --trace "$T/RICC-2010-2.swf.gz" --nodes 10240 --start 720h --node-mem 12G --out "$R/RICC-10240n"
# LLNL Thunder on its own machine: ~19% of the cores idle in the window (room to place).
cmp --trace "$T/LLNL-Thunder-2007-1.1-cln.swf.gz" --start 840h --node-mem 8G --out "$R/LLNL-Thunder"
# MetaCentrum on its own machine: shared nodes (two node shapes, core-granular) with ~40% of the
# cores idle in the window, the one trace here where jobs and leases share nodes with room to
# choose (RICC's shared nodes are full; KTH, HPC2N and Thunder are node-exclusive).
cmp --trace "$T/MetaCentrum-wagap-2013-alea.swf.gz" --start 720h --out "$R/MetaCentrum"
