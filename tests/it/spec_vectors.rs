//! `specs/vectors/entries.json` pins the byte layout of specs/encoding.md: fixed keys and
//! fields, the canonical body and entry bytes, signatures, receipt ids, leaf records, leaf
//! hashes, the root and a signed checkpoint, plus byte strings every decoder must refuse.
//! This test rebuilds everything from the inputs and demands byte equality, then decodes
//! every positive vector and refuses every negative one with the stated code.
//!
//! Regenerate (only when the format deliberately changes): `TALLY_WRITE_VECTORS=1 cargo test
//! --workspace --test it spec_vectors`.

use std::path::Path;

use serde_json::{Value, json};
use tally_core::checkpoint::{Checkpoint, open_checkpoint};
use tally_core::codec::Text;
use tally_core::entry::{Body, Entry, Genesis, LeafRecord, Receipt, ReceiptCore, Usage, sign_delivery};
use tally_core::merkle::MemoryTree;
use tally_core::sig::SigningKey;

const COLLECTIVE_SEED: [u8; 32] = [0x01; 32];
const LAB_SEED: [u8; 32] = [0x02; 32];
const PUBLISHER_SEED: [u8; 32] = [0x03; 32];
const TIME_MS: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

const FEDERATED_SEED: [u8; 32] = [0x04; 32];

/// One vector per settlement kind, with its fields as JSON (hex for fixed bytes, decimal
/// strings for rates).
fn settlement_entries() -> Vec<(&'static str, [u8; 32], Entry, Value)> {
    use tally_core::codec::List;
    use tally_core::decimal::Dec;
    use tally_core::kinds::*;
    let lab = SigningKey::from_seed(&LAB_SEED);
    let federated = SigningKey::from_seed(&FEDERATED_SEED);
    fn text<const N: usize>(s: &str) -> Text<N> {
        Text::new(s).unwrap()
    }
    let terms = ContractTerms {
        lab: 42,
        name: text("Example Labs 2026 transactional"),
        scope: List::new(vec![Usage::AiTrain, Usage::AiInput]).unwrap(),
        start_ms: TIME_MS,
        end_ms: TIME_MS + 31 * 86_400_000,
        licence: Licence::Transactional,
        basis: ChargeBasis::EveryFetch,
        rate: Rate { per_article: Dec::parse("0.002").unwrap(), per_kwords: Dec::parse("0.0005").unwrap() },
        tier_multipliers: [Dec::parse("1.5").unwrap(), Dec::ONE, Dec::parse("0.5").unwrap()],
        rate_table: List::new(vec![RateRule {
            pattern: UrlPattern::prefix("https://news.example/premium/").unwrap(),
            rate: Rate { per_article: Dec::parse("0.01").unwrap(), per_kwords: Dec::ZERO },
        }])
        .unwrap(),
        free_paths: List::new(vec![UrlPattern::prefix("https://news.example/free/").unwrap()]).unwrap(),
        spend_cap: 500_000_000,
        credit_limit: 50_000_000,
        fee_bps: 1500,
        distribution: Distribution::Hybrid { base_bps: 4000 },
        unregistered_words: 800,
    };
    let bodies: Vec<(&'static str, [u8; 32], Body)> = vec![
        (
            "admit",
            COLLECTIVE_SEED,
            Body::Admit(Admit {
                participant: 42,
                role: Role::Lab,
                key: lab.public_bytes(),
                name: text("Example Labs"),
            }),
        ),
        (
            "update-participant",
            COLLECTIVE_SEED,
            Body::UpdateParticipant(UpdateParticipant {
                participant: 42,
                change: ParticipantChange::RotateKey(federated.public_bytes()),
                nonce: [0x11; 16],
            }),
        ),
        (
            "register",
            PUBLISHER_SEED,
            Body::Register(Register {
                pattern: UrlPattern::prefix("https://news.example/").unwrap(),
                articles: 12_000,
                words: 850,
                tier: Tier::Premium,
                uniqueness_bps: 8000,
                partners: List::new(vec![Partner { participant: 7, share_bps: 2500 }]).unwrap(),
                nonce: [0x12; 16],
            }),
        ),
        (
            "reserve",
            PUBLISHER_SEED,
            Body::Reserve(Reserve {
                pattern: UrlPattern::exact("https://news.example/private").unwrap(),
                usage: Usage::AiAll,
                reserved: true,
                nonce: [0x13; 16],
            }),
        ),
        ("contract", COLLECTIVE_SEED, Body::Contract(terms.clone())),
        ("accept", LAB_SEED, Body::Accept(Accept { contract_id: terms.id() })),
        (
            "deposit",
            COLLECTIVE_SEED,
            Body::Deposit(Deposit { participant: 42, amount: 250_000_000, reference: text("wire 2026-0117") }),
        ),
        (
            "close-period",
            COLLECTIVE_SEED,
            Body::ClosePeriod(ClosePeriod { period: 0, cutoff_ms: TIME_MS + 31 * 86_400_000, payout_min: 10_000_000 }),
        ),
        (
            "payout-result",
            COLLECTIVE_SEED,
            Body::PayoutResult(PayoutResult {
                period: 0,
                participant: 9,
                outcome: PayoutOutcome::Confirmed { reference: text("ach 88121") },
            }),
        ),
        (
            "dispute",
            LAB_SEED,
            Body::Dispute(Dispute { receipt_seq: 1, reason: text("fetch failed with 404"), nonce: [0x14; 16] }),
        ),
        (
            "resolve",
            COLLECTIVE_SEED,
            Body::Resolve(Resolve {
                receipt_seq: 1,
                resolution: Resolution::Reverse,
                note: text("publisher logs confirm 404"),
                nonce: [0x15; 16],
            }),
        ),
        ("claim", PUBLISHER_SEED, Body::Claim(Claim { url: text("https://news.example/2025/12/late-registration") })),
        (
            "remit",
            FEDERATED_SEED,
            Body::Remit(Remit {
                reference: text("nordic 2026-01"),
                lines: List::new(vec![RemitLine { participant: 9, amount: 1_250_000 }]).unwrap(),
            }),
        ),
    ];
    bodies
        .into_iter()
        .map(|(name, seed, body)| {
            let fields = match &body {
                Body::Admit(b) => serde_json::to_value(b),
                Body::UpdateParticipant(b) => serde_json::to_value(b),
                Body::Register(b) => serde_json::to_value(b),
                Body::Reserve(b) => serde_json::to_value(b),
                Body::Contract(b) => serde_json::to_value(b).map(|mut v| {
                    v["contract_id"] = json!(hex::encode(b.id()));
                    v
                }),
                Body::Accept(b) => serde_json::to_value(b),
                Body::Deposit(b) => serde_json::to_value(b),
                Body::ClosePeriod(b) => serde_json::to_value(b),
                Body::PayoutResult(b) => serde_json::to_value(b),
                Body::Dispute(b) => serde_json::to_value(b),
                Body::Resolve(b) => serde_json::to_value(b),
                Body::Claim(b) => serde_json::to_value(b),
                Body::Remit(b) => serde_json::to_value(b),
                Body::Genesis(_) | Body::Receipt(_) => unreachable!("settlement kinds only"),
            }
            .unwrap();
            (name, seed, Entry::sign(&SigningKey::from_seed(&seed), body).unwrap(), fields)
        })
        .collect()
}

