//! The HTTP abuse suite: hostile and broken submissions against a running node. Request-
//! level faults get a 4xx problem+json with a specific code; faults of single entries in a
//! batch get that entry's specific code in the batch answer (the batch semantics of
//! `specs/api.md`); a replay gets the original's answer. None gets a 5xx, and none changes
//! the ledger: its size and signed state root are the same before and after.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tally_core::codec::{List, Text};
use tally_core::entry::{Body, Entry, EntryKind, Receipt, ReceiptCore, Usage};
use tally_core::kinds::{
    Accept, ClosePeriod, ContractTerms, Deposit, ParticipantChange, Register, Reserve, Tier, UpdateParticipant,
    UrlPattern,
};
use tally_core::sig::SigningKey;
use tally_tests::*;

use crate::node::{TestNode, standard, start_with};

const PROBLEM: &str = "application/problem+json";

fn signed_receipt(key: &SigningKey, lab_id: u64, tweak: impl FnOnce(&mut ReceiptCore)) -> Entry {
    let mut core = ReceiptCore {
        lab_id,
        contract_id: contract_id(lab_id),
        url: Text::new("https://news.example/articles/1").unwrap(),
        content_sha256: [0x22; 32],
        response_bytes: 20_000,
        fetch_time_ms: FETCH_TIME_BASE_MS,
        usage: Usage::AiTrain,
        nonce: rand::random(),
    };
    tweak(&mut core);
    Entry::sign(key, Body::Receipt(Receipt { core, delivery: None })).unwrap()
}

/// An entry signed over whatever body bytes are given, bypassing the field rules that
/// `Entry::sign` applies: what a hostile or buggy client could send.
fn forge(key: &SigningKey, kind: EntryKind, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![kind.code()];
    bytes.extend_from_slice(&key.public_bytes());
    bytes.extend_from_slice(&key.sign(&[kind.domain(), body]));
    bytes.extend_from_slice(body);
    bytes
}

fn json_body(entries: &[Vec<u8>]) -> Vec<u8> {
    json!({ "entries": entries.iter().map(|e| B64.encode(e)).collect::<Vec<_>>() }).to_string().into_bytes()
}

/// Submit `entries` and return each one's (status, code).
async fn answers(node: &TestNode, entries: &[Vec<u8>]) -> Vec<(String, String)> {
    let (status, _, v) = node.raw("application/json", json_body(entries)).await;
    assert_eq!(status, 200, "{v}");
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["status"].as_str().unwrap().to_string(), r["code"].as_str().unwrap_or("").to_string()))
        .collect()
}

async fn expect_problem(node: &TestNode, content_type: &str, body: Vec<u8>, status: u16, code: &str) {
    let (s, ct, v) = node.raw(content_type, body).await;
    assert_eq!((s, ct.as_str(), v["code"].as_str().unwrap_or("")), (status, PROBLEM, code), "{v}");
}

