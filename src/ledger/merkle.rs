//! The log's Merkle tree: RFC 9162 §2.1 with blake3. Pure code: proofs are
//! built from a [`NodeSource`] and verified from hashes alone.

use super::error::{LedgerError, LedgerErrorCode};

/// A 32-byte blake3 tree hash.
pub type Hash = [u8; 32];

/// Domain-separation prefix of a leaf hash.
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of an interior node hash.
const NODE_PREFIX: u8 = 0x01;

/// blake3(0x00 ‖ entry): the hash of one log entry.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[LEAF_PREFIX]);
    h.update(entry);
    *h.finalize().as_bytes()
}

/// blake3(0x01 ‖ left ‖ right): the hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[NODE_PREFIX]);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// The root of the empty tree: blake3 of no bytes.
pub fn empty_root() -> Hash {
    *blake3::hash(b"").as_bytes()
}

/// Stored hashes of perfect subtrees: level `l`, index `i` covers leaves
/// `i·2^l .. (i+1)·2^l`. Level 0 holds leaf hashes.
pub trait NodeSource {
    /// The hash of a complete subtree that exists in the tree.
    ///
    /// # Errors
    /// Storage failures, or `LedgerErrorCode::Integrity` if the node is missing.
    fn node(&self, level: u8, index: u64) -> Result<Hash, LedgerError>;
}

/// The largest power of two strictly less than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH of leaves `start .. end` (RFC 9162 §2.1.1), for the ranges the proof
/// recursion visits: `start` is aligned to the largest power of two not
/// above `end - start`.
pub fn subtree_root<S: NodeSource + ?Sized>(
    src: &S,
    start: u64,
    end: u64,
) -> Result<Hash, LedgerError> {
    let len = end - start;
    if len == 0 {
        return Ok(empty_root());
    }
    if len.is_power_of_two() && start % len == 0 {
        let level = len.trailing_zeros() as u8;
        return src.node(level, start >> level);
    }
    let k = split(len);
    let left = subtree_root(src, start, start + k)?;
    let right = subtree_root(src, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// The audit path of leaf `index` in the tree of `size` leaves
/// (RFC 9162 §2.1.3.1), leaf side first.
///
/// # Errors
/// `index_out_of_range` unless `index < size`.
pub fn inclusion_proof<S: NodeSource + ?Sized>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, LedgerError> {
    if index >= size {
        return Err(LedgerError::new(
            LedgerErrorCode::IndexOutOfRange,
            format!("leaf {index} is not in a tree of size {size}"),
        ));
    }
    let mut path = Vec::new();
    path_into(src, index, 0, size, &mut path)?;
    Ok(path)
}

fn path_into<S: NodeSource + ?Sized>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), LedgerError> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path_into(src, m, start, start + k, out)?;
        out.push(subtree_root(src, start + k, end)?);
    } else {
        path_into(src, m - k, start + k, end, out)?;
        out.push(subtree_root(src, start, start + k)?);
    }
    Ok(())
}

