//! Super streams: which partition an event goes to.
//!
//! RabbitMQ's stream clients route by hashing the key client-side: MurmurHash3 (x86, 32 bit)
//! of the key's UTF-8 bytes with seed 104729, unsigned, modulo the number of partitions,
//! indexing the partitions in the order the broker lists them. The official Rust client does
//! exactly this (`src/superstream.rs`, `HashRoutingMurmurStrategy::routes`), as do the Java
//! and .NET clients, so walbox and any other producer agree on where a key lives.
//!
//! The key is `--partition-key` rendered by the outbox onto the message (default: the
//! aggregate id), or with `--partition-key-header` a header's value.
//!
//! # A routing change is a new producer identity
//!
//! Deduplication is per (producer name, partition). If the partition key or the partitions
//! change between runs, an event that was sent but never stored (its partition's leader
//! failed while the others stored later events) is republished to another partition, whose
//! producer may already hold a higher id: the broker would drop it as a duplicate and it
//! would be lost. So the routing's [`fingerprint`] is part of every partition's producer name:
//! a changed routing starts new producers with nothing stored, and what the slot replays is
//! stored again (duplicates of what the old routing stored, never a loss).

use std::borrow::Cow;
use std::io::Cursor;

use amq_protocol::types::AMQPValue;

use crate::config::PartitionKey;
use crate::outbox::OutboxMessage;

/// The seed every RabbitMQ stream client uses for hash routing.
const SEED: u32 = 104_729;

/// The partition (an index into the broker's list) of `key` among `partitions`.
pub(crate) fn route(key: &str, partitions: usize) -> usize {
    // Reading from an in-memory cursor cannot fail.
    let hash = murmur3::murmur3_32(&mut Cursor::new(key.as_bytes()), SEED).unwrap_or(0);
    (u64::from(hash) % partitions.max(1) as u64) as usize
}

/// A short, stable name of the routing: the partition key (kind and text) and the
/// partitions in the broker's order. Any change to either changes it (128-bit MurmurHash3,
/// shortened to 64 bits: an accidental collision between two routings of one slot is not a
/// practical concern).
pub(crate) fn fingerprint(key: &PartitionKey, partitions: &[String]) -> String {
    let mut text = match key {
        PartitionKey::Template(template) => format!("template\n{template}"),
        PartitionKey::Header(name) => format!("header\n{name}"),
    };
    for partition in partitions {
        text.push('\n');
        text.push_str(partition);
    }
    // Reading from an in-memory cursor cannot fail.
    let hash = murmur3::murmur3_x64_128(&mut Cursor::new(text.as_bytes()), SEED).unwrap_or(0);
    format!("{:016x}", (hash >> 64) as u64 ^ hash as u64)
}

/// The partition key of `message`: empty when the message has none (a header that is not
/// there; a dead-letter record of a row that could not be read).
pub(crate) fn key_of<'m>(message: &'m OutboxMessage, key: &PartitionKey) -> Cow<'m, str> {
    match key {
        PartitionKey::Template(_) => Cow::Borrowed(message.partition_key.as_deref().unwrap_or("")),
        PartitionKey::Header(name) => Cow::Owned(
            message
                .properties
                .headers()
                .as_ref()
                .and_then(|headers| headers.inner().get(name.as_str()).map(header_text))
                .unwrap_or_default(),
        ),
    }
}

