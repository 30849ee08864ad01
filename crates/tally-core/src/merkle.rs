//! RFC 6962 / RFC 9162 Merkle tree: hashing, O(log n) append, proofs and their verifiers.
//!
//! Levels are tree heights: level 0 holds leaf hashes, the node at `(level, index)` is the
//! root of the complete subtree over leaves `[index << level, (index + 1) << level)`.
//! Proof *generation* is generic over [`NodeReader`], which only ever has to return hashes
//! of complete subtrees; the store answers it from tiles. Proof *verification* needs no
//! reader and is what clients and auditors run.

use sha2::{Digest, Sha256};

/// A SHA-256 output.
pub type Hash = [u8; 32];

/// The Merkle tree hash of the empty tree: SHA-256 of the empty string.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41,
    0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Heights in a tree of at most 2^63 leaves; frontier and proofs never exceed this.
pub const TREE_HEIGHT_MAX: usize = 64;

/// `SHA-256(0x00 || data)`: the hash of one leaf.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: the hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Why a proof failed to verify. Every variant is a reason to distrust the proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("first size {size1} is greater than second size {size2}")]
    SizesReversed { size1: u64, size2: u64 },
    #[error("a consistency proof from the empty tree proves nothing")]
    EmptyFirstTree,
    #[error("proof has the wrong number of hashes for these sizes")]
    WrongLength,
    #[error("the computed root does not match the expected root")]
    RootMismatch,
}

/// The right edge of a Merkle tree: one complete-subtree root per set bit of `size`.
/// Enough to append in O(log n) and to compute the root at the current size.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    /// Roots of the complete subtrees, largest (leftmost) first.
    peaks: Vec<Hash>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuild the frontier of a tree of `size` leaves from complete-subtree hashes.
    pub fn from_reader<R: NodeReader>(size: u64, reader: &R) -> Result<Self, R::Error> {
        let mut peaks = Vec::with_capacity(size.count_ones() as usize);
        let mut start = 0u64;
        for level in (0..64u8).rev() {
            if size & (1u64 << level) != 0 {
                peaks.push(reader.node(level, start >> level)?);
                start += 1u64 << level;
            }
        }
        Ok(Self { size, peaks })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append one leaf hash. `on_node(level, index, hash)` is told of every subtree that this
    /// append completes, the leaf itself (level 0) first, so a store can persist them.
    pub fn append(&mut self, leaf: Hash, mut on_node: impl FnMut(u8, u64, &Hash)) {
        let index = self.size;
        on_node(0, index, &leaf);
        let mut hash = leaf;
        let mut level = 0u8;
        // Each trailing one bit of the old size is a peak that merges with the new node.
        while index & (1u64 << level) != 0 {
            let left = self.peaks.pop().expect("a set bit of size always has a peak");
            hash = node_hash(&left, &hash);
            level += 1;
            on_node(level, index >> level, &hash);
        }
        self.peaks.push(hash);
        self.size += 1;
        debug_assert_eq!(self.peaks.len(), self.size.count_ones() as usize);
    }

    /// The RFC 6962 root hash at the current size.
    pub fn root(&self) -> Hash {
        let mut iter = self.peaks.iter().rev();
        match iter.next() {
            None => EMPTY_ROOT,
            Some(last) => iter.fold(*last, |acc, peak| node_hash(peak, &acc)),
        }
    }
}

