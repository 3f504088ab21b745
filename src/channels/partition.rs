//! Channel partitions: every channel belongs to one of [`PARTITIONS`], by a hash of its name
//! that every node and every version computes alike. A publication's stored form names its
//! channels' partitions, and a node's change stream asks MongoDB only for the partitions it
//! has subscribers in (`crate::bus::interest`): a node pays nothing for a channel it has no
//! subscriber in, however many nodes there are. Part of the stored format (docs/PROTOCOL.md,
//! "Scaling out"): changing the hash or the count is a migration.

/// How many partitions channels are hashed into. Enough that a node with subscribers in a
/// few hundred channels asks for a few percent of them; few enough that the list a node's
/// change stream matches on stays small.
pub const PARTITIONS: u32 = 4096;

/// The partition of `channel`: FNV-1a (32 bits) of its bytes, modulo [`PARTITIONS`].
pub fn partition_of(channel: &str) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let hash = channel.bytes().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(PRIME)
    });
    hash % PARTITIONS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_fixed_values_that_spread() {
        // Stored in MongoDB and matched by every node: these values must never change.
        assert_eq!(partition_of(""), 0x811c_9dc5 % PARTITIONS);
        assert_eq!(partition_of("a"), 0xe40c_292c % PARTITIONS);
        assert_eq!(partition_of("foobar"), 0xbf9c_f968 % PARTITIONS);
        let mut used = std::collections::HashSet::new();
        for i in 0..4096 {
            used.insert(partition_of(&format!("load:c{i}")));
        }
        // 4,096 channels over 4,096 partitions: about 1 - 1/e of them used, as chance has it.
        assert!((2400..2800).contains(&used.len()), "{}", used.len());
    }
}
