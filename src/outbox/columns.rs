//! The column map: which column of the user's table plays which part of an outbox event.
//!
//! walbox speaks of *fields* (logical names such as `aggregate_type`); a user's table may call
//! them anything. The map starts from a preset (`outbox`, the table in sql/outbox.sql, or
//! `debezium`, the shape Debezium's Outbox Event Router expects) and takes overrides such as
//! `id=event_id,aggregate_type=kind`.

use std::fmt;

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
}

impl Field {
    pub const ALL: [Field; 8] = [
        Field::Id,
        Field::AggregateType,
        Field::AggregateId,
        Field::EventType,
        Field::Payload,
        Field::Headers,
        Field::CreatedAt,
        Field::Exchange,
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
        }
    }

    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|field| field.name() == name)
    }

    /// Whether every event needs this field; the others are used when the table has them.
    pub fn is_required(self) -> bool {
        matches!(
            self,
            Field::Id
                | Field::AggregateType
                | Field::AggregateId
                | Field::EventType
                | Field::Payload
        )
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

/// Where a field's column name came from; an explicit mapping must exist in the table, a
/// preset's optional column is used only when present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Preset,
    Explicit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnMap {
    columns: [Option<(String, Origin)>; 8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ColumnMapError {
    #[error(
        "unknown field `{0}` in --columns; known fields: id, aggregate_type, aggregate_id, \
         event_type, payload, headers, created_at, exchange (or a preset: outbox, debezium)"
    )]
    UnknownField(String),
    #[error("`{0}` in --columns is not of the form field=column")]
    NotAPair(String),
    #[error("field `{0}` is required and cannot be unmapped in --columns")]
    RequiredUnmapped(Field),
    #[error("field `{0}` appears twice in --columns")]
    Duplicate(Field),
}

impl ColumnMap {
    /// The table of sql/outbox.sql: every field under its own name, exchange only if present.
    pub fn outbox() -> Self {
        let mut map = ColumnMap {
            columns: Default::default(),
        };
        for field in Field::ALL {
            map.columns[field.index()] = Some((field.name().to_owned(), Origin::Preset));
        }
        map
    }

    /// Debezium's Outbox Event Router table: id, aggregatetype, aggregateid, type, payload.
    pub fn debezium() -> Self {
        let mut map = ColumnMap {
            columns: Default::default(),
        };
        for (field, column) in [
            (Field::Id, "id"),
            (Field::AggregateType, "aggregatetype"),
            (Field::AggregateId, "aggregateid"),
            (Field::EventType, "type"),
            (Field::Payload, "payload"),
        ] {
            map.columns[field.index()] = Some((column.to_owned(), Origin::Preset));
        }
        map
    }

    /// Parse `--columns`: an optional leading preset, then `field=column` overrides; an empty
    /// column (`headers=`) unmaps an optional field.
    pub fn parse(text: &str) -> Result<Self, ColumnMapError> {
        let mut items = text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .peekable();
        let mut map = match items.peek() {
            Some(&"debezium") => {
                items.next();
                ColumnMap::debezium()
            }
            Some(&"outbox") => {
                items.next();
                ColumnMap::outbox()
            }
            _ => ColumnMap::outbox(),
        };
        let mut seen = Vec::new();
        for item in items {
            let (name, column) = item
                .split_once('=')
                .ok_or_else(|| ColumnMapError::NotAPair(item.to_owned()))?;
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
                map.columns[field.index()] = Some((column.to_owned(), Origin::Explicit));
            }
        }
        Ok(map)
    }

    /// The column mapped to `field`, if any.
    pub fn column(&self, field: Field) -> Option<&str> {
        self.columns[field.index()]
            .as_ref()
            .map(|(column, _)| column.as_str())
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
            write!(f, "{field}={}", self.column(field).unwrap_or(""))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_preset_maps_every_field_to_its_own_name() {
        let map = ColumnMap::outbox();
        for field in Field::ALL {
            assert_eq!(map.column(field), Some(field.name()));
            assert_eq!(map.origin(field), Some(Origin::Preset));
        }
    }

    #[test]
    fn debezium_preset_matches_the_event_router_table() {
        let map = ColumnMap::parse("debezium").unwrap();
        assert_eq!(map.column(Field::AggregateType), Some("aggregatetype"));
        assert_eq!(map.column(Field::AggregateId), Some("aggregateid"));
        assert_eq!(map.column(Field::EventType), Some("type"));
        assert_eq!(map.column(Field::Headers), None);
        assert_eq!(map.column(Field::CreatedAt), None);
    }

    #[test]
    fn overrides_apply_on_top_of_the_preset() {
        let map = ColumnMap::parse("id=event_id, aggregate_type=kind,headers=").unwrap();
        assert_eq!(map.column(Field::Id), Some("event_id"));
        assert_eq!(map.origin(Field::Id), Some(Origin::Explicit));
        assert_eq!(map.column(Field::AggregateType), Some("kind"));
        assert_eq!(map.column(Field::Headers), None);
        assert_eq!(map.column(Field::Payload), Some("payload"));
        let map = ColumnMap::parse("debezium,payload=body").unwrap();
        assert_eq!(map.column(Field::Payload), Some("body"));
        assert_eq!(map.column(Field::EventType), Some("type"));
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
    }

    #[test]
    fn display_round_trips_through_parse() {
        let map = ColumnMap::parse("id=event_id,exchange=").unwrap();
        let again = ColumnMap::parse(&map.to_string()).unwrap();
        for field in Field::ALL {
            assert_eq!(map.column(field), again.column(field));
        }
    }
}