/// What must not change: the log's size and the settlement state root.
fn fingerprint(node: &TestNode) -> (u64, [u8; 32]) {
    let ledger = &node.node.state().ledger;
    (ledger.size(), ledger.settlement().unwrap().state_root())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_submissions_get_specific_4xx_and_change_nothing() {
    let node = start_with(None, |c| {
        c.body_bytes_max = Some(64 * 1024);
        c.entries_per_request_max = Some(16);
    })
    .await;
    standard(&node).await;
    // Legitimate set-up the cases below rely on: a third lab whose key is then revoked, a
    // reservation (opt-out) of one path for training, and two receipts to replay.
    let c = collective_key();
    let publisher = participant_key(PUBLISHER_ID);
    let mut prep = lab_setup(3);
    prep.push(
        Entry::sign(
            &c,
            Body::UpdateParticipant(UpdateParticipant {
                participant: 3,
                change: ParticipantChange::RevokeKey,
                nonce: [3; 16],
            }),
        )
        .unwrap(),
    );
    prep.push(
        Entry::sign(
            &publisher,
            Body::Reserve(Reserve {
                pattern: UrlPattern::prefix("https://news.example/private/").unwrap(),
                usage: Usage::AiTrain,
                reserved: true,
                nonce: [4; 16],
            }),
        )
        .unwrap(),
    );
    // Lab 4 is licensed for search only.
    let search_only = ContractTerms { scope: List::new(vec![Usage::Search]).unwrap(), ..standard_terms(4) };
    let search_only_id = search_only.id();
    for e in lab_setup(4) {
        match e.body() {
            Body::Contract(_) => prep.push(Entry::sign(&c, Body::Contract(search_only.clone())).unwrap()),
            Body::Accept(_) => {
                prep.push(Entry::sign(&lab_key(4), Body::Accept(Accept { contract_id: search_only_id })).unwrap())
            }
            _ => prep.push(e),
        }
    }
    // Period 0 closes before the fixtures' fetch times: earlier fetches are now late.
    let close = ClosePeriod { period: 0, cutoff_ms: FETCH_TIME_BASE_MS - 1_000, payout_min: 1_000_000_000_000_000_000 };
    prep.push(Entry::sign(&c, Body::ClosePeriod(close)).unwrap());
    let good: Vec<Entry> = (0..3).map(|i| receipt(&lab_key(1), 1, 500 + i, [i as u8; 16])).collect();
    prep.extend(good.iter().cloned());
    let results = node.submit_ok(&prep).await;
    assert!(results.iter().all(|r| r["status"] == "appended"), "{results:?}");
    let seqs: Vec<u64> = results[results.len() - 3..].iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    let before = fingerprint(&node);

    // Request level: broken framing, wrong types, oversize, nesting.
    let stranger = |n: u64| signed_receipt(&lab_key(9), 9, |r| r.nonce = [n as u8; 16]).as_bytes().to_vec();
    let json = json_body(&[stranger(1), stranger(2)]);
    for cut in (1..json.len()).step_by(7) {
        expect_problem(&node, "application/json", json[..cut].to_vec(), 400, "malformed-json").await;
    }
    let binary = tally_core::submission::binary_body(&[Entry::decode(&stranger(1)).unwrap()]);
    for cut in 1..binary.len() {
        expect_problem(&node, "application/vnd.tally.entries", binary[..cut].to_vec(), 400, "malformed-body").await;
    }
    for ct in ["text/plain", "application/xml", "", "multipart/form-data; boundary=x", "application/jsonx"] {
        expect_problem(&node, ct, json.clone(), 415, "unsupported-media-type").await;
    }
    expect_problem(&node, "application/json", vec![b'['; 65 * 1024], 413, "body-too-large").await;
    let seventeen: Vec<Vec<u8>> = (0..17).map(stranger).collect();
    expect_problem(&node, "application/json", json_body(&seventeen), 413, "too-many-entries").await;
    let deep = format!("{{\"entries\": {}{}}}", "[".repeat(20_000), "]".repeat(20_000));
    expect_problem(&node, "application/json", deep.into_bytes(), 400, "malformed-json").await;
    expect_problem(&node, "application/json", vec![b'['; 30_000], 400, "malformed-json").await;
    for odd in [&b"{\"entries\": 1e999999}"[..], b"{\"entries\": [\"\\ud800\"]}", b"\xff\xfe", b"null", b"{}"] {
        expect_problem(&node, "application/json", odd.to_vec(), 400, "malformed-json").await;
    }
    expect_problem(&node, "application/vnd.tally.entries", vec![0xff; 8], 400, "malformed-body").await;

    // Every Ed25519 edge case of the shared vectors, as the author key and signature of a
    // receipt: none verifies (the message is a receipt, not the vector's), so each entry
    // is invalid with a named reason.
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(crate::vectors::shared().join("ed25519/cases.json")).unwrap())
            .unwrap();
    let mut edge = Vec::new();
    for case in &cases {
        let mut bytes = good[0].as_bytes().to_vec();
        bytes[1..33].copy_from_slice(&hex::decode(case["pub_key"].as_str().unwrap()).unwrap());
        bytes[33..97].copy_from_slice(&hex::decode(case["signature"].as_str().unwrap()).unwrap());
        edge.push(bytes);
    }
    for (status, code) in answers(&node, &edge).await {
        assert_eq!(status, "invalid");
        assert!(["bad-author-key", "bad-signature"].contains(&code.as_str()), "{code}");
    }

    // Single entries that decode and verify but are not acceptable.
    let per_entry: Vec<(Entry, &str, &str)> = vec![
        (signed_receipt(&lab_key(9), 9, |_| {}), "rejected", "unknown-author"),
        (signed_receipt(&lab_key(3), 3, |_| {}), "rejected", "unknown-author"),
        (signed_receipt(&publisher, 1, |_| {}), "rejected", "wrong-role"),
        (signed_receipt(&lab_key(4), 4, |r| r.contract_id = search_only_id), "rejected", "usage-out-of-scope"),
        (
            signed_receipt(&lab_key(1), 1, |r| r.url = Text::new("https://news.example/private/a").unwrap()),
            "rejected",
            "usage-reserved",
        ),
        (signed_receipt(&lab_key(1), 1, |r| r.fetch_time_ms = 4_000_000_000_000), "rejected", "fetch-in-future"),
        (signed_receipt(&lab_key(1), 1, |r| r.fetch_time_ms = 1_600_000_000_000), "rejected", "before-open-period"),
        (signed_receipt(&lab_key(1), 2, |_| {}), "rejected", "lab-mismatch"),
    ];
    let mut bytes: Vec<Vec<u8>> = per_entry.iter().map(|(e, _, _)| e.as_bytes().to_vec()).collect();
    let mut want: Vec<(String, String)> = per_entry.iter().map(|(_, s, c)| (s.to_string(), c.to_string())).collect();
    // Out-of-range numbers that no honest signer would produce: validly signed, refused on
    // decoding.
    let deposit = Deposit { participant: 1, amount: u64::MAX, reference: Text::new("x").unwrap() };
    bytes.push(forge(&c, EntryKind::Deposit, &tally_core::codec::encode(&deposit)));
    let register = Register {
        pattern: UrlPattern::prefix("https://news.example/big/").unwrap(),
        articles: 1,
        words: u32::MAX,
        tier: Tier::Standard,
        uniqueness_bps: 0,
        partners: Default::default(),
        nonce: [5; 16],
    };
    bytes.push(forge(&publisher, EntryKind::Register, &tally_core::codec::encode(&register)));
    want.extend(std::iter::repeat_n(("invalid".to_string(), "invalid-field".to_string()), 2));
    assert_eq!(answers(&node, &bytes).await, want);

    // Replayed and reordered receipts: each answered with its original position.
    let replay: Vec<Vec<u8>> = good.iter().rev().map(|e| e.as_bytes().to_vec()).collect();
    let (_, _, v) = node.raw("application/json", json_body(&replay)).await;
    let replayed: Vec<(String, u64)> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["status"].as_str().unwrap().to_string(), r["seq"].as_u64().unwrap()))
        .collect();
    let want: Vec<(String, u64)> = seqs.iter().rev().map(|s| ("duplicate".to_string(), *s)).collect();
    assert_eq!(replayed, want);

    assert_eq!(fingerprint(&node), before, "no hostile input changed the ledger");
    node.node.shutdown().await;
}

