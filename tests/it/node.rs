//! The node over real HTTP on 127.0.0.1: submission (JSON and binary), idempotent retries,
//! every request-level error and every settlement rejection of the worked examples, the
//! role matrix over every private endpoint, request-signature rules, the tlog-tiles read
//! API checked like an outside client would, the audit export, and operations endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tally_core::checkpoint::open_checkpoint;
use tally_core::entry::{Entry, LeafRecord};
use tally_core::httpsig::{self, ParamValue, SignatureInput};
use tally_core::kinds::{Admit, Role};
use tally_core::merkle::{self, NodeReader};
use tally_core::sig::SigningKey;
use tally_core::tile::{TileNodes, TilePath, parse_entry_bundle, tile_width};
use tally_node::{FileConfig, Node};
use tally_settlement::{Engine, MemoryStore};
use tally_tests::*;

pub(crate) struct TestNode {
    pub(crate) node: Node,
    http: reqwest::Client,
    pub(crate) base: String,
    _dir: tempfile::TempDir,
}

pub(crate) async fn start_with(clock: Option<Arc<AtomicU64>>, tweak: impl FnOnce(&mut FileConfig)) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("collective.key");
    std::fs::write(&key_file, hex::encode(collective_key().seed())).unwrap();
    let mut file = FileConfig {
        data: Some(dir.path().join("data")),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        key_file: Some(key_file),
        checkpoint_interval_ms: Some(0),
        ..FileConfig::default()
    };
    tweak(&mut file);
    let config = file.resolve().unwrap();
    let clock = clock.map(|c| -> tally_ledger::Clock { Arc::new(move || c.load(Ordering::SeqCst)) });
    let node = Node::start_with_clock(config, clock).await.unwrap();
    let base = format!("http://{}", node.addr);
    TestNode { node, http: reqwest::Client::new(), base, _dir: dir }
}

pub(crate) async fn start() -> TestNode {
    start_with(None, |_| {}).await
}

