#!/usr/bin/env bash
# A/B of two qtasks-bench binaries with the shared harness (../shared/bench): its `yours` slot
# runs one binary, then the other, alternating round by round (A B, B A, A B, ...), on the
# harness's own Redis (port 6391). Then bench/ab.py adds the in-memory figures.
#
#   bash bench/ab.sh BASELINE_BIN CANDIDATE_BIN [ROUNDS]
#
# To compare against the commit before: build it in a worktree with its own target folder,
#   git worktree add /tmp/base HEAD~1 && (cd /tmp/base && CARGO_TARGET_DIR=/tmp/base-target \
#     cargo build --release -p qtasks-bench)
# and pass /tmp/base-target/release/qtasks-bench as BASELINE_BIN.
# Needs the harness venv: python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install redis psutil
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
harness="${BENCH_HARNESS:-$here/../../shared/bench}"
base="$1" cand="$2" rounds="${3:-3}"
results="${BENCH_RESULTS:-/tmp/bench-ab}/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$results"
export BENCH_RESULTS="$results"

config() { # bin -> path of a `yours` configuration running it
  local out; out="$(mktemp --suffix=.json)"
  cat > "$out" <<JSON
{"enqueue_cmd": ["$1", "enqueue", "--url", "{url}", "--n", "{n}"],
 "worker_cmd": ["$1", "worker", "--url", "{url}", "--threads", "1"],
 "started": {"kind": "below", "db": 0, "cmds": [["LLEN", "QueueTasks:task_queue"]]},
 "done": {"kind": "empty", "db": 0, "cmds": [["LLEN", "QueueTasks:task_queue"], ["LLEN", "QueueTasks:qtasks:incoming"], ["ZCARD", "QueueTasks:qtasks:ready"], ["ZCARD", "QueueTasks:qtasks:leases"]]},
 "w2": [{"label": "default", "n": 500, "warmup": 5,
         "client_cmd": ["$1", "w2", "--url", "{url}", "--n", "{n}", "--warmup", "{warmup}"]}],
 "env": {"RUST_LOG": "warn"}}
JSON
  echo "$out"
}
base_cfg="$(config "$base")" cand_cfg="$(config "$cand")"
for round in $(seq 1 "$rounds"); do
  if (( round % 2 )); then order=(base cand); else order=(cand base); fi
  for who in "${order[@]}"; do
    cfg=$base_cfg; [[ $who == cand ]] && cfg=$cand_cfg
    echo "ab: round $round: $who" >&2
    BENCH_YOURS_JSON="$cfg" bash "$harness/run_peer.sh" yours --reps 1 --label "ab-$who" \
      > "$results/round$round-$who.txt"
  done
done
# Medians per measure and the ratio candidate / baseline (for a rate, above 1 is faster; for a
# latency or a cost, below 1 is better).
python3 - "$results" <<'PY'
import glob, json, statistics, sys
rows = {"base": {}, "cand": {}}
for who in rows:
    for path in glob.glob(f"{sys.argv[1]}/*-ab-{who}.jsonl"):
        for line in open(path):
            r = json.loads(line)
            w = r["workload"]
            for key in ("drain_rate", "enqueue_rate", "live_rate", "p50_ms", "p99_ms",
                        "worker_cpu_ms_per_task", "redis_cpu_ms_per_task", "vmhwm_main_mb"):
                if key in r:
                    rows[who].setdefault(f"{w} {key}", []).append(r[key])
print("| measure | baseline (median) | candidate (median) | candidate / baseline | rounds |")
print("|---|---|---|---|---|")
for key in rows["base"]:
    a, b = rows["base"][key], rows["cand"].get(key, [])
    if not b:
        continue
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"| {key} | {ma:,.4g} | {mb:,.4g} | {mb / ma:.3f} | {len(a)} + {len(b)} |")
PY
