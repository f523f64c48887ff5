#!/usr/bin/env bash
# The take beside many finished records (#25): RECORDS finished records of the bench's app put
# in schema `qtasks_history` with generate_series (documents like a no-op task's, kept one
# day as by default), VACUUM ANALYZE, then `qtasks-bench drain --keep` ROUNDS times on top of
# them (each run adds its N), alternated with ROUNDS runs on a fresh schema. Prints medians.
#
#   bash bench/postgres_history.sh [RECORDS] [ROUNDS] [N] [PG_URL]
#
# Needs a release build (cargo build --release -p qtasks-bench) and about 1.2 GB of disk per
# million records; drops both schemas at the end.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${BENCH_BIN:-$here/../target/release/qtasks-bench}"
records="${1:-5000000}" rounds="${2:-3}" n="${3:-20000}"
pg="${4:-postgres://postgres@127.0.0.1:5432/test}"
psql "$pg" -qc 'DROP SCHEMA IF EXISTS qtasks_history CASCADE' -qc 'DROP SCHEMA IF EXISTS qtasks_fresh CASCADE' 2>/dev/null
# The schema made by the engine's own migrations (a first small drain).
"$bin" drain --pg "$pg?schema=qtasks_history" --server-comm postgres --n 100 > /dev/null
started=$(date +%s)
psql "$pg" -qc "
INSERT INTO qtasks_history.records
    (app, uuid, status, task_name, created_ms, updated_at, doc, finished_by, purge_at)
SELECT 'QueueTasks', u, 'success', 'noop', t * 1000, t,
       json_build_object('uuid', u, 'task_name', 'noop', 'status', 'success', 'priority', 0,
           'args', json_build_array(i), 'kwargs', '{}'::json, 'created_at', t,
           'updated_at', t, 'returning', i, 'started_at', t, 'finished_at', t,
           'worker', 'vm:1:history')::text,
       gen_random_uuid(), now() + interval '1 day'
FROM (SELECT i, gen_random_uuid() AS u,
             extract(epoch FROM now())::float8 - 86000 + i * 0.01 AS t
      FROM generate_series(1, $records) AS i) AS rows" 
psql "$pg" -qc 'VACUUM ANALYZE qtasks_history.records'
echo "postgres_history.sh: $records records in $(( $(date +%s) - started )) s, $(psql "$pg" -Atc "SELECT pg_size_pretty(pg_total_relation_size('qtasks_history.records'))")" >&2
out="$(mktemp)"
for round in $(seq 1 "$rounds"); do
  if (( round % 2 )); then order=(history fresh); else order=(fresh history); fi
  for who in "${order[@]}"; do
    if [[ $who == history ]]; then
      "$bin" drain --pg "$pg?schema=qtasks_history" --server-comm postgres --n "$n" --keep
    else
      "$bin" drain --pg "$pg?schema=qtasks_fresh" --server-comm postgres --n "$n"
    fi | sed -n "s/^BENCH_JSON /$who /p" >> "$out"
  done
done
python3 - "$out" "$records" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    who, body = line.split(" ", 1)
    for key, value in json.loads(body).items():
        if key != "n":
            rows.setdefault(key, {}).setdefault(who, []).append(value)
print(f"| measure (median) | fresh schema | {int(sys.argv[2]):,}+ finished records | ratio |")
print("|---|---|---|---|")
for key, by in rows.items():
    f, h = statistics.median(by["fresh"]), statistics.median(by["history"])
    print(f"| {key} | {f:,.2f} | {h:,.2f} | {h / f:.2f} |")
PY
psql "$pg" -qc 'DROP SCHEMA qtasks_history CASCADE' -qc 'DROP SCHEMA qtasks_fresh CASCADE'
