"""A Python QTasks 1.7.3 producer on RabbitMQ (its AsyncRabbitMQBroker, with its Redis storage):
adds one task and prints its uuid as JSON.

usage: amqp_client.py <amqp_url> <redis_url> <app_name>
"""
import asyncio
import json
import sys

from qtasks.brokers import AsyncRabbitMQBroker
from qtasks.storages import AsyncRedisStorage

amqp_url, redis_url, name = sys.argv[1], sys.argv[2], sys.argv[3]


async def main():
    storage = AsyncRedisStorage(name=name, url=redis_url)
    broker = AsyncRabbitMQBroker(name=name, url=amqp_url, storage=storage)
    await broker.connect()
    task = await broker.add("interop_add", priority=0, args=(2,), kwargs={"b": 5})
    await broker.connection.close()
    print(json.dumps({"uuid": str(task.uuid)}))


asyncio.run(main())
