//! The column map: which column of the user's table plays which part of an outbox event.
//!
//! walbox speaks of *fields* (logical names such as `event_type`); a user's table may call
//! them anything, and may lack all of them but the payload. The map starts from a table preset
//! (`outbox`, the table in sql/outbox.sql; `debezium`; or a framework's table such as `eshop`)
//! and takes overrides such as `id=event_id,aggregate_type=kind`. A column may carry a JSON
//! path (`headers=Content->Headers`) for frameworks that store a whole message in one column.

use std::fmt;

use super::path::ColumnRef;

/// One part of an outbox event, by its logical name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    Id,
    AggregateType,
    AggregateId,
    EventType,
    Payload,
    Headers,
    CreatedAt,
    Exchange,
    /// W3C Trace Context `traceparent` of the event (README "Trace context").
    Traceparent,
    /// W3C Trace Context `tracestate`, travelling only with a `traceparent`.
    Tracestate,
}

impl Field {
    pub const ALL: [Field; 10] = [
        Field::Id,
        Field::AggregateType,
        Field::AggregateId,
        Field::EventType,
        Field::Payload,
        Field::Headers,
        Field::CreatedAt,
        Field::Exchange,
        Field::Traceparent,
        Field::Tracestate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::AggregateType => "aggregate_type",
            Field::AggregateId => "aggregate_id",
            Field::EventType => "event_type",
            Field::Payload => "payload",
            Field::Headers => "headers",
            Field::CreatedAt => "created_at",
            Field::Exchange => "exchange",
            Field::Traceparent => "traceparent",
            Field::Tracestate => "tracestate",
        }
    }

    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|field| field.name() == name)
    }

    /// Whether every event needs this field. Only the payload: without an id column the
    /// message id comes from the event's WAL position, and the other fields are used when
    /// the table has them.
    pub fn is_required(self) -> bool {
        self == Field::Payload
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a field's column name came from. An explicit mapping and a preset's column must
/// exist in the table (a column that disappears stops walbox rather than silently dropping a
/// header), except a preset's optional column, which is used only when present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Preset,
    PresetOptional,
    Explicit,
}

/// The tables walbox knows by name: per table, the column of each field in the order of
/// [`Field::ALL`] (id, aggregate_type, aggregate_id, event_type, payload, headers, created_at,
/// exchange, traceparent, tracestate). "" leaves the field unmapped; a trailing `?` marks a column used only when the
/// table has it. Column names are as the framework's ORM creates them on PostgreSQL (EF Core
/// on Npgsql keeps PascalCase names, quoted).
///
/// - `outbox`: the table of sql/outbox.sql.
/// - `debezium`: Debezium's Outbox Event Router table.
/// - `outbox-messages`: the EF Core interceptor outbox, "OutBoxMessages"("Id",
///   "OccurredOnUtc", "Type", "Content", "ProcessedOnUtc").
/// - `eshop`: eShop's IntegrationEventLog ("EventId", "EventTypeName", "Content",
///   "CreationTime").
/// - `masa`: MASA Framework's IntegrationEventLog; its primary key "Id" is per row, the
///   event's own id is "EventId".
/// - `cap`: CAP's published table; "Content" holds the whole message,
///   `{"Headers": {..}, "Value": ..}`.
///
/// Every preset takes the trace context from columns `traceparent` and `tracestate` when the
/// table has them (else from the headers column's keys of those names, if it has one).
#[rustfmt::skip]
const TABLE_PRESETS: &[(&str, [&str; 10])] = &[
    // name            id         aggregate_type    aggregate_id    event_type       payload           headers             created_at        exchange      traceparent     tracestate
    ("outbox",          ["id",      "aggregate_type", "aggregate_id", "event_type",    "payload",        "headers?",         "created_at?",    "exchange?",  "traceparent?", "tracestate?"]),
    ("debezium",        ["id",      "aggregatetype",  "aggregateid",  "type",          "payload",        "",                 "",               "",           "traceparent?", "tracestate?"]),
    ("outbox-messages", ["Id",      "",               "",             "Type",          "Content",        "",                 "OccurredOnUtc",  "",           "traceparent?", "tracestate?"]),
    ("eshop",           ["EventId", "",               "",             "EventTypeName", "Content",        "",                 "CreationTime",   "",           "traceparent?", "tracestate?"]),
    ("masa",            ["EventId", "",               "",             "EventTypeName", "Content",        "",                 "CreationTime",   "",           "traceparent?", "tracestate?"]),
    ("cap",             ["Id",      "",               "",             "Name",          "Content->Value", "Content->Headers", "Added",          "",           "traceparent?", "tracestate?"]),
];