/// The consistency proof from tree size `old` to `new` (RFC 9162 §2.1.4.1).
/// Empty when `old` is 0 or equals `new`.
///
/// # Errors
/// `size_out_of_range` unless `old <= new`.
pub fn consistency_proof<S: NodeSource + ?Sized>(
    src: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, LedgerError> {
    if old > new {
        return Err(LedgerError::new(
            LedgerErrorCode::SizeOutOfRange,
            format!("cannot prove size {old} consistent with the smaller size {new}"),
        ));
    }
    let mut proof = Vec::new();
    if old > 0 && old < new {
        subproof_into(src, old, 0, new, true, &mut proof)?;
    }
    Ok(proof)
}

fn subproof_into<S: NodeSource + ?Sized>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), LedgerError> {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(subtree_root(src, start, end)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof_into(src, m, start, start + k, whole, out)?;
        out.push(subtree_root(src, start + k, end)?);
    } else {
        subproof_into(src, m - k, start + k, end, false, out)?;
        out.push(subtree_root(src, start, start + k)?);
    }
    Ok(())
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2).
///
/// # Errors
/// `bad_proof`, naming what did not match.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    path: &[Hash],
    root: &Hash,
) -> Result<(), LedgerError> {
    let bad = |why: &str| {
        Err(LedgerError::new(
            LedgerErrorCode::BadProof,
            format!("inclusion proof: {why}"),
        ))
    };
    if index >= size {
        return bad("leaf index is not below the tree size");
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s_n == 0 {
            return bad("path is longer than the tree is deep");
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return bad("path is shorter than the tree is deep");
    }
    if r != *root {
        return bad("computed root does not match");
    }
    Ok(())
}

/// Checks a consistency proof (RFC 9162 §2.1.4.2): the tree of `old_size`
/// with `old_root` is a prefix of the tree of `new_size` with `new_root`.
///
/// # Errors
/// `bad_proof`, naming what did not match.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), LedgerError> {
    let bad = |why: &str| {
        Err(LedgerError::new(
            LedgerErrorCode::BadProof,
            format!("consistency proof: {why}"),
        ))
    };
    if old_size > new_size {
        return bad("the old size is larger than the new size");
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return bad("a proof between equal sizes is empty");
        }
        return if old_root == new_root {
            Ok(())
        } else {
            bad("equal sizes with different roots")
        };
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return bad("a proof from the empty tree is empty");
        }
        return if *old_root == empty_root() {
            Ok(())
        } else {
            bad("the empty tree's root is blake3 of no bytes")
        };
    }
    let mut nodes: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        nodes.push(*old_root);
    }
    nodes.extend_from_slice(proof);
    let Some((first, rest)) = nodes.split_first() else {
        return bad("proof is empty");
    };
    let (mut f_n, mut s_n) = (old_size - 1, new_size - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return bad("proof is longer than needed");
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return bad("proof is shorter than needed");
    }
    if fr != *old_root {
        return bad("the old root does not match");
    }
    if sr != *new_root {
        return bad("the new root does not match");
    }
    Ok(())
}

/// The right edge of the tree: the roots of its perfect subtrees, largest
/// (leftmost) first — at most 64 hashes, whatever the tree's size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    roots: Vec<Hash>,
}

/// A node that becomes complete when a leaf is appended, to be stored.
pub type NewNode = (u8, u64, Hash);

