#!/usr/bin/env python3
"""Consume COUNT messages from a RabbitMQ queue and parse and validate each one with the
official CloudEvents Python SDK's RabbitMQ protocol binding (cloudevents.core.bindings.rabbitmq).

walbox's tests run this against what walbox published; it prints one JSON summary line on
stdout that the test asserts on, and exits non-zero when a message is missing or invalid.

    ce_check.py --amqp-url URL --queue Q --count N --mode structured|binary [--timeout S]
"""

import argparse
import json
import sys
from datetime import datetime

import pika
from cloudevents.core.bindings import rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

try:
    from importlib.metadata import version as package_version
except ImportError:  # pragma: no cover - Python < 3.8
    package_version = None


def header_text(value):
    """AMQP header values as the binding wants them: strings."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def to_binding_message(properties, body):
    headers = {key: header_text(value) for key, value in (properties.headers or {}).items()}
    return rabbitmq.RabbitMQMessage(
        headers=headers, content_type=properties.content_type, body=body
    )


def parse(message, mode):
    """Parse with the mode the test asks for, and check the SDK's own auto-detection agrees."""
    fmt = JSONFormat()
    if mode == "structured":
        event = rabbitmq.from_structured(message, fmt, CloudEvent)
    else:
        event = rabbitmq.from_binary(message, fmt, CloudEvent)
    detected = rabbitmq.from_rabbitmq(message, fmt, CloudEvent)
    if detected.get_id() != event.get_id():
        raise ValueError("from_rabbitmq detected another content mode than " + mode)
    return event


def summary_of(event):
    attributes = {}
    for name, value in event.get_attributes().items():
        attributes[name] = value.isoformat() if isinstance(value, datetime) else value
    data = event.get_data()
    if isinstance(data, bytes):
        data = {"bytes": data.decode("utf-8", "replace")}
    return {"attributes": attributes, "data": data}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--mode", choices=["structured", "binary"], required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
    channel = connection.channel()
    events, errors = [], []
    received = 0
    for method, properties, body in channel.consume(
        args.queue, auto_ack=False, inactivity_timeout=args.timeout
    ):
        if method is None:
            break
        received += 1
        try:
            event = parse(to_binding_message(properties, body), args.mode)
            entry = summary_of(event)
            entry["amqp"] = {
                "message_id": properties.message_id,
                "content_type": properties.content_type,
                "header_names": sorted((properties.headers or {}).keys()),
            }
            events.append(entry)
        except Exception as error:  # every failure is reported, none stops the run
            detail = getattr(error, "errors", None)
            errors.append(
                {
                    "message_id": properties.message_id,
                    "error": repr(error) + (" " + repr(detail) if detail else ""),
                }
            )
        channel.basic_ack(method.delivery_tag)
        if received >= args.count:
            break
    channel.cancel()
    connection.close()

    sdk = "cloudevents " + (package_version("cloudevents") if package_version else "?")
    print(
        json.dumps(
            {
                "sdk": sdk,
                "mode": args.mode,
                "received": received,
                "valid": len(events),
                "events": events,
                "errors": errors,
            }
        )
    )
    return 0 if received == args.count and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
