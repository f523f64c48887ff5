#!/usr/bin/env python3
"""A/B of two qtasks-bench binaries (say, this commit against the one before), alternated
round by round (A B, B A, A B, ...) on one Redis of its own, so that both see the same machine.

    python3 bench/ab.py BASELINE_BIN CANDIDATE_BIN [--rounds 3] [--n 20000] [--port 6392]
    python3 bench/ab.py BIN BIN --replica --candidate-args "--wait-replicas 1" --redis-only
                                # one binary with and without an option, on a master and a replica

Per round and binary: `inmem` (in-memory drain and end-to-end rates), W1 on Redis (enqueue N
no-op tasks, start one worker, time until the queue and the leases are empty) and W2 (500
sequential add-and-wait round trips). Prints the medians and the ratios candidate / baseline.

Redis's own cost is measured too: its CPU time (user + system, `INFO cpu`) per task while the
tasks are enqueued and while they drain, and, with `--commandstats`, what each command cost per
task in the last round (`INFO commandstats`: calls and microseconds per task; a script's inner
commands are counted under their own names as well as inside `evalsha`).
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

def redis_cpu_s(port):
    info = dict(line.split(":", 1) for line in redis_cli(port, "INFO", "cpu").splitlines()
                if ":" in line)
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

def commandstats(port, n):
    """{command: (calls per task, microseconds per task)} since the last CONFIG RESETSTAT."""
    stats = {}
    for line in redis_cli(port, "INFO", "commandstats").splitlines():
        if not line.startswith("cmdstat_"): continue
        name, fields = line[len("cmdstat_"):].split(":", 1)
        fields = dict(f.split("=") for f in fields.split(","))
        stats[name] = (int(fields["calls"]) / n, float(fields["usec"]) / n)
    return stats

def bulk_enqueue(binary, url, port, n, costs, extra=()):
    """The rate of one `add_many` of n tasks (`enqueue --bulk`) and Redis's CPU per task."""
    redis_cli(port, "FLUSHALL")
    cpu = redis_cpu_s(port)
    started = time.perf_counter()
    run([binary, "enqueue", "--url", url, "--n", str(n), "--bulk", *extra])
    costs["bulk enqueue tasks/s"] = n / (time.perf_counter() - started)
    costs["redis CPU us/task, bulk enqueue"] = (redis_cpu_s(port) - cpu) * 1e6 / n

