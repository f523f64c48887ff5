"""A Python QTasks 1.7.3 worker for tasks added by a qtasks (Rust) client.

usage: worker.py <redis_url> <app_name>
"""
import sys

from qtasks.asyncio import QueueTasks

url, name = sys.argv[1], sys.argv[2]
app = QueueTasks(name=name, broker_url=url)


@app.task(name="py_mul")
async def py_mul(a, b):
    return a * b


@app.task(name="py_greet")
async def py_greet(who, punctuation="!"):
    return {"text": f"привет, {who}{punctuation}"}


@app.task(name="py_fail")
async def py_fail():
    raise ValueError("bad value")


print("ready", flush=True)
app.run_forever()
