#!/usr/bin/env python3
"""Apps spread over a Redis Cluster's shards (#26): the drain of one app on one Redis, of one
app on a three-master cluster, and of three apps at once, one per master, with each server's
CPU time per task (`INFO cpu`), and of one app spread over three partitions
(`RedisOptions::partitions`, one per master).

    python3 bench/cluster.py BIN [--n 20000] [--rounds 3] [--base-port 17100]

BIN is a `qtasks-bench` binary (`cargo build --release -p qtasks-bench`). Starts its own
servers on BASE..BASE+3 (cluster buses on +10000) and stops them at the end; it never touches
another Redis. Each app's tasks are added with one `add_many` (`enqueue --bulk`), then one
worker per app (64 slots) drains them; a drain is timed from its first task taken to its
queue's keys being empty. On a machine with fewer cores than servers plus workers, the rate of
several apps at once is bounded by the cores; each shard's CPU per task is what predicts how
the rate grows with a core per shard.
"""
import argparse, os, shutil, signal, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(__file__))
from ab import Resp, commandstats, redis_cli, redis_cpu_s, run  # noqa: E402

def start_server(port, folder, cluster):
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", folder, "--daemonize", "yes",
            "--logfile", os.path.join(folder, f"{port}.log")]
    if cluster:
        args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
    run(args)
    for _ in range(200):
        try:
            redis_cli(port, "PING")
            return
        except subprocess.CalledProcessError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server on {port} never answered")

def master_of(port, key):
    slot = int(redis_cli(port, "CLUSTER", "KEYSLOT", key))
    lines = redis_cli(port, "CLUSTER", "NODES").splitlines()
    for line in lines:
        fields = line.split()
        if "master" not in fields[2]:
            continue
        for part in fields[8:]:
            first, _, last = part.partition("-")
            if first.isdigit() and int(first) <= slot <= int(last or first):
                return int(fields[1].split(":")[1].split("@")[0])
    raise RuntimeError(f"no master serves {key}")

def left(poll, prefix):
    return (poll.command("LLEN", f"{prefix}:task_queue")
            + poll.command("LLEN", f"{prefix}:qtasks:incoming")
            + poll.command("ZCARD", f"{prefix}:qtasks:ready")
            + poll.command("ZCARD", f"{prefix}:qtasks:leases"))

