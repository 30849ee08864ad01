//! Tally's client SDK, for the two sides of the market.
//!
//! **A lab's crawler** signs a receipt per fetch and submits them in batches. Retrying is
//! always safe: a receipt keeps its nonce, so the ledger answers a retry with the original
//! result and never charges twice. [`Client::submit`] retries network failures and backs
//! off on 429/503.
//!
//! ```no_run
//! # async fn crawl() -> Result<(), tally_client::ClientError> {
//! use tally_client::{Client, Crawler};
//! use tally_core::entry::Usage;
//! use tally_core::sig::SigningKey;
//!
//! let client = Client::new("http://127.0.0.1:8700");
//! let key = SigningKey::from_seed(&[2; 32]); // load yours with tally_client::read_key
//! let contract = [0u8; 32]; // the contract id your lab accepted
//! let mut crawler = Crawler::new(client, key, 42, contract);
//! let page = b"<html>...</html>";
//! crawler.receipt("https://news.example/a/1", page, Usage::AiTrain, 1_767_225_600_000)?;
//! for result in crawler.flush().await? {
//!     println!("{} {:?} {:?}", result.status, result.seq, result.charge.map(|c| c.amount));
//! }
//! # Ok(()) }
//! ```
//!
//! **A publisher** ([`Verifier`]) trusts only the collective's key and the log's origin,
//! pinned from outside. It keeps the last checkpoint it verified on disk, checks that
//! every new checkpoint is signed by the pinned key and consistent with it, and keeps both
//! notes as evidence if not. It checks every line of its statement: the entry's
//! signatures, its leaf record and its inclusion under the verified checkpoint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngCore;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tally_core::Hash;
use tally_core::checkpoint::{Checkpoint, open_checkpoint};
use tally_core::codec::Text;
use tally_core::entry::{Body, Entry, LeafRecord, Receipt, ReceiptCore, Usage};
use tally_core::httpsig;
use tally_core::merkle::{self, ProofError};
use tally_core::sig::{PublicKey, SigningKey};

/// Most attempts of one request before giving up.
pub const ATTEMPTS_MAX: u32 = 8;
/// The first back-off; it doubles (with jitter) up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_millis(50);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Receipts per submission the crawler sends.
pub const BATCH_RECEIPTS: usize = 1024;

/// A problem document from the node.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Problem {
    pub status: u16,
    pub code: String,
    pub detail: String,
}

/// What went wrong talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the node refused the request: {} {}: {}", .0.status, .0.code, .0.detail)]
    Problem(Problem),
    #[error("network: {0}")]
    Network(String),
    #[error("gave up after {attempts} attempts; last: {last}")]
    Exhausted { attempts: u32, last: String },
    #[error("unexpected answer from the node: {0}")]
    Protocol(String),
    #[error("entry: {0}")]
    Entry(String),
}

/// A charge as the node reports it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Charge {
    pub contract: String,
    pub period: u32,
    pub amount: String,
    pub fee: String,
    pub flags: Vec<String>,
}

/// A posting as the node reports it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Posting {
    pub account: String,
    pub amount: String,
}

/// The node's answer for one submitted entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct EntryResult {
    pub index: usize,
    /// `appended`, `duplicate`, `rejected` or `invalid`.
    pub status: String,
    pub kind: Option<String>,
    pub seq: Option<u64>,
    pub leaf_hash: Option<String>,
    pub time_ms: Option<u64>,
    pub receipt_id: Option<String>,
    pub charge: Option<Charge>,
    pub postings: Option<Vec<Posting>>,
    pub code: Option<String>,
    pub detail: Option<String>,
}

impl EntryResult {
    /// Appended now or earlier (a duplicate): the entry is in the log.
    pub fn logged(&self) -> bool {
        self.status == "appended" || self.status == "duplicate"
    }
}

#[derive(Deserialize)]
struct SubmitResponse {
    results: Vec<EntryResult>,
}

