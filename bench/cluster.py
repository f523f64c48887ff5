#!/usr/bin/env python3
"""Apps spread over a Redis Cluster's shards (#26): the drain of one app on one Redis, of one
app on a three-master cluster, and of three apps at once, one per master, with each server's
CPU time per task (`INFO cpu`).

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
from ab import Resp, redis_cli, redis_cpu_s, run  # noqa: E402

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

def drain(binary, url, apps, n):
    """apps: [(name, key prefix, port)]. Adds n tasks per app, drains them with a worker each
    at once; returns ({name: tasks/s}, all tasks/s, {port: CPU µs per task drained there})."""
    for name, _, _ in apps:
        run([binary, "enqueue", "--url", url, "--app", name, "--n", str(n), "--bulk"])
    ports = sorted({port for _, _, port in apps})
    cpu = {port: redis_cpu_s(port) for port in ports}
    tasks_on = {port: n * sum(1 for _, _, p in apps if p == port) for port in ports}
    env = dict(os.environ, RUST_LOG="warn")
    workers = [subprocess.Popen([binary, "worker", "--url", url, "--app", name, "--threads", "1"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for name, _, _ in apps]
    polls = [(name, prefix, Resp(port)) for name, prefix, port in apps]
    try:
        deadline = time.perf_counter() + 180
        started = {}
        ended = {}
        while len(ended) < len(apps):
            if time.perf_counter() > deadline:
                raise RuntimeError("the drains did not finish in 180 s")
            for name, prefix, poll in polls:
                if name in ended:
                    continue
                remaining = left(poll, prefix)
                if name not in started and poll.command("LLEN", f"{prefix}:task_queue") < n:
                    started[name] = time.perf_counter()
                if name in started and remaining == 0:
                    ended[name] = time.perf_counter()
            time.sleep(0.002)
        rates = {name: n / (ended[name] - started[name]) for name, _, _ in apps}
        overall = n * len(apps) / (max(ended.values()) - min(started.values()))
        per_task = {port: (redis_cpu_s(port) - cpu[port]) * 1e6 / tasks_on[port] for port in ports}
        return rates, overall, per_task
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
        results = {"one app, one Redis": [], "one app, cluster": [], "three apps, three shards": []}
        for round_ in range(args.rounds):
            redis_cli(single, "FLUSHALL")
            for port in shards:
                redis_cli(port, "FLUSHALL")
            first_port, first = next(iter(sorted(names.items())))
            results["one app, one Redis"].append(
                drain(args.binary, f"redis://127.0.0.1:{single}/0", [(first, first, single)], args.n))
            results["one app, cluster"].append(
                drain(args.binary, cluster_url, [(first, "{" + first + "}", first_port)], args.n))
            apps = [(name, "{" + name + "}", port) for port, name in sorted(names.items())]
            results["three apps, three shards"].append(
                drain(args.binary, cluster_url, apps, args.n))
            print(f"round {round_ + 1} done", file=sys.stderr)
        print(f"| setup | drain, all tasks/s | per app tasks/s | Redis CPU µs per task, per server |")
        print("|---|---|---|---|")
        for setup, runs in results.items():
            overall = statistics.median(r[1] for r in runs)
            per_app = statistics.median(statistics.mean(r[0].values()) for r in runs)
            ports = sorted(runs[0][2])
            cpu = ", ".join(f"{statistics.median(r[2][p] for r in runs):.1f}" for p in ports)
            print(f"| {setup} | {overall:,.0f} | {per_app:,.0f} | {cpu} |")
    finally:
        for port in shards + [single]:
            try:
                redis_cli(port, "SHUTDOWN", "NOSAVE")
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(folder, ignore_errors=True)

if __name__ == "__main__":
    main()
