//! Byte-for-byte tests of the decoder, an encoder for round trips, and property tests that no
//! input makes it panic.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::lsn::Lsn;

/// Writes messages the way the server does, so decoding can be checked against encoding.
fn encode(message: &Message) -> Bytes {
    let mut out = BytesMut::new();
    let string = |out: &mut BytesMut, text: &str| {
        out.put_slice(text.as_bytes());
        out.put_u8(0);
    };
    fn tuple(out: &mut BytesMut, tuple: &TupleData) {
        out.put_i16(tuple.columns.len() as i16);
        for column in &tuple.columns {
            match column {
                ColumnValue::Null => out.put_u8(b'n'),
                ColumnValue::UnchangedToast => out.put_u8(b'u'),
                ColumnValue::Text(bytes) | ColumnValue::Binary(bytes) => {
                    out.put_u8(if matches!(column, ColumnValue::Text(_)) {
                        b't'
                    } else {
                        b'b'
                    });
                    out.put_i32(bytes.len() as i32);
                    out.put_slice(bytes);
                }
            }
        }
    }
    match message {
        Message::Begin(m) => {
            out.put_u8(b'B');
            out.put_u64(m.final_lsn.0);
            out.put_i64(m.commit_time_micros);
            out.put_u32(m.xid);
        }
        Message::Commit(m) => {
            out.put_u8(b'C');
            out.put_u8(m.flags);
            out.put_u64(m.commit_lsn.0);
            out.put_u64(m.end_lsn.0);
            out.put_i64(m.commit_time_micros);
        }
        Message::Origin(m) => {
            out.put_u8(b'O');
            out.put_u64(m.commit_lsn.0);
            string(&mut out, &m.name);
        }
        Message::Relation(m) => {
            out.put_u8(b'R');
            out.put_u32(m.relation_id);
            string(&mut out, &m.namespace);
            string(&mut out, &m.name);
            out.put_u8(m.replica_identity);
            out.put_i16(m.columns.len() as i16);
            for column in &m.columns {
                out.put_u8(column.flags);
                string(&mut out, &column.name);
                out.put_u32(column.type_oid);
                out.put_i32(column.type_modifier);
            }
        }
        Message::Type(m) => {
            out.put_u8(b'Y');
            out.put_u32(m.type_oid);
            string(&mut out, &m.namespace);
            string(&mut out, &m.name);
        }
        Message::Insert(m) => {
            out.put_u8(b'I');
            out.put_u32(m.relation_id);
            out.put_u8(b'N');
            tuple(&mut out, &m.new_tuple);
        }
        Message::Update(m) => {
            out.put_u8(b'U');
            out.put_u32(m.relation_id);
            if let Some(key) = &m.old_key {
                out.put_u8(b'K');
                tuple(&mut out, key);
            }
            if let Some(old) = &m.old_tuple {
                out.put_u8(b'O');
                tuple(&mut out, old);
            }
            out.put_u8(b'N');
            tuple(&mut out, &m.new_tuple);
        }
        Message::Delete(m) => {
            out.put_u8(b'D');
            out.put_u32(m.relation_id);
            match (&m.old_key, &m.old_tuple) {
                (Some(key), _) => {
                    out.put_u8(b'K');
                    tuple(&mut out, key);
                }
                (None, Some(old)) => {
                    out.put_u8(b'O');
                    tuple(&mut out, old);
                }
                (None, None) => {}
            }
        }
        Message::Truncate(m) => {
            out.put_u8(b'T');
            out.put_u32(m.relation_ids.len() as u32);
            out.put_u8(m.options);
            for id in &m.relation_ids {
                out.put_u32(*id);
            }
        }
        Message::Message(m) => {
            out.put_u8(b'M');
            out.put_u8(m.flags);
            out.put_u64(m.lsn.0);
            string(&mut out, &m.prefix);
            out.put_i32(m.content.len() as i32);
            out.put_slice(&m.content);
        }
        Message::Unknown { tag, body } => {
            out.put_u8(*tag);
            out.put_slice(body);
        }
    }
    out.freeze()
}