/// Read a key file (the seed as 64 hex characters).
pub fn read_key(path: &Path) -> Result<SigningKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes = hex::decode(text.trim()).map_err(|e| format!("{}: not hex: {e}", path.display()))?;
    let seed: [u8; 32] = bytes.try_into().map_err(|_| format!("{}: a key seed is 32 bytes", path.display()))?;
    Ok(SigningKey::from_seed(&seed))
}

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A connection to one node.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// `base` like `http://127.0.0.1:8700`.
    pub fn new(base: &str) -> Self {
        Self { base: base.trim_end_matches('/').to_string(), http: reqwest::Client::new() }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn problem(response: reqwest::Response) -> ClientError {
        let status = response.status().as_u16();
        match response.json::<Problem>().await {
            Ok(p) => ClientError::Problem(p),
            Err(_) => {
                ClientError::Problem(Problem { status, code: "unknown".into(), detail: "no problem document".into() })
            }
        }
    }

    /// Send a request built by `make`, retrying network errors, 429 and 503 with
    /// exponential back-off and jitter (honouring `Retry-After`).
    async fn with_retries(&self, make: impl Fn() -> reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let mut backoff = BACKOFF_FIRST;
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS_MAX {
            match make().send().await {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r) if matches!(r.status().as_u16(), 429 | 503) => {
                    let wait = r
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    last = format!("HTTP {}", r.status().as_u16());
                    if attempt < ATTEMPTS_MAX {
                        tokio::time::sleep(wait.unwrap_or(backoff).min(BACKOFF_MAX)).await;
                    }
                }
                Ok(r) => return Err(Self::problem(r).await),
                Err(e) => {
                    last = e.to_string();
                    if attempt < ATTEMPTS_MAX {
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
            let jitter = Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 + 1));
            backoff = (backoff * 2 + jitter).min(BACKOFF_MAX);
        }
        Err(ClientError::Exhausted { attempts: ATTEMPTS_MAX, last })
    }

    /// Submit signed entries (binary body); one result per entry, in order. Safe to retry.
    pub async fn submit(&self, entries: &[Entry]) -> Result<Vec<EntryResult>, ClientError> {
        self.submit_preferring(entries, None).await
    }

    /// [`Client::submit`], asking for minimal answers (`Prefer: return=minimal`): each
    /// logged entry's position only, without its charge and postings, which costs the
    /// node less to write at a high rate.
    pub async fn submit_minimal(&self, entries: &[Entry]) -> Result<Vec<EntryResult>, ClientError> {
        self.submit_preferring(entries, Some("return=minimal")).await
    }

    async fn submit_preferring(
        &self,
        entries: &[Entry],
        prefer: Option<&str>,
    ) -> Result<Vec<EntryResult>, ClientError> {
        let body = tally_core::submission::binary_body(entries);
        let url = format!("{}/v1/entries", self.base);
        let response = self
            .with_retries(|| {
                let request =
                    self.http.post(&url).header("content-type", "application/vnd.tally.entries").body(body.clone());
                match prefer {
                    Some(p) => request.header("prefer", p),
                    None => request,
                }
            })
            .await?;
        let parsed: SubmitResponse = response.json().await.map_err(|e| ClientError::Protocol(e.to_string()))?;
        if parsed.results.len() != entries.len() {
            return Err(ClientError::Protocol(format!(
                "{} results for {} entries",
                parsed.results.len(),
                entries.len()
            )));
        }
        Ok(parsed.results)
    }

    /// A GET signed with `key` (RFC 9421), parsed as JSON. Each attempt is signed afresh.
    pub async fn get_signed<T: DeserializeOwned>(&self, key: &SigningKey, path: &str) -> Result<T, ClientError> {
        self.get_signed_response(key, path).await?.json().await.map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// A signed GET's raw response (the export stream).
    pub async fn get_signed_response(&self, key: &SigningKey, path: &str) -> Result<reqwest::Response, ClientError> {
        let url = format!("{}{path}", self.base);
        let parts = httpsig::get_parts(&url).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.with_retries(|| {
            let input = httpsig::tally_input(key, now_s(), 60, hex::encode(rand::random::<[u8; 16]>()));
            let (input, signature) = httpsig::sign(&parts, &input, key).expect("no header components to miss");
            self.http.get(&url).header("signature-input", input).header("signature", signature)
        })
        .await
    }

    /// A public GET parsed as JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.get_bytes(path)
            .await
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| ClientError::Protocol(e.to_string())))
    }

    /// A public GET's body.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}{path}", self.base);
        let r = self.with_retries(|| self.http.get(&url)).await?;
        Ok(r.bytes().await.map_err(|e| ClientError::Network(e.to_string()))?.to_vec())
    }

    /// The newest checkpoint note, unverified.
    pub async fn checkpoint_note(&self) -> Result<String, ClientError> {
        String::from_utf8(self.get_bytes("/checkpoint").await?).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Every checkpoint note the node has signed, unverified.
    pub async fn checkpoint_notes(&self) -> Result<Vec<String>, ClientError> {
        #[derive(Deserialize)]
        struct Page {
            checkpoints: Vec<Item>,
            next_from_size: Option<u64>,
        }
        #[derive(Deserialize)]
        struct Item {
            note: String,
        }
        let mut out = Vec::new();
        let mut from = 0;
        loop {
            let page: Page = self.get_json(&format!("/v1/checkpoints?from_size={from}")).await?;
            out.extend(page.checkpoints.into_iter().map(|c| c.note));
            match page.next_from_size {
                Some(n) => from = n,
                None => return Ok(out),
            }
        }
    }

    /// An inclusion proof from the node, unverified.
    pub async fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ClientError> {
        #[derive(Deserialize)]
        struct P {
            proof: Vec<String>,
        }
        let p: P = self.get_json(&format!("/v1/proof/inclusion?size={size}&index={index}")).await?;
        decode_hashes(&p.proof)
    }

    /// A consistency proof from the node, unverified.
    pub async fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, ClientError> {
        #[derive(Deserialize)]
        struct P {
            proof: Vec<String>,
        }
        let p: P = self.get_json(&format!("/v1/proof/consistency?first={first}&second={second}")).await?;
        decode_hashes(&p.proof)
    }
}

