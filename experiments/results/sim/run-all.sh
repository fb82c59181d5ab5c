#!/usr/bin/env bash
# The commands that produced the studies in this directory (docs/simulator.md, "Results").
# Run from the repository root; the traces are read from ../shared/data (HARVEST_DATA).
set -euo pipefail
cargo build --release -p harvest-experiments --locked
sim() { target/release/harvest-experiments simulate --sweep 0.25,0.5,1,1.5 "$@"; }
T=${HARVEST_DATA:-../shared/data}/traces/swf
R=experiments/results/sim
sim --trace "$T/KTH-SP2-1996-2.1-cln.swf.gz" --start 720h --out "$R/KTH-SP2"
sim --trace "$T/HPC2N-2002-2.1-cln.swf.gz" --start 720h --out "$R/HPC2N"
sim --trace "$T/MetaCentrum-wagap-2013-alea.swf.gz" --start 720h --out "$R/MetaCentrum"
sim --trace "$T/LLNL-Thunder-2007-1.1-cln.swf.gz" --start 840h --node-mem 8G --out "$R/LLNL-Thunder"
sim --trace "$T/RICC-2010-2.swf.gz" --start 720h --node-mem 12G --out "$R/RICC"
sim --trace "$T/RICC-2010-2.swf.gz" --start 720h --node-mem 12G --nodes 10240 --out "$R/RICC-10240n"
# The same 10 copies under FCFS + EASY (the queue order before the priority model), one window.
sim --trace "$T/RICC-2010-2.swf.gz" --start 720h --node-mem 12G --nodes 10240 --windows 1 \
    --queue-order fcfs --out "$R/RICC-10240n-fcfs"
