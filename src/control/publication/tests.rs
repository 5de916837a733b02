//! The conditions and the comparison over hand-made readings, and the catalog statement's
//! JSON as the server answered it on PostgreSQL 15.

use super::*;

const TABLE: u32 = 16_400;

fn publication() -> PublicationRow {
    PublicationRow {
        version: RowVersion {
            oid: 16_500,
            xmin: 800,
        },
        all_tables: false,
        insert: true,
        update: false,
        delete: false,
        truncate: false,
        via_root: true,
        pending: false,
    }
}

fn member(oid: u32, name: &str, kind: &str) -> Member {
    Member {
        oid,
        name: name.into(),
        kind: kind.into(),
        persistence: "p".into(),
        pending: false,
        covered: true,
    }
}

/// `FOR TABLE public.outbox WITH (publish = 'insert', publish_via_partition_root = true)`.
fn reading() -> Reading {
    Reading {
        wal: Lsn(0x5000),
        at: "2026-12-06 17:00:00+00".into(),
        origin: None,
        publication: Some(publication()),
        table: Some(TableRow {
            oid: TABLE,
            kind: "r".into(),
            pending: false,
        }),
        pinned_name: None,
        relations: vec![MembershipRow {
            version: RowVersion {
                oid: 16_501,
                xmin: 801,
            },
            row_filter: false,
            columns: None,
            pending: false,
        }],
        schemas: Vec::new(),
        members: vec![member(TABLE, "public.outbox", "r")],
        published_as: None,
    }
}

fn partitioned() -> Reading {
    let mut reading = reading();
    reading.table.as_mut().unwrap().kind = "p".into();
    reading.members = vec![
        member(TABLE, "public.outbox", "p"),
        member(16_410, "public.outbox_2025", "r"),
    ];
    reading
}

fn all_columns(_: &[String]) -> Result<(), String> {
    Ok(())
}

fn problems(reading: &Reading) -> Vec<Problem> {
    reading.problems(all_columns)
}

#[test]
fn a_publication_that_delivers_every_insert_has_no_problem() {
    assert_eq!(problems(&reading()), []);
    assert_eq!(problems(&partitioned()), []);
    assert_eq!(partitioned().partitions(), [16_410]);
}

#[test]
fn each_way_of_losing_rows_is_a_problem() {
    let mut no_inserts = reading();
    let publication = no_inserts.publication.as_mut().unwrap();
    (publication.insert, publication.update) = (false, true);
    assert_eq!(
        problems(&no_inserts),
        [Problem::NoInserts {
            publish: vec!["update"]
        }]
    );

    let mut leaves = partitioned();
    leaves.publication.as_mut().unwrap().via_root = false;
    assert_eq!(problems(&leaves), [Problem::NotViaRoot]);
    let mut plain = reading();
    plain.publication.as_mut().unwrap().via_root = false;
    assert_eq!(
        problems(&plain),
        [],
        "viaroot only matters for a partitioned table"
    );

    let mut filtered = reading();
    filtered.relations[0].row_filter = true;
    assert_eq!(problems(&filtered), [Problem::RowFilter]);

    let mut cut = reading();
    cut.relations[0].columns = Some(vec!["id".into()]);
    let found = cut.problems(|columns| match columns.len() {
        1 => Err("no payload column".into()),
        _ => Ok(()),
    });
    assert_eq!(
        found,
        [Problem::ColumnList {
            columns: vec!["id".into()],
            why: "no payload column".into()
        }]
    );

    let mut unlogged = partitioned();
    unlogged.members[1].persistence = "u".into();
    assert_eq!(
        problems(&unlogged),
        [Problem::Unlogged {
            name: "public.outbox_2025".into()
        }]
    );
    let mut foreign = partitioned();
    foreign.members[1].kind = "f".into();
    assert_eq!(
        problems(&foreign),
        [Problem::Foreign {
            name: "public.outbox_2025".into()
        }]
    );

    // A partition whose rows the publication publishes as its parent's.
    let mut parent = reading();
    parent.published_as = Some("public.events".into());
    assert_eq!(
        problems(&parent),
        [Problem::PublishedAsAncestor {
            ancestor: "public.events".into()
        }]
    );

    // An inheritance child the publication does not cover: its rows never reach walbox.
    let mut child = reading();
    let mut uncovered = member(501, "public.outbox_2026", "r");
    uncovered.covered = false;
    child.members.push(uncovered);
    assert_eq!(
        problems(&child),
        [Problem::ChildNotCovered {
            name: "public.outbox_2026".into()
        }]
    );

    let mut outside = reading();
    outside.relations.clear();
    assert_eq!(problems(&outside), [Problem::NotCovered]);
    let mut view = reading();
    view.table.as_mut().unwrap().kind = "v".into();
    assert_eq!(problems(&view), [Problem::NotATable { kind: "v".into() }]);
    let mut gone = reading();
    gone.publication = None;
    assert_eq!(problems(&gone), [Problem::NoPublication]);
}