fn entries() -> Vec<(&'static str, [u8; 32], Entry, Value)> {
    let collective = SigningKey::from_seed(&COLLECTIVE_SEED);
    let lab = SigningKey::from_seed(&LAB_SEED);
    let publisher = SigningKey::from_seed(&PUBLISHER_SEED);
    let genesis = Genesis {
        origin: Text::new("tally.example/collective").unwrap(),
        collective_name: Text::new("Example Collective").unwrap(),
        collective_key: collective.public_bytes(),
        asset_code: Text::new("USD").unwrap(),
        asset_scale: 6,
        created_ms: TIME_MS,
    };
    let core = ReceiptCore {
        lab_id: 42,
        contract_id: [0xab; 32],
        url: Text::new("https://news.example/2026/01/article-1").unwrap(),
        content_sha256: [0xcd; 32],
        response_bytes: 48_213,
        fetch_time_ms: TIME_MS + 1_000,
        usage: Usage::AiTrain,
        nonce: [0x5a; 16],
    };
    let mut delivered = core.clone();
    delivered.url = Text::new("https://news.example/2026/01/article-2").unwrap();
    delivered.usage = Usage::AiInput;
    delivered.nonce = [0x5b; 16];
    let delivery = sign_delivery(&publisher, &delivered);
    let fields_genesis = json!({
        "origin": "tally.example/collective", "collective_name": "Example Collective",
        "collective_key": hex::encode(collective.public_bytes()), "asset_code": "USD",
        "asset_scale": 6, "created_ms": TIME_MS,
    });
    let receipt_fields = |c: &ReceiptCore| {
        json!({
            "lab_id": c.lab_id, "contract_id": hex::encode(c.contract_id), "url": c.url.as_str(),
            "content_sha256": hex::encode(c.content_sha256), "response_bytes": c.response_bytes,
            "fetch_time_ms": c.fetch_time_ms, "usage": c.usage.as_str(), "nonce": hex::encode(c.nonce),
        })
    };
    let mut fields_delivered = receipt_fields(&delivered);
    fields_delivered["delivery"] = json!({
        "publisher_key": hex::encode(delivery.publisher_key), "signature": hex::encode(delivery.signature),
    });
    let mut out = vec![
        ("genesis", COLLECTIVE_SEED, Entry::sign(&collective, Body::Genesis(genesis)).unwrap(), fields_genesis),
        (
            "receipt",
            LAB_SEED,
            Entry::sign(&lab, Body::Receipt(Receipt { core: core.clone(), delivery: None })).unwrap(),
            receipt_fields(&core),
        ),
        (
            "receipt-with-delivery",
            LAB_SEED,
            Entry::sign(&lab, Body::Receipt(Receipt { core: delivered, delivery: Some(delivery) })).unwrap(),
            fields_delivered,
        ),
    ];
    out.extend(settlement_entries());
    out
}

