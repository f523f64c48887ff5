#!/usr/bin/env bash
# RabbitMQ beside Redis with the shared harness (../shared/bench): its `yours` slot runs the
# same qtasks-bench binary twice, the queue on Redis, then on RabbitMQ (records on the
# harness's Redis either way), alternating round by round. Prints medians and RabbitMQ / Redis.
#
#   bash bench/rabbitmq.sh [ROUNDS] [AMQP_URL]
#
# Needs the harness venv (python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install redis
# psutil) and a release build: cargo build --release -p qtasks-bench.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
harness="${BENCH_HARNESS:-$here/../../shared/bench}"
bin="${BENCH_BIN:-$here/../target/release/qtasks-bench}"
rounds="${1:-3}" amqp="${2:-amqp://guest:guest@127.0.0.1:5672/%2f}"
results="${BENCH_RESULTS:-/tmp/bench-rabbitmq}/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$results"
export BENCH_RESULTS="$results"

redis_cfg="$(mktemp --suffix=.json)" rabbit_cfg="$(mktemp --suffix=.json)"
cat > "$redis_cfg" <<JSON
{"enqueue_cmd": ["$bin", "enqueue", "--url", "{url}", "--n", "{n}"],
 "worker_cmd": ["$bin", "worker", "--url", "{url}", "--threads", "1"],
 "started": {"kind": "below", "db": 0, "cmds": [["LLEN", "QueueTasks:task_queue"]]},
 "done": {"kind": "empty", "db": 0, "cmds": [["LLEN", "QueueTasks:task_queue"], ["LLEN", "QueueTasks:qtasks:incoming"], ["ZCARD", "QueueTasks:qtasks:ready"], ["ZCARD", "QueueTasks:qtasks:leases"]]},
 "w2": [{"label": "default", "n": 500, "warmup": 5,
         "client_cmd": ["$bin", "w2", "--url", "{url}", "--n", "{n}", "--warmup", "{warmup}"]}],
 "env": {"RUST_LOG": "warn"}}
JSON
# On RabbitMQ the records' counters say how many wait (w:0) and run.
cat > "$rabbit_cfg" <<JSON
{"enqueue_cmd": ["$bin", "enqueue", "--url", "{url}", "--amqp", "$amqp", "--n", "{n}"],
 "worker_cmd": ["$bin", "worker", "--url", "{url}", "--amqp", "$amqp", "--threads", "1"],
 "started": {"kind": "below", "db": 0, "cmds": [["HGET", "QueueTasks:qtasks:records:stats", "w:0"]]},
 "done": {"kind": "empty", "db": 0, "cmds": [["HGET", "QueueTasks:qtasks:records:stats", "w:0"], ["HGET", "QueueTasks:qtasks:records:stats", "running"]]},
 "w2": [{"label": "default", "n": 500, "warmup": 5,
         "client_cmd": ["$bin", "w2", "--url", "{url}", "--amqp", "$amqp", "--n", "{n}", "--warmup", "{warmup}"]}],
 "env": {"RUST_LOG": "warn"}}
JSON
for round in $(seq 1 "$rounds"); do
  if (( round % 2 )); then order=(redis rabbitmq); else order=(rabbitmq redis); fi
  for who in "${order[@]}"; do
    cfg=$redis_cfg; [[ $who == rabbitmq ]] && cfg=$rabbit_cfg
    echo "rabbitmq.sh: round $round: $who" >&2
    BENCH_YOURS_JSON="$cfg" bash "$harness/run_peer.sh" yours --reps 1 --label "q-$who" \
      > "$results/round$round-$who.txt"
  done
done
python3 - "$results" <<'PY'
import glob, json, statistics, sys
rows = {"redis": {}, "rabbitmq": {}}
for who in rows:
    for path in glob.glob(f"{sys.argv[1]}/*-q-{who}.jsonl"):
        for line in open(path):
            r = json.loads(line)
            for key in ("drain_rate", "enqueue_rate", "live_rate", "p50_ms", "p99_ms",
                        "worker_cpu_ms_per_task", "redis_cpu_ms_per_task", "vmhwm_main_mb"):
                if key in r:
                    rows[who].setdefault(f"{r['workload']} {key}", []).append(r[key])
print("| measure | Redis (median) | RabbitMQ (median) | RabbitMQ / Redis | rounds |")
print("|---|---|---|---|---|")
for key in rows["redis"]:
    a, b = rows["redis"][key], rows["rabbitmq"].get(key)
    if not b:
        continue
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"| {key} | {ma:,.3f} | {mb:,.3f} | {mb / ma if ma else float('nan'):.3f} | {len(a)} |")
PY
echo "results: $results" >&2
