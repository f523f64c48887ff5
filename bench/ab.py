#!/usr/bin/env python3
"""A/B of two qtasks-bench binaries (say, this commit against the one before), alternated
round by round (A B, B A, A B, ...) on one Redis of its own, so that both see the same machine.

    python3 bench/ab.py BASELINE_BIN CANDIDATE_BIN [--rounds 3] [--n 20000] [--port 6392]

Per round and binary: `inmem` (in-memory drain and end-to-end rates), W1 on Redis (enqueue N
no-op tasks, start one worker, time until the queue and the leases are empty) and W2 (500
sequential add-and-wait round trips). Prints the medians and the ratios candidate / baseline.
Starts `redis-server` on its own port with no persistence and stops it at the end; it never
touches another Redis.
"""
import argparse, json, os, signal, statistics, subprocess, sys, tempfile, time

def bench_json(out):
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):])
    raise RuntimeError("no BENCH_JSON line in:\n" + out)

def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout

def redis_cli(port, *args):
    return run(["redis-cli", "-p", str(port), *args]).strip()

class Resp:
    """A minimal Redis client on one socket: polling through `redis-cli` would spawn processes
    and steal the CPU the worker is measured on."""
    def __init__(self, port):
        import socket
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")

    def command(self, *args):
        payload = f"*{len(args)}\r\n" + "".join(f"${len(str(a))}\r\n{a}\r\n" for a in args)
        self.sock.sendall(payload.encode())
        line = self.file.readline()
        if line[:1] != b":":
            raise RuntimeError(f"unexpected reply {line!r}")
        return int(line[1:])

def w1(binary, url, port, n):
    redis_cli(port, "FLUSHALL")
    run([binary, "enqueue", "--url", url, "--n", str(n)])
    env = dict(os.environ, RUST_LOG="warn")
    started = time.perf_counter()
    worker = subprocess.Popen([binary, "worker", "--url", url, "--threads", "1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    poll = Resp(port)
    try:
        deadline = started + 120
        # Timed from the first task taken, as the harness does: the process start and the
        # connection are not the drain.
        while time.perf_counter() < deadline and poll.command("LLEN", "QueueTasks:task_queue") >= n:
            time.sleep(0.001)
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            left = (poll.command("LLEN", "QueueTasks:task_queue")
                    + poll.command("LLEN", "QueueTasks:qtasks:incoming")
                    + poll.command("ZCARD", "QueueTasks:qtasks:ready")
                    + poll.command("ZCARD", "QueueTasks:qtasks:leases"))
            if left == 0:
                return n / (time.perf_counter() - started)
            time.sleep(0.01)
        raise RuntimeError("the drain did not finish in 120 s")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)

def w2(binary, url, port):
    redis_cli(port, "FLUSHALL")
    env = dict(os.environ, RUST_LOG="warn")
    worker = subprocess.Popen([binary, "worker", "--url", url, "--threads", "1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        return bench_json(run([binary, "w2", "--url", url, "--n", "500", "--warmup", "5"]))["p50_ms"]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("baseline"); parser.add_argument("candidate")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--port", type=int, default=6392)
    args = parser.parse_args()
    url = f"redis://127.0.0.1:{args.port}/0"
    workdir = tempfile.mkdtemp(prefix="qtasks-ab-")
    server = subprocess.Popen(["redis-server", "--port", str(args.port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", workdir],
                              stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                if redis_cli(args.port, "PING") == "PONG": break
            except subprocess.CalledProcessError: pass
            time.sleep(0.05)
        results = {"baseline": {}, "candidate": {}}
        for round_ in range(args.rounds):
            order = ["baseline", "candidate"] if round_ % 2 == 0 else ["candidate", "baseline"]
            for who in order:
                binary = getattr(args, who)
                inmem = bench_json(run([binary, "inmem", "--n", "200000"], env=dict(os.environ, RUST_LOG="warn")))
                rows = {
                    "inmem W1 drain tasks/s": inmem["w1"]["drain_rate"],
                    "inmem e2e tasks/s": inmem["e2e"]["rate"],
                    "inmem drain / channel ceiling": inmem["drain_vs_ceiling"],
                    "redis W1 drain tasks/s": w1(binary, url, args.port, args.n),
                    "redis W2 p50 ms": w2(binary, url, args.port),
                }
                for key, value in rows.items():
                    results[who].setdefault(key, []).append(value)
                print(f"round {round_ + 1} {who}: " + ", ".join(f"{k} {v:,.3f}" for k, v in rows.items()), file=sys.stderr)
        print("| measure | baseline (median) | candidate (median) | candidate / baseline |")
        print("|---|---|---|---|")
        for key in results["baseline"]:
            a, b = results["baseline"][key], results["candidate"][key]
            ma, mb = statistics.median(a), statistics.median(b)
            print(f"| {key} | {ma:,.2f} | {mb:,.2f} | {mb / ma:.3f} |")
    finally:
        server.terminate(); server.wait()

if __name__ == "__main__":
    main()
