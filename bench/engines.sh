#!/usr/bin/env bash
# Every engine beside the others, alternated round by round in one run: Redis, RabbitMQ (records
# on the Redis), PostgreSQL and Kafka (tansu, records on the Redis). For each: W1 (N tasks added
# with one add_many, then drained by a worker of the same program, `qtasks-bench drain`), the
# server's own CPU per task while draining (redis-server, beam.smp, postgres, tansu), W1-live
# (the worker running first, then N single adds), W2 (sequential add-and-wait round trips
# against a worker process). Prints medians, and each engine against Redis.
#
#   bash bench/engines.sh [ROUNDS] [N] [W2_N]
#
# Needs a release build (cargo build --release -p qtasks-bench), the machine's Redis, RabbitMQ
# and PostgreSQL, and tansu on 127.0.0.1:19092 (as .ci/run starts it). N defaults to 2,000:
# tansu took minutes over a 20,000 backlog.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${BENCH_BIN:-$here/../target/release/qtasks-bench}"
rounds="${1:-3}" n="${2:-2000}" w2n="${3:-100}"
redis="redis://127.0.0.1:6379/0" amqp="amqp://guest:guest@127.0.0.1:5672/%2f"
pg="postgres://postgres@127.0.0.1:5432/test" kafka="127.0.0.1:19092"
psql "$pg" -qc 'DROP SCHEMA IF EXISTS qtasks_bench CASCADE' >/dev/null
out="$(mktemp)"
run() { # who, then the engine's arguments
  local who=$1; shift
  "$bin" drain --url "$redis" "$@" --n "$n" | sed -n "s/^BENCH_JSON /$who drain /p" >> "$out"
  "$bin" drain --url "$redis" "$@" --n "$n" --live | sed -n "s/^BENCH_JSON /$who live /p" >> "$out"
  "$bin" worker --url "$redis" "$@" --threads 1 & local worker=$!
  sleep 1
  "$bin" w2 --url "$redis" "$@" --n "$w2n" --warmup 5 2>/dev/null | sed -n "s/^BENCH_JSON /$who w2 /p" >> "$out"
  kill "$worker"; wait "$worker" 2>/dev/null || true
}
for round in $(seq 1 "$rounds"); do
  case $(( round % 4 )) in
    1) order=(redis rabbitmq postgres kafka) ;;
    2) order=(kafka postgres rabbitmq redis) ;;
    3) order=(rabbitmq kafka redis postgres) ;;
    *) order=(postgres redis kafka rabbitmq) ;;
  esac
  for who in "${order[@]}"; do
    echo "engines.sh: round $round: $who" >&2
    case $who in
      redis) run redis --server-comm redis-server ;;
      rabbitmq) run rabbitmq --amqp "$amqp" --server-comm beam.smp ;;
      postgres) run postgres --pg "$pg?schema=qtasks_bench" --server-comm postgres ;;
      # An app of the round's own: a topic keeps its messages after the records are flushed.
      kafka) run kafka --kafka "$kafka" --app "QueueTasks_$(date +%s)" --server-comm tansu ;;
    esac
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    who, workload, body = line.split(" ", 2)
    for key, value in json.loads(body).items():
        if key in ("n", "lat_ms", "timeouts", "max_ms", "bulk", "t_start", "t_end"):
            continue
        rows.setdefault(f"{workload} {key}", {}).setdefault(who, []).append(value)
engines = ["redis", "rabbitmq", "postgres", "kafka"]
def median(by, who):
    return statistics.median(by[who]) if by.get(who) else None
def cell(value):
    return "-" if value is None else f"{value:,.2f}"
def ratio(a, b):
    return f"{a / b:.3f}" if a is not None and b else "-"
print("| measure | Redis | RabbitMQ | PostgreSQL | Kafka (tansu) | RabbitMQ / Redis | PostgreSQL / Redis | Kafka / Redis | rounds |")
print("|---|---|---|---|---|---|---|---|---|")
for measure, by in rows.items():
    m = {who: median(by, who) for who in engines}
    print(f"| {measure} | " + " | ".join(cell(m[w]) for w in engines) + " | "
          + " | ".join(ratio(m[w], m["redis"]) for w in engines[1:]) + f" | {len(by.get('redis', []))} |")
PY