/// Source of complete-subtree hashes for proof generation.
pub trait NodeReader {
    type Error;
    /// The hash of the complete subtree at height `level` over leaves
    /// `[index << level, (index + 1) << level)`. Only asked for subtrees inside the tree.
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

/// Largest power of two strictly below `n` (n >= 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[start:end]) for any non-empty range inside the tree.
pub fn subtree_hash<R: NodeReader>(reader: &R, start: u64, end: u64) -> Result<Hash, R::Error> {
    assert!(start < end, "subtree_hash needs a non-empty range");
    let len = end - start;
    if len.is_power_of_two() && start.is_multiple_of(len) {
        return reader.node(len.trailing_zeros() as u8, start / len);
    }
    let k = split_point(len);
    let left = subtree_hash(reader, start, start + k)?;
    let right = subtree_hash(reader, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// The root of the tree at `size` (any size up to the reader's).
pub fn root_at<R: NodeReader>(reader: &R, size: u64) -> Result<Hash, R::Error> {
    if size == 0 {
        return Ok(EMPTY_ROOT);
    }
    subtree_hash(reader, 0, size)
}

/// RFC 6962 PATH(index, D[0:size]): the audit path for one leaf, leaf-side hash first.
pub fn inclusion_proof<R: NodeReader>(reader: &R, index: u64, size: u64) -> Result<Vec<Hash>, R::Error> {
    assert!(index < size, "inclusion proof for a leaf outside the tree");
    let mut proof = Vec::with_capacity(TREE_HEIGHT_MAX);
    // Walk from the root down, collecting siblings; reverse at the end so the proof is
    // ordered leaf-side first as RFC 6962 writes it.
    let (mut lo, mut hi) = (0u64, size);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if index < lo + k {
            proof.push(subtree_hash(reader, lo + k, hi)?);
            hi = lo + k;
        } else {
            proof.push(subtree_hash(reader, lo, lo + k)?);
            lo += k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// RFC 6962 PROOF(size1, D[0:size2]) for 0 < size1 < size2; empty when the sizes are equal.
pub fn consistency_proof<R: NodeReader>(reader: &R, size1: u64, size2: u64) -> Result<Vec<Hash>, R::Error> {
    assert!(size1 <= size2, "consistency proof to a smaller tree");
    let mut proof = Vec::with_capacity(TREE_HEIGHT_MAX);
    if size1 == 0 || size1 == size2 {
        return Ok(proof);
    }
    // SUBPROOF(m, D[lo:hi], b), unrolled: each step descends into one half.
    let (mut m, mut lo, mut hi, mut whole) = (size1, 0u64, size2, true);
    loop {
        let n = hi - lo;
        if m == n {
            if !whole {
                proof.push(subtree_hash(reader, lo, hi)?);
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            proof.push(subtree_hash(reader, lo + k, hi)?);
            hi = lo + k;
        } else {
            proof.push(subtree_hash(reader, lo, lo + k)?);
            m -= k;
            lo += k;
            whole = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// RFC 9162 section 2.1.3.2: does `proof` show `leaf` at `index` in the tree `root` of `size`?
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 section 2.1.4.2: is the tree `root2` of `size2` an append-only extension of
/// the tree `root1` of `size1`?
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    root1: &Hash,
    root2: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if size1 > size2 {
        return Err(ProofError::SizesReversed { size1, size2 });
    }
    // Nothing is proved about the empty tree, not even its equality with itself.
    if size1 == 0 {
        return Err(ProofError::EmptyFirstTree);
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if root1 == root2 { Ok(()) } else { Err(ProofError::RootMismatch) };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let (seed, rest) = if size1.is_power_of_two() { (root1, proof) } else { (&proof[0], &proof[1..]) };
    let (mut fn_, mut sn) = (size1 - 1, size2 - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*seed, *seed);
    for c in rest {
        if sn == 0 {
            return Err(ProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr != *root1 || sr != *root2 {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// An in-memory tree of every node, for tests, small tools and the auditor's cross-checks.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    /// `levels[l][i]` is the complete node at height `l`, index `i`.
    levels: Vec<Vec<Hash>>,
    frontier: Frontier,
}

impl MemoryTree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, leaf: Hash) {
        let levels = &mut self.levels;
        self.frontier.append(leaf, |level, index, hash| {
            let level = usize::from(level);
            if levels.len() <= level {
                levels.push(Vec::new());
            }
            debug_assert_eq!(levels[level].len() as u64, index);
            levels[level].push(*hash);
        });
    }

    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    pub fn root(&self) -> Hash {
        self.frontier.root()
    }
}

impl NodeReader for MemoryTree {
    type Error = std::convert::Infallible;
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        Ok(self.levels[usize::from(level)][index as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(n: u64) -> MemoryTree {
        let mut t = MemoryTree::new();
        for i in 0..n {
            t.push(leaf_hash(&i.to_le_bytes()));
        }
        t
    }

    /// The reference MTH, straight from RFC 6962's recursive definition.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => EMPTY_ROOT,
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    /// Checks the frontier root and the reader-based root against the recursive definition
    /// for every size up to 300 (covering every shape of right edge up to 2^8 + 44).
    #[test]
    fn roots_match_the_definition() {
        let mut t = MemoryTree::new();
        let mut leaves = Vec::new();
        assert_eq!(t.root(), EMPTY_ROOT);
        for i in 0..300u64 {
            let leaf = leaf_hash(&i.to_le_bytes());
            leaves.push(leaf);
            t.push(leaf);
            assert_eq!(t.root(), mth(&leaves), "size {}", i + 1);
            assert_eq!(root_at(&t, i + 1).unwrap(), mth(&leaves));
        }
        // Roots of earlier sizes come out of the same stored nodes.
        for size in 0..=300u64 {
            assert_eq!(root_at(&t, size).unwrap(), mth(&leaves[..size as usize]));
        }
    }

    /// Every inclusion and consistency proof in trees up to 70 leaves verifies, and fails
    /// against a wrong root or a neighbouring index.
    #[test]
    fn generated_proofs_verify() {
        let t = tree(70);
        for size in 1..=70u64 {
            let root = root_at(&t, size).unwrap();
            for index in 0..size {
                let leaf = t.node(0, index).unwrap();
                let proof = inclusion_proof(&t, index, size).unwrap();
                assert_eq!(verify_inclusion(&leaf, index, size, &proof, &root), Ok(()));
                let wrong = (index + 1) % size;
                if wrong != index {
                    assert!(verify_inclusion(&leaf, wrong, size, &proof, &root).is_err());
                }
            }
            for size1 in 1..=size {
                let root1 = root_at(&t, size1).unwrap();
                let proof = consistency_proof(&t, size1, size).unwrap();
                assert_eq!(verify_consistency(size1, size, &root1, &root, &proof), Ok(()));
                if size1 < size {
                    assert!(verify_consistency(size1, size, &root, &root, &proof).is_err());
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// For random sizes up to 5,000 and random positions, generated proofs verify
        /// against the root from the recursive definition, and fail for the wrong leaf.
        #[test]
        fn random_proofs_agree_with_the_definition(size in 1u64..5000, a in proptest::prelude::any::<u64>(), b in proptest::prelude::any::<u64>()) {
            let t = tree(size);
            let leaves: Vec<Hash> = (0..size).map(|i| t.node(0, i).unwrap()).collect();
            let root = mth(&leaves);
            proptest::prop_assert_eq!(t.root(), root);
            let index = a % size;
            let proof = inclusion_proof(&t, index, size).unwrap();
            proptest::prop_assert!(verify_inclusion(&leaves[index as usize], index, size, &proof, &root).is_ok());
            proptest::prop_assert!(verify_inclusion(&leaf_hash(b"other"), index, size, &proof, &root).is_err());
            let size1 = 1 + b % size;
            let root1 = mth(&leaves[..size1 as usize]);
            let cproof = consistency_proof(&t, size1, size).unwrap();
            proptest::prop_assert!(verify_consistency(size1, size, &root1, &root, &cproof).is_ok());
            if size1 < size {
                proptest::prop_assert!(verify_consistency(size1, size, &root, &root1, &cproof).is_err());
            }
        }
    }

    /// A frontier rebuilt from stored nodes equals the one built by appending.
    #[test]
    fn frontier_rebuilds_from_nodes() {
        let t = tree(1000);
        for size in [0u64, 1, 2, 3, 255, 256, 257, 511, 999, 1000] {
            let f = Frontier::from_reader(size, &t).unwrap();
            assert_eq!(f.size(), size);
            assert_eq!(f.root(), root_at(&t, size).unwrap());
        }
    }
}
