//! Super streams: which partition an event goes to.
//!
//! RabbitMQ's stream clients route by hashing the key client-side: MurmurHash3 (x86, 32 bit)
//! of the key's UTF-8 bytes with seed 104729, unsigned, modulo the number of partitions,
//! indexing the partitions in the order the broker lists them. The official Rust client does
//! exactly this (`src/superstream.rs`, `HashRoutingMurmurStrategy::routes`), as do the Java
//! and .NET clients, so walbox and any other producer agree on where a key lives.

use std::io::Cursor;

/// The seed every RabbitMQ stream client uses for hash routing.
const SEED: u32 = 104_729;

/// The partition (an index into the broker's list) of `key` among `partitions`.
pub(crate) fn route(key: &str, partitions: usize) -> usize {
    // Reading from an in-memory cursor cannot fail.
    let hash = murmur3::murmur3_32(&mut Cursor::new(key.as_bytes()), SEED).unwrap_or(0);
    (u64::from(hash) % partitions.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_reference_values() {
        // MurmurHash3_x86_32 reference vectors (seed 0 and 1).
        let hash = |text: &str, seed| murmur3::murmur3_32(&mut Cursor::new(text), seed).unwrap();
        assert_eq!(hash("", 0), 0);
        assert_eq!(hash("", 1), 0x514E_28B7);
        assert_eq!(hash("hello", 0), 0x248B_FA47);
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
}