def w1(binary, url, port, n, costs, extra=()):
    redis_cli(port, "FLUSHALL")
    redis_cli(port, "CONFIG", "RESETSTAT")
    cpu = redis_cpu_s(port)
    enqueue_started = time.perf_counter()
    run([binary, "enqueue", "--url", url, "--n", str(n), *extra])
    costs["enqueue tasks/s"] = n / (time.perf_counter() - enqueue_started)
    costs["redis CPU us/task, enqueue"] = (redis_cpu_s(port) - cpu) * 1e6 / n
    costs["commands, enqueue"] = commandstats(port, n)
    redis_cli(port, "CONFIG", "RESETSTAT")
    cpu = redis_cpu_s(port)
    env = dict(os.environ, RUST_LOG="warn")
    started = time.perf_counter()
    worker = subprocess.Popen([binary, "worker", "--url", url, "--threads", "1", *extra], env=env,
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
                rate = n / (time.perf_counter() - started)
                with open(f"/proc/{worker.pid}/status") as status:
                    costs["worker peak RSS kB (VmHWM)"] = next(
                        int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
                costs["redis CPU us/task, drain"] = (redis_cpu_s(port) - cpu) * 1e6 / n
                costs["commands, drain"] = commandstats(port, n)
                return rate
            time.sleep(0.01)
        raise RuntimeError("the drain did not finish in 120 s")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)

def w2(binary, url, port, extra=()):
    redis_cli(port, "FLUSHALL")
    env = dict(os.environ, RUST_LOG="warn")
    worker = subprocess.Popen([binary, "worker", "--url", url, "--threads", "1", *extra], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        answer = bench_json(run([binary, "w2", "--url", url, "--n", "500", "--warmup", "5", *extra]))
        return answer["p50_ms"], answer["p99_ms"]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("baseline"); parser.add_argument("candidate")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--port", type=int, default=6392)
    parser.add_argument("--commandstats", action="store_true",
                        help="print each command's calls and microseconds per task (last round)")
    parser.add_argument("--redis-only", action="store_true", help="skip the in-memory runs")
    parser.add_argument("--bulk", action="store_true",
                        help="also time one add_many of n tasks (`enqueue --bulk`; both binaries must have it)")
    parser.add_argument("--baseline-args", default="", help="more arguments for every run of the baseline")
    parser.add_argument("--candidate-args", default="", help="more arguments for every run of the candidate")
    parser.add_argument("--replica", action="store_true",
                        help="a replica of the server on the next port (for --wait-replicas)")
    args = parser.parse_args()
    extra = {"baseline": args.baseline_args.split(), "candidate": args.candidate_args.split()}
    url = f"redis://127.0.0.1:{args.port}/0"
    workdir = tempfile.mkdtemp(prefix="qtasks-ab-")
    server = subprocess.Popen(["redis-server", "--port", str(args.port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", workdir],
                              stdout=subprocess.DEVNULL)
    replica = None
    try:
        for _ in range(100):
            try:
                if redis_cli(args.port, "PING") == "PONG": break
            except subprocess.CalledProcessError: pass
            time.sleep(0.05)
        if args.replica:
            replica_dir = tempfile.mkdtemp(prefix="qtasks-ab-replica-")
            replica = subprocess.Popen(["redis-server", "--port", str(args.port + 1), "--bind", "127.0.0.1",
                                        "--save", "", "--appendonly", "no", "--dir", replica_dir,
                                        "--replicaof", "127.0.0.1", str(args.port)],
                                       stdout=subprocess.DEVNULL)
            for _ in range(200):
                try:
                    if "master_link_status:up" in redis_cli(args.port + 1, "INFO", "replication"): break
                except subprocess.CalledProcessError: pass
                time.sleep(0.05)
            else:
                raise RuntimeError("the replica never synced")
        results = {"baseline": {}, "candidate": {}}
        commands = {}
        for round_ in range(args.rounds):
            order = ["baseline", "candidate"] if round_ % 2 == 0 else ["candidate", "baseline"]
            for who in order:
                binary = getattr(args, who)
                rows = {}
                if not args.redis_only:
                    inmem = bench_json(run([binary, "inmem", "--n", "200000"], env=dict(os.environ, RUST_LOG="warn")))
                    rows["inmem W1 drain tasks/s"] = inmem["w1"]["drain_rate"]
                    rows["inmem e2e tasks/s"] = inmem["e2e"]["rate"]
                    rows["inmem drain / channel ceiling"] = inmem["drain_vs_ceiling"]
                costs = {}
                rows["redis W1 drain tasks/s"] = w1(binary, url, args.port, args.n, costs, extra[who])
                commands[who] = {"enqueue": costs.pop("commands, enqueue"),
                                 "drain": costs.pop("commands, drain")}
                if args.bulk:
                    bulk_enqueue(binary, url, args.port, args.n, costs, extra[who])
                rows.update(costs)
                rows["redis W2 p50 ms"], rows["redis W2 p99 ms"] = w2(binary, url, args.port, extra[who])
                for key, value in rows.items():
                    results[who].setdefault(key, []).append(value)
                print(f"round {round_ + 1} {who}: " + ", ".join(f"{k} {v:,.3f}" for k, v in rows.items()), file=sys.stderr)
        print("| measure | baseline (median) | candidate (median) | candidate / baseline |")
        print("|---|---|---|---|")
        for key in results["baseline"]:
            a, b = results["baseline"][key], results["candidate"][key]
            ma, mb = statistics.median(a), statistics.median(b)
            print(f"| {key} | {ma:,.2f} | {mb:,.2f} | {mb / ma:.3f} |")
        if args.commandstats:
            for phase in ("enqueue", "drain"):
                print(f"\nRedis commands per task, {phase} (last round): calls / microseconds")
                print("| command | baseline | candidate |")
                print("|---|---|---|")
                names = sorted(set(commands["baseline"][phase]) | set(commands["candidate"][phase]),
                               key=lambda c: -commands["baseline"][phase].get(c, (0, 0))[1])
                for name in names:
                    cells = [commands[who][phase].get(name) for who in ("baseline", "candidate")]
                    print(f"| {name} | " + " | ".join(f"{c[0]:.3f} / {c[1]:.2f} us" if c else "-" for c in cells) + " |")
    finally:
        if replica: replica.terminate(); replica.wait()
        server.terminate(); server.wait()

if __name__ == "__main__":
    main()