/// Byte strings every decoder must refuse, each made from a valid entry by one change.
fn negatives(genesis: &[u8], receipt: &[u8], contract: &[u8]) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let header = tally_core::entry::ENTRY_HEADER_BYTES;
    let url_len_at = header + 8 + 32; // lab_id, contract_id
    let mut out = Vec::new();
    let mut v = receipt.to_vec();
    v.push(0);
    out.push(("trailing byte", v, "trailing-bytes"));
    out.push(("truncated", receipt[..receipt.len() - 1].to_vec(), "malformed-encoding"));
    let mut v = receipt.to_vec();
    v[0] = 0x63;
    out.push(("unknown kind 0x63", v, "unknown-kind"));
    let mut v = receipt.to_vec();
    v[url_len_at..url_len_at + 2].copy_from_slice(&3000u16.to_le_bytes());
    out.push(("url length over 2048", v, "malformed-encoding"));
    let mut v = receipt.to_vec();
    v[url_len_at + 2 + 10] = 0xff;
    out.push(("url not UTF-8", v, "malformed-encoding"));
    let mut v = receipt.to_vec();
    v[url_len_at + 2 + 4] = b'S'; // "httpS://..."
    out.push(("url not canonical (upper-case scheme)", v, "invalid-field"));
    let mut v = receipt.to_vec();
    let last = v.len() - 1;
    v[last] = 2;
    out.push(("option tag 2", v, "malformed-encoding"));
    let mut v = receipt.to_vec();
    v[last - 17] = 2; // usage byte before the 16-byte nonce and the option tag
    out.push(("usage is a category (ai-all)", v, "invalid-field"));
    let mut v = receipt.to_vec();
    v[last - 17] = 9;
    out.push(("usage code unknown", v, "malformed-encoding"));
    let mut v = genesis.to_vec();
    let scale_at = v.len() - 9; // asset_scale, then created_ms
    v[scale_at] = 19;
    out.push(("asset scale 19", v, "invalid-field"));
    let mut v = genesis.to_vec();
    v[1] ^= 0x01; // author differs from collective_key
    out.push(("genesis author is not the collective key", v, "invalid-field"));
    // Contract terms: name (2 + 31), then the scope list's u16 count.
    let scope_at = header + 8 + 2 + "Example Labs 2026 transactional".len();
    let mut v = contract.to_vec();
    v[scope_at..scope_at + 2].copy_from_slice(&u16::MAX.to_le_bytes());
    out.push(("list count over its bound (scope of 65535 uses)", v, "malformed-encoding"));
    let mut v = contract.to_vec();
    v[scope_at + 2] = 4; // scope [ai-input, ai-input]: not increasing
    out.push(("scope not in increasing order", v, "invalid-field"));
    let rate_at = scope_at + 2 + 2 + 8 + 8 + 4; // count, two uses, start, end, licence tag (u32)
    let basis_at = rate_at;
    let mut v = contract.to_vec();
    v[basis_at] = 3;
    out.push(("charge basis code unknown", v, "malformed-encoding"));
    let mut v = contract.to_vec();
    // rate.per_article = 0.002 is mantissa 2, scale 3; 20 at scale 4 is the same value
    // written with a trailing zero.
    v[basis_at + 1] = 20;
    v[basis_at + 1 + 8] = 4;
    out.push(("decimal with a trailing zero (0.0020)", v, "malformed-encoding"));
    out
}

