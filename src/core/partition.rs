//! Partitions: how a partitioned projection splits the streams between its workers.
//!
//! The partition of a stream is fixed forever by its id, so that every event of a stream goes
//! to the same partition, in order, whichever process owns that partition:
//!
//! ```text
//! stream_hash(stream_id) = the first 4 bytes of MD5(UTF-8 bytes of stream_id),
//!                          read as a big-endian unsigned 32-bit integer
//! partition(stream_id, N) = stream_hash(stream_id) mod N
//! ```
//!
//! MD5 is used as a well-spread hash that every language and PostgreSQL itself compute the same
//! way (`('x' || left(md5(stream_id), 8))::bit(32)::bigint`), not for security. PostgreSQL
//! stores it at append in the generated column `events.stream_hash`, so that the partition
//! filter runs in the database, on an index.

use md5::{Digest, Md5};

/// The stable 32-bit hash of a stream id (see the module documentation).
pub fn stream_hash(stream_id: &str) -> u32 {
    let digest = Md5::digest(stream_id.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The partition, out of `count`, that owns `stream_id`. `count` 0 is treated as 1.
pub fn partition_of(stream_id: &str, count: u32) -> u32 {
    stream_hash(stream_id) % count.max(1)
}

/// The largest partition count a projection may have.
pub const MAX_PARTITIONS: u32 = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_the_documented_one() {
        // The same values as PostgreSQL's `('x' || left(md5(s), 8))::bit(32)::bigint`.
        assert_eq!(stream_hash(""), 0xd41d_8cd9);
        assert_eq!(stream_hash("order-1"), 1_853_851_049);
        assert_eq!(partition_of("", 1), 0);
        assert_eq!(partition_of("", 0), 0);
        assert_eq!(partition_of("", 7), 0xd41d_8cd9 % 7);
    }

    #[test]
    fn streams_spread_over_partitions() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[partition_of(&format!("order-{i}"), 8) as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }
}
