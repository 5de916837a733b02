//! Micro-benchmarks of walbox's per-event CPU work, without any I/O: decoding a pgoutput Insert
//! of an outbox row, and turning the decoded row into the AMQP message walbox publishes, in
//! each body encoding (`per_encoding`).
//!
//! `cargo bench --bench decode`. Without `--bench` (`cargo test --all-targets`, which may pass
//! libtest flags such as `--test-threads` that criterion would refuse) it only checks that the
//! benchmarked code paths work on these inputs, and exits.
//!
//! The Insert bytes are built here from the "Logical Replication Message Formats" page of the
//! PostgreSQL documentation: `I`, Int32 relation OID, `N`, then TupleData (Int16 column count;
//! per column `t`, Int32 length and the value in text format).

use std::hint::black_box;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput};
use walbox::config::MappingArgs;
use walbox::encode::Encoding;
use walbox::lsn::Lsn;
use walbox::outbox::{OutboxShape, Transaction};
use walbox::pgoutput::{self, ColumnValue, Message, Relation, RelationColumn, TupleData};

/// The Relation of sql/outbox.sql and its relation id, as the unit tests use them.
#[allow(dead_code)]
#[path = "../src/pgoutput/fixture.rs"]
mod fixture;
use fixture::{RELATION_ID, outbox_relation};

/// A JSON object of exactly `size` bytes (for sizes of at least 40), shaped like jsonb output.
fn payload(size: usize) -> String {
    let head = r#"{"t": 1795359557123456, "pad": ""#;
    let tail = r#"", "seq": 123456}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad))
}

/// The pgoutput Insert message for one outbox row whose payload has `payload_size` bytes.
fn insert_message(payload_size: usize) -> Bytes {
    let payload = payload(payload_size);
    let values: [Option<&str>; 7] = [
        Some("0b5c7a52-4f0e-4d8e-9a43-3c7d2f1e9b01"),
        Some("order"),
        Some("o-1001"),
        Some("created"),
        Some(&payload),
        Some(r#"{"trace_id": "4bf92f3577b34da6"}"#),
        Some("2026-11-22 18:42:17.123456+00"),
    ];
    let mut buffer = BytesMut::new();
    buffer.put_u8(b'I');
    buffer.put_u32(RELATION_ID);
    buffer.put_u8(b'N');
    buffer.put_i16(values.len() as i16);
    for value in values {
        match value {
            Some(text) => {
                buffer.put_u8(b't');
                buffer.put_i32(text.len() as i32);
                buffer.put_slice(text.as_bytes());
            }
            None => buffer.put_u8(b'n'),
        }
    }
    buffer.freeze()
}

const TRANSACTION: Transaction = Transaction {
    xid: 1468,
    commit_lsn: Lsn(0x0AA7_E898),
    commit_time_micros: 817_238_537_123_456,
};

fn outbox_shape() -> OutboxShape {
    shape_for(Encoding::Raw)
}

/// The sql/outbox.sql table with the default mapping but for the body encoding.
fn shape_for(body: Encoding) -> OutboxShape {
    let args = MappingArgs {
        body: Some(body),
        body_template: (body == Encoding::Template).then(|| {
            r#"{"Id": {id|json}, "Type": {event_type|json}, "Content": {payload|json}}"#.to_owned()
        }),
        ..MappingArgs::default()
    };
    let mapping = args.mapping().expect("mapping");
    OutboxShape::from_relation(&outbox_relation(), &mapping).expect("outbox shape")
}

const ENCODINGS: [Encoding; 5] = [
    Encoding::Raw,
    Encoding::CloudEvents,
    Encoding::CloudEventsBinary,
    Encoding::MassTransit,
    Encoding::Template,
];

fn benchmarks(c: &mut Criterion) {
    let shape = outbox_shape();

    let mut group = c.benchmark_group("per_event");
    group.throughput(Throughput::Elements(1));
    for size in [200, 10_000] {
        let bytes = insert_message(size);
        let Ok(Message::Insert(insert)) = pgoutput::decode(&bytes) else {
            panic!("the Insert built here does not decode");
        };
        shape
            .message(&insert.new_tuple, &TRANSACTION, 0, &mut String::new())
            .expect("the row maps to a message");

        group.bench_with_input(
            BenchmarkId::new("decode_insert", size),
            &bytes,
            |b, bytes| b.iter(|| pgoutput::decode(black_box(bytes))),
        );
        group.bench_with_input(
            BenchmarkId::new("build_message", size),
            &insert.new_tuple,
            |b, row| {
                let mut routing_key = String::new();
                b.iter(|| shape.message(black_box(row), &TRANSACTION, 0, &mut routing_key))
            },
        );
        group.bench_with_input(
            BenchmarkId::new("decode_and_build", size),
            &bytes,
            |b, bytes| {
                let mut routing_key = String::new();
                b.iter(|| match pgoutput::decode(black_box(bytes)) {
                    Ok(Message::Insert(insert)) => shape
                        .message(&insert.new_tuple, &TRANSACTION, 0, &mut routing_key)
                        .ok(),
                    _ => None,
                })
            },
        );
    }
    group.finish();

    let mut group = c.benchmark_group("per_encoding");
    group.throughput(Throughput::Elements(1));
    for size in [200, 10_000] {
        let Ok(Message::Insert(insert)) = pgoutput::decode(&insert_message(size)) else {
            panic!("the Insert built here does not decode");
        };
        for encoding in ENCODINGS {
            let shape = shape_for(encoding);
            group.bench_with_input(
                BenchmarkId::new(format!("build_message_{}", encoding.name()), size),
                &insert.new_tuple,
                |b, row| {
                    let mut routing_key = String::new();
                    b.iter(|| shape.message(black_box(row), &TRANSACTION, 0, &mut routing_key))
                },
            );
        }
    }
    group.finish();
}

/// What `cargo test` runs: the inputs decode and map to the message walbox would publish.
fn smoke_test() {
    let shape = outbox_shape();
    for size in [200, 10_000] {
        let Ok(Message::Insert(insert)) = pgoutput::decode(&insert_message(size)) else {
            panic!("the Insert built here does not decode");
        };
        let message = shape
            .message(&insert.new_tuple, &TRANSACTION, 0, &mut String::new())
            .expect("the row maps to a message");
        assert_eq!(message.routing_key.as_str(), "order.created");
        assert_eq!(message.body.len(), size);
        assert_eq!(message.id, "0b5c7a52-4f0e-4d8e-9a43-3c7d2f1e9b01");
        for encoding in ENCODINGS {
            let message = shape_for(encoding)
                .message(&insert.new_tuple, &TRANSACTION, 0, &mut String::new())
                .expect("every encoding maps the row");
            if encoding != Encoding::Raw && encoding != Encoding::CloudEventsBinary {
                serde_json::from_slice::<serde_json::Value>(&message.body)
                    .expect("the body is JSON");
            }
        }
    }
}

fn main() {
    if std::env::args().any(|arg| arg == "--bench") {
        let mut criterion = Criterion::default().configure_from_args();
        benchmarks(&mut criterion);
        criterion.final_summary();
    } else {
        smoke_test();
        println!("decode bench: inputs check out; run with `cargo bench --bench decode`");
    }
}
