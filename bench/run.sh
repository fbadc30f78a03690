#!/usr/bin/env bash
# The benchmark suite: each script prints one JSON line per measurement and a markdown table.
# Logs go to bench/results/ (not committed); the latest figures live in bench/README.md.
#   bash bench/run.sh              # all, ~10 minutes on 2 cores
#   bash bench/run.sh runner       # one: runner | engine | saturation | load | scale | store
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p bench/results
which=${1:-all}
run() { echo "== $1"; shift; "$@" 2>&1 | tee "bench/results/$name.log"; }
if [[ $which == all || $which == runner ]]; then name=runner run "runner overhead" $PY bench/runner_overhead.py; fi
if [[ $which == all || $which == engine ]]; then name=engine run "embedded engine" $PY bench/engine.py; fi
if [[ $which == all || $which == saturation ]]; then name=saturation run "saturation vs peer" $PY bench/saturation.py; fi
if [[ $which == all || $which == load ]]; then name=load run "server load" $PY bench/load_server.py; fi
if [[ $which == all || $which == scale ]]; then name=scale run "scale-out: executors" $PY bench/scale_out.py; fi
if [[ $which == all || $which == store ]]; then name=store run "store and driver at scale" $PY bench/store_scale.py; fi
