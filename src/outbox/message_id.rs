//! The message id of an event whose table has no id column: a name-based UUID (version 5) of
//! the event's WAL position, so every redelivery and every replay of the event carries the
//! same id and consumers can deduplicate by it.
//!
//! The name is `<commit LSN>/<index>` (`0/16B3748/0` for the first outbox row of the
//! transaction that committed at 0/16B3748) in the namespace [`NAMESPACE`]. A WAL position is
//! unique within one PostgreSQL cluster: two clusters can give equal ids, so a consumer fed by
//! several should deduplicate per source.

use uuid::Uuid;

use crate::lsn::Lsn;

/// uuid5(NAMESPACE_URL, "https://github.com/walbox/walbox#event-position"): fixed, so anyone
/// can recompute an id from a position.
pub(crate) const NAMESPACE: Uuid = Uuid::from_u128(0x11393028_b434_596f_a04c_9713d9b79796);

/// The id of the `index`-th outbox event (from 0) of the transaction committed at `commit_lsn`.
pub(crate) fn from_position(commit_lsn: Lsn, index: u32) -> String {
    let name = format!("{commit_lsn}/{index}");
    Uuid::new_v5(&NAMESPACE, name.as_bytes())
        .hyphenated()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_the_documented_derivation() {
        let derived = Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            b"https://github.com/walbox/walbox#event-position",
        );
        assert_eq!(NAMESPACE, derived);
    }

    #[test]
    fn same_position_same_id_other_position_other_id() {
        let a = from_position(Lsn(0x16B3748), 0);
        assert_eq!(a, from_position(Lsn(0x16B3748), 0));
        assert_ne!(a, from_position(Lsn(0x16B3748), 1));
        assert_ne!(a, from_position(Lsn(0x16B3749), 0));
        let parsed = Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version_num(), 5);
        assert_eq!(
            a,
            Uuid::new_v5(&NAMESPACE, b"0/16B3748/0")
                .hyphenated()
                .to_string()
        );
    }
}
