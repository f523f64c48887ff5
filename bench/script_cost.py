#!/usr/bin/env python3
"""Redis's instructions per task for the drain path of the Redis engine's scripts, counted by
callgrind, which repeats exactly where CPU time on a shared machine does not.

    python3 bench/script_cost.py [--scripts qtasks-redis/src/scripts.rs] [--two-call | --floor | --add] [--n 1024] [--batch 64]

Starts `redis-server` under `valgrind --tool=callgrind` on its own port (6396), writes N
records and queue entries as qtasks adds them, then drains them the way a worker does, in fixed
batches (so the count does not depend on timing): the take script, the plain reads a big take
leaves to the worker, and the finish script of the batch. Counting starts after the adds
(`callgrind_control -z`) and ends when the queue is empty. Prints instructions per task.

`--floor` drains with two minimal scripts instead, which keep only what no design that leases,
fences and keeps Python QTasks' records can leave out: a take that pops entries from the list,
leases them (one `ZADD`) and marks each record (`HMGET` of `status` and `deliveries`, `HSET` of
four fields), and a finish that releases each lease (`ZREM`), writes the outcome (`HSET`) and its
time to live (`PEXPIRE`), with one `PUBLISH` per batch; no priorities, counters, delays, pauses,
cancels, recoveries or replays. It measures the floor under the real scripts' cost.

`--scripts` reads the scripts from another copy of `scripts.rs` (say, `git show
REV:qtasks-redis/src/scripts.rs > /tmp/old.rs`); `--two-call` drives the protocol of releases
up to 2026-12-04 (`f6cd7ad`: a take, then a separate mark returning 19 named fields, and a
finish with the record and items keys declared), for an A/B against them. Needs valgrind and
redis-server; talks RESP itself (no client library).
"""
import argparse, os, re, socket, subprocess, sys, tempfile, time, uuid

class Resp:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")

    @staticmethod
    def encode(args):
        out = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(f"${len(data)}\r\n".encode() + data + b"\r\n")
        return b"".join(out)

    def read(self):
        line = self.file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+": return rest.decode()
        if kind == b"-": raise RuntimeError(rest.decode())
        if kind == b":": return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.file.read(size + 2)[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.read() for _ in range(size)]
        raise RuntimeError(f"unexpected reply {line!r}")

    def pipe(self, commands):
        self.sock.sendall(b"".join(self.encode(c) for c in commands))
        return [self.read() for _ in commands]

    def call(self, *args):
        return self.pipe([args])[0]

def scripts_of(path):
    """The scripts' Lua as the Rust `concat!` of macros and raw strings builds them."""
    source = open(path).read()
    def macro(name):
        return re.search(r"macro_rules! %s \{\s*\(\) => \{\s*r#\"(.*?)\"#" % name, source, re.S).group(1)
    def script(name):
        found = re.search(r"pub\(super\) const %s: &str = (concat!\((.*?)\n\);|r#\"(.*?)\"#;)" % name, source, re.S)
        if found.group(3) is not None:
            return found.group(3)
        return "".join(macro(part.group(1)) if part.group(1) else part.group(2)
                       for part in re.finditer(r"(\w+)!\(\)|r#\"(.*?)\"#", found.group(2), re.S))
    return script

# The floor's scripts (`--floor`): see the module's docs.
FLOOR_TAKE = r"""
local taken = redis.call('LPOP', KEYS[1], ARGV[1]) or {}
local leases, out = {}, {}
for j, entry in ipairs(taken) do
  local token = ARGV[2] .. string.format('%04x', j)
  leases[#leases + 1] = ARGV[3]
  leases[#leases + 1] = token .. entry
  local uuid = string.match(entry, ':(........%-....%-....%-....%-............):')
  local key = ARGV[5] .. ':' .. uuid
  local got = redis.call('HMGET', key, 'status', 'deliveries')
  local deliveries = (tonumber(got[2]) or 0) + 1
  redis.call('HSET', key, 'status', 'process', 'updated_at', ARGV[4], 'marked_by', token, 'deliveries', deliveries)
  out[j] = {entry, token, deliveries}
end
if #leases > 0 then redis.call('ZADD', KEYS[2], unpack(leases)) end
return out
"""
FLOOR_FINISH = r"""
local out, told = {}, {}
local a = 3
for i = 2, #KEYS do
  local leased = ARGV[a]
  if redis.call('ZREM', KEYS[1], leased) == 1 then
    redis.call('HSET', KEYS[i], 'finished_by', string.sub(leased, 1, 32), 'updated_at', ARGV[a + 2], 'finished_at', ARGV[a + 3], 'started_at', ARGV[a + 4], 'worker', ARGV[a + 5], 'status', ARGV[a + 6], 'returning', ARGV[a + 7])
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    told[#told + 1] = ARGV[a + 1]
    out[i - 1] = 1
  else
    out[i - 1] = 0
  end
  a = a + 8
end
if #told > 0 then redis.call('PUBLISH', ARGV[2], table.concat(told, ' ')) end
return out
"""