fn outbox_relation() -> Relation {
    let column = |name: &str, type_oid: u32, flags: u8| RelationColumn {
        flags,
        name: name.into(),
        type_oid,
        type_modifier: -1,
    };
    Relation {
        relation_id: 16_391,
        namespace: "public".into(),
        name: "outbox".into(),
        replica_identity: b'd',
        columns: vec![
            column("id", 2950, 1),
            column("aggregate_type", 25, 0),
            column("aggregate_id", 25, 0),
            column("event_type", 25, 0),
            column("payload", 3802, 0),
            column("headers", 3802, 0),
            column("created_at", 1184, 0),
        ],
    }
}

fn text(value: &str) -> ColumnValue {
    ColumnValue::Text(Bytes::copy_from_slice(value.as_bytes()))
}

fn outbox_insert() -> Insert {
    Insert {
        relation_id: 16_391,
        new_tuple: TupleData {
            columns: vec![
                text("6f1c0d3e-0000-4000-8000-000000000001"),
                text("order"),
                text("o-1"),
                text("created"),
                text(r#"{"total": 12}"#),
                ColumnValue::Null,
                text("2026-11-22 14:59:17.5+00"),
            ],
        },
    }
}

/// One of each message, for the tests that loop over all of them.
fn samples() -> Vec<Message> {
    vec![
        Message::Begin(Begin {
            final_lsn: Lsn(0x16B3748),
            commit_time_micros: 7,
            xid: 742,
        }),
        Message::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(0x16B3748),
            end_lsn: Lsn(0x16B3778),
            commit_time_micros: 7,
        }),
        Message::Origin(Origin {
            commit_lsn: Lsn(9),
            name: "node_a".into(),
        }),
        Message::Relation(outbox_relation()),
        Message::Type(Type {
            type_oid: 90_000,
            namespace: "public".into(),
            name: "mood".into(),
        }),
        Message::Insert(outbox_insert()),
        Message::Update(Update {
            relation_id: 1,
            old_key: Some(TupleData {
                columns: vec![text("k")],
            }),
            old_tuple: None,
            new_tuple: TupleData {
                columns: vec![text("k"), ColumnValue::UnchangedToast],
            },
        }),
        Message::Delete(Delete {
            relation_id: 1,
            old_key: None,
            old_tuple: Some(TupleData {
                columns: vec![ColumnValue::Null, text("x")],
            }),
        }),
        Message::Truncate(Truncate {
            options: 3,
            relation_ids: vec![1, 2, 3],
        }),
        Message::Message(LogicalMessage {
            flags: 1,
            lsn: Lsn(77),
            prefix: "walbox".into(),
            content: Bytes::from_static(b"hello"),
        }),
    ]
}

#[test]
fn begin_reads_each_field_from_the_spec_layout() {
    let mut bytes = vec![b'B'];
    bytes.extend_from_slice(&0x0000_0000_016B_3748u64.to_be_bytes());
    bytes.extend_from_slice(&815_000_000_000i64.to_be_bytes());
    bytes.extend_from_slice(&742u32.to_be_bytes());
    assert_eq!(
        decode(&Bytes::from(bytes)),
        Ok(Message::Begin(Begin {
            final_lsn: Lsn(0x16B3748),
            commit_time_micros: 815_000_000_000,
            xid: 742
        }))
    );
}

#[test]
fn insert_with_a_null_and_a_jsonb_value() {
    let mut bytes = vec![b'I'];
    bytes.extend_from_slice(&16_391u32.to_be_bytes());
    bytes.push(b'N');
    bytes.extend_from_slice(&2i16.to_be_bytes());
    bytes.push(b'n');
    bytes.push(b't');
    bytes.extend_from_slice(&4i32.to_be_bytes());
    bytes.extend_from_slice(b"{}  ");
    let Ok(Message::Insert(insert)) = decode(&Bytes::from(bytes)) else {
        panic!("not an insert");
    };
    assert_eq!(insert.relation_id, 16_391);
    assert_eq!(
        insert.new_tuple.columns,
        vec![ColumnValue::Null, text("{}  ")]
    );
}

