#!/usr/bin/env python3
"""Consume walbox events from RabbitMQ and handle each event once.

walbox delivers at least once: after a crash, a broker restart or a network cut it publishes
again every event whose confirm it had not seen, so the same event can arrive twice. Each
message carries the outbox row's id as its AMQP message_id, so a consumer handles an id once and
acks (without handling) any message whose id it has handled already.

This example remembers handled ids in a bounded LRU in memory. That catches the duplicates a
walbox restart produces, which arrive soon after the originals, but the memory is lost when the
consumer restarts and forgets ids older than its capacity. A production consumer records each
handled id in its own database, in the same transaction as the event's side effect, e.g.

    INSERT INTO processed_events (message_id) VALUES (%s) ON CONFLICT DO NOTHING

and skips the work when no row was inserted, then acks only after that transaction commits.

Environment:
    AMQP_URL      broker URL              amqp://guest:guest@localhost:5672/%2f
    EXCHANGE      walbox's exchange       outbox
    QUEUE         durable queue to use    walbox-example-python
    BINDING_KEY   routing-key pattern     #
    SEEN_IDS      ids to remember         10000
    PREFETCH      unacked messages held   100

Run:  pip install -r requirements.txt && python consumer.py
"""

import os
import signal
import sys
from collections import OrderedDict

import pika
import pika.exceptions


class SeenIds:
    """The most recently handled message ids, at most `capacity` of them."""

    def __init__(self, capacity):
        if capacity < 1:
            raise ValueError("SEEN_IDS must be at least 1")
        self._capacity = capacity
        self._ids = OrderedDict()

    def __contains__(self, message_id):
        if message_id not in self._ids:
            return False
        self._ids.move_to_end(message_id)
        return True

    def add(self, message_id):
        self._ids[message_id] = None
        self._ids.move_to_end(message_id)
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)


def text(value):
    """A header value as text (pika hands long strings over as str or bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "-" if value is None else str(value)


def handle(routing_key, properties, body):
    """The event's side effect. Here: print it."""
    headers = properties.headers or {}
    print(
        f"id={properties.message_id} type={properties.type} routing_key={routing_key} "
        f"x-commit-lsn={text(headers.get('x-commit-lsn'))} "
        f"x-aggregate-id={text(headers.get('x-aggregate-id'))} "
        f"body={body.decode('utf-8', 'replace')}",
        flush=True,
    )


def on_message(channel, method, properties, body, seen):
    message_id = properties.message_id
    if message_id is not None and message_id in seen:
        print(
            f"duplicate id={message_id} routing_key={method.routing_key} "
            f"redelivered={method.redelivered}: acked, not handled again",
            file=sys.stderr,
            flush=True,
        )
        channel.basic_ack(method.delivery_tag)
        return
    if message_id is None:
        print("message without message_id: handled, cannot be deduplicated", file=sys.stderr)
    # If handle() raises, the message stays unacked and the broker delivers it again once this
    # consumer's connection is gone.
    handle(method.routing_key, properties, body)
    if message_id is not None:
        seen.add(message_id)
    channel.basic_ack(method.delivery_tag)


def stop(_signum, _frame):
    raise KeyboardInterrupt


def main():
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f")
    exchange = os.environ.get("EXCHANGE", "outbox")
    queue = os.environ.get("QUEUE", "walbox-example-python")
    binding_key = os.environ.get("BINDING_KEY", "#")
    seen = SeenIds(int(os.environ.get("SEEN_IDS", "10000")))
    prefetch = int(os.environ.get("PREFETCH", "100"))

    signal.signal(signal.SIGTERM, stop)
    try:
        connection = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPError as error:
        sys.exit(f"consumer: cannot connect to RabbitMQ: {error!r}")
    try:
        channel = connection.channel()
        # The same declaration walbox makes, so either may come first.
        channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, exchange, routing_key=binding_key)
        channel.basic_qos(prefetch_count=prefetch)
        channel.basic_consume(
            queue,
            lambda ch, method, props, body: on_message(ch, method, props, body, seen),
        )
        print(
            f"consumer: queue {queue} bound to exchange {exchange} with {binding_key}; "
            "waiting for events (Ctrl-C stops)",
            file=sys.stderr,
            flush=True,
        )
        channel.start_consuming()
    except KeyboardInterrupt:
        pass
    except pika.exceptions.AMQPError as error:
        # Unacked messages go back to the queue; a supervisor restarts this process.
        sys.exit(f"consumer: connection lost: {error!r}")
    finally:
        if connection.is_open:
            connection.close()


if __name__ == "__main__":
    main()
