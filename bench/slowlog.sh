#!/usr/bin/env bash
# The worst Redis script time with a 1,000,000-entry backlog (RELIABILITY.md): enqueues a
# million no-op tasks on a Redis of its own (port 6393), lets one worker drain for 25 s with the
# SLOWLOG catching every command over 1 ms, and prints the worst and median time per command.
#   bash bench/slowlog.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release -p qtasks-bench --manifest-path "$root/Cargo.toml"
bin="$root/target/release/qtasks-bench"
dir="$(mktemp -d)"
port=6393
redis-server --port $port --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes --pidfile "$dir"/redis.pid --logfile "$dir"/redis.log
sleep 0.5
cli() { redis-cli -p $port "$@"; }
cli FLUSHALL >/dev/null
SECONDS=0
"$bin" enqueue --url redis://127.0.0.1:$port/0 --n 1000000 >/dev/null 2>&1
echo "enqueued 1,000,000 in ${SECONDS} s; backlog $(cli LLEN QueueTasks:task_queue)"
cli CONFIG SET slowlog-log-slower-than 1000 >/dev/null
cli CONFIG SET slowlog-max-len 100000 >/dev/null
cli SLOWLOG RESET >/dev/null
RUST_LOG=warn "$bin" worker --url redis://127.0.0.1:$port/0 --threads 1 >/dev/null 2>&1 &
worker=$!
sleep 25
kill -TERM $worker; wait $worker || true
echo "left: queue $(cli LLEN QueueTasks:task_queue), ready $(cli ZCARD QueueTasks:qtasks:ready)"
cli SLOWLOG GET 100000 > "$dir"/slowlog.txt
kill "$(cat "$dir"/redis.pid)"
python3 - "$dir/slowlog.txt" <<'PY'
import re, sys
lines = open(sys.argv[1]).read().split("\n")
times = {}
i = 0
while i + 4 < len(lines):
    # An entry: id, unix time, duration in µs, then the command and its arguments.
    if re.fullmatch(r"\d+", lines[i].strip()) and re.fullmatch(r"1\d{9}", lines[i + 1].strip()):
        command = lines[i + 3].strip()
        if command == "EVALSHA":
            command += f" ({lines[i + 5].strip()} keys)"
        times.setdefault(command, []).append(int(lines[i + 2].strip()))
        i += 4
    else:
        i += 1
print("| command | calls over 1 ms | worst | median |")
print("|---|---|---|---|")
for command, durations in sorted(times.items(), key=lambda kv: -max(kv[1])):
    durations.sort()
    print(f"| {command} | {len(durations)} | {durations[-1] / 1000:.1f} ms | {durations[len(durations) // 2] / 1000:.1f} ms |")
PY
