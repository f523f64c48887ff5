"""A Python QTasks 1.7.3 producer on Kafka (its AsyncKafkaBroker, with its Redis storage): adds one
task and prints its uuid as JSON.

The original's broker cannot be made as shipped: its constructor gives the producer the
consumer's options (`TypeError: ... 'auto_offset_reset'`), and its `add` sends a `str` to a
producer with no serializer. Both are mended here, by a producer that drops the consumer's
options and encodes strings; everything else (the record it writes, the topic, the message
value) is the package's own.

usage: kafka_client.py <kafka_servers> <redis_url> <app_name>
"""
import asyncio
import json
import sys

import aiokafka
import qtasks.brokers.async_kafka as async_kafka
from qtasks.brokers import AsyncKafkaBroker
from qtasks.storages import AsyncRedisStorage

servers, redis_url, name = sys.argv[1], sys.argv[2], sys.argv[3]

CONSUMER_ONLY = ("auto_offset_reset", "enable_auto_commit", "value_deserializer")


class MendedProducer(aiokafka.AIOKafkaProducer):
    def __init__(self, *args, **kwargs):
        for option in CONSUMER_ONLY:
            kwargs.pop(option, None)
        kwargs.setdefault("value_serializer", lambda value: value.encode("utf-8"))
        super().__init__(*args, **kwargs)


async_kafka.AIOKafkaProducer = MendedProducer


async def main():
    storage = AsyncRedisStorage(name=name, url=redis_url)
    broker = AsyncKafkaBroker(name=name, url=servers, storage=storage)
    task = await broker.add("interop_add", priority=0, args=(2,), kwargs={"b": 5})
    print(json.dumps({"uuid": str(task.uuid), "topic": broker.topic}))


asyncio.run(main())