fn build() -> Value {
    let mut tree = MemoryTree::new();
    let mut list = Vec::new();
    let built = entries();
    for (seq, (name, seed, e, fields)) in built.iter().enumerate() {
        let leaf = LeafRecord::for_entry(e, seq as u64, TIME_MS + 5_000 + seq as u64);
        tree.push(leaf.leaf_hash());
        let mut message = e.kind().domain().to_vec();
        message.extend_from_slice(e.body_bytes());
        list.push(json!({
            "name": name,
            "kind": e.kind().code(),
            "author_seed": hex::encode(seed),
            "author": hex::encode(e.author()),
            "fields": fields,
            "body": hex::encode(e.body_bytes()),
            "signing_message": hex::encode(&message),
            "signature": hex::encode(e.signature()),
            "entry": hex::encode(e.as_bytes()),
            "receipt_id": e.receipt_id().map(hex::encode),
            "dedup_id": hex::encode(e.dedup_id()),
            "leaf": {
                "seq": leaf.seq, "time_ms": leaf.time_ms,
                "author_key_id": hex::encode(leaf.author_key_id),
                "commitment": hex::encode(leaf.commitment),
                "record": hex::encode(leaf.encode()),
                "leaf_hash": hex::encode(leaf.leaf_hash()),
            },
        }));
    }
    let collective = SigningKey::from_seed(&COLLECTIVE_SEED);
    let cp = Checkpoint {
        origin: "tally.example/collective".into(),
        size: tree.size(),
        root: tree.root(),
        extensions: vec![],
    };
    let neg: Vec<Value> = negatives(built[0].2.as_bytes(), built[1].2.as_bytes(), built[7].2.as_bytes())
        .into_iter()
        .map(|(why, bytes, code)| json!({ "why": why, "entry": hex::encode(bytes), "error_code": code }))
        .collect();
    json!({
        "about": "Tally entry vectors (specs/encoding.md). Keys are RFC 8032 seeds. Signatures are deterministic Ed25519.",
        "keys": {
            "collective_seed": hex::encode(COLLECTIVE_SEED), "collective_public": hex::encode(collective.public_bytes()),
            "lab_seed": hex::encode(LAB_SEED), "lab_public": hex::encode(SigningKey::from_seed(&LAB_SEED).public_bytes()),
            "publisher_seed": hex::encode(PUBLISHER_SEED), "publisher_public": hex::encode(SigningKey::from_seed(&PUBLISHER_SEED).public_bytes()),
            "federated_seed": hex::encode(FEDERATED_SEED), "federated_public": hex::encode(SigningKey::from_seed(&FEDERATED_SEED).public_bytes()),
        },
        "entries": list,
        "tree": { "size": tree.size(), "root": hex::encode(tree.root()) },
        "checkpoint_note": cp.sign("tally.example/collective", &collective),
        "must_reject": neg,
    })
}

#[test]
fn spec_vectors_match_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/vectors/entries.json");
    let built = build();
    if std::env::var_os("TALLY_WRITE_VECTORS").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&built).unwrap() + "\n").unwrap();
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(stored, built, "specs/vectors/entries.json no longer matches the encoder");
    // Decoders accept every positive vector as-is and refuse every negative one.
    for e in stored["entries"].as_array().unwrap() {
        let bytes = hex::decode(e["entry"].as_str().unwrap()).unwrap();
        let entry = Entry::decode(&bytes).unwrap();
        assert_eq!(entry.as_bytes(), &bytes[..]);
        entry.verify().unwrap();
    }
    for n in stored["must_reject"].as_array().unwrap() {
        let bytes = hex::decode(n["entry"].as_str().unwrap()).unwrap();
        let err = Entry::decode(&bytes).expect_err(n["why"].as_str().unwrap());
        assert_eq!(err.code(), n["error_code"].as_str().unwrap(), "{}: {err}", n["why"]);
    }
    let key = SigningKey::from_seed(&COLLECTIVE_SEED).public_key();
    let cp = open_checkpoint(stored["checkpoint_note"].as_str().unwrap(), "tally.example/collective", &key).unwrap();
    assert_eq!(hex::encode(cp.root), stored["tree"]["root"].as_str().unwrap());
}
