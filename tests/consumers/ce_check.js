#!/usr/bin/env node
// Consume COUNT messages from a RabbitMQ queue and parse and validate each one (structured
// content mode) with the official CloudEvents SDK for JavaScript (npm `cloudevents`).
//
// walbox's tests run this against what walbox published; it prints one JSON summary line on
// stdout that the test asserts on, and exits non-zero when a message is missing or invalid.
//
//   node ce_check.js --amqp-url URL --queue Q --count N [--timeout S]
"use strict";

const amqp = require("amqplib");
const { CloudEvent, HTTP } = require("cloudevents");
const sdkVersion = require("cloudevents/package.json").version;
const { ROOT_CONTEXT, defaultTextMapGetter, trace } = require("@opentelemetry/api");
const { W3CTraceContextPropagator } = require("@opentelemetry/core");

// The span context OpenTelemetry reads from the event's traceparent and tracestate
// attributes; null when there is none or it is not valid.
function traceOf(event) {
  if (!event.traceparent) return null;
  const carrier = { traceparent: event.traceparent };
  if (event.tracestate) carrier.tracestate = event.tracestate;
  const context = new W3CTraceContextPropagator().extract(ROOT_CONTEXT, carrier, defaultTextMapGetter);
  const span = trace.getSpanContext(context);
  if (!span || !trace.isSpanContextValid(span)) return null;
  return {
    trace_id: span.traceId,
    span_id: span.spanId,
    sampled: (span.traceFlags & 1) === 1,
    tracestate: span.traceState ? span.traceState.serialize() : null,
  };
}

function options(argv) {
  const wanted = { "--amqp-url": "amqpUrl", "--queue": "queue", "--count": "count", "--timeout": "timeout" };
  const parsed = { timeout: "30" };
  for (let i = 2; i < argv.length; i += 2) {
    const key = wanted[argv[i]];
    if (!key || argv[i + 1] === undefined) {
      throw new Error(`usage: ce_check.js --amqp-url URL --queue Q --count N [--timeout S] (at ${argv[i]})`);
    }
    parsed[key] = argv[i + 1];
  }
  for (const key of ["amqpUrl", "queue", "count"]) {
    if (parsed[key] === undefined) throw new Error(`missing --${key}`);
  }
  return { ...parsed, count: Number(parsed.count), timeout: Number(parsed.timeout) };
}

// Two of the SDK's ways in: its structured-mode message parser (HTTP.toEvent takes any
// message with a content type and a body), then the strict constructor, and validate() on both.
function parse(message) {
  const contentType = message.properties.contentType;
  const body = message.content.toString("utf8");
  const parsed = HTTP.toEvent({ headers: { "content-type": contentType }, body });
  if (Array.isArray(parsed)) throw new Error("a batch where one event was expected");
  parsed.validate();
  const strict = new CloudEvent(JSON.parse(body));
  strict.validate();
  if (strict.id !== parsed.id) throw new Error("the two parsers disagree on the id");
  return parsed;
}

async function main() {
  const args = options(process.argv);
  const connection = await amqp.connect(args.amqpUrl);
  const channel = await connection.createChannel();
  const events = [];
  const errors = [];
  let received = 0;
  await new Promise((resolve, reject) => {
    let timer;
    const idle = () => {
      clearTimeout(timer);
      timer = setTimeout(resolve, args.timeout * 1000);
    };
    idle();
    channel
      .consume(args.queue, (message) => {
        if (message === null) return resolve();
        received += 1;
        try {
          const event = parse(message);
          const attributes = event.toJSON();
          const data = attributes.data;
          delete attributes.data;
          events.push({
            attributes,
            data,
            trace: traceOf(event),
            amqp: { message_id: message.properties.messageId, content_type: message.properties.contentType },
          });
        } catch (error) {
          errors.push({ message_id: message.properties.messageId, error: String(error && error.message ? `${error.message} ${JSON.stringify(error.errors || "")}` : error) });
        }
        channel.ack(message);
        if (received >= args.count) {
          clearTimeout(timer);
          resolve();
        } else {
          idle();
        }
      })
      .catch(reject);
  });
  await channel.close();
  await connection.close();
  console.log(JSON.stringify({ sdk: `cloudevents ${sdkVersion}`, mode: "structured", received, valid: events.length, events, errors }));
  return received === args.count && errors.length === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(String(error && error.stack ? error.stack : error));
    process.exit(2);
  },
);