#[test]
fn each_problem_names_the_statement_that_fixes_it() {
    let publication = Identifier::new("p", "wal box").unwrap();
    let table = TableName::parse("sales.outbox").unwrap();
    let names = Names {
        publication: &publication,
        table: &table,
    };
    let text = |problem: Problem| problem.explain(names);
    assert!(
        text(Problem::NoInserts {
            publish: vec!["update", "delete"]
        })
        .contains(r#"ALTER PUBLICATION "wal box" SET (publish = 'update, delete, insert')"#)
    );
    assert!(
        text(Problem::NotViaRoot)
            .contains(r#"ALTER PUBLICATION "wal box" SET (publish_via_partition_root = true)"#)
    );
    assert!(text(Problem::RowFilter).contains(
        r#"ALTER PUBLICATION "wal box" DROP TABLE "sales"."outbox"; ALTER PUBLICATION "wal box" ADD TABLE "sales"."outbox""#
    ));
    assert!(
        text(Problem::Unlogged {
            name: "sales.outbox_2025".into()
        })
        .contains(r#"ALTER TABLE "sales"."outbox_2025" SET LOGGED"#)
    );
}

fn pinned() -> Pinned {
    Pinned::pin(&reading()).unwrap()
}

fn judge(pinned: &Pinned, reading: &Reading) -> Verdict {
    pinned.judge(reading, all_columns)
}

#[test]
fn an_unchanged_reading_holds() {
    let pinned = pinned();
    let mut later = reading();
    later.wal = Lsn(0x9000);
    assert_eq!(judge(&pinned, &later), Verdict::Holds(pinned.clone()));
}

#[test]
fn a_publication_written_again_is_a_change_even_when_it_reads_the_same() {
    let pinned = pinned();
    let mut later = reading();
    later.publication.as_mut().unwrap().version.xmin = 900;
    let Verdict::Changed(change) = judge(&pinned, &later) else {
        panic!("not a change");
    };
    assert!(matches!(&change, Change::PublicationAltered { before, after } if before == after));
    let publication = Identifier::new("p", "walbox").unwrap();
    let table = TableName::parse("outbox").unwrap();
    let names = Names {
        publication: &publication,
        table: &table,
    };
    assert!(change.explain(names).contains("changed and changed back"));

    let mut flipped = reading();
    let row = flipped.publication.as_mut().unwrap();
    (row.version.xmin, row.insert, row.update) = (901, false, true);
    assert_eq!(
        judge(&pinned, &flipped),
        Verdict::Changed(Change::PublicationAltered {
            before: "publish = 'insert', publish_via_partition_root = true".into(),
            after: "publish = 'update', publish_via_partition_root = true".into(),
        })
    );

    let mut recreated = reading();
    recreated.publication.as_mut().unwrap().version.oid = 17_000;
    assert_eq!(
        judge(&pinned, &recreated),
        Verdict::Changed(Change::PublicationRecreated)
    );
    let mut dropped = reading();
    dropped.publication = None;
    assert_eq!(
        judge(&pinned, &dropped),
        Verdict::Changed(Change::PublicationDropped)
    );
}

#[test]
fn a_table_dropped_renamed_or_taken_out_is_a_change() {
    let pinned = pinned();
    let mut dropped = reading();
    dropped.table = None;
    dropped.relations.clear();
    assert_eq!(
        judge(&pinned, &dropped),
        Verdict::Changed(Change::TableDropped)
    );

    let mut renamed = reading();
    renamed.table = None;
    renamed.pinned_name = Some("public.outbox_old".into());
    assert_eq!(
        judge(&pinned, &renamed),
        Verdict::Changed(Change::TableRenamed {
            to: "public.outbox_old".into()
        })
    );

    // Dropped and created again, and even added to the publication again: a new row.
    let mut recreated = reading();
    recreated.table.as_mut().unwrap().oid = 17_100;
    recreated.relations[0].version = RowVersion {
        oid: 17_101,
        xmin: 950,
    };
    assert_eq!(
        judge(&pinned, &recreated),
        Verdict::Changed(Change::TableRecreated {
            before: TABLE,
            after: 17_100
        })
    );

    // Removed and added back between two readings: the membership row is another one.
    let mut readded = reading();
    readded.relations[0].version = RowVersion {
        oid: 17_200,
        xmin: 990,
    };
    assert_eq!(
        judge(&pinned, &readded),
        Verdict::Changed(Change::RemovedFromPublication)
    );
}

#[test]
fn a_table_made_anew_is_followed_when_the_publication_covers_it_by_name() {
    for by_name in ["all tables", "schema"] {
        let mut first = reading();
        first.relations.clear();
        match by_name {
            "all tables" => first.publication.as_mut().unwrap().all_tables = true,
            _ => first.schemas.push(SchemaRow {
                version: RowVersion {
                    oid: 16_600,
                    xmin: 810,
                },
                pending: false,
            }),
        }
        let pinned = Pinned::pin(&first).unwrap();
        assert!(pinned.follows_recreation(), "{by_name}");
        let mut recreated = first.clone();
        recreated.table.as_mut().unwrap().oid = 17_100;
        let Verdict::Holds(next) = judge(&pinned, &recreated) else {
            panic!("{by_name}: not followed");
        };
        assert_eq!(next.table(), 17_100);
    }
    assert!(!pinned().follows_recreation());
}

#[test]
fn a_change_still_in_progress_proves_nothing_yet() {
    let pinned = pinned();
    let mut open = reading();
    open.publication.as_mut().unwrap().pending = true;
    assert_eq!(
        judge(&pinned, &open),
        Verdict::Pending("the publication".into())
    );
    let mut open = partitioned();
    open.members[1].pending = true;
    let pinned = Pinned::pin(&partitioned()).unwrap();
    assert_eq!(
        judge(&pinned, &open),
        Verdict::Pending("table public.outbox_2025".into())
    );
    // A change already visible wins over one still open.
    let mut both = partitioned();
    both.members[1].pending = true;
    both.members[1].persistence = "u".into();
    assert!(matches!(
        judge(&pinned, &both),
        Verdict::Changed(Change::Problem(Problem::Unlogged { .. }))
    ));
}

#[test]
fn the_catalog_answer_parses() {
    // As PostgreSQL 15 answered the statement for a partitioned table with a column list
    // and a row filter.
    let json = r#"{"table": {"oid": 16558, "kind": "p", "pending": false},
        "members": [{"oid": 16558, "kind": "p", "name": "public.outbox", "pending": false,
                     "persistence": "p", "covered": true},
                    {"oid": 16561, "kind": "r", "name": "public.o1", "pending": false,
                     "persistence": "p", "covered": true}],
        "schemas": [], "pinned_name": null,
        "relations": [{"oid": 16567, "xmin": 846, "pending": false, "columns": ["id", "a"],
                       "row_filter": true}],
        "publication": {"oid": 16566, "xmin": 847, "insert": true, "update": false,
                        "delete": false, "truncate": false, "via_root": true,
                        "all_tables": false, "pending": true}}"#;
    let reading: Reading = serde_json::from_str(json).unwrap();
    assert_eq!(reading.partitions(), [16_561]);
    assert_eq!(reading.pending().as_deref(), Some("the publication"));
    assert_eq!(
        reading.problems(all_columns),
        [Problem::RowFilter],
        "the column list keeps what the check says it keeps"
    );
    assert_eq!(
        reading.relations[0].columns.as_deref().unwrap(),
        ["id", "a"]
    );
}