impl TestNode {
    async fn submit(&self, entries: &[Entry]) -> (u16, Value) {
        let body = json!({ "entries": entries.iter().map(|e| B64.encode(e.as_bytes())).collect::<Vec<_>>() });
        let r = self.http.post(format!("{}/v1/entries", self.base)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    pub(crate) async fn submit_ok(&self, entries: &[Entry]) -> Vec<Value> {
        let (status, v) = self.submit(entries).await;
        assert_eq!(status, 200, "{v}");
        v["results"].as_array().unwrap().clone()
    }

    pub(crate) async fn raw(&self, content_type: &str, body: Vec<u8>) -> (u16, String, Value) {
        let r = self
            .http
            .post(format!("{}/v1/entries", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        (status, ct, r.json().await.unwrap_or(Value::Null))
    }

    /// A GET signed by `key` under RFC 9421, with a fresh nonce.
    async fn get_signed(&self, key: &SigningKey, path_and_query: &str) -> (u16, Value) {
        let r = self.signed_request(key, path_and_query, |_| {}).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    fn signed_request(
        &self,
        key: &SigningKey,
        path_and_query: &str,
        tweak: impl FnOnce(&mut SignatureInput),
    ) -> reqwest::RequestBuilder {
        let (input, signature) = sign_get(key, &self.node.addr.to_string(), path_and_query, tweak);
        self.http
            .get(format!("{}{path_and_query}", self.base))
            .header("signature-input", input)
            .header("signature", signature)
    }

    /// The checkpoint, once it covers the whole log (it is signed just after a group is
    /// answered, so a client may briefly see the previous one).
    pub(crate) async fn checkpoint_at_size(&self) -> String {
        let size = self.node.state().ledger.size();
        for _ in 0..200 {
            let note = self.get("/checkpoint").await.text().await.unwrap();
            if note.lines().nth(1) == Some(size.to_string().as_str()) {
                return note;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no checkpoint at size {size}");
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.base)).send().await.unwrap()
    }

    pub(crate) async fn get_status(&self, path: &str) -> u16 {
        self.get(path).await.status().as_u16()
    }
}

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Sign a GET the way a client does (`specs/api.md`, "Authentication"), after `tweak`.
fn sign_get(
    key: &SigningKey,
    authority: &str,
    path_and_query: &str,
    tweak: impl FnOnce(&mut SignatureInput),
) -> (String, String) {
    let parts = httpsig::get_parts(&format!("http://{authority}{path_and_query}")).unwrap();
    let mut input = tally_node::auth::signature_input(key, 60);
    tweak(&mut input);
    httpsig::sign(&parts, &input, key).unwrap()
}

/// The base64 hashes of a proof answer.
fn proof_hashes(v: &Value) -> Vec<[u8; 32]> {
    v["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| B64.decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect()
}

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or("<none>")
}

/// Participants of the standard set-up plus an auditor, a witness and a stranger.
pub(crate) const AUDITOR: u64 = 2000;
const WITNESS: u64 = 2001;

fn admit(id: u64, role: Role) -> Entry {
    Entry::sign(
        &collective_key(),
        tally_core::entry::Body::Admit(Admit {
            participant: id,
            role,
            key: participant_key(id).public_bytes(),
            name: tally_core::codec::Text::new(format!("participant {id}")).unwrap(),
        }),
    )
    .unwrap()
}

pub(crate) async fn standard(node: &TestNode) {
    let mut entries = setup(2);
    entries.push(admit(AUDITOR, Role::Auditor));
    entries.push(admit(WITNESS, Role::Witness));
    let results = node.submit_ok(&entries).await;
    assert!(results.iter().all(|r| r["status"] == "appended"), "{results:?}");
}

/// Receipts settle as they land, over JSON and binary bodies; a retry is answered with the
/// original position and charge and is not charged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_settles_and_retries_are_idempotent() {
    let node = start().await;
    standard(&node).await;
    let r1 = receipt(&lab_key(1), 1, 42, [42; 16]);
    let first = node.submit_ok(std::slice::from_ref(&r1)).await;
    let a = &first[0];
    assert_eq!(a["status"], "appended");
    assert_eq!(a["kind"], "receipt");
    assert_eq!(a["charge"]["amount"], "0.002000");
    assert_eq!(a["charge"]["fee"], "0.000300");
    assert_eq!(a["charge"]["contract"], hex::encode(contract_id(1)));
    let postings: BTreeMap<String, String> = a["postings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["account"].as_str().unwrap().to_string(), p["amount"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        postings,
        BTreeMap::from([
            ("escrow:1".to_string(), "-0.002000".to_string()),
            ("fee".to_string(), "0.000300".to_string()),
            (format!("payable:{PUBLISHER_ID}"), "0.001700".to_string()),
        ])
    );
    // The same receipt again, in a binary body with a new one: original answer, no charge.
    let r2 = receipt(&lab_key(1), 1, 43, [43; 16]);
    let mut body = Vec::new();
    for e in [&r1, &r2] {
        body.extend_from_slice(&(e.as_bytes().len() as u32).to_le_bytes());
        body.extend_from_slice(e.as_bytes());
    }
    let (status, _, v) = node.raw("application/vnd.tally.entries", body).await;
    assert_eq!(status, 200, "{v}");
    let again = &v["results"][0];
    assert_eq!(again["status"], "duplicate");
    assert_eq!(again["seq"], a["seq"]);
    assert_eq!(again["leaf_hash"], a["leaf_hash"]);
    assert_eq!(again["charge"], a["charge"]);
    assert_eq!(v["results"][1]["status"], "appended");
    let (status, balances) = node.get_signed(&lab_key(1), "/v1/parties/1/balances").await;
    assert_eq!(status, 200, "{balances}");
    let escrow = balances["accounts"].as_array().unwrap().iter().find(|a| a["account"] == "escrow:1").unwrap();
    assert_eq!(escrow["balance"], "999999.996000", "two receipts charged, not three");
    node.node.shutdown().await;
}

/// `Prefer: return=minimal` (RFC 7240): each logged entry is answered with its position
/// only, a duplicate with its original position, and the preference is confirmed; the
/// entries settle exactly as with the full answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_answers_when_the_client_prefers_them() {
    let node = start().await;
    standard(&node).await;
    let r1 = receipt(&lab_key(1), 1, 42, [42; 16]);
    let full = node.submit_ok(std::slice::from_ref(&r1)).await;
    let r2 = receipt(&lab_key(1), 1, 43, [43; 16]);
    let unknown = receipt(&lab_key(9), 9, 44, [44; 16]);
    let r = node
        .http
        .post(format!("{}/v1/entries", node.base))
        .header("content-type", "application/vnd.tally.entries")
        .header("prefer", "return=minimal")
        .body(tally_core::submission::binary_body(&[r1, r2, unknown]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["preference-applied"], "return=minimal");
    let v: Value = r.json().await.unwrap();
    let results = v["results"].as_array().unwrap();
    let keys = |r: &Value| r.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    let position = ["index", "leaf_hash", "seq", "status", "time_ms"].map(String::from);
    assert_eq!(keys(&results[0]), position);
    assert_eq!(results[0]["status"], "duplicate");
    for field in ["seq", "leaf_hash", "time_ms"] {
        assert_eq!(results[0][field], full[0][field], "the original {field}");
    }
    assert_eq!(keys(&results[1]), position);
    assert_eq!(results[1]["status"], "appended");
    assert_eq!(results[1]["seq"], full[0]["seq"].as_u64().unwrap() + 1);
    assert_eq!(results[2]["status"], "rejected");
    assert_eq!(results[2]["code"], "unknown-author");
    // Charged exactly as a full answer would have been: two receipts.
    let (status, balances) = node.get_signed(&lab_key(1), "/v1/parties/1/balances").await;
    assert_eq!(status, 200, "{balances}");
    let escrow = balances["accounts"].as_array().unwrap().iter().find(|a| a["account"] == "escrow:1").unwrap();
    assert_eq!(escrow["balance"], "999999.996000");
    // Without the preference, the same duplicate gets the full original answer again.
    let again = node.submit_ok(&[receipt(&lab_key(1), 1, 43, [43; 16])]).await;
    assert_eq!(again[0]["status"], "duplicate");
    assert_eq!(again[0]["charge"]["amount"], "0.002000");
    node.node.shutdown().await;
}

/// Request-level errors are problem documents with specific codes; bad entries inside a
/// batch are answered per entry and never reach the sequencer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_specific_problems() {
    let node = start_with(None, |c| {
        c.body_bytes_max = Some(64 * 1024);
        c.entries_per_request_max = Some(70);
    })
    .await;
    standard(&node).await;
    let size = node.node.state().ledger.size();
    let problem = "application/problem+json";
    let (s, ct, v) = node.raw("text/plain", b"hello".to_vec()).await;
    assert_eq!((s, ct.as_str(), code(&v)), (415, problem, "unsupported-media-type"));
    let (s, ct, v) = node.raw("application/json", b"{\"entries\": [1,".to_vec()).await;
    assert_eq!((s, ct.as_str(), code(&v)), (400, problem, "malformed-json"));
    let (s, _, v) = node.raw("application/json", b"{\"entries\": [], \"extra\": 1}".to_vec()).await;
    assert_eq!((s, code(&v)), (400, "malformed-json"));
    let (s, _, v) = node.raw("application/json", b"{\"entries\": []}".to_vec()).await;
    assert_eq!((s, code(&v)), (400, "empty-batch"));
    let many = json!({ "entries": vec!["AA=="; 71] }).to_string().into_bytes();
    let (s, _, v) = node.raw("application/json", many).await;
    assert_eq!((s, code(&v)), (413, "too-many-entries"));
    let (s, _, v) = node.raw("application/json", vec![b' '; 65 * 1024]).await;
    assert_eq!((s, code(&v)), (413, "body-too-large"));
    let (s, _, v) = node.raw("application/vnd.tally.entries", vec![10, 0, 0, 0, 1, 2]).await;
    assert_eq!((s, code(&v)), (400, "malformed-body"));
    let (s, _, v) = node.raw("application/vnd.tally.entries", vec![1, 0]).await;
    assert_eq!((s, code(&v)), (400, "malformed-body"));
    // Per-entry answers: each bad entry named, the good one appended.
    let good = receipt(&lab_key(1), 1, 7, [7; 16]);
    let mut trailing = good.as_bytes().to_vec();
    trailing.push(0);
    let mut bad_sig = receipt(&lab_key(1), 1, 8, [8; 16]).as_bytes().to_vec();
    bad_sig[40] ^= 1;
    let stranger = receipt(&lab_key(9), 9, 9, [9; 16]);
    let body = json!({ "entries": [
        B64.encode(&trailing), "not base64!", B64.encode(&bad_sig), B64.encode(stranger.as_bytes()),
        B64.encode(good.as_bytes()), B64.encode([0xffu8; 120]),
    ]});
    let (s, _, v) = node.raw("application/json", body.to_string().into_bytes()).await;
    assert_eq!(s, 200, "{v}");
    let got: Vec<(String, String)> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["status"].as_str().unwrap().into(), r["code"].as_str().unwrap_or("").into()))
        .collect();
    let want = [
        ("invalid", "trailing-bytes"),
        ("invalid", "malformed-base64"),
        ("invalid", "bad-signature"),
        ("rejected", "unknown-author"),
        ("appended", ""),
        ("invalid", "unknown-kind"),
    ];
    assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));
    assert_eq!(node.node.state().ledger.size(), size + 1, "only the good entry was logged");
    let statuses = |v: &Value| -> Vec<(u64, String, String)> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let field = |k: &str| r[k].as_str().unwrap_or("").to_string();
                (r["index"].as_u64().unwrap(), field("status"), field("code"))
            })
            .collect()
    };
    // Nothing valid: nothing is queued, and each entry is still answered.
    let body = json!({ "entries": [B64.encode(&bad_sig), "not base64!"] });
    let (s, _, v) = node.raw("application/json", body.to_string().into_bytes()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        statuses(&v),
        [(0, "invalid".into(), "bad-signature".into()), (1, "invalid".into(), "malformed-base64".into())]
    );
    assert_eq!(node.node.state().ledger.size(), size + 1);
    // A large submission is verified in parts, one per pool thread, and queued once they are
    // all done (a small one is queued by the thread that verified it): the answers are in
    // request order either way, bad entries in any part named.
    let mut many: Vec<Vec<u8>> =
        (0..70u64).map(|i| receipt(&lab_key(1), 1, 1000 + i, [i as u8 + 100; 16]).as_bytes().to_vec()).collect();
    for bad in [3, 50] {
        many[bad][40] ^= 1;
    }
    let body = json!({ "entries": many.iter().map(|e| B64.encode(e)).collect::<Vec<_>>() });
    let (s, _, v) = node.raw("application/json", body.to_string().into_bytes()).await;
    assert_eq!(s, 200, "{v}");
    let want: Vec<(u64, String, String)> = (0..70u64)
        .map(|i| match i {
            3 | 50 => (i, "invalid".into(), "bad-signature".into()),
            _ => (i, "appended".into(), String::new()),
        })
        .collect();
    assert_eq!(statuses(&v), want);
    assert_eq!(node.node.state().ledger.size(), size + 69);
    let r = node.get("/no/such/path").await;
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(code(&r.json().await.unwrap()), "not-found");
    node.node.shutdown().await;
}

