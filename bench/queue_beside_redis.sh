#!/usr/bin/env bash
# A queue on another engine beside Redis, with the shared harness (../shared/bench): its `yours`
# slot runs the same qtasks-bench binary twice, the queue on Redis, then on the other engine
# (records on the harness's Redis either way), alternating round by round. Prints medians and
# the ratio to Redis.
#
#   bash bench/queue_beside_redis.sh rabbitmq [ROUNDS] [AMQP_URL]
#   bash bench/queue_beside_redis.sh kafka [ROUNDS] [HOST:PORT]
#
# (`bench/rabbitmq.sh` and `bench/kafka.sh` call it.) Needs the harness venv (python3 -m venv
# /tmp/benchvenv && /tmp/benchvenv/bin/pip install redis psutil) and a release build: cargo
# build --release -p qtasks-bench.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
harness="${BENCH_HARNESS:-$here/../../shared/bench}"
bin="${BENCH_BIN:-$here/../target/release/qtasks-bench}"
engine="${1:?rabbitmq or kafka}"
rounds="${2:-3}"
case "$engine" in
  rabbitmq) queue_args="\"--amqp\", \"${3:-amqp://guest:guest@127.0.0.1:5672/%2f}\"";;
  kafka) queue_args="\"--kafka\", \"${3:-127.0.0.1:19092}\"";;
  *) echo "queue_beside_redis.sh: rabbitmq or kafka, not $engine" >&2; exit 2;;
esac
# The other engine's app has a name of this run's own: a Kafka topic keeps its messages after
# the harness flushes Redis, and a run stopped half way would leave them to the next one.
app="QueueTasks_$(date +%s)"
queue_args="$queue_args, \"--app\", \"$app\""
results="${BENCH_RESULTS:-/tmp/bench-$engine}/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$results"
export BENCH_RESULTS="$results"

redis_cfg="$(mktemp --suffix=.json)" other_cfg="$(mktemp --suffix=.json)"
cat > "$redis_cfg" <<JSON
{"enqueue_cmd": ["$bin", "enqueue", "--url", "{url}", "--n", "{n}"],
 "worker_cmd": ["$bin", "worker", "--url", "{url}", "--threads", "1"],
 "started": {"kind": "below", "db": 0, "cmds": [["LLEN", "QueueTasks:task_queue"]]},
 "done": {"kind": "empty", "db": 0, "cmds": [["LLEN", "QueueTasks:task_queue"], ["LLEN", "QueueTasks:qtasks:incoming"], ["ZCARD", "QueueTasks:qtasks:ready"], ["ZCARD", "QueueTasks:qtasks:leases"]]},
 "w2": [{"label": "default", "n": 500, "warmup": 5,
         "client_cmd": ["$bin", "w2", "--url", "{url}", "--n", "{n}", "--warmup", "{warmup}"]}],
 "env": {"RUST_LOG": "warn"}}
JSON
# With the queue elsewhere, the records' counters say how many wait (w:0) and run.
cat > "$other_cfg" <<JSON
{"enqueue_cmd": ["$bin", "enqueue", "--url", "{url}", $queue_args, "--n", "{n}"],
 "worker_cmd": ["$bin", "worker", "--url", "{url}", $queue_args, "--threads", "1"],
 "started": {"kind": "below", "db": 0, "cmds": [["HGET", "$app:qtasks:records:stats", "w:0"]]},
 "done": {"kind": "empty", "db": 0, "cmds": [["HGET", "$app:qtasks:records:stats", "w:0"], ["HGET", "$app:qtasks:records:stats", "running"]]},
 "w2": [{"label": "default", "n": 500, "warmup": 5,
         "client_cmd": ["$bin", "w2", "--url", "{url}", $queue_args, "--n", "{n}", "--warmup", "{warmup}"]}],
 "env": {"RUST_LOG": "warn"}}
JSON
for round in $(seq 1 "$rounds"); do
  if (( round % 2 )); then order=(redis "$engine"); else order=("$engine" redis); fi
  for who in "${order[@]}"; do
    cfg=$redis_cfg; [[ $who == "$engine" ]] && cfg=$other_cfg
    echo "queue_beside_redis.sh: round $round: $who" >&2
    BENCH_YOURS_JSON="$cfg" bash "$harness/run_peer.sh" yours --reps 1 --label "q-$who" \
      > "$results/round$round-$who.txt"
  done
done
python3 - "$results" "$engine" <<'PY'
import glob, json, statistics, sys
other = sys.argv[2]
rows = {"redis": {}, other: {}}
for who in rows:
    for path in glob.glob(f"{sys.argv[1]}/*-q-{who}.jsonl"):
        for line in open(path):
            r = json.loads(line)
            for key in ("drain_rate", "enqueue_rate", "live_rate", "p50_ms", "p99_ms",
                        "worker_cpu_ms_per_task", "redis_cpu_ms_per_task", "vmhwm_main_mb"):
                if key in r:
                    rows[who].setdefault(f"{r['workload']} {key}", []).append(r[key])
print(f"| measure | Redis (median) | {other} (median) | {other} / Redis | rounds |")
print("|---|---|---|---|---|")
for key in rows["redis"]:
    a, b = rows["redis"][key], rows[other].get(key)
    if not b:
        continue
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"| {key} | {ma:,.3f} | {mb:,.3f} | {mb / ma if ma else float('nan'):.3f} | {len(a)} |")
PY
echo "results: $results" >&2
