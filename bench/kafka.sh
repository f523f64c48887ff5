#!/usr/bin/env bash
# Kafka beside Redis: `bash bench/kafka.sh [ROUNDS] [HOST:PORT]` (see queue_beside_redis.sh).
exec bash "$(dirname "$0")/queue_beside_redis.sh" kafka "$@"