/// Every entry of every worked example through HTTP, at the example's sequencer times:
/// each is appended, answered as a duplicate, or rejected with exactly the example's code,
/// and the node's signed state root equals the engine's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worked_examples_over_http() {
    let mut codes = std::collections::BTreeSet::new();
    for (name, scenario) in crate::scenarios::all() {
        let run = crate::scenarios::run(&name, &scenario);
        let clock = Arc::new(AtomicU64::new(0));
        let node = start_with(Some(clock.clone()), |_| {}).await;
        for (i, (entry, time, expected)) in run.attempts.iter().enumerate() {
            clock.store(*time, Ordering::SeqCst);
            let results = node.submit_ok(std::slice::from_ref(entry)).await;
            let r = &results[0];
            let got = match r["status"].as_str().unwrap() {
                "appended" => crate::scenarios::Expected::Appended,
                "duplicate" => crate::scenarios::Expected::Duplicate,
                "rejected" => crate::scenarios::Expected::Rejected(code(r).to_string()),
                other => panic!("{name} attempt {i}: {other}: {r}"),
            };
            assert_eq!(&got, expected, "{name} attempt {i}: {r}");
            if let crate::scenarios::Expected::Rejected(c) = expected {
                codes.insert(c.clone());
            }
        }
        let note = node.checkpoint_at_size().await;
        let ledger = &node.node.state().ledger;
        assert_eq!(ledger.size(), run.appended.len() as u64, "{name}");
        assert_eq!(ledger.settlement().unwrap().state_root(), run.engine.state_root(), "{name}: live state");
        assert_eq!(tally_ledger::state_root_of(&note), Some(run.engine.state_root()), "{name}");
        node.node.shutdown().await;
    }
    assert!(codes.len() >= 27, "the examples exercise most rejection codes over HTTP: {codes:?}");
}