impl Frontier {
    /// The frontier of a tree of `size` leaves, read from stored nodes.
    ///
    /// # Errors
    /// Whatever the source returns.
    pub fn load<S: NodeSource + ?Sized>(src: &S, size: u64) -> Result<Frontier, LedgerError> {
        let mut roots = Vec::new();
        for level in (0..64u8).rev() {
            if size >> level & 1 == 1 {
                // checked: level 63 would shift by 64.
                let above = size.checked_shr(u32::from(level) + 1).unwrap_or(0);
                let start = above.checked_shl(u32::from(level) + 1).unwrap_or(0);
                roots.push(src.node(level, start >> level)?);
            }
        }
        Ok(Frontier { size, roots })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The roots of the perfect subtrees, largest (leftmost) first.
    pub fn roots(&self) -> &[Hash] {
        &self.roots
    }

    /// A frontier from its parts (as saved by [`Frontier::roots`]): one
    /// root per set bit of `size`, largest first. `None` if the count is
    /// wrong.
    pub fn from_parts(size: u64, roots: Vec<Hash>) -> Option<Frontier> {
        (roots.len() == size.count_ones() as usize).then_some(Frontier { size, roots })
    }

    /// Appends a leaf hash; returns the nodes that became complete (the
    /// leaf itself first), which the caller stores.
    pub fn push(&mut self, leaf: Hash) -> Vec<NewNode> {
        let mut out = vec![(0u8, self.size, leaf)];
        let (mut node, mut level, mut index) = (leaf, 0u8, self.size);
        while index & 1 == 1 {
            let left = self
                .roots
                .pop()
                .unwrap_or_else(|| unreachable!("a set bit has a root"));
            node = node_hash(&left, &node);
            level += 1;
            index >>= 1;
            out.push((level, index, node));
        }
        self.roots.push(node);
        self.size += 1;
        out
    }

    /// The tree's root hash (RFC 9162 MTH).
    pub fn root(&self) -> Hash {
        let mut it = self.roots.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The RFC's recursive definition, straight from the text.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    struct Mem(HashMap<(u8, u64), Hash>);
    impl NodeSource for Mem {
        fn node(&self, level: u8, index: u64) -> Result<Hash, LedgerError> {
            self.0
                .get(&(level, index))
                .copied()
                .ok_or_else(|| LedgerError::new(LedgerErrorCode::Integrity, "missing node"))
        }
    }

    fn build(n: u64) -> (Mem, Vec<Hash>, Vec<Hash>) {
        let mut mem = Mem(HashMap::new());
        let mut f = Frontier::default();
        let mut leaves = Vec::new();
        let mut roots = vec![empty_root()];
        for i in 0..n {
            let leaf = leaf_hash(&i.to_be_bytes());
            leaves.push(leaf);
            for (l, idx, h) in f.push(leaf) {
                mem.0.insert((l, idx), h);
            }
            roots.push(f.root());
        }
        (mem, leaves, roots)
    }

    #[test]
    fn frontier_root_matches_the_rfc_definition_and_reloads() {
        let (mem, leaves, roots) = build(70);
        for n in 0..=70usize {
            assert_eq!(roots[n], mth(&leaves[..n]), "size {n}");
            assert_eq!(Frontier::load(&mem, n as u64).unwrap().root(), roots[n]);
            assert_eq!(subtree_root(&mem, 0, n as u64).unwrap(), roots[n]);
        }
    }

    #[test]
    fn every_inclusion_proof_verifies_and_tampering_fails() {
        let (mem, leaves, roots) = build(37);
        for n in 1..=37u64 {
            for m in 0..n {
                let path = inclusion_proof(&mem, m, n).unwrap();
                let root = &roots[n as usize];
                verify_inclusion(&leaves[m as usize], m, n, &path, root).unwrap();
                let other = leaves[((m + 1) % n) as usize];
                if n > 1 {
                    assert!(verify_inclusion(&other, m, n, &path, root).is_err());
                }
                for i in 0..path.len() {
                    let mut bad = path.clone();
                    bad[i][0] ^= 1;
                    assert!(verify_inclusion(&leaves[m as usize], m, n, &bad, root).is_err());
                }
                let mut longer = path.clone();
                longer.push([0; 32]);
                assert!(verify_inclusion(&leaves[m as usize], m, n, &longer, root).is_err());
            }
        }
        assert!(inclusion_proof(&mem, 5, 5).is_err());
    }

    #[test]
    fn every_consistency_proof_verifies_and_tampering_fails() {
        let (mem, _, roots) = build(37);
        for new in 0..=37u64 {
            for old in 0..=new {
                let proof = consistency_proof(&mem, old, new).unwrap();
                let (ro, rn) = (&roots[old as usize], &roots[new as usize]);
                verify_consistency(old, new, ro, rn, &proof).unwrap();
                if old > 0 && old < new {
                    for i in 0..proof.len() {
                        let mut bad = proof.clone();
                        bad[i][31] ^= 0x80;
                        assert!(
                            verify_consistency(old, new, ro, rn, &bad).is_err(),
                            "{old}->{new} #{i}"
                        );
                    }
                    let wrong_old = roots[(old - 1) as usize];
                    assert!(verify_consistency(old, new, &wrong_old, rn, &proof).is_err());
                    assert!(
                        verify_consistency(old, new, ro, &roots[(new - 1) as usize], &proof)
                            .is_err()
                    );
                    assert!(
                        verify_consistency(old, new, ro, rn, &proof[..proof.len() - 1]).is_err()
                    );
                }
            }
        }
        assert!(consistency_proof(&mem, 5, 4).is_err());
    }
}
