//! What each fuzz target checks, for any input: no panic, no unbounded allocation, and
//! the property named on each function. Shared by the libFuzzer targets
//! (`fuzz_targets/`) and the stable regression test (`tests/it/fuzz_regressions.rs`).

use tally_core::checkpoint::{open_checkpoint, parse_note};
use tally_core::entry::Entry;
use tally_core::merkle::{self, MemoryTree};
use tally_core::sig::SigningKey;
use tally_core::submission::{parse_binary, parse_json};

/// Canonical decoding: whatever decodes re-encodes to exactly the input bytes, decodes
/// again to the same entry, and verifying it does not panic.
pub fn entry_decode(data: &[u8]) {
    if let Ok(entry) = Entry::decode(data) {
        assert_eq!(entry.as_bytes(), data, "decoded bytes are the input");
        assert_eq!(Entry::decode(entry.as_bytes()).as_ref(), Ok(&entry));
        let _ = entry.receipt_id();
        let _ = entry.dedup_id();
        let _ = entry.verify();
    }
}

/// Both submission bodies: bounded by the entry limit, and a binary body that parses is
/// exactly the concatenation of its length-prefixed elements.
pub fn submission_body(data: &[u8]) {
    const MAX: usize = 64;
    if let Ok(raw) = parse_json(data, MAX) {
        assert!(!raw.is_empty() && raw.len() <= MAX);
    }
    if let Ok(raw) = parse_binary(data, MAX) {
        assert!(!raw.is_empty() && raw.len() <= MAX);
        let mut rebuilt = Vec::new();
        for bytes in raw {
            let bytes = bytes.expect("binary elements are always bytes");
            rebuilt.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            rebuilt.extend_from_slice(&bytes);
        }
        assert_eq!(rebuilt, data);
    }
}

/// The signed-note and checkpoint parsers on any text. A note that opens under a key that
/// never signed anything would be a forgery, so opening must fail.
pub fn checkpoint_note(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = parse_note(text);
    let key = SigningKey::from_seed(&[7; 32]).public_key();
    assert!(open_checkpoint(text, "tally.fuzz/log", &key).is_err(), "a note no one signed opened");
}

/// A tree of 1 to 256 leaves chosen by the input, and a proof taken from the input: the
/// verifier never panics, and accepts a proof only if it is the true one.
pub fn inclusion_proof(data: &[u8]) {
    let Some((&[n, i], rest)) = data.split_first_chunk::<2>() else { return };
    let size = u64::from(n) + 1;
    let index = u64::from(i);
    let tree = tree(size);
    let proof = hashes(rest);
    let leaf = merkle::leaf_hash(&index.to_le_bytes());
    let accepted = merkle::verify_inclusion(&leaf, index, size, &proof, &tree.root()).is_ok();
    if accepted {
        assert_eq!(Ok(proof), merkle::inclusion_proof(&tree, index, size), "only the true proof verifies");
    }
    if index < size {
        let good = merkle::inclusion_proof(&tree, index, size).unwrap();
        assert!(merkle::verify_inclusion(&leaf, index, size, &good, &tree.root()).is_ok());
    }
}

/// As `inclusion_proof`, for consistency between two sizes of the same tree.
pub fn consistency_proof(data: &[u8]) {
    let Some((&[a, b], rest)) = data.split_first_chunk::<2>() else { return };
    let (size1, size2) = (u64::from(a), u64::from(b));
    let tree2 = tree(size2.max(1));
    let root1 = tree(size1.max(1)).root();
    let proof = hashes(rest);
    let accepted = merkle::verify_consistency(size1, size2, &root1, &tree2.root(), &proof).is_ok();
    if accepted {
        assert_eq!(Ok(proof), merkle::consistency_proof(&tree2, size1, size2), "only the true proof verifies");
    }
}

fn tree(size: u64) -> MemoryTree {
    let mut t = MemoryTree::new();
    for i in 0..size {
        t.push(merkle::leaf_hash(&i.to_le_bytes()));
    }
    t
}

fn hashes(bytes: &[u8]) -> Vec<[u8; 32]> {
    bytes.chunks_exact(32).take(64).map(|c| c.try_into().expect("32 bytes")).collect()
}