/// Nobody reads what is not theirs: every role against every private endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix() {
    let node = start().await;
    standard(&node).await;
    node.submit_ok(&[receipt(&lab_key(1), 1, 1, [1; 16])]).await;
    let stranger = SigningKey::from_seed(&[0x77; 32]);
    let callers: [(&str, SigningKey); 7] = [
        ("collective", collective_key()),
        ("lab1", lab_key(1)),
        ("lab2", lab_key(2)),
        ("publisher", participant_key(PUBLISHER_ID)),
        ("auditor", participant_key(AUDITOR)),
        ("witness", participant_key(WITNESS)),
        ("stranger", stranger),
    ];
    let p = PUBLISHER_ID;
    let c1 = hex::encode(contract_id(1));
    let endpoints: Vec<(String, &[&str])> = vec![
        ("/v1/me".into(), &["collective", "lab1", "lab2", "publisher", "auditor", "witness"]),
        ("/v1/balances".into(), &["collective", "auditor"]),
        ("/v1/parties/1/balances".into(), &["collective", "lab1", "auditor"]),
        ("/v1/parties/1/history".into(), &["collective", "lab1", "auditor"]),
        (format!("/v1/parties/{p}/balances"), &["collective", "publisher", "auditor"]),
        (format!("/v1/parties/{p}/history"), &["collective", "publisher", "auditor"]),
        (format!("/v1/parties/{p}/statement?period=0"), &["collective", "publisher", "auditor"]),
        (format!("/v1/parties/{p}/payouts"), &["collective", "publisher", "auditor"]),
        ("/v1/labs/1/spend".into(), &["collective", "lab1", "auditor"]),
        ("/v1/labs/2/spend".into(), &["collective", "lab2", "auditor"]),
        (
            format!("/v1/quote?lab=1&contract={c1}&url=https://news.example/a&usage=ai-train"),
            &["collective", "lab1", "auditor"],
        ),
        (format!("/v1/access?lab=1&publisher={p}"), &["collective", "lab1", "publisher", "auditor"]),
        (format!("/v1/access?lab=2&publisher={p}"), &["collective", "lab2", "publisher", "auditor"]),
        ("/v1/export?from=0".into(), &["collective", "auditor"]),
    ];
    for (path, allowed) in &endpoints {
        for (name, key) in &callers {
            let (status, v) = node.get_signed(key, path).await;
            let want = if allowed.contains(name) {
                200
            } else if *name == "stranger" {
                401
            } else {
                403
            };
            assert_eq!(status, want, "{name} GET {path}: {v}");
            if want != 200 {
                assert_eq!(code(&v), if want == 401 { "unknown-key" } else { "forbidden" }, "{name} GET {path}");
            }
        }
    }
    // What the publisher's statement shows: the receipt that credited it.
    let (_, st) = node.get_signed(&participant_key(p), &format!("/v1/parties/{p}/statement?period=0")).await;
    assert_eq!(st["lines"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st["lines"][0]["credited"][0]["amount"], "0.001700");
    assert_eq!(st["total"], "0.001700");
    let (_, access) =
        node.get_signed(&participant_key(p), &format!("/v1/access?lab=1&publisher={p}&usage=ai-train")).await;
    assert_eq!(access["allowed"], true, "{access}");
    node.node.shutdown().await;
}

