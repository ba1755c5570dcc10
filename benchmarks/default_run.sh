#!/usr/bin/env bash
# Times the README's first command from scratch (dataset prepared in a fresh data dir):
# wall time and peak memory, for benchmarks/RESULTS.md.
#   bash benchmarks/default_run.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
workdir=${1:-runs/benchmark_default}
data_dir="$workdir/tfds"
rm -rf "$workdir"
mkdir -p "$workdir"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "date: $(date -u +%Y-%m-%d)"
/usr/bin/time -f 'wall %e s, peak RSS %M KB' \
  python -m cam_jax.main --config=configs/synthetic_gap.py --workdir="$workdir" \
  --config.data.data_dir="$data_dir" 2> "$workdir/stderr.log"
tail -n 1 "$workdir/stderr.log"
grep -E 'step [0-9]+/' "$workdir/stderr.log" | tail -n 2
