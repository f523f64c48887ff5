#!/usr/bin/env bash
# RabbitMQ beside Redis: `bash bench/rabbitmq.sh [ROUNDS] [AMQP_URL]` (see queue_beside_redis.sh).
exec bash "$(dirname "$0")/queue_beside_redis.sh" rabbitmq "$@"