/// Request signatures: missing, replayed, expired, over another path, missing components,
/// a wrong algorithm, a suspended participant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_signature_rules() {
    let node = start().await;
    standard(&node).await;
    let lab = lab_key(1);
    let r = node.get("/v1/me").await;
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(code(&r.json().await.unwrap()), "signature-missing");
    // A captured request cannot be replayed.
    let (input, signature) = sign_get(&lab, &node.node.addr.to_string(), "/v1/me", |_| {});
    let send = || {
        node.http
            .get(format!("{}/v1/me", node.base))
            .header("signature-input", input.clone())
            .header("signature", signature.clone())
            .send()
    };
    assert_eq!(send().await.unwrap().status().as_u16(), 200);
    let replay = send().await.unwrap();
    assert_eq!(replay.status().as_u16(), 401);
    assert_eq!(code(&replay.json().await.unwrap()), "signature-replayed");
    // Signed for another path.
    let (input, signature) = sign_get(&lab, &node.node.addr.to_string(), "/v1/parties/1/balances", |_| {});
    let r =
        node.http.get(format!("{}/v1/me", node.base)).header("signature-input", input).header("signature", signature);
    let r = r.send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(code(&r.json().await.unwrap()), "signature-invalid");
    type Tweak = Box<dyn FnOnce(&mut SignatureInput)>;
    let cases: Vec<(&str, Tweak)> = vec![
        (
            "signature-expired",
            Box::new(|i: &mut SignatureInput| {
                i.params[0].1 = ParamValue::Integer(now_s() - 600);
                i.params[1].1 = ParamValue::Integer(now_s() - 540);
            }),
        ),
        ("signature-expired", Box::new(|i: &mut SignatureInput| i.params[1].1 = ParamValue::Integer(now_s() + 3600))),
        ("signature-components", Box::new(|i: &mut SignatureInput| i.components.retain(|c| c != "@authority"))),
        ("signature-malformed", Box::new(|i: &mut SignatureInput| i.params[4].1 = ParamValue::String("rsa".into()))),
        ("signature-malformed", Box::new(|i: &mut SignatureInput| i.params.remove(2).0.clear())),
    ];
    for (want, tweak) in cases {
        let r = node.signed_request(&lab, "/v1/me", tweak).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
        assert_eq!(code(&r.json().await.unwrap()), want);
    }
    // A suspended participant's reads are refused.
    let suspend = Entry::sign(
        &collective_key(),
        tally_core::entry::Body::UpdateParticipant(tally_core::kinds::UpdateParticipant {
            participant: 1,
            change: tally_core::kinds::ParticipantChange::Suspend,
            nonce: [1; 16],
        }),
    )
    .unwrap();
    node.submit_ok(&[suspend]).await;
    let (status, v) = node.get_signed(&lab, "/v1/me").await;
    assert_eq!((status, code(&v)), (403, "participant-suspended"));
    node.node.shutdown().await;
}