TAKEN_FIELDS = ["status", "task_name", "priority", "args", "kwargs", "created_at", "retry",
                "retry_parent_uuid", "traceparent", "group_uuid", "expires_at", "max_time",
                "queue", "hand_backs", "rate_key", "workflow"]

def start_counted(port):
    """redis-server under callgrind on `port`, and a client to it."""
    out = os.path.join(tempfile.mkdtemp(prefix="qtasks-callgrind-"), "callgrind.out")
    server = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                               "redis-server", "--port", str(port), "--save", "",
                               "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            return server, out, Resp(port)
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("redis-server under callgrind did not start")

def counted_total(server, out):
    subprocess.run(["callgrind_control", "-d", str(server.pid)], capture_output=True, check=True)
    time.sleep(1)
    server.terminate()
    server.wait()
    for line in open(out + ".1", errors="replace"):
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError("callgrind wrote no total")

def count_adds(script, args):
    """Redis's instructions per task added by the add script, in calls of 512 tasks laid out
    as `RedisBroker::add_many` sends them (the records' index kept)."""
    server, out, r = start_counted(args.port)
    try:
        app = "QueueTasks"
        key = lambda name: f"{app}:{name}"
        add = r.call("SCRIPT", "LOAD", script("ADD")).decode()
        subprocess.run(["callgrind_control", "-z", str(server.pid)], capture_output=True, check=True)
        for start in range(0, args.n, 512):
            tasks = [str(uuid.uuid4()) for _ in range(start, min(start + 512, args.n))]
            keys = [key("qtasks:stats"), key("task_queue"), key("qtasks:delayed"),
                    key("qtasks:queues"), key("qtasks:records:index")] + [key(t) for t in tasks]
            argv = ["1", key("qtasks:added"), "default", len(tasks)]
            for i, task in enumerate(tasks):
                fields = ["status", "new", "updated_at", "1796395301.1409173", "deliveries", "0",
                          "task_name", "noop", "priority", "0", "args", f"[{start + i}]",
                          "kwargs", "{}", "created_at", "1796395301.1409173"]
                # The standard record, as `RedisBroker` sends it: a field count of 0, then
                # the eight values without their names.
                argv += [0, *fields[1::2], f"noop:{task}:0", "", "1796395301140"]
            answers = r.call("EVALSHA", add, len(keys), *keys, *argv)
            if answers != [1] * len(tasks):
                raise RuntimeError(f"the add answered {answers[:3]}")
    finally:
        total = counted_total(server, out)
    print(f"add: {args.n} tasks added in calls of 512: {total / args.n:,.0f} Redis instructions per task")