/// A header's value as the text hash routing reads.
fn header_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        AMQPValue::ShortString(text) => text.as_str().to_owned(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Boolean(flag) => flag.to_string(),
        AMQPValue::Void => String::new(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::types::FieldTable;

    use super::*;
    use crate::lsn::Lsn;
    use crate::outbox::{Mapping, OutboxShape, ShapeError, Template, Transaction};
    use crate::pgoutput::TupleData;
    use crate::pgoutput::fixture::{outbox_relation, outbox_row, row};

    /// MurmurHash3_x86_32 written out from its specification, independent of the `murmur3`
    /// crate: what RabbitMQ's stream clients compute for hash routing.
    fn reference_murmur3(key: &[u8], seed: u32) -> u32 {
        const C1: u32 = 0xcc9e_2d51;
        const C2: u32 = 0x1b87_3593;
        let scramble = |k: u32| k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        let mut hash = seed;
        let mut blocks = key.chunks_exact(4);
        for block in &mut blocks {
            let k = u32::from_le_bytes(block.try_into().expect("4 bytes"));
            hash ^= scramble(k);
            hash = hash
                .rotate_left(13)
                .wrapping_mul(5)
                .wrapping_add(0xe654_6b64);
        }
        let tail = blocks.remainder();
        if !tail.is_empty() {
            let k = tail
                .iter()
                .enumerate()
                .fold(0u32, |k, (i, byte)| k | u32::from(*byte) << (8 * i));
            hash ^= scramble(k);
        }
        hash ^= key.len() as u32;
        hash ^= hash >> 16;
        hash = hash.wrapping_mul(0x85eb_ca6b);
        hash ^= hash >> 13;
        hash = hash.wrapping_mul(0xc2b2_ae35);
        hash ^ (hash >> 16)
    }

    /// The partition RabbitMQ's clients pick for `key` among `partitions`.
    fn rabbitmq_partition(key: &str, partitions: usize) -> usize {
        (reference_murmur3(key.as_bytes(), 104_729) % partitions as u32) as usize
    }

    const TRANSACTION: Transaction = Transaction {
        xid: 742,
        commit_lsn: Lsn(0x16B_3748),
        commit_time_micros: 1_000_000,
    };

    /// The outbox of sql/outbox.sql with `--partition-key template` (None: no key rendered).
    fn shape(template: Option<&str>) -> Result<OutboxShape, ShapeError> {
        let mapping = Mapping {
            partition_key: template.map(|text| Template::parse(text).unwrap()),
            ..Mapping::with_columns("", "{aggregate_type}.{event_type}")
        };
        OutboxShape::from_relation(&outbox_relation(), &mapping)
    }

    fn message(shape: &OutboxShape, tuple: &TupleData, index: u32) -> OutboxMessage {
        shape
            .message(tuple, &TRANSACTION, index, &mut String::new())
            .unwrap()
    }

    fn template_key(text: &str) -> PartitionKey {
        PartitionKey::Template(text.to_owned())
    }

    #[test]
    fn murmur3_reference_values() {
        // MurmurHash3_x86_32 reference vectors (seed 0 and 1), for the crate and for the
        // independent implementation the routing tests compare with.
        let hash = |text: &str, seed| murmur3::murmur3_32(&mut Cursor::new(text), seed).unwrap();
        for (text, seed, expected) in [("", 0, 0), ("", 1, 0x514E_28B7), ("hello", 0, 0x248B_FA47)]
        {
            assert_eq!(hash(text, seed), expected);
            assert_eq!(reference_murmur3(text.as_bytes(), seed), expected);
        }
        for n in 0..500 {
            let key = format!("key-{n}-{}", "x".repeat(n % 7));
            assert_eq!(
                hash(&key, SEED),
                reference_murmur3(key.as_bytes(), SEED),
                "{key}"
            );
        }
    }

    #[test]
    fn the_fingerprint_changes_with_the_key_or_the_partitions() {
        let three: Vec<String> = (0..3).map(|n| format!("orders-{n}")).collect();
        let key = template_key("{aggregate_id}");
        let base = fingerprint(&key, &three);
        assert_eq!(base.len(), 16);
        // Stable: the same routing, the same name on every run and every machine.
        assert_eq!(base, fingerprint(&key, &three.clone()));
        let changed = [
            fingerprint(&template_key("{aggregate_type}:{aggregate_id}"), &three),
            fingerprint(&PartitionKey::Header("{aggregate_id}".into()), &three),
            fingerprint(&key, &three[..2]),
            fingerprint(
                &key,
                &[three[1].clone(), three[0].clone(), three[2].clone()],
            ),
            fingerprint(&key, &[three.clone(), vec!["orders-3".into()]].concat()),
        ];
        for other in &changed {
            assert_ne!(&base, other);
        }
    }

    #[test]
    fn one_key_one_partition_and_keys_spread() {
        assert_eq!(route("order-1", 3), route("order-1", 3));
        let mut used = [0usize; 3];
        for n in 0..300 {
            used[route(&format!("order-{n}"), 3)] += 1;
        }
        assert!(used.iter().all(|&count| count > 50), "{used:?}");
        assert_eq!(route("anything", 1), 0);
    }

    #[test]
    fn a_templated_key_over_a_fixture_row_picks_rabbitmqs_partition() {
        let template = "{aggregate_type}/{aggregate_id}";
        let shape = shape(Some(template)).unwrap();
        let message = message(&shape, &outbox_row(r#"{"trace": "t1"}"#), 0);
        assert_eq!(message.partition_key.as_deref(), Some("order/o-17"));
        let key = key_of(&message, &template_key(template));
        assert_eq!(key, "order/o-17");
        for partitions in 1..=16 {
            assert_eq!(
                route(&key, partitions),
                rabbitmq_partition(&key, partitions)
            );
        }
        // The key travels beside the message: the wire is what the mapping says, no more.
        let plain = self::message(
            &self::shape(None).unwrap(),
            &outbox_row(r#"{"trace": "t1"}"#),
            0,
        );
        assert_eq!(plain.partition_key, None);
        assert_eq!(message.properties, plain.properties);
        assert_eq!(message.body, plain.body);
    }

    #[test]
    fn events_of_one_key_always_land_in_one_partition() {
        let template = "{aggregate_type}:{aggregate_id}";
        let shape = shape(Some(template)).unwrap();
        let mut home = std::collections::HashMap::new();
        let mut used = [0usize; 3];
        for n in 0..600u32 {
            // 100 aggregates; each event differs in id, type, payload, headers, time and
            // index in its transaction, none of which may move it.
            let aggregate = format!("o-{}", n % 100);
            let id = format!("6f1c0d3e-0000-4000-8000-{n:012}");
            let payload = format!(r#"{{"total": {n}}}"#);
            let headers = format!(r#"{{"n": {n}}}"#);
            let event_type = ["created", "paid", "shipped"][n as usize % 3];
            let tuple = row(&[
                Some(&id),
                Some("order"),
                Some(&aggregate),
                Some(event_type),
                Some(&payload),
                Some(&headers),
                Some("2026-11-22 14:59:17.5+00"),
            ]);
            let message = message(&shape, &tuple, n % 7);
            let key = key_of(&message, &template_key(template));
            assert_eq!(key, format!("order:{aggregate}"));
            let partition = route(&key, 3);
            assert_eq!(partition, rabbitmq_partition(&key, 3));
            assert_eq!(*home.entry(aggregate).or_insert(partition), partition);
            used[partition] += 1;
        }
        assert_eq!(home.len(), 100);
        assert!(used.iter().all(|&count| count > 0), "{used:?}");
    }

    #[test]
    fn the_default_key_is_the_aggregate_id_header_walbox_routed_by_before() {
        let shape = shape(Some("{aggregate_id}")).unwrap();
        let message = message(&shape, &outbox_row("{}"), 0);
        let by_template = key_of(&message, &template_key("{aggregate_id}"));
        let by_header = key_of(&message, &PartitionKey::Header("x-aggregate-id".into()));
        assert_eq!(by_template, "o-17");
        assert_eq!(by_template, by_header);
    }

    #[test]
    fn a_missing_key_is_the_empty_key_and_a_missing_column_is_refused() {
        // A NULL in the key's column renders empty: such events share the empty key's
        // partition.
        let shape = shape(Some("{aggregate_id}")).unwrap();
        let tuple = row(&[
            Some("6f1c0d3e-0000-4000-8000-000000000001"),
            Some("order"),
            None,
            Some("created"),
            Some("{}"),
            None,
            None,
        ]);
        let message = message(&shape, &tuple, 0);
        assert_eq!(message.partition_key.as_deref(), Some(""));
        let key = key_of(&message, &template_key("{aggregate_id}"));
        assert_eq!(route(&key, 3), rabbitmq_partition("", 3));
        // A header that is not there: the empty key too.
        let mut no_header = message;
        no_header.properties = no_header.properties.with_headers(FieldTable::default());
        assert_eq!(
            key_of(&no_header, &PartitionKey::Header("tenant".into())),
            ""
        );
        // A column the table does not have: the table cannot be relayed as configured.
        let refused = self::shape(Some("{tenant_id}")).unwrap_err();
        assert!(
            refused.to_string().starts_with("--partition-key: "),
            "{refused}"
        );
        assert!(refused.to_string().contains("tenant_id"), "{refused}");
    }

    #[test]
    fn the_fallback_of_a_row_that_cannot_become_a_message_keeps_its_key() {
        let shape = shape(Some("{aggregate_id}")).unwrap();
        let fallback = shape.fallback(&outbox_row("{}"), &TRANSACTION, 0);
        assert_eq!(fallback.partition_key.as_deref(), Some("o-17"));
    }
}
