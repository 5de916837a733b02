#!/usr/bin/env python3
"""Consume COUNT messages from a RabbitMQ queue and read each one's W3C trace context the ways
its consumers do, printing one JSON summary line for walbox's tests to assert on.

For every message:
  - "consumer_span": the CONSUMER span that OpenTelemetry's pika instrumentation
    (opentelemetry-instrumentation-pika) starts for the delivery, with its trace id and its
    parent span id: a consumer continuing the producer's trace has the producer's trace id and
    the traceparent's span id as parent;
  - "w3c": OpenTelemetry's W3C Trace Context propagator on the AMQP headers
    (traceparent, tracestate), as OpenTelemetry's messaging instrumentations and NServiceBus
    read them;
  - "masstransit": the same propagator on the header MT-Activity-Id, which MassTransit's
    receive activity parses as a traceparent (ActivityContext.TryParse);
  - "cloudevent": for a CloudEvent (structured or binary), the official CloudEvents SDK's
    RabbitMQ binding parses it and the propagator reads its distributed-tracing extension
    attributes (traceparent, tracestate).

    trace_check.py --amqp-url URL --queue Q --count N [--timeout S]

Exits non-zero when fewer than COUNT messages came or a CloudEvent did not parse.
"""

import argparse
import json
import sys
import time

import pika
from cloudevents.core.bindings import rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from opentelemetry import trace
from opentelemetry.instrumentation.pika import PikaInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACE_HEADERS = ["traceparent", "tracestate", "MT-Activity-Id", "ce-traceparent", "ce-tracestate"]
PROPAGATOR = TraceContextTextMapPropagator()


def text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return None if value is None else str(value)


def w3c(traceparent, tracestate=None):
    """What the W3C propagator makes of a traceparent (and tracestate): None when it finds no
    valid span context."""
    carrier = {"traceparent": text(traceparent)}
    if tracestate is not None:
        carrier["tracestate"] = text(tracestate)
    context = PROPAGATOR.extract(carrier={k: v for k, v in carrier.items() if v is not None})
    span = trace.get_current_span(context).get_span_context()
    if not span.is_valid:
        return None
    return {
        "trace_id": format(span.trace_id, "032x"),
        "span_id": format(span.span_id, "016x"),
        "sampled": bool(span.trace_flags & 1),
        "tracestate": span.trace_state.to_header() or None,
    }


def cloudevent(properties, body):
    """The CloudEvent's tracing attributes, if the message is a CloudEvent."""
    headers = {key: text(value) for key, value in (properties.headers or {}).items()}
    structured = (properties.content_type or "").startswith("application/cloudevents")
    if not structured and "ce-specversion" not in headers:
        return None
    message = rabbitmq.RabbitMQMessage(
        headers=headers, content_type=properties.content_type, body=body
    )
    event = rabbitmq.from_rabbitmq(message, JSONFormat(), CloudEvent)
    attributes = event.get_attributes()
    traceparent = attributes.get("traceparent")
    tracestate = attributes.get("tracestate")
    return {
        "mode": "structured" if structured else "binary",
        "id": event.get_id(),
        "traceparent": traceparent,
        "tracestate": tracestate,
        "w3c": w3c(traceparent, tracestate) if traceparent else None,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    connection = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
    channel = connection.channel()
    PikaInstrumentor().instrument_channel(channel, tracer_provider=provider)
    messages, errors = [], []

    def on_message(ch, method, properties, body):
        if len(messages) >= args.count:
            return  # not acked: back to the queue when the channel closes
        # Runs inside the instrumentation's consumer span.
        span = trace.get_current_span().get_span_context()
        headers = properties.headers or {}
        entry = {
            "message_id": properties.message_id,
            "content_type": properties.content_type,
            "headers": {name: text(headers[name]) for name in TRACE_HEADERS if name in headers},
            "consumer_span_id": format(span.span_id, "016x"),
            "w3c": w3c(headers.get("traceparent"), headers.get("tracestate"))
            if "traceparent" in headers
            else None,
            "masstransit": w3c(headers["MT-Activity-Id"]) if "MT-Activity-Id" in headers else None,
        }
        try:
            entry["cloudevent"] = cloudevent(properties, body)
        except Exception as error:  # every failure is reported, none stops the run
            errors.append({"message_id": properties.message_id, "error": repr(error)})
        messages.append(entry)
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(args.queue, on_message)
    deadline = time.monotonic() + args.timeout
    while len(messages) < args.count and time.monotonic() < deadline:
        connection.process_data_events(time_limit=1)
    channel.close()
    connection.close()

    spans = {format(s.context.span_id, "016x"): s for s in exporter.get_finished_spans()}
    for entry in messages:
        span = spans.get(entry.pop("consumer_span_id"))
        entry["consumer_span"] = (
            None
            if span is None
            else {
                "kind": span.kind.name,
                "trace_id": format(span.context.trace_id, "032x"),
                "parent_span_id": format(span.parent.span_id, "016x") if span.parent else None,
            }
        )
    print(json.dumps({"received": len(messages), "messages": messages, "errors": errors}))
    return 0 if len(messages) == args.count and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