def main():
    parser = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--scripts", default=os.path.join(here, "..", "qtasks-redis", "src", "scripts.rs"))
    parser.add_argument("--two-call", action="store_true")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--port", type=int, default=6396)
    parser.add_argument("--floor", action="store_true",
                        help="drain with the minimal take and finish instead (see the module's docs)")
    parser.add_argument("--add", action="store_true",
                        help="count the add script instead: N tasks added in calls of 512")
    args = parser.parse_args()
    script = scripts_of(args.scripts)
    if args.add:
        return count_adds(script, args)
    out = os.path.join(tempfile.mkdtemp(prefix="qtasks-callgrind-"), "callgrind.out")
    server = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                               "redis-server", "--port", str(args.port), "--save", "",
                               "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                r = Resp(args.port)
                break
            except OSError:
                time.sleep(0.1)
        app = "QueueTasks"
        key = lambda name: f"{app}:{name}"
        take = r.call("SCRIPT", "LOAD", script("TAKE")).decode()
        floor_take = r.call("SCRIPT", "LOAD", FLOOR_TAKE).decode()
        floor_finish = r.call("SCRIPT", "LOAD", FLOOR_FINISH).decode()
        finish = r.call("SCRIPT", "LOAD", script("FINISH")).decode()
        mark = r.call("SCRIPT", "LOAD", script("MARK")).decode() if args.two_call else None
        adds = []
        for i in range(args.n):
            task = str(uuid.uuid4())
            # In the order `RedisBroker` writes them: the fields a take and a finish look up
            # lead (a small hash is one list, scanned from its start).
            adds.append(["HSET", key(task), "status", "new", "updated_at", "1796395301.1409173",
                         "deliveries", "0", "task_name", "noop", "priority", "0", "args", f"[{i}]",
                         "kwargs", "{}", "created_at", "1796395301.1409173"])
            adds.append(["RPUSH", key("task_queue"), f"noop:{task}:0"])
            adds.append(["ZADD", key("qtasks:records:index"), "1796395301140", task])
        for i in range(0, len(adds), 3000):
            r.pipe(adds[i:i + 3000])
        subprocess.run(["callgrind_control", "-z", str(server.pid)], capture_output=True, check=True)
        drained, call = 0, 0
        while True:
            call += 1
            keys = [key(k) for k in ("qtasks:seq", "qtasks:leases", "qtasks:recovered",
                                     "qtasks:paused", "task_queue", "qtasks:incoming",
                                     "qtasks:ready", "qtasks:delayed", "qtasks:stats")]
            argv = [60000, args.batch, "%028x" % call, app, 1, "", args.batch]
            if not args.two_call:
                keys += [key("qtasks:stats"), key("qtasks:gone"), key("qtasks:records:index")]
                argv += ["1796395301.5", 0]
            if args.floor:
                floor = r.call("EVALSHA", floor_take, 2, key("task_queue"), key("qtasks:leases"),
                               args.batch, "%028x" % call, "99999999999999", "1796395301.5", app)
                taken = [[entry, 0, token, [b"run", None, deliveries]] for entry, token, deliveries in floor]
            else:
                taken = r.call("EVALSHA", take, len(keys), *keys, *argv)[0]
            if not taken:
                break
            receipts = [t[2].decode() + t[0].decode() for t in taken]
            uuids = [t[0].decode().split(":")[1] for t in taken]
            if args.two_call:
                mark_keys = [key("qtasks:leases"), key("qtasks:stats"), key("qtasks:gone")]
                mark_keys += [key(u) for u in uuids] + [key("qtasks:records:index")]
                r.call("EVALSHA", mark, len(mark_keys), *mark_keys, "1796395301.5",
                       len(receipts), *receipts, *TAKEN_FIELDS)
            else:
                # A task to run whose record the take left to the worker: its count alone.
                unread = [key(u) for u, t in zip(uuids, taken) if isinstance(t[3], int) or t[3][1] is None]
                if unread:
                    r.pipe([["HGETALL", k] for k in unread])
            finish_keys = [key("qtasks:leases"), key("qtasks:stats"), key("qtasks:cancel_requests")]
            finish_argv = ["86400000", key("qtasks:done")]
            finish_argv += [len(taken)] if args.two_call else [app, len(taken)]
            for receipt, task in zip(receipts, uuids):
                fields = ["updated_at", "1796395301.17743", "finished_at", "1796395301.17743",
                          "started_at", "1796395301.17742", "worker", "vm:9540:f5b01230",
                          "status", "success", "returning", "1"]
                # Both protocols declare each outcome's record and live items.
                finish_keys += [key(task), key(f"qtasks:items:{task}")]
                if args.two_call:
                    finish_argv += [receipt, task, "t:1796395301:success", "", len(fields) // 2, *fields, 0]
                else:
                    finish_argv += [receipt, task, "t:1796395301:success", "", "", len(fields) // 2, *fields, 0]
            if args.floor:
                floor_keys = [key("qtasks:leases")] + [key(u) for u in uuids]
                floor_argv = ["86400000", key("qtasks:done")]
                for receipt, task in zip(receipts, uuids):
                    floor_argv += [receipt, task, "1796395301.17743", "1796395301.17743",
                                   "1796395301.17742", "vm:9540:f5b01230", "success", "1"]
                answers = r.call("EVALSHA", floor_finish, len(floor_keys), *floor_keys, *floor_argv)
            else:
                answers = r.call("EVALSHA", finish, len(finish_keys), *finish_keys, *finish_argv)
            if not all(answer in (1, [1, None]) for answer in answers):
                raise RuntimeError(f"the finish answered {answers[:3]}")
            drained += len(taken)
        subprocess.run(["callgrind_control", "-d", str(server.pid)], capture_output=True, check=True)
        time.sleep(1)
    finally:
        server.terminate()
        server.wait()
    counted = None
    for line in open(out + ".1", errors="replace"):
        if line.startswith(("summary:", "totals:")):
            counted = int(line.split()[1])
    print(f"{'floor' if args.floor else 'two calls' if args.two_call else 'current'}: {drained} tasks drained in batches of "
          f"{args.batch}: {counted / drained:,.0f} Redis instructions per task")

if __name__ == "__main__":
    main()