/// The names `--columns` accepts as a table preset.
pub fn table_preset_names() -> impl Iterator<Item = &'static str> {
    TABLE_PRESETS.iter().map(|(name, _)| *name)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnMap {
    columns: [Option<(ColumnRef, Origin)>; 10],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ColumnMapError {
    #[error(
        "unknown field `{0}` in --columns; known fields: id, aggregate_type, aggregate_id, \
         event_type, payload, headers, created_at, exchange, traceparent, tracestate (or a table \
         preset first: outbox, debezium, outbox-messages, eshop, masa, cap)"
    )]
    UnknownField(String),
    #[error("`{0}` in --columns is not of the form field=column")]
    NotAPair(String),
    #[error("field `{0}` is required and cannot be unmapped in --columns")]
    RequiredUnmapped(Field),
    #[error("field `{0}` appears twice in --columns")]
    Duplicate(Field),
    #[error("`{0}` in --columns: {1}")]
    BadColumn(String, String),
}

impl ColumnMap {
    fn preset(name: &str) -> Option<Self> {
        let (_, columns) = TABLE_PRESETS.iter().find(|(preset, _)| *preset == name)?;
        let mut map = ColumnMap {
            columns: Default::default(),
        };
        for (field, column) in Field::ALL.into_iter().zip(columns) {
            let (column, origin) = match column.strip_suffix('?') {
                Some(column) => (column, Origin::PresetOptional),
                None => (*column, Origin::Preset),
            };
            if column.is_empty() {
                continue;
            }
            let column = ColumnRef::parse(column).expect("table presets are well formed");
            map.columns[field.index()] = Some((column, origin));
        }
        Some(map)
    }

    /// The table of sql/outbox.sql: every field under its own name, exchange only if present.
    pub fn outbox() -> Self {
        Self::preset("outbox").expect("the outbox preset exists")
    }

    /// Parse `--columns`: an optional leading table preset, then `field=column` overrides; an
    /// empty column (`headers=`) unmaps an optional field.
    pub fn parse(text: &str) -> Result<Self, ColumnMapError> {
        let mut items = text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .peekable();
        let mut map = match items.peek().and_then(|first| Self::preset(first)) {
            Some(map) => {
                items.next();
                map
            }
            None => ColumnMap::outbox(),
        };
        let mut seen = Vec::new();
        for item in items {
            let (name, column) = item.split_once('=').ok_or_else(|| {
                if Field::from_name(item).is_none() && !item.contains("->") {
                    ColumnMapError::UnknownField(item.to_owned())
                } else {
                    ColumnMapError::NotAPair(item.to_owned())
                }
            })?;
            let field = Field::from_name(name.trim())
                .ok_or_else(|| ColumnMapError::UnknownField(name.trim().to_owned()))?;
            if seen.contains(&field) {
                return Err(ColumnMapError::Duplicate(field));
            }
            seen.push(field);
            let column = column.trim();
            if column.is_empty() {
                if field.is_required() {
                    return Err(ColumnMapError::RequiredUnmapped(field));
                }
                map.columns[field.index()] = None;
            } else {
                let column = ColumnRef::parse(column)
                    .map_err(|problem| ColumnMapError::BadColumn(item.to_owned(), problem))?;
                map.columns[field.index()] = Some((column, Origin::Explicit));
            }
        }
        Ok(map)
    }

    /// The column (and JSON path into it) mapped to `field`, if any.
    pub fn column(&self, field: Field) -> Option<&ColumnRef> {
        self.columns[field.index()]
            .as_ref()
            .map(|(column, _)| column)
    }

    pub fn origin(&self, field: Field) -> Option<Origin> {
        self.columns[field.index()]
            .as_ref()
            .map(|(_, origin)| *origin)
    }
}

