#!/usr/bin/env bash
# What `app.stats()` costs on Redis as the queue grows (README "Operating qtasks"): reads it 200
# times on an empty queue (the baseline), then with 1,000,000 tasks pushed and not yet sorted,
# then after a worker ran 10 s (moving entries into `ready` as it takes); prints p50/p99 of each and the
# ratio to the empty queue. On a Redis of its own (port 6394).
#   bash bench/stats.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release -p qtasks-bench --manifest-path "$root/Cargo.toml"
bin="$root/target/release/qtasks-bench"
dir="$(mktemp -d)"
port=6394
url=redis://127.0.0.1:$port/0
redis-server --port $port --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes --pidfile "$dir"/redis.pid --logfile "$dir"/redis.log
trap 'kill "$(cat "$dir"/redis.pid)"' EXIT
sleep 0.5
redis-cli -p $port FLUSHALL >/dev/null
read_stats() { "$bin" stats --url $url --n 200 2>/dev/null | sed -n "s/^BENCH_JSON //p"; }
empty=$(read_stats)
"$bin" enqueue --url $url --n 1000000 >/dev/null 2>&1
pushed=$(read_stats)
RUST_LOG=warn "$bin" worker --url $url --threads 1 --concurrency 1 >/dev/null 2>&1 &
worker=$!
sleep 10
kill -STOP $worker # holds its tasks; the queue stays as it is while we read
sorted=$(read_stats)
kill -KILL $worker; wait $worker 2>/dev/null || true
python3 - "$empty" "$pushed" "$sorted" <<'PY'
import json, sys
empty, pushed, sorted_ = (json.loads(a) for a in sys.argv[1:])
print(f"{'queue':<34}{'waiting':>10}{'p50 ms':>9}{'p99 ms':>9}{'p50 / empty':>13}")
for label, r in [("empty", empty), ("1,000,000 pushed", pushed), ("after a worker ran 10 s", sorted_)]:
    print(f"{label:<34}{r['waiting']:>10}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{r['p50_ms'] / empty['p50_ms']:>13.2f}")
PY