fn decode_hashes(items: &[String]) -> Result<Vec<Hash>, ClientError> {
    items
        .iter()
        .map(|h| {
            B64.decode(h)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| ClientError::Protocol("a proof hash is not 32 bytes of base64".into()))
        })
        .collect()
}

/// A lab's crawler: signs receipts and submits them in batches.
#[derive(Debug)]
pub struct Crawler {
    client: Client,
    key: SigningKey,
    lab_id: u64,
    contract: Hash,
    pending: Vec<Entry>,
}

impl Crawler {
    pub fn new(client: Client, key: SigningKey, lab_id: u64, contract: Hash) -> Self {
        Self { client, key, lab_id, contract, pending: Vec::new() }
    }

    /// Sign a receipt for one fetch of `url` (its body `content`) for `usage`, and queue
    /// it. Returns the receipt id (the idempotency key).
    pub fn receipt(
        &mut self,
        url: &str,
        content: &[u8],
        usage: Usage,
        fetch_time_ms: u64,
    ) -> Result<Hash, ClientError> {
        use sha2::Digest;
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let core = ReceiptCore {
            lab_id: self.lab_id,
            contract_id: self.contract,
            url: Text::new(url).map_err(|e| ClientError::Entry(e.to_string()))?,
            content_sha256: sha2::Sha256::digest(content).into(),
            response_bytes: content.len() as u64,
            fetch_time_ms,
            usage,
            nonce,
        };
        let entry = Entry::sign(&self.key, Body::Receipt(Receipt { core, delivery: None }))
            .map_err(|e| ClientError::Entry(e.to_string()))?;
        let id = entry.receipt_id().expect("a receipt");
        self.pending.push(entry);
        Ok(id)
    }

    /// Receipts signed and not yet submitted.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The signed receipts not yet submitted (to keep for a later resend).
    pub fn pending_entries(&self) -> &[Entry] {
        &self.pending
    }

    /// Submit everything queued, in batches of [`BATCH_RECEIPTS`], with safe retries. On an
    /// error the unsent receipts stay queued (with their nonces) for the next flush.
    pub async fn flush(&mut self) -> Result<Vec<EntryResult>, ClientError> {
        let mut results = Vec::with_capacity(self.pending.len());
        while !self.pending.is_empty() {
            let n = self.pending.len().min(BATCH_RECEIPTS);
            let mut batch = self.client.submit(&self.pending[..n]).await?;
            let offset = results.len();
            for r in &mut batch {
                r.index += offset;
            }
            results.extend(batch);
            self.pending.drain(..n);
        }
        Ok(results)
    }
}

/// Why a publisher's verification failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the checkpoint does not verify under the pinned key: {0}")]
    BadCheckpoint(String),
    #[error(
        "THE LOG FORKED: checkpoint {new_size} is not consistent with the verified checkpoint {old_size} \
         ({why}); both signed notes are kept as evidence in {}", evidence.display()
    )]
    Inconsistent { old_size: u64, new_size: u64, why: String, evidence: PathBuf },
    #[error("receipt {seq}: {why}")]
    BadLine { seq: u64, why: String },
    #[error("state directory: {0}")]
    State(String),
}

/// One verified statement line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedLine {
    pub seq: u64,
    pub url: String,
    pub credited: Vec<Posting>,
}

/// A publisher's verifier: pinned key and origin, and a directory for the last verified
/// checkpoint and any evidence.
#[derive(Debug)]
pub struct Verifier {
    client: Client,
    origin: String,
    key: PublicKey,
    dir: PathBuf,
}

const LAST_CHECKPOINT_FILE: &str = "checkpoint.note";

impl Verifier {
    pub fn new(client: Client, origin: &str, key: PublicKey, dir: &Path) -> Self {
        Self { client, origin: origin.to_string(), key, dir: dir.to_path_buf() }
    }