impl fmt::Display for ColumnMap {
    /// Every field, an unmapped one as `field=`, so the text parses back to the same map.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, field) in Field::ALL.into_iter().enumerate() {
            if position > 0 {
                f.write_str(",")?;
            }
            write!(f, "{field}=")?;
            if let Some(column) = self.column(field) {
                write!(f, "{column}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(map: &ColumnMap, field: Field) -> Option<String> {
        map.column(field).map(ToString::to_string)
    }

    #[test]
    fn outbox_preset_maps_every_field_to_its_own_name() {
        let map = ColumnMap::outbox();
        for field in Field::ALL {
            assert_eq!(column(&map, field).as_deref(), Some(field.name()));
        }
        assert_eq!(map.origin(Field::AggregateId), Some(Origin::Preset));
        assert_eq!(map.origin(Field::Headers), Some(Origin::PresetOptional));
    }

    #[test]
    fn debezium_preset_matches_the_event_router_table() {
        let map = ColumnMap::parse("debezium").unwrap();
        assert_eq!(
            column(&map, Field::AggregateType).as_deref(),
            Some("aggregatetype")
        );
        assert_eq!(
            column(&map, Field::AggregateId).as_deref(),
            Some("aggregateid")
        );
        assert_eq!(column(&map, Field::EventType).as_deref(), Some("type"));
        assert_eq!(map.column(Field::Headers), None);
        assert_eq!(map.column(Field::CreatedAt), None);
    }

    #[test]
    fn framework_presets_map_only_what_their_tables_have() {
        let map = ColumnMap::parse("outbox-messages").unwrap();
        assert_eq!(column(&map, Field::Id).as_deref(), Some("Id"));
        assert_eq!(column(&map, Field::Payload).as_deref(), Some("Content"));
        assert_eq!(map.column(Field::AggregateType), None);
        let map = ColumnMap::parse("eshop").unwrap();
        assert_eq!(
            column(&map, Field::EventType).as_deref(),
            Some("EventTypeName")
        );
        let map = ColumnMap::parse("cap").unwrap();
        let payload = map.column(Field::Payload).unwrap();
        assert_eq!(payload.column(), "Content");
        assert_eq!(payload.path(), ["Value".to_owned()]);
        assert_eq!(
            column(&map, Field::Headers).as_deref(),
            Some("Content->Headers")
        );
        for name in table_preset_names() {
            assert!(ColumnMap::parse(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn overrides_apply_on_top_of_the_preset() {
        let map = ColumnMap::parse("id=event_id, aggregate_type=kind,headers=").unwrap();
        assert_eq!(column(&map, Field::Id).as_deref(), Some("event_id"));
        assert_eq!(map.origin(Field::Id), Some(Origin::Explicit));
        assert_eq!(column(&map, Field::AggregateType).as_deref(), Some("kind"));
        assert_eq!(map.column(Field::Headers), None);
        assert_eq!(column(&map, Field::Payload).as_deref(), Some("payload"));
        let map = ColumnMap::parse("debezium,payload=body").unwrap();
        assert_eq!(column(&map, Field::Payload).as_deref(), Some("body"));
        assert_eq!(column(&map, Field::EventType).as_deref(), Some("type"));
        // Every field but the payload may be unmapped.
        let map = ColumnMap::parse("id=,aggregate_type=,aggregate_id=,event_type=").unwrap();
        let mapped = Field::ALL
            .into_iter()
            .filter(|field| map.column(*field).is_some())
            .count();
        // payload, and the outbox preset's optional headers, created_at, exchange,
        // traceparent and tracestate.
        assert_eq!(mapped, 6);
    }

    #[test]
    fn bad_maps_are_refused_with_a_reason() {
        assert_eq!(
            ColumnMap::parse("colour=red"),
            Err(ColumnMapError::UnknownField("colour".into()))
        );
        assert_eq!(
            ColumnMap::parse("id"),
            Err(ColumnMapError::NotAPair("id".into()))
        );
        assert_eq!(
            ColumnMap::parse("payload="),
            Err(ColumnMapError::RequiredUnmapped(Field::Payload))
        );
        assert_eq!(
            ColumnMap::parse("id=a,id=b"),
            Err(ColumnMapError::Duplicate(Field::Id))
        );
        assert!(matches!(
            ColumnMap::parse("headers=Content->"),
            Err(ColumnMapError::BadColumn(..))
        ));
    }

    #[test]
    fn display_round_trips_through_parse() {
        for text in ["id=event_id,exchange=", "cap", "eshop,created_at="] {
            let map = ColumnMap::parse(text).unwrap();
            let again = ColumnMap::parse(&map.to_string()).unwrap();
            for field in Field::ALL {
                assert_eq!(map.column(field), again.column(field));
            }
        }
    }
}