#[test]
fn relation_of_the_outbox_table() {
    let mut bytes = vec![b'R'];
    bytes.extend_from_slice(&16_391u32.to_be_bytes());
    bytes.extend_from_slice(b"public\0outbox\0d");
    bytes.extend_from_slice(&7i16.to_be_bytes());
    for (name, oid, flags) in [
        ("id", 2950u32, 1u8),
        ("aggregate_type", 25, 0),
        ("aggregate_id", 25, 0),
        ("event_type", 25, 0),
        ("payload", 3802, 0),
        ("headers", 3802, 0),
        ("created_at", 1184, 0),
    ] {
        bytes.push(flags);
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&oid.to_be_bytes());
        bytes.extend_from_slice(&(-1i32).to_be_bytes());
    }
    assert_eq!(
        decode(&Bytes::from(bytes)),
        Ok(Message::Relation(outbox_relation()))
    );
}

#[test]
fn commit_truncate_and_message_layouts() {
    let mut commit = vec![b'C', 0];
    commit.extend_from_slice(&1u64.to_be_bytes());
    commit.extend_from_slice(&2u64.to_be_bytes());
    commit.extend_from_slice(&3i64.to_be_bytes());
    assert_eq!(
        decode(&Bytes::from(commit)),
        Ok(Message::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(1),
            end_lsn: Lsn(2),
            commit_time_micros: 3
        }))
    );
    let mut truncate = vec![b'T'];
    truncate.extend_from_slice(&2u32.to_be_bytes());
    truncate.push(1);
    truncate.extend_from_slice(&10u32.to_be_bytes());
    truncate.extend_from_slice(&11u32.to_be_bytes());
    assert_eq!(
        decode(&Bytes::from(truncate)),
        Ok(Message::Truncate(Truncate {
            options: 1,
            relation_ids: vec![10, 11]
        }))
    );
    let mut message = vec![b'M', 0];
    message.extend_from_slice(&5u64.to_be_bytes());
    message.extend_from_slice(b"p\0");
    message.extend_from_slice(&2i32.to_be_bytes());
    message.extend_from_slice(b"hi");
    assert_eq!(
        decode(&Bytes::from(message)),
        Ok(Message::Message(LogicalMessage {
            flags: 0,
            lsn: Lsn(5),
            prefix: "p".into(),
            content: Bytes::from_static(b"hi")
        }))
    );
}

#[test]
fn every_sample_round_trips() {
    for message in samples() {
        assert_eq!(
            decode(&encode(&message)),
            Ok(message.clone()),
            "{message:?}"
        );
    }
}

#[test]
fn every_proper_prefix_of_every_message_is_an_error() {
    for message in samples() {
        let bytes = encode(&message);
        for length in 0..bytes.len() {
            let prefix = bytes.slice(..length);
            assert!(
                decode(&prefix).is_err(),
                "{message:?} cut at {length} decoded"
            );
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    for message in samples() {
        let mut bytes = BytesMut::from(&encode(&message)[..]);
        bytes.put_u8(0);
        assert!(
            matches!(
                decode(&bytes.freeze()),
                Err(DecodeError::TrailingBytes { .. })
            ),
            "{message:?}"
        );
    }
}

#[test]
fn unknown_tags_are_kept() {
    assert_eq!(
        decode(&Bytes::from_static(b"Sxyz")),
        Ok(Message::Unknown {
            tag: b'S',
            body: Bytes::from_static(b"xyz")
        })
    );
    assert_eq!(decode(&Bytes::new()), Err(DecodeError::Empty));
}

#[test]
fn bad_lengths_and_kinds_are_errors() {
    let mut negative = vec![b'I', 0, 0, 0, 1, b'N', 0, 1, b't'];
    negative.extend_from_slice(&(-5i32).to_be_bytes());
    assert!(matches!(
        decode(&Bytes::from(negative)),
        Err(DecodeError::InvalidLength { length: -5, .. })
    ));
    let kind = vec![b'I', 0, 0, 0, 1, b'N', 0, 1, b'z'];
    assert!(matches!(
        decode(&Bytes::from(kind)),
        Err(DecodeError::UnexpectedByte { found: b'z', .. })
    ));
    let not_utf8 = vec![b'O', 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0];
    assert!(matches!(
        decode(&Bytes::from(not_utf8)),
        Err(DecodeError::InvalidUtf8 { .. })
    ));
}

#[test]
fn values_share_the_input_buffer() {
    let bytes = encode(&Message::Insert(outbox_insert()));
    let Ok(Message::Insert(insert)) = decode(&bytes) else {
        panic!("not an insert")
    };
    let ColumnValue::Text(payload) = &insert.new_tuple.columns[4] else {
        panic!("no payload")
    };
    let input = bytes.as_ptr_range();
    assert!(input.contains(&payload.as_ptr()), "payload was copied");
}

fn arbitrary_tuple() -> impl Strategy<Value = TupleData> {
    proptest::collection::vec(
        prop_oneof![
            Just(ColumnValue::Null),
            Just(ColumnValue::UnchangedToast),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|v| ColumnValue::Text(v.into())),
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|v| ColumnValue::Binary(v.into())),
        ],
        0..12,
    )
    .prop_map(|columns| TupleData { columns })
}

