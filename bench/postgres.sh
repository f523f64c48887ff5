#!/usr/bin/env bash
# PostgreSQL beside Redis and RabbitMQ, alternated round by round in one run: W1 (N tasks
# enqueued with one add_many, then drained by a worker of the same program, `qtasks-bench
# drain`), the server's CPU per task while draining, W1-live (the worker running first, then N
# single adds), W2 (sequential add-and-wait round trips against a worker process), and W1 again
# with 512 slots on PostgreSQL. RabbitMQ keeps its records on the Redis given, as the harness
# runs it; its CPU counts `beam.smp` alone. When the apalis-postgres peer is built, its W1 on
# the same PostgreSQL each round too (its README's polling storage, with its LISTEN/NOTIFY
# wake-ups, and with fetches of 64 instead of 10). Then, once, `add_in` against `add`.
# Prints medians and the ratios.
#
#   bash bench/postgres.sh [ROUNDS] [N] [PG_URL] [REDIS_URL] [AMQP_URL]
#
# Needs release builds: cargo build --release -p qtasks-bench, and for the peer
# cargo build --release --manifest-path bench/peers/apalis-postgres/Cargo.toml. The PostgreSQL
# run uses a schema of its own (`qtasks_bench`, dropped at the start), the peer apalis's own
# (`apalis`, its queue emptied each run), the Redis run the app prefix `QueueTasks` on the
# Redis given (flushed by the app, not the whole server).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${BENCH_BIN:-$here/../target/release/qtasks-bench}"
peer="${APALIS_PEER_BIN:-$here/peers/apalis-postgres/target/release/apalis-postgres-peer}"
rounds="${1:-3}" n="${2:-20000}"
pg="${3:-postgres://postgres@127.0.0.1:5432/test}" redis="${4:-redis://127.0.0.1:6379/0}"
amqp="${5:-amqp://guest:guest@127.0.0.1:5672/%2f}"
psql "$pg" -qc 'DROP SCHEMA IF EXISTS qtasks_bench CASCADE' >/dev/null
pg_app="$pg?schema=qtasks_bench"
out="$(mktemp)"
run() { # who, then the engine's arguments
  local who=$1; shift
  "$bin" drain --url "$redis" "$@" --n "$n" | sed -n "s/^BENCH_JSON /$who drain /p" >> "$out"
  "$bin" drain --url "$redis" "$@" --n "$n" --live | sed -n "s/^BENCH_JSON /$who live /p" >> "$out"
  "$bin" worker --url "$redis" "$@" --threads 1 & local worker=$!
  sleep 1
  "$bin" w2 --url "$redis" "$@" --n 500 --warmup 20 2>/dev/null | sed -n "s/^BENCH_JSON /$who w2 /p" >> "$out"
  kill "$worker"; wait "$worker" 2>/dev/null || true
}
for round in $(seq 1 "$rounds"); do
  case $(( round % 3 )) in
    1) order=(redis rabbitmq postgres) ;;
    2) order=(rabbitmq postgres redis) ;;
    *) order=(postgres redis rabbitmq) ;;
  esac
  for who in "${order[@]}"; do
    echo "postgres.sh: round $round: $who" >&2
    if [[ $who == redis ]]; then run redis --server-comm redis-server
    # The queue on RabbitMQ, the records on the Redis of --url: RabbitMQ's CPU alone is counted.
    elif [[ $who == rabbitmq ]]; then run rabbitmq --amqp "$amqp" --server-comm beam.smp
    else
      run postgres --pg "$pg_app" --server-comm postgres
      # W1 again with 512 slots: a take leases as many tasks as there are free slots.
      "$bin" drain --url "$redis" --pg "$pg_app" --server-comm postgres --n "$n" --concurrency 512 \
        | sed -n "s/^BENCH_JSON /postgres_512 drain /p" >> "$out"
    fi
  done
  if [[ -x $peer ]]; then
    echo "postgres.sh: round $round: apalis-postgres" >&2
    "$peer" --url "$pg" --n "$n" | sed -n "s/^BENCH_JSON /apalis drain /p" >> "$out"
    "$peer" --url "$pg" --n "$n" --listen | sed -n "s/^BENCH_JSON /apalis_listen drain /p" >> "$out"
    "$peer" --url "$pg" --n "$n" --batch 64 | sed -n "s/^BENCH_JSON /apalis_64 drain /p" >> "$out"
  fi
done
echo "postgres.sh: add against add_in" >&2
"$bin" addin --pg "$pg_app" --n 2000 --rounds "$rounds" | sed -n "s/^BENCH_JSON /postgres addin /p" >> "$out"

python3 - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    who, workload, body = line.split(" ", 2)
    for key, value in json.loads(body).items():
        if key in ("n", "lat_ms", "timeouts", "max_ms"):
            continue
        rows.setdefault(f"{workload} {key}", {}).setdefault(who, []).append(value)
def median(by, who):
    return statistics.median(by[who]) if by.get(who) else None
def cell(value):
    return "-" if value is None else f"{value:,.2f}"
def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"
print("| measure | Redis | RabbitMQ | PostgreSQL | PostgreSQL, 512 slots | apalis-postgres | apalis-postgres, LISTEN | apalis-postgres, batch 64 | PostgreSQL / Redis | PostgreSQL / RabbitMQ | PostgreSQL / apalis-postgres (best) | PostgreSQL 512 / apalis-postgres (best) | rounds |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for measure, by in rows.items():
    r, q, p, p512 = median(by, "redis"), median(by, "rabbitmq"), median(by, "postgres"), median(by, "postgres_512")
    a, al, a64 = median(by, "apalis"), median(by, "apalis_listen"), median(by, "apalis_64")
    lower_is_better = any(word in measure for word in ("cpu", "vmhwm", "p50", "p99"))
    pick = min if lower_is_better else max
    best = pick((x for x in (a, al, a64) if x is not None), default=None)
    print(f"| {measure} | {cell(r)} | {cell(q)} | {cell(p)} | {cell(p512)} | {cell(a)} | {cell(al)} | {cell(a64)} | {ratio(p, r)} | {ratio(p, q)} | {ratio(p, best)} | {ratio(p512, best)} | {len(by.get('postgres', []))} |")
PY
