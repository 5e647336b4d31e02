//! Run ids: short, sortable by time, usable in container, network and DNS names.

use std::hash::{BuildHasher, Hasher};

/// Makes a new run id: seconds since the epoch in base 36 (sorts by time for the next century)
/// followed by three random base-36 characters, e.g. `t4x9k2a7q`.
pub fn new(now: jiff::Timestamp) -> String {
    let secs = now.as_second().max(0) as u64;
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(now.as_nanosecond() as u128);
    hasher.write_u32(std::process::id());
    let random = hasher.finish() % (36 * 36 * 36);
    format!("{}{:0>3}", base36(secs), base36(random))
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n == 0 {
        return "0".into();
    }
    let mut out = Vec::new();
    while n > 0 {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// Whether `text` could be a run id (so `latest` and typos are told apart from ids).
pub fn looks_valid(text: &str) -> bool {
    (4..=20).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_differ() {
        let a = new(jiff::Timestamp::from_second(1_700_000_000).unwrap());
        let b = new(jiff::Timestamp::from_second(1_800_000_000).unwrap());
        assert!(a < b, "{a} < {b}");
        assert_eq!(a.len(), b.len());
        assert!(looks_valid(&a));
        let now = jiff::Timestamp::now();
        assert_ne!(new(now), new(now + jiff::SignedDuration::from_nanos(1)));
    }
}