fn name() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,20}"
}

fn arbitrary_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(l, t, x)| Message::Begin(Begin {
            final_lsn: Lsn(l),
            commit_time_micros: t,
            xid: x
        })),
        (any::<u8>(), any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(f, c, e, t)| {
            Message::Commit(Commit {
                flags: f,
                commit_lsn: Lsn(c),
                end_lsn: Lsn(e),
                commit_time_micros: t,
            })
        }),
        (any::<u64>(), name()).prop_map(|(l, n)| Message::Origin(Origin {
            commit_lsn: Lsn(l),
            name: n
        })),
        (
            any::<u32>(),
            name(),
            name(),
            any::<u8>(),
            proptest::collection::vec((any::<u8>(), name(), any::<u32>(), any::<i32>()), 0..10)
        )
            .prop_map(|(id, ns, n, ri, cols)| Message::Relation(Relation {
                relation_id: id,
                namespace: ns,
                name: n,
                replica_identity: ri,
                columns: cols
                    .into_iter()
                    .map(|(flags, name, type_oid, type_modifier)| RelationColumn {
                        flags,
                        name,
                        type_oid,
                        type_modifier
                    })
                    .collect(),
            })),
        (any::<u32>(), name(), name()).prop_map(|(o, ns, n)| Message::Type(Type {
            type_oid: o,
            namespace: ns,
            name: n
        })),
        (any::<u32>(), arbitrary_tuple()).prop_map(|(id, t)| Message::Insert(Insert {
            relation_id: id,
            new_tuple: t
        })),
        (
            any::<u32>(),
            proptest::option::of(arbitrary_tuple()),
            arbitrary_tuple(),
            any::<bool>()
        )
            .prop_map(|(id, old, new, key)| Message::Update(Update {
                relation_id: id,
                old_key: if key { old.clone() } else { None },
                old_tuple: if key { None } else { old },
                new_tuple: new,
            })),
        (any::<u32>(), arbitrary_tuple(), any::<bool>()).prop_map(|(id, old, key)| {
            Message::Delete(Delete {
                relation_id: id,
                old_key: key.then(|| old.clone()),
                old_tuple: (!key).then_some(old),
            })
        }),
        (any::<u8>(), proptest::collection::vec(any::<u32>(), 0..10)).prop_map(|(o, ids)| {
            Message::Truncate(Truncate {
                options: o,
                relation_ids: ids,
            })
        }),
        (
            any::<u8>(),
            any::<u64>(),
            name(),
            proptest::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(f, l, p, c)| Message::Message(LogicalMessage {
                flags: f,
                lsn: Lsn(l),
                prefix: p,
                content: c.into()
            })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&Bytes::from(bytes));
    }

    #[test]
    fn known_tags_with_arbitrary_bodies_never_panic(
        tag in proptest::sample::select(&b"BCORYIUDTM"[..]),
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut bytes = vec![tag];
        bytes.extend(body);
        let _ = decode(&Bytes::from(bytes));
    }

    #[test]
    fn structured_messages_round_trip(message in arbitrary_message()) {
        prop_assert_eq!(decode(&encode(&message)), Ok(message));
    }

    #[test]
    fn corrupted_messages_never_panic(message in arbitrary_message(), at in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = encode(&message).to_vec();
        let index = at % bytes.len();
        bytes[index] = byte;
        let _ = decode(&Bytes::from(bytes));
    }
}
