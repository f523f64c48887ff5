"""A Python QTasks 1.7.3 client against a qtasks (Rust) worker: prints what it got as JSON.

usage: client.py <redis_url> <app_name>
"""
import asyncio
import json
import sys

from qtasks.asyncio import QueueTasks

url, name = sys.argv[1], sys.argv[2]
app = QueueTasks(name=name, broker_url=url)


def show(task):
    if task is None:
        return None
    return {
        "status": task.status,
        "returning": task.returning,
        "traceback": task.traceback,
        "cancel_reason": getattr(task, "cancel_reason", None),
        "args": list(task.args),
        "kwargs": task.kwargs,
        "task_name": task.task_name,
        "priority": task.priority,
    }


async def main():
    out = {}
    out["add"] = show(await app.add_task("interop_add", 2, b=5, timeout=30))
    out["unicode"] = show(await app.add_task("interop_greet", "мир", timeout=30))
    out["error"] = show(await app.add_task("interop_fail", timeout=30))
    out["cancel"] = show(await app.add_task("interop_cancel", reason="не нужно", timeout=30))
    queued = await app.add_task("interop_add", 1, 1, priority=3)
    task = None
    for _ in range(600):
        task = await app.get(queued.uuid)
        if task is not None and task.status in ("success", "error", "cancel"):
            break
        await asyncio.sleep(0.05)
    out["get"] = show(task)
    print(json.dumps(out, ensure_ascii=False))


asyncio.run(main())
