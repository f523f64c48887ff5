#!/usr/bin/env bash
# PostgreSQL beside Redis, alternated round by round in one run: W1 (N tasks enqueued with one
# add_many, then drained by a worker of the same program, `qtasks-bench drain`), the server's
# CPU per task while draining, and W2 (sequential add-and-wait round trips against a worker
# process). Prints medians and PostgreSQL / Redis.
#
#   bash bench/postgres.sh [ROUNDS] [N] [PG_URL] [REDIS_URL]
#
# Needs a release build: cargo build --release -p qtasks-bench. The PostgreSQL run uses a
# schema of its own (`qtasks_bench`, dropped at the start), the Redis run the app prefix
# `QueueTasks` on the Redis given (flushed by the app, not the whole server).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${BENCH_BIN:-$here/../target/release/qtasks-bench}"
rounds="${1:-3}" n="${2:-20000}"
pg="${3:-postgres://postgres@127.0.0.1:5432/test}" redis="${4:-redis://127.0.0.1:6379/0}"
psql "$pg" -qc 'DROP SCHEMA IF EXISTS qtasks_bench CASCADE' >/dev/null
pg_app="$pg?schema=qtasks_bench"
out="$(mktemp)"
run() { # who, then the engine's arguments
  local who=$1; shift
  "$bin" drain --url "$redis" "$@" --n "$n" | sed -n "s/^BENCH_JSON /$who drain /p" >> "$out"
  "$bin" worker --url "$redis" "$@" --threads 1 & local worker=$!
  sleep 1
  "$bin" w2 --url "$redis" "$@" --n 500 --warmup 20 2>/dev/null | sed -n "s/^BENCH_JSON /$who w2 /p" >> "$out"
  kill "$worker"; wait "$worker" 2>/dev/null || true
}
for round in $(seq 1 "$rounds"); do
  if (( round % 2 )); then order=(redis postgres); else order=(postgres redis); fi
  for who in "${order[@]}"; do
    echo "postgres.sh: round $round: $who" >&2
    if [[ $who == redis ]]; then run redis --server-comm redis-server
    else run postgres --pg "$pg_app" --server-comm postgres; fi
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    who, workload, body = line.split(" ", 2)
    for key, value in json.loads(body).items():
        if key in ("n", "lat_ms", "timeouts", "max_ms"):
            continue
        rows.setdefault(f"{workload} {key}", {}).setdefault(who, []).append(value)
print("| measure | Redis (median) | PostgreSQL (median) | PostgreSQL / Redis | rounds |")
print("|---|---|---|---|---|")
for measure, by in rows.items():
    r, p = statistics.median(by.get("redis", [0])), statistics.median(by.get("postgres", [0]))
    ratio = f"{p / r:.2f}" if r else "-"
    print(f"| {measure} | {r:,.2f} | {p:,.2f} | {ratio} | {len(by.get('postgres', []))} |")
PY
