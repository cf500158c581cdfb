//! Topic names: one rule for every component (collector, store, CLI).

/// Longest topic name accepted (Kafka's limit).
pub const MAX_TOPIC_LEN: usize = 249;

/// Checks a user-facing topic name: 1-249 of `[A-Za-z0-9._-]`, not `.` or `..`, and not starting
/// with `__` (reserved for ferry's internal topics). The error says which rule failed.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "topic name is {} bytes long, the limit is {MAX_TOPIC_LEN}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    if name.starts_with("__") {
        return Err(format!(
            "topic name {name:?} starts with \"__\", which is reserved for internal topics"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name {name:?} has the character {c:?}; use only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// A stable 64-bit FNV-1a hash, for choosing partitions: the same key must land on the same
/// partition across restarts and upgrades (the collector's dedup is per partition).
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate parts so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The partition of `partitions` that the collector stores a batch with this origin in, when
/// the topic has no `key_field` and no routing rule splits it: one origin's records stay in one
/// partition, in order, and a replay meets that partition's dedup mark.
pub fn origin_partition(key: &crate::record::OriginKey, partitions: u32) -> u32 {
    let f = &key.file;
    let h = stable_hash(&[
        key.agent_id.as_bytes(),
        &f.dev.to_le_bytes(),
        &f.inode.to_le_bytes(),
        &f.fingerprint.to_le_bytes(),
    ]);
    (h % u64::from(partitions.max(1))) as u32
}

/// The origin a plain post's lines are stored under when it names its producer
/// (`ferry-producer-id: id`): `producer/ID` as the agent id, with the all-zero file identity
/// that no file an agent reads has.
pub fn producer_origin(id: &str) -> crate::record::OriginKey {
    crate::record::OriginKey {
        agent_id: format!("producer/{id}"),
        file: crate::record::FileId::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["app", "a.b-c_d", "X9", &"t".repeat(249)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "__internal",
            "a/b",
            "sp ace",
            "ü",
            &"t".repeat(250),
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hash_is_stable_and_separates_parts() {
        assert_eq!(stable_hash(&[b"abc"]), stable_hash(&[b"abc"]));
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        // Pinned: a change here moves every keyed record to another partition.
        assert_eq!(stable_hash(&[b"user-1"]), 0x32d0_92a5_4d3d_ba11);
    }
}