/// An outside tlog client: verify the checkpoint under the pinned key, rebuild the root
/// from tiles, check entry bundles against tiles, check inclusion of submitted receipts
/// (by index and by leaf hash) and consistency between two checkpoints; then the auditor's
/// export replays to the signed state root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlog_client_and_export_verify_everything() {
    let node = start().await;
    standard(&node).await;
    let first = node.checkpoint_at_size().await;
    let pinned = collective_key().public_key();
    let cp1 = open_checkpoint(&first, ORIGIN, &pinned).unwrap();
    let mut rng = rand::thread_rng();
    let receipts: Vec<Entry> =
        (0..300).map(|_| random_receipt(1 + rand::Rng::gen_range(&mut rng, 0..2u8), &mut rng)).collect();
    let results = node.submit_ok(&receipts).await;
    let note = node.checkpoint_at_size().await;
    let cp = open_checkpoint(&note, ORIGIN, &pinned).unwrap();
    assert_eq!(cp.size, node.node.state().ledger.size());
    let mut tiles = TileNodes::new();
    for level in 0..2u8 {
        for index in 0.. {
            let width = tile_width(level, index, cp.size);
            if width == 0 {
                break;
            }
            let path = TilePath::Hashes { level, index, width }.render();
            let r = node.get(&format!("/{path}")).await;
            assert_eq!(r.status().as_u16(), 200, "{path}");
            tiles.insert(level, index, &r.bytes().await.unwrap()).unwrap();
        }
    }
    assert_eq!(merkle::root_at(&tiles, cp.size).unwrap(), cp.root, "tiles rebuild the signed root");
    let mut seq = 0u64;
    for index in 0.. {
        let width = tile_width(0, index, cp.size);
        if width == 0 {
            break;
        }
        let path = TilePath::Entries { index, width }.render();
        let bundle = node.get(&format!("/{path}")).await.bytes().await.unwrap();
        for record in parse_entry_bundle(&bundle).unwrap() {
            assert_eq!(merkle::leaf_hash(record), tiles.node(0, seq).unwrap());
            assert_eq!(LeafRecord::decode(record).unwrap().seq, seq);
            seq += 1;
        }
    }
    assert_eq!(seq, cp.size);
    for r in results.iter().take(20) {
        let index = r["seq"].as_u64().unwrap();
        let leaf_hash: [u8; 32] = hex::decode(r["leaf_hash"].as_str().unwrap()).unwrap().try_into().unwrap();
        for query in [format!("index={index}"), format!("leaf_hash={}", hex::encode(leaf_hash))] {
            let v: Value =
                node.get(&format!("/v1/proof/inclusion?size={}&{query}", cp.size)).await.json().await.unwrap();
            assert_eq!(v["index"], index);
            let proof = proof_hashes(&v);
            merkle::verify_inclusion(&leaf_hash, index, cp.size, &proof, &cp.root).unwrap();
        }
    }
    let v: Value =
        node.get(&format!("/v1/proof/consistency?first={}&second={}", cp1.size, cp.size)).await.json().await.unwrap();
    let proof = proof_hashes(&v);
    merkle::verify_consistency(cp1.size, cp.size, &cp1.root, &cp.root, &proof).unwrap();
    for (path, status, want) in [
        ("/tile/0/999", 404, "no-such-tile"),
        ("/tile/0/01", 404, "bad-tile-path"),
        ("/tile/entries/000.p/0", 404, "bad-tile-path"),
        ("/v1/proof/inclusion?size=5&index=5", 400, "out-of-range"),
        ("/v1/proof/inclusion?size=5", 400, "bad-parameter"),
        ("/v1/proof/inclusion?size=5&leaf_hash=00", 400, "bad-parameter"),
        ("/v1/proof/consistency?first=0&second=5", 400, "out-of-range"),
    ] {
        let r = node.get(path).await;
        assert_eq!(r.status().as_u16(), status, "{path}");
        assert_eq!(code(&r.json().await.unwrap()), want, "{path}");
    }
    // The auditor's export: full entries with leaf records, replayed to the signed root.
    let r = node.signed_request(&participant_key(AUDITOR), "/v1/export?from=0", |_| {}).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/vnd.tally.export");
    let bytes = r.bytes().await.unwrap();
    let mut rest = &bytes[..];
    let mut replay = Engine::open(MemoryStore::default()).unwrap();
    let mut n = 0u64;
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let leaf = LeafRecord::decode(&rest[4..4 + len]).unwrap();
        rest = &rest[4 + len..];
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let entry = Entry::decode(&rest[4..4 + len]).unwrap();
        rest = &rest[4 + len..];
        assert!(leaf.matches(&entry) && leaf.seq == n);
        assert_eq!(leaf.leaf_hash(), tiles.node(0, n).unwrap());
        replay.apply(&entry.verify().unwrap(), n, leaf.time_ms).unwrap().unwrap();
        n += 1;
    }
    assert_eq!(n, cp.size);
    assert_eq!(
        Some(replay.state_root()),
        tally_ledger::state_root_of(&note),
        "export replays to the signed state root"
    );
    node.node.shutdown().await;
}