def crc16(data):
    """The cluster's key hash (CRC16 XMODEM), to name partitions as qtasks does."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc

def partition_names(name, count):
    """`RedisOptions::partitions`' names: partition i's hash tag in the i-th of count equal
    slot ranges (`qtasks_redis::partitions::partition_names`)."""
    names = []
    for i in range(count):
        low, high = i * 16384 // count, (i + 1) * 16384 // count
        for tag in [f"{name}~{i}"] + [f"{name}~{i}.{n}" for n in range(1, 100000)]:
            if low <= crc16(tag.encode()) % 16384 < high:
                names.append(tag)
                break
    return names

def drain(binary, url, apps, n):
    """apps: [(name, [(key prefix, port)], partitions, workers)]. Adds n tasks per app, drains
    them with its workers, every app at once; returns ({name: tasks/s}, all tasks/s, {port: CPU
    µs per task drained there}, {port: tasks drained there})."""
    for name, _, partitions, _ in apps:
        run([binary, "enqueue", "--url", url, "--app", name, "--n", str(n), "--bulk",
             "--partitions", str(partitions)])
    places = [(prefix, port) for _, where, _, _ in apps for prefix, port in where]
    ports = sorted({port for _, port in places})
    tasks_on = {port: 0 for port in ports}
    for prefix, port in places:
        tasks_on[port] += Resp(port).command("LLEN", f"{prefix}:task_queue")
    cpu = {port: redis_cpu_s(port) for port in ports}
    for port in ports:
        redis_cli(port, "CONFIG", "RESETSTAT")
    env = dict(os.environ, RUST_LOG="warn")
    workers = [subprocess.Popen([binary, "worker", "--url", url, "--app", name, "--threads", "1",
                                 "--partitions", str(partitions)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for name, _, partitions, count in apps for _ in range(count)]
    polls = [(name, [(prefix, Resp(port)) for prefix, port in where])
             for name, where, _, _ in apps]
    try:
        deadline = time.perf_counter() + 180
        started = {}
        ended = {}
        while len(ended) < len(apps):
            if time.perf_counter() > deadline:
                raise RuntimeError("the drains did not finish in 180 s")
            for name, where in polls:
                if name in ended:
                    continue
                remaining = sum(left(poll, prefix) for prefix, poll in where)
                waiting = sum(poll.command("LLEN", f"{prefix}:task_queue") for prefix, poll in where)
                if name not in started and waiting < n:
                    started[name] = time.perf_counter()
                if name in started and remaining == 0:
                    ended[name] = time.perf_counter()
            time.sleep(0.002)
        rates = {name: n / (ended[name] - started[name]) for name, _, _, _ in apps}
        overall = n * len(apps) / (max(ended.values()) - min(started.values()))
        per_task = {port: (redis_cpu_s(port) - cpu[port]) * 1e6 / tasks_on[port] for port in ports}
        if os.environ.get("QTASKS_BENCH_COMMANDS"):
            # Per server, the commands per task drained there (calls, µs), busiest first.
            for port in ports:
                stats = sorted(commandstats(port, tasks_on[port]).items(), key=lambda kv: -kv[1][1])
                shown = ", ".join(f"{name} {calls:.2f}x {usec:.1f}µs" for name, (calls, usec) in stats[:6])
                print(f"  {[name for name, _, _, _ in apps]} {port}: {shown}", file=sys.stderr)
        return rates, overall, per_task, tasks_on
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base-port", type=int, default=17100)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="qtasks-cluster-bench-")
    base = args.base_port
    shards = [base, base + 1, base + 2]
    single = base + 3
    try:
        for port in shards:
            start_server(port, folder, cluster=True)
        start_server(single, folder, cluster=False)
        run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in shards],
             "--cluster-yes"])
        for _ in range(200):
            if all("cluster_state:ok" in redis_cli(p, "CLUSTER", "INFO") for p in shards):
                break
            time.sleep(0.1)
        # One app name per master.
        names = {}
        i = 0
        while len(names) < len(shards):
            name = f"bench{i}"
            names.setdefault(master_of(shards[0], "{" + name + "}"), name)
            i += 1
        cluster_url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in shards)
        # One app over three partitions: where each partition's hash tag lives.
        spread = "spread"
        parts = [("{" + tag + "}", master_of(shards[0], "{" + tag + "}"))
                 for tag in partition_names(spread, len(shards))]
        assert sorted(port for _, port in parts) == shards, f"partitions not one per shard: {parts}"
        results = {"one app, one Redis": [], "one app, cluster": [],
                   "three apps, three shards (a worker each)": [],
                   "one app in three partitions, three shards (one worker)": [],
                   "one app in three partitions, three shards (three workers)": []}
        for round_ in range(args.rounds):
            redis_cli(single, "FLUSHALL")
            for port in shards:
                redis_cli(port, "FLUSHALL")
            first_port, first = next(iter(sorted(names.items())))
            results["one app, one Redis"].append(drain(
                args.binary, f"redis://127.0.0.1:{single}/0", [(first, [(first, single)], 1, 1)],
                args.n))
            results["one app, cluster"].append(drain(
                args.binary, cluster_url, [(first, [("{" + first + "}", first_port)], 1, 1)],
                args.n))
            apps = [(name, [("{" + name + "}", port)], 1, 1) for port, name in sorted(names.items())]
            results["three apps, three shards (a worker each)"].append(
                drain(args.binary, cluster_url, apps, args.n))
            results["one app in three partitions, three shards (one worker)"].append(drain(
                args.binary, cluster_url, [(spread, parts, len(shards), 1)], args.n * len(shards)))
            results["one app in three partitions, three shards (three workers)"].append(drain(
                args.binary, cluster_url, [(spread, parts, len(shards), len(shards))],
                args.n * len(shards)))
            print(f"round {round_ + 1} done", file=sys.stderr)
        print("| setup | drain, all tasks/s | per app tasks/s | Redis CPU µs per task, per server "
              "| tasks per server |")
        print("|---|---|---|---|---|")
        for setup, runs in results.items():
            overall = statistics.median(r[1] for r in runs)
            per_app = statistics.median(statistics.mean(r[0].values()) for r in runs)
            ports = sorted(runs[0][2])
            cpu = ", ".join(f"{statistics.median(r[2][p] for r in runs):.1f}" for p in ports)
            tasks = ", ".join(f"{statistics.median(r[3][p] for r in runs):,.0f}" for p in ports)
            print(f"| {setup} | {overall:,.0f} | {per_app:,.0f} | {cpu} | {tasks} |")
    finally:
        for port in shards + [single]:
            try:
                redis_cli(port, "SHUTDOWN", "NOSAVE")
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(folder, ignore_errors=True)

if __name__ == "__main__":
    main()