/// Slow senders and idle connections: each must send a complete request head within the
/// header timeout (also between requests), and at most `connections_max` are open; one
/// more is closed at once. Once the slow ones are cut off, others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_cut_off_and_do_not_starve_others() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let node = start_with(None, |c| {
        c.connections_max = Some(32);
        c.header_read_timeout_ms = Some(400);
    })
    .await;
    standard(&node).await;
    // The client's keep-alive connection from the set-up is idle: the server closes it.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let addr = node.node.addr;
    // A keep-alive connection that goes idle after a request is closed too.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = [0u8; 512];
    assert!(kept.read(&mut answer).await.unwrap() > 0);
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match kept.read(&mut answer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    });
    closed.await.expect("an idle keep-alive connection is closed by the server");
    let started = std::time::Instant::now();
    let mut held = Vec::new();
    for n in 0..32 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if n % 2 == 1 {
            s.write_all(b"POST /v1/entries HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        }
        held.push(tokio::spawn(async move {
            // Idle ones send nothing; slow ones a header byte every 100 ms. Either way the
            // server must close the connection.
            let mut buf = [0u8; 256];
            loop {
                if n % 2 == 1 && s.write_all(b"X").await.is_err() {
                    return;
                }
                match tokio::time::timeout(std::time::Duration::from_millis(100), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    _ => {}
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // Every slot is taken: one more connection is closed without an answer.
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), extra.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a connection over the limit is closed: {read:?}");
    for h in held {
        tokio::time::timeout(std::time::Duration::from_secs(10), h)
            .await
            .expect("every slow or idle connection is closed by the server")
            .unwrap();
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // And with the slow ones gone, others are served.
    assert_eq!(node.get_status("/healthz").await, 200);
    let metrics = reqwest::get(format!("{}/metrics", node.base)).await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("tally_connections_refused_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    node.node.shutdown().await;
}

/// A connection that was accepted but has sent nothing yet used to hold up shutdown until
/// its header timeout ran out (10 s by default; the node bench saw 10-11 s shutdowns): its
/// task held a graceful-shutdown watcher, and the router and so the ledger. Now it is
/// closed when the server stops. With a two-minute header timeout here, shutdown must be
/// over well within 30 s, and leave the ledger closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_does_not_hold_up_shutdown() {
    let node = start_with(None, |c| c.header_read_timeout_ms = Some(120_000)).await;
    standard(&node).await;
    let silent = tokio::net::TcpStream::connect(node.node.addr).await.unwrap();
    // Let the server accept it and start waiting for its first byte.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let data = node.node.state().config.data.clone();
    tokio::time::timeout(std::time::Duration::from_secs(30), node.node.shutdown())
        .await
        .expect("shutdown does not wait for a connection that never sent a byte");
    let reopened = tally_ledger::Ledger::open(&data, tally_ledger::LedgerConfig::new(None));
    assert!(reopened.is_ok(), "the ledger was closed by shutdown: {:?}", reopened.err());
    drop(silent);
}
