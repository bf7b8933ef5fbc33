//! Key ranges of scans, in one form every backend can translate.

use std::ops::{Bound, RangeBounds};

/// The keys from `start` to `end` (each bound included, excluded or
/// open), compared as unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// The lower bound.
    pub start: Bound<Vec<u8>>,
    /// The upper bound.
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> KeyRange {
        KeyRange {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        }
    }

    /// The keys in `range`.
    pub fn from_bounds<K: AsRef<[u8]>>(range: impl RangeBounds<K>) -> KeyRange {
        let own = |b: Bound<&K>| match b {
            Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
            Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        KeyRange {
            start: own(range.start_bound()),
            end: own(range.end_bound()),
        }
    }

    /// The keys that start with `prefix`: from `prefix` to the smallest
    /// key above every such key (none when the prefix is all 0xff bytes).
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        KeyRange {
            start: Bound::Included(prefix.to_vec()),
            end: match prefix_successor(prefix) {
                Some(k) => Bound::Excluded(k),
                None => Bound::Unbounded,
            },
        }
    }

    /// Whether no key can be in the range (its start above its end), so a
    /// backend need not ask.
    pub fn is_empty(&self) -> bool {
        match (&self.start, &self.end) {
            (Bound::Included(a), Bound::Included(b)) => a > b,
            (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b))
            | (Bound::Excluded(a), Bound::Included(b)) => a >= b,
            _ => false,
        }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let above = match &self.start {
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
            Bound::Unbounded => true,
        };
        let below = match &self.end {
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
            Bound::Unbounded => true,
        };
        above && below
    }
}

/// The smallest key greater than every key starting with `prefix`, if any:
/// the prefix with its trailing 0xff bytes dropped and its last byte
/// incremented.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let keep = prefix.iter().rposition(|&b| b != 0xff)?;
    let mut next = prefix[..=keep].to_vec();
    next[keep] += 1;
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_holds_exactly_the_keys_with_that_prefix() {
        let keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0x01],
            vec![0x01, 0xff],
            vec![0x01, 0xff, 0x00],
            vec![0x01, 0xff, 0xff],
            vec![0x02],
            vec![0x02, 0x00],
            vec![0xff],
            vec![0xff, 0xff],
        ];
        for prefix in [&[][..], &[0x01], &[0x01, 0xff], &[0xff], &[0xff, 0xff]] {
            let r = KeyRange::prefix(prefix);
            for k in &keys {
                assert_eq!(r.contains(k), k.starts_with(prefix), "{prefix:?} {k:?}");
            }
        }
    }

    #[test]
    fn inverted_and_touching_ranges_are_empty() {
        assert!(KeyRange::from_bounds(vec![2u8]..vec![1u8]).is_empty());
        assert!(KeyRange::from_bounds(vec![1u8]..vec![1u8]).is_empty());
        assert!(!KeyRange::from_bounds(vec![1u8]..=vec![1u8]).is_empty());
        assert!(!KeyRange::all().is_empty());
    }
}
