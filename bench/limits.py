#!/usr/bin/env python3
"""Where one Redis stops: the measurements of #23 that the harness does not take, each on a
Redis of its own (port 6396, no persistence; it never touches another Redis).

    python3 bench/limits.py BIN scaling [--n 20000] [--nap-ms 2] [--slots 16] [--rounds 3]
    python3 bench/limits.py BIN backlog [--n 1000000]
    python3 bench/limits.py BIN waiters [--n 10000]

- scaling: N tasks that sleep NAP_MS each, drained by one worker process, then by two (each
  SLOTS task slots, one runtime thread), alternated round by round; prints both rates, their
  ratio and how busy Redis's thread was (its CPU seconds per second of drain).
- backlog: adds N no-op tasks with `add_many`, states Redis's memory per waiting task, then
  drains them with one worker and samples the worker's memory (VmRSS every 50 ms, VmHWM at the
  end).
- waiters: one worker process drains while a client adds N tasks and waits for all of them at
  once; the client's Redis commands per finished task are the run's commands less those of the
  same run without waiting (`INFO commandstats`).
"""
import argparse, json, os, signal, statistics, subprocess, sys, tempfile, time

PORT = 6396
URL = f"redis://127.0.0.1:{PORT}/0"
ENV = dict(os.environ, RUST_LOG="warn")

def cli(*args):
    return subprocess.run(["redis-cli", "-p", str(PORT), *map(str, args)], check=True,
                          capture_output=True, text=True).stdout.strip()

def info(section):
    return dict(line.split(":", 1) for line in cli("INFO", section).splitlines() if ":" in line)

def redis_cpu_s():
    cpu = info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

def total_commands():
    calls = 0
    for line in cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            fields = dict(f.split("=") for f in line.split(":", 1)[1].split(","))
            calls += int(fields["calls"])
    return calls

def left():
    return sum(int(cli(cmd, key)) for cmd, key in [
        ("LLEN", "QueueTasks:task_queue"), ("LLEN", "QueueTasks:qtasks:incoming"),
        ("ZCARD", "QueueTasks:qtasks:ready"), ("ZCARD", "QueueTasks:qtasks:leases")])

def workers(binary, count, slots):
    return [subprocess.Popen([binary, "worker", "--url", URL, "--threads", "1", "--concurrency", str(slots)],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]

def stop(procs):
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(timeout=60)

def proc_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0

def drain(binary, count, slots, n, nap_ms):
    cli("FLUSHALL")
    subprocess.run([binary, "enqueue", "--url", URL, "--n", str(n), "--nap-ms", str(nap_ms)],
                   check=True, capture_output=True)
    procs = workers(binary, count, slots)
    try:
        while left() >= n:
            time.sleep(0.002)
        started, cpu = time.perf_counter(), redis_cpu_s()
        while left() > 0:
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        return n / seconds, (redis_cpu_s() - cpu) / seconds
    finally:
        stop(procs)

def scaling(args):
    rates = {1: [], 2: []}
    busy = {1: [], 2: []}
    for round_ in range(args.rounds):
        for count in ([1, 2] if round_ % 2 == 0 else [2, 1]):
            rate, redis_busy = drain(args.binary, count, args.slots, args.n, args.nap_ms)
            rates[count].append(rate)
            busy[count].append(redis_busy)
            print(f"round {round_ + 1}: {count} worker(s): {rate:,.0f} tasks/s, Redis busy {redis_busy:.0%}", file=sys.stderr)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(json.dumps({"n": args.n, "nap_ms": args.nap_ms, "slots": args.slots, "rounds": args.rounds,
                      "one_worker": one, "two_workers": two, "ratio": two / one,
                      "redis_busy_one": statistics.median(busy[1]), "redis_busy_two": statistics.median(busy[2])}))

def backlog(args):
    cli("FLUSHALL")
    before = int(info("memory")["used_memory"])
    started = time.perf_counter()
    subprocess.run([args.binary, "enqueue", "--url", URL, "--n", str(args.n), "--bulk"], check=True, capture_output=True)
    enqueue_s = time.perf_counter() - started
    per_task = (int(info("memory")["used_memory"]) - before) / args.n
    [worker] = workers(args.binary, 1, 64)
    peak_rss, started = 0, time.perf_counter()
    try:
        while left() > 0:
            peak_rss = max(peak_rss, proc_kb(worker.pid, "VmRSS"))
            time.sleep(0.05)
        drain_s = time.perf_counter() - started
        hwm = proc_kb(worker.pid, "VmHWM")
    finally:
        stop([worker])
    print(json.dumps({"n": args.n, "enqueue_rate": args.n / enqueue_s, "redis_bytes_per_waiting_task": per_task,
                      "drain_rate": args.n / drain_s, "worker_peak_rss_kb_sampled": peak_rss, "worker_vmhwm_kb": hwm}))

def waiters(args):
    costs = {}
    for waiting in (False, True):
        cli("FLUSHALL")
        [worker] = workers(args.binary, 1, 64)
        try:
            time.sleep(0.5)
            cli("CONFIG", "RESETSTAT")
            if waiting:
                out = subprocess.run([args.binary, "waiters", "--url", URL, "--n", str(args.n)], env=ENV,
                                     check=True, capture_output=True, text=True).stdout
                report = json.loads(out.split("BENCH_JSON ", 1)[1])
                assert report["ok"] == args.n, report
            else:
                subprocess.run([args.binary, "enqueue", "--url", URL, "--n", str(args.n), "--bulk"],
                               check=True, capture_output=True)
            while left() > 0:
                time.sleep(0.01)
            time.sleep(0.2)
            costs[waiting] = total_commands()
        finally:
            stop([worker])
    print(json.dumps({"n": args.n, "commands_without_waiters": costs[False], "commands_with_waiters": costs[True],
                      "waiter_commands_per_finished_task": (costs[True] - costs[False]) / args.n}))

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("what", choices=["scaling", "backlog", "waiters"])
    parser.add_argument("--n", type=int)
    parser.add_argument("--nap-ms", type=int, default=2)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    args.n = args.n or {"scaling": 20000, "backlog": 1000000, "waiters": 10000}[args.what]
    workdir = tempfile.mkdtemp(prefix="qtasks-limits-")
    server = subprocess.Popen(["redis-server", "--port", str(PORT), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", workdir], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                if cli("PING") == "PONG": break
            except subprocess.CalledProcessError: pass
            time.sleep(0.05)
        {"scaling": scaling, "backlog": backlog, "waiters": waiters}[args.what](args)
    finally:
        server.terminate(); server.wait()

if __name__ == "__main__":
    main()
