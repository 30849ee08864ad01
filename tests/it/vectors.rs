//! Known-answer vectors from other projects: RFC 6962 proofs (transparency-dev/merkle) and
//! the Ed25519 edge cases of "Taming the many EdDSAs", run against Tally's verifiers.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use sha2::Digest;
use tally_core::merkle::{Hash, verify_consistency, verify_inclusion};
use tally_core::sig::{self, PublicKey, SignatureError};

pub(crate) fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors")
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(json_files(&path));
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A base64 value that must be a 32-byte hash; anything else cannot be a hash, so the
/// vector must be one that expects an error.
fn hash(b64: &str) -> Option<Hash> {
    B64.decode(b64).ok()?.try_into().ok()
}

fn hashes(list: &Option<Vec<String>>) -> Option<Vec<Hash>> {
    list.iter().flatten().map(|s| hash(s)).collect()
}

/// A few consistency vectors use short placeholder roots ("don't care 1") where the
/// verdict depends only on whether the two roots are equal (equal sizes, empty proof).
/// Tally's verifier takes 32-byte roots, so a placeholder is replaced by its SHA-256, which
/// keeps equal placeholders equal and different ones different. Where the verdict depends
/// on hashing, no placeholder can match a computed root, so the verdict is unchanged too.
fn root_or_stand_in(b64: &str) -> Option<Hash> {
    let raw = B64.decode(b64).ok()?;
    Some(match <[u8; 32]>::try_from(raw.as_slice()) {
        Ok(h) => h,
        Err(_) => sha2::Sha256::digest(&raw).into(),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Inclusion {
    leaf_idx: u64,
    tree_size: u64,
    root: String,
    leaf_hash: String,
    proof: Option<Vec<String>>,
    want_err: bool,
}

#[derive(Deserialize)]
struct Consistency {
    size1: u64,
    size2: u64,
    root1: String,
    root2: String,
    proof: Option<Vec<String>>,
    #[serde(rename = "wantErr")]
    want_err: bool,
}

/// Every inclusion vector, including each that must fail, gets the expected verdict.
#[test]
fn rfc6962_inclusion_vectors() {
    let files = json_files(&shared().join("rfc6962/inclusion"));
    assert!(files.len() > 50, "vector files missing: found {}", files.len());
    let mut failures_expected = 0;
    for f in &files {
        let v: Inclusion = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        let ok = match (hash(&v.leaf_hash), hash(&v.root), hashes(&v.proof)) {
            (Some(leaf), Some(root), Some(proof)) => {
                verify_inclusion(&leaf, v.leaf_idx, v.tree_size, &proof, &root).is_ok()
            }
            _ => false,
        };
        assert_eq!(ok, !v.want_err, "{}", f.display());
        failures_expected += usize::from(v.want_err);
    }
    assert!(failures_expected > 30, "the must-fail cases are present");
}

/// Every consistency vector, including each that must fail, gets the expected verdict.
#[test]
fn rfc6962_consistency_vectors() {
    let files = json_files(&shared().join("rfc6962/consistency"));
    assert!(files.len() > 50, "vector files missing: found {}", files.len());
    for f in &files {
        let v: Consistency = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        let ok = match (root_or_stand_in(&v.root1), root_or_stand_in(&v.root2), hashes(&v.proof)) {
            (Some(r1), Some(r2), Some(proof)) => verify_consistency(v.size1, v.size2, &r1, &r2, &proof).is_ok(),
            _ => false,
        };
        assert_eq!(ok, !v.want_err, "{}", f.display());
    }
}

#[derive(Deserialize)]
struct EdCase {
    message: String,
    pub_key: String,
    signature: String,
}

/// What Tally's rule says of each of the 12 edge cases, and whether the key may be
/// registered. specs/signatures.md explains each row.
const ED25519_EXPECTED: [(Result<(), SignatureError>, Result<(), SignatureError>); 12] = [
    (Err(SignatureError::KeySmallOrder), Err(SignatureError::KeySmallOrder)),
    (Err(SignatureError::KeySmallOrder), Err(SignatureError::KeySmallOrder)),
    (Err(SignatureError::RSmallOrder), Err(SignatureError::KeyTorsion)),
    (Ok(()), Err(SignatureError::KeyTorsion)),
    (Ok(()), Err(SignatureError::KeyTorsion)),
    (Ok(()), Err(SignatureError::KeyTorsion)),
    (Err(SignatureError::SNonCanonical), Ok(())),
    (Err(SignatureError::SNonCanonical), Ok(())),
    (Err(SignatureError::REncoding), Err(SignatureError::KeyTorsion)),
    (Err(SignatureError::REncoding), Err(SignatureError::KeyTorsion)),
    (Err(SignatureError::KeyEncoding), Err(SignatureError::KeyEncoding)),
    (Err(SignatureError::KeyEncoding), Err(SignatureError::KeyEncoding)),
];

/// The single rule and the batch path give the documented verdict on all 12 cases, and no
/// accepted case has a key that could be registered on a ledger.
#[test]
fn ed25519_edge_cases() {
    let text = std::fs::read_to_string(shared().join("ed25519/cases.json")).unwrap();
    let cases: Vec<EdCase> = serde_json::from_str(&text).unwrap();
    assert_eq!(cases.len(), 12);
    let mut parsed = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let msg = hex::decode(&c.message).unwrap();
        let key: [u8; 32] = hex::decode(&c.pub_key).unwrap().try_into().unwrap();
        let sig: [u8; 64] = hex::decode(&c.signature).unwrap().try_into().unwrap();
        let single = PublicKey::from_bytes(&key).and_then(|pk| sig::verify(&pk, &[&msg], &sig));
        let registrable = PublicKey::for_registration(&key).map(|_| ());
        assert_eq!((single, registrable), ED25519_EXPECTED[i], "case {i}");
        parsed.push((msg, key, sig));
    }
    // The batch path agrees case by case, batched together with valid signatures.
    let keys: Vec<Option<PublicKey>> = parsed.iter().map(|(_, k, _)| PublicKey::from_bytes(k).ok()).collect();
    let good = tally_core::sig::SigningKey::from_seed(&[42; 32]);
    let good_pk = good.public_key();
    let good_sig = good.sign(&[b"fine"]);
    let mut items = Vec::new();
    let mut expect = Vec::new();
    let msgs: Vec<[&[u8]; 1]> = parsed.iter().map(|(m, _, _)| [m.as_slice()]).collect();
    let fine: [&[u8]; 1] = [b"fine"];
    for (i, (_, _, s)) in parsed.iter().enumerate() {
        if let Some(pk) = &keys[i] {
            items.push(sig::BatchItem { key: pk, message: &msgs[i], signature: s });
            expect.push(ED25519_EXPECTED[i].0);
            items.push(sig::BatchItem { key: &good_pk, message: &fine, signature: &good_sig });
            expect.push(Ok(()));
        }
    }
    assert_eq!(sig::verify_batch(&items), expect);
}
