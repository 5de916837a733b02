#!/usr/bin/env python3
"""Publish test events shaped like walbox's, each one twice, to check a consumer's deduplication.

Sends COUNT events (default 3) with fresh message ids, then sends the same events again, as
walbox does when it republishes after a failure. A deduplicating consumer prints each id once.
Messages are persistent and mandatory, with publisher confirms: an unroutable one (no queue
bound yet) is an error, so start the consumer first.

    python send_test_events.py [COUNT]

Environment: AMQP_URL (amqp://guest:guest@localhost:5672/%2f), EXCHANGE (outbox).
"""

import json
import os
import sys
import uuid

import pika


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f")
    exchange = os.environ.get("EXCHANGE", "outbox")

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    channel.confirm_delivery()

    events = [(str(uuid.uuid4()), f"o-test-{n}", f"0/{0x1000 + n:X}") for n in range(1, count + 1)]
    for round_name in ("first", "again"):
        for message_id, aggregate_id, lsn in events:
            properties = pika.BasicProperties(
                message_id=message_id,
                type="created",
                content_type="application/json",
                delivery_mode=pika.DeliveryMode.Persistent,
                app_id="walbox",
                headers={
                    "x-aggregate-type": "order",
                    "x-aggregate-id": aggregate_id,
                    "x-commit-lsn": lsn,
                },
            )
            body = json.dumps({"order_id": aggregate_id}).encode()
            # Raises UnroutableError or NackError if the broker does not take it.
            channel.basic_publish(exchange, "order.created", body, properties, mandatory=True)
            print(f"sent ({round_name}) id={message_id}")
    connection.close()


if __name__ == "__main__":
    main()
