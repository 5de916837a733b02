#!/usr/bin/env node
// Consume walbox events from RabbitMQ and handle each event once.
//
// walbox delivers at least once: after a crash, a broker restart or a network cut it publishes
// again every event whose confirm it had not seen, so the same event can arrive twice. Each
// message carries the outbox row's id as its AMQP message_id, so a consumer handles an id once
// and acks (without handling) any message whose id it has handled already.
//
// This example remembers handled ids in a bounded LRU in memory. That catches the duplicates a
// walbox restart produces, which arrive soon after the originals, but the memory is lost when
// the consumer restarts and forgets ids older than its capacity. A production consumer records
// each handled id in its own database, in the same transaction as the event's side effect, e.g.
//
//   INSERT INTO processed_events (message_id) VALUES ($1) ON CONFLICT DO NOTHING
//
// and skips the work when no row was inserted, then acks only after that transaction commits.
//
// Environment:
//   AMQP_URL      broker URL              amqp://guest:guest@localhost:5672/%2f
//   EXCHANGE      walbox's exchange       outbox
//   QUEUE         durable queue to use    walbox-example-node
//   BINDING_KEY   routing-key pattern     #
//   SEEN_IDS      ids to remember         10000
//   PREFETCH      unacked messages held   100
//
// Run:  npm ci && node consumer.js

'use strict';

const amqp = require('amqplib');

/** The most recently handled message ids, at most `capacity` of them. */
class SeenIds {
  constructor(capacity) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError('SEEN_IDS must be a whole number, at least 1');
    }
    this.capacity = capacity;
    this.ids = new Map(); // insertion order = recency order
  }

  has(messageId) {
    if (!this.ids.has(messageId)) return false;
    this.ids.delete(messageId);
    this.ids.set(messageId, true);
    return true;
  }

  add(messageId) {
    this.ids.delete(messageId);
    this.ids.set(messageId, true);
    if (this.ids.size > this.capacity) {
      this.ids.delete(this.ids.keys().next().value);
    }
  }
}

/** A header value as text (amqplib hands long strings over as strings or Buffers). */
function text(value) {
  if (value === undefined || value === null) return '-';
  return Buffer.isBuffer(value) ? value.toString('utf8') : String(value);
}

/** The event's side effect. Here: print it. */
function handle(message) {
  const { properties, fields, content } = message;
  const headers = properties.headers || {};
  console.log(
    `id=${properties.messageId} type=${properties.type} routing_key=${fields.routingKey} ` +
      `x-commit-lsn=${text(headers['x-commit-lsn'])} ` +
      `x-aggregate-id=${text(headers['x-aggregate-id'])} ` +
      `body=${content.toString('utf8')}`,
  );
}

async function main() {
  const url = process.env.AMQP_URL || 'amqp://guest:guest@localhost:5672/%2f';
  const exchange = process.env.EXCHANGE || 'outbox';
  const queue = process.env.QUEUE || 'walbox-example-node';
  const bindingKey = process.env.BINDING_KEY || '#';
  const seen = new SeenIds(Number(process.env.SEEN_IDS || 10000));
  const prefetch = Number(process.env.PREFETCH || 100);

  let stopping = false;
  const connection = await amqp.connect(url);
  // Unacked messages go back to the queue when the connection goes; a supervisor restarts us.
  connection.on('error', (error) => console.error(`consumer: connection error: ${error.message}`));
  connection.on('close', () => {
    if (!stopping) {
      console.error('consumer: connection closed by the broker');
      process.exit(1);
    }
  });

  const channel = await connection.createChannel();
  // The same declaration walbox makes, so either may come first.
  await channel.assertExchange(exchange, 'topic', { durable: true });
  await channel.assertQueue(queue, { durable: true });
  await channel.bindQueue(queue, exchange, bindingKey);
  await channel.prefetch(prefetch);

  await channel.consume(
    queue,
    (message) => {
      if (message === null) {
        console.error('consumer: the broker cancelled the consumer (queue deleted?)');
        process.exit(1);
      }
      const messageId = message.properties.messageId;
      if (messageId !== undefined && seen.has(messageId)) {
        console.error(
          `duplicate id=${messageId} routing_key=${message.fields.routingKey} ` +
            `redelivered=${message.fields.redelivered}: acked, not handled again`,
        );
        channel.ack(message);
        return;
      }
      if (messageId === undefined) {
        console.error('message without message_id: handled, cannot be deduplicated');
      }
      try {
        handle(message);
      } catch (error) {
        // The message stays unacked: the broker delivers it again once this process is gone.
        console.error(`consumer: handling id=${messageId} failed: ${error.stack}`);
        process.exit(1);
      }
      if (messageId !== undefined) seen.add(messageId);
      channel.ack(message);
    },
    { noAck: false },
  );
  console.error(
    `consumer: queue ${queue} bound to exchange ${exchange} with ${bindingKey}; ` +
      'waiting for events (Ctrl-C stops)',
  );

  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await connection.close().catch(() => {});
    process.exit(0);
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

main().catch((error) => {
  console.error(`consumer: ${error.message}`);
  process.exit(1);
});
