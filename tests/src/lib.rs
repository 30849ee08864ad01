//! Fixtures shared by Tally's integration tests, crash child and benchmarks: deterministic
//! keys and well-formed, validly signed entries.

use rand::{Rng, RngCore};
use tally_core::codec::Text;
use tally_core::entry::{Body, Entry, Genesis, Receipt, ReceiptCore, Usage, VerifiedEntry};
use tally_core::sig::SigningKey;

/// The origin used by test ledgers.
pub const ORIGIN: &str = "tally.test/collective";

/// The collective's key in test ledgers.
pub fn collective_key() -> SigningKey {
    SigningKey::from_seed(&[0xc0; 32])
}

/// The key of test lab `n`.
pub fn lab_key(n: u8) -> SigningKey {
    SigningKey::from_seed(&[n; 32])
}

/// A genesis entry for a USD ledger at 6 decimals.
pub fn genesis(key: &SigningKey) -> Entry {
    let body = Genesis {
        origin: Text::new(ORIGIN).expect("short"),
        collective_name: Text::new("Test Collective").expect("short"),
        collective_key: key.public_bytes(),
        asset_code: Text::new("USD").expect("short"),
        asset_scale: 6,
        created_ms: 1_700_000_000_000,
    };
    Entry::sign(key, Body::Genesis(body)).expect("valid genesis")
}

/// A receipt by `lab` for article `article` with the given nonce.
pub fn receipt(lab: &SigningKey, lab_id: u64, article: u64, nonce: [u8; 16]) -> Entry {
    let core = ReceiptCore {
        lab_id,
        contract_id: [0x11; 32],
        url: Text::new(format!("https://news.example/articles/{article}")).expect("short"),
        content_sha256: [0x22; 32],
        response_bytes: 20_000 + article % 1000,
        fetch_time_ms: 1_700_000_000_000 + article,
        usage: Usage::AiTrain,
        nonce,
    };
    Entry::sign(lab, Body::Receipt(Receipt { core, delivery: None })).expect("valid receipt")
}

/// A receipt with a random nonce and article.
pub fn random_receipt(lab: &SigningKey, rng: &mut impl RngCore) -> Entry {
    let mut nonce = [0u8; 16];
    rng.fill_bytes(&mut nonce);
    receipt(lab, 1, rng.gen_range(0..1_000_000), nonce)
}

/// Verify an entry the tests built themselves.
pub fn verified(entry: Entry) -> VerifiedEntry {
    entry.verify().expect("fixture entries are validly signed")
}
