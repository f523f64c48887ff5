#!/usr/bin/env bash
# Runs qtasks against its peers with the shared harness (../shared/bench), alternating them
# round by round on one Redis, and prints the ratios; then draws the chart.
#
#   bash bench/compare.sh                 # Redis: Python QTasks 1.7.3, qtasks, apalis (7k backlog)
#   bash bench/compare.sh --inmem         # in memory: qtasks against the bare tokio channel
#   BENCH_N=20000 BENCH_REPS=3 bash bench/compare.sh
#
# Needs the harness's one-time setup: bash ../shared/bench/setup.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
harness="${BENCH_HARNESS:-$root/../shared/bench}"
[ -d "$harness" ] || { echo "the harness is not at $harness (set BENCH_HARNESS)"; exit 2; }

# Without the other engines' features, and optimised as one program (the workspace's
# `release-lto` profile): the worker measured is the binary a Redis user deploys.
cargo build --profile release-lto -p qtasks-bench --no-default-features --manifest-path "$root/Cargo.toml"
bin="$root/target/release-lto/qtasks-bench"
results="${BENCH_RESULTS:-/tmp/bench-results}"
mkdir -p "$results"
export BENCH_RESULTS="$results"

config="$(mktemp --suffix=.json)"
if [ "${1:-}" = "--inmem" ]; then
  shift
  cat > "$config" <<JSON
{"self_contained": true, "self_cmd": ["$bin", "inmem", "--n", "{n}"], "env": {"RUST_LOG": "warn"},
 "enqueue_cmd": [], "worker_cmd": [], "done": {"kind": "empty", "cmds": []}}
JSON
  peers=(inmem yours)
else
  # Done when the queue, the ready set and the leases are empty (a finished task's pipeline
  # stores its result before it releases the lease). The worker runs one runtime thread: on two
  # cores Redis needs the other one, and two worker threads measured slower.
  cat > "$config" <<JSON
{"enqueue_cmd": ["$bin", "enqueue", "--url", "{url}", "--n", "{n}"],
 "worker_cmd": ["$bin", "worker", "--url", "{url}", "--threads", "1"],
 "started": {"kind": "below", "db": 0, "cmds": [["LLEN", "QueueTasks:task_queue"]]},
 "done": {"kind": "empty", "db": 0, "cmds": [["LLEN", "QueueTasks:task_queue"], ["LLEN", "QueueTasks:qtasks:incoming"], ["ZCARD", "QueueTasks:qtasks:ready"], ["ZCARD", "QueueTasks:qtasks:leases"]]},
 "w2": [{"label": "default", "n": 500, "warmup": 5,
         "client_cmd": ["$bin", "w2", "--url", "{url}", "--n", "{n}", "--warmup", "{warmup}"]}],
 "env": {"RUST_LOG": "warn"}}
JSON
  peers=(qtasks yours apalis-7k)
fi
export BENCH_YOURS_JSON="$config"
bash "$harness/compare.sh" "${peers[@]}" "$@" | tee "$results/last-compare.txt"
py="${BENCH_PY:-/tmp/benchvenv/bin/python}"
"$py" -c "import matplotlib" 2>/dev/null || "$py" -m pip install -q matplotlib
[ "${peers[0]}" = "qtasks" ] && "$py" "$here/chart.py" "$results" "$root/bench/chart.png"