/// Operations: health, readiness, metrics that count what happened, the OpenAPI document
/// naming every route, and a graceful shutdown that signs a final checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_and_shutdown() {
    let node = start_with(None, |c| c.checkpoint_interval_ms = Some(3_600_000)).await;
    standard(&node).await;
    node.submit_ok(&[receipt(&lab_key(9), 9, 1, [1; 16])]).await;
    assert_eq!(node.get("/healthz").await.status().as_u16(), 200);
    assert_eq!(node.get("/readyz").await.status().as_u16(), 200);
    let metrics = node.get("/metrics").await.text().await.unwrap();
    for line in [
        "tally_entries_appended_total{kind=\"admit\"} 5",
        "tally_entries_rejected_total{code=\"unknown-author\"} 1",
        "tally_commit_seconds_count",
        "tally_submit_batch_entries_bucket",
        "tally_http_responses_total{status=\"200\"}",
    ] {
        assert!(metrics.contains(line), "metrics lack {line}:\n{metrics}");
    }
    // Every committed group was observed: as many apply and write timings as groups, and
    // the groups carried at least every appended entry.
    let value = |series: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{series} "))).expect(series);
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    };
    let groups = value("tally_group_entries_count");
    assert!(groups >= 1.0);
    assert_eq!(value("tally_group_apply_seconds_count"), groups);
    assert_eq!(value("tally_group_write_seconds_count"), groups);
    let appended: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tally_entries_appended_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert!(value("tally_group_entries_sum") >= appended && appended >= 6.0, "{metrics}");
    // What RocksDB holds in memory: the entries just appended are in a memtable, and no
    // part exceeds its bound.
    let memtables = value("tally_store_memory_bytes{part=\"memtables\"}");
    assert!(memtables > 0.0 && memtables <= tally_ledger::MEMTABLES_BYTES_MAX as f64, "{metrics}");
    // The reads above went through the shared block cache (index and filter blocks at
    // least), so it is in use, within its bound.
    let cache = value("tally_store_memory_bytes{part=\"block_cache\"}");
    assert!(cache > 0.0 && cache <= tally_ledger::BLOCK_CACHE_BYTES as f64, "{metrics}");
    // Table readers have no configured bound (and no tables may exist yet): the check is
    // that the series is reported, which `value` fails on otherwise.
    assert!(value("tally_store_memory_bytes{part=\"table_readers\"}") >= 0.0);
    let api: Value = node.get("/openapi.json").await.json().await.unwrap();
    assert_eq!(api["openapi"], "3.1.0");
    for path in [
        "/v1/entries",
        "/v1/me",
        "/v1/balances",
        "/v1/parties/{party}/balances",
        "/v1/parties/{party}/history",
        "/v1/parties/{party}/statement",
        "/v1/parties/{party}/payouts",
        "/v1/labs/{lab}/spend",
        "/v1/info",
        "/v1/checkpoints",
        "/v1/quote",
        "/v1/access",
        "/v1/export",
        "/checkpoint",
        "/tile/{path}",
        "/v1/proof/inclusion",
        "/v1/proof/consistency",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(api["paths"][path].is_object(), "openapi.json documents {path}");
    }
    let size = node.node.state().ledger.size();
    let data = node.node.state().config.data.clone();
    let TestNode { node, _dir, .. } = node;
    node.shutdown().await;
    let ledger = tally_ledger::Ledger::open(&data, tally_ledger::LedgerConfig::new(None)).unwrap();
    assert_eq!(ledger.latest_checkpoint().map(|(s, _)| s), Some(size), "shutdown signed a final checkpoint");
}