    /// The last checkpoint verified (from disk), if any.
    pub fn last_verified(&self) -> Result<Option<(String, Checkpoint)>, VerifyError> {
        let path = self.dir.join(LAST_CHECKPOINT_FILE);
        match std::fs::read_to_string(&path) {
            Ok(note) => {
                let cp = open_checkpoint(&note, &self.origin, &self.key)
                    .map_err(|e| VerifyError::State(format!("{}: {e}", path.display())))?;
                Ok(Some((note, cp)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(VerifyError::State(e.to_string())),
        }
    }

    /// Fetch the node's checkpoint, verify it under the pinned key, check it is consistent
    /// with the last one verified, and keep it. On inconsistency the evidence is saved and
    /// the old checkpoint stays the verified one.
    pub async fn update(&self) -> Result<Checkpoint, VerifyError> {
        let note = self.client.checkpoint_note().await?;
        self.accept(&note).await
    }

    /// [`Verifier::update`] for a note obtained elsewhere (a witness, a gossip peer).
    pub async fn accept(&self, note: &str) -> Result<Checkpoint, VerifyError> {
        let cp =
            open_checkpoint(note, &self.origin, &self.key).map_err(|e| VerifyError::BadCheckpoint(e.to_string()))?;
        if let Some((old_note, old)) = self.last_verified()? {
            let consistent = if cp.size < old.size {
                Err("it is smaller than the verified one".to_string())
            } else if cp.size == old.size {
                if cp.root == old.root { Ok(()) } else { Err("same size, different root".to_string()) }
            } else {
                let proof = self.client.consistency_proof(old.size, cp.size).await?;
                merkle::verify_consistency(old.size, cp.size, &old.root, &cp.root, &proof).map_err(|e| e.to_string())
            };
            if let Err(why) = consistent {
                let evidence = self.dir.join(format!("evidence-{}-{}", old.size, cp.size));
                std::fs::create_dir_all(&evidence).map_err(|e| VerifyError::State(e.to_string()))?;
                std::fs::write(evidence.join("verified.note"), &old_note)
                    .map_err(|e| VerifyError::State(e.to_string()))?;
                std::fs::write(evidence.join("conflicting.note"), note)
                    .map_err(|e| VerifyError::State(e.to_string()))?;
                return Err(VerifyError::Inconsistent { old_size: old.size, new_size: cp.size, why, evidence });
            }
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| VerifyError::State(e.to_string()))?;
        let tmp = self.dir.join(format!("{LAST_CHECKPOINT_FILE}.tmp"));
        std::fs::write(&tmp, note).map_err(|e| VerifyError::State(e.to_string()))?;
        std::fs::rename(&tmp, self.dir.join(LAST_CHECKPOINT_FILE)).map_err(|e| VerifyError::State(e.to_string()))?;
        Ok(cp)
    }

    /// Verify every line of `party`'s statement for `period` (signed with the party's
    /// `key`): each entry's signatures, its leaf record at its position and time, and its
    /// inclusion under a checkpoint verified by [`Verifier::update`] just before.
    pub async fn verify_statement(
        &self,
        key: &SigningKey,
        party: u64,
        period: u32,
    ) -> Result<(Checkpoint, Vec<VerifiedLine>), VerifyError> {
        let cp = self.update().await?;
        #[derive(Deserialize)]
        struct Statement {
            lines: Vec<Line>,
            next_from: Option<u64>,
        }
        #[derive(Deserialize)]
        struct Line {
            seq: u64,
            time_ms: u64,
            url: String,
            credited: Vec<Posting>,
            entry: String,
        }
        let mut out = Vec::new();
        let mut from = 0;
        loop {
            let page: Statement = self
                .client
                .get_signed(key, &format!("/v1/parties/{party}/statement?period={period}&from={from}"))
                .await?;
            for line in page.lines {
                if line.seq >= cp.size {
                    continue; // logged after the verified checkpoint; checked next time
                }
                let proof = self.client.inclusion_proof(line.seq, cp.size).await?;
                check_line(&line.entry, line.seq, line.time_ms, &proof, &cp)?;
                out.push(VerifiedLine { seq: line.seq, url: line.url, credited: line.credited });
            }
            match page.next_from {
                Some(n) => from = n,
                None => return Ok((cp, out)),
            }
        }
    }
}

/// Check one statement line: the entry (base64) is canonical and validly signed, and its
/// leaf record at `seq` and `time_ms` is included under `cp` by `proof`.
pub fn check_line(entry_b64: &str, seq: u64, time_ms: u64, proof: &[Hash], cp: &Checkpoint) -> Result<(), VerifyError> {
    let bad = |why: String| VerifyError::BadLine { seq, why };
    let bytes = B64.decode(entry_b64).map_err(|_| bad("the entry is not base64".into()))?;
    let entry = Entry::decode(&bytes).map_err(|e| bad(format!("the entry is not canonical: {e}")))?;
    let entry = entry.verify().map_err(|e| bad(format!("the entry's signature fails: {e}")))?;
    let leaf = LeafRecord::for_entry(&entry, seq, time_ms);
    merkle::verify_inclusion(&leaf.leaf_hash(), seq, cp.size, proof, &cp.root)
        .map_err(|e: ProofError| bad(format!("not included under checkpoint {}: {e}", cp.size)))
}