/// Under pressure the node answers at once instead of queueing: a slow client holding the
/// only request slot makes the next request get `503 overloaded`, and the slow request
/// itself ends with `503 timeout`; neither affects later requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_and_slow_clients_get_503() {
    let node = start_with(None, |c| {
        c.concurrent_requests_max = Some(1);
        c.request_timeout_ms = Some(2_000);
    })
    .await;
    // A request whose body never ends. It can lose the race for the one slot to a health
    // check below, and is then shed itself; the set-up is tried again in that case.
    let mut attempts = 0;
    let (r, slow, tx) = loop {
        attempts += 1;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
        tx.send(Ok(b"{\"entries\": [".to_vec())).await.unwrap();
        let body = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        let slow = node
            .http
            .post(format!("{}/v1/entries", node.base))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(body))
            .send();
        let slow = tokio::spawn(slow);
        // Once the slow request holds the slot (its headers have arrived), others are shed.
        let mut r = node.get("/healthz").await;
        for _ in 0..75 {
            if r.status().as_u16() == 503 || slow.is_finished() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            r = node.get("/healthz").await;
        }
        if r.status().as_u16() == 503 {
            break (r, slow, tx);
        }
        assert!(slow.is_finished(), "the slow request neither held the slot nor ended");
        let lost = slow.await.unwrap().unwrap();
        assert_eq!(lost.status().as_u16(), 503, "a slow request that ended early was shed");
        assert_eq!(code(&lost.json().await.unwrap()), "overloaded");
        assert!(attempts < 5, "the slow request lost the slot to a health check {attempts} times");
    };
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(code(&r.json().await.unwrap()), "overloaded");
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(code(&r.json().await.unwrap()), "timeout");
    drop(tx);
    assert_eq!(node.get("/healthz").await.status().as_u16(), 200);
    node.node.shutdown().await;
}

/// The README's first command: the demo runs end to end over HTTP (it fails if its own
/// audit fails), and its ledger, reopened afterwards, passes an independent audit pinned to
/// the collective key it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_and_its_ledger_audits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    tally_node::demo::run(Some(data.clone()), 300, false).await.unwrap();
    let key = tally_node::config::read_key(&data.join("collective.key")).unwrap();
    let ledger = tally_ledger::Ledger::open(&data.join("ledger"), tally_ledger::LedgerConfig::new(None)).unwrap();
    let report = tally_tests::audit_ledger(&ledger, key.public_key());
    assert!(report.ok, "{}", report.summary());
    assert!(report.entries > 3_300 && report.checkpoints > 0);
    assert!(report.balances.contains_key("fee") && report.balances.contains_key("unclaimed"), "{:?}", report.balances);
}
