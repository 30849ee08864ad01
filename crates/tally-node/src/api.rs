//! The HTTP handlers (`specs/api.md`). Every error is a [`Problem`]; nothing here panics on
//! input, and nothing reaches the sequencer before it decoded canonically and verified.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use tally_core::Hash;
use tally_core::entry::{Body as EntryBody, Entry, EntryKind, LeafRecord, Usage, VerifiedEntry, verify_all};
use tally_core::kinds::Role;
use tally_core::submission::{self, BodyError};
use tally_core::tile::TilePath;
use tally_ledger::{LedgerError, Outcome, Position};
use tally_settlement::terms::{display_amount, format_amount};
use tally_settlement::{Account, Charge, Posting};

use crate::AppState;
use crate::auth::Caller;
use crate::config::PAGE_ENTRIES_MAX;
use crate::problem::Problem;
use crate::verify;

/// Submissions with at least this many entries are verified in parts, one per pool thread.
const PARALLEL_VERIFY_MIN: usize = 64;

/// Media type of the binary submission body: entries, each behind its length as a u32
/// little-endian.
pub use tally_core::submission::ENTRIES_MEDIA_TYPE;
/// Media type of the export stream: per entry, `u32le len || leaf record || u32le len || entry`.
pub const EXPORT_MEDIA_TYPE: &str = "application/vnd.tally.export";

type Shared = State<Arc<AppState>>;

fn amount(state: &AppState, minor: i128) -> String {
    format_amount(minor, state.asset_scale())
}

// The per-entry answers below are written straight into the response: a submission
// answers every receipt with its hashes, charge and postings, and making a `String` of each
// first was most of the request threads' allocations (perf).

/// A 32-byte hash as lowercase hex.
#[derive(Debug, Clone, Copy)]
struct HexHash(Hash);

impl Serialize for HexHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut digits = [0u8; 64];
        hex::encode_to_slice(self.0, &mut digits).expect("64 digits for 32 bytes");
        s.serialize_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"))
    }
}

/// An amount in minor units, as a decimal at the asset's scale (as [`amount`] writes it).
#[derive(Debug, Clone, Copy)]
struct Amount {
    minor: i128,
    scale: u8,
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&display_amount(self.minor, self.scale))
    }
}

fn amount_of(state: &AppState, minor: i128) -> Amount {
    Amount { minor, scale: state.asset_scale() }
}

/// Serialize with `Display` (an account as its label).
fn display<T: std::fmt::Display, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

#[derive(Debug, Serialize)]
pub struct PostingView {
    #[serde(serialize_with = "display")]
    account: Account,
    amount: Amount,
}

fn postings_view(state: &AppState, postings: &[Posting]) -> Vec<PostingView> {
    postings.iter().map(|p| PostingView { account: p.account, amount: amount_of(state, p.amount) }).collect()
}

#[derive(Debug, Serialize)]
pub struct ChargeView {
    contract: HexHash,
    period: u32,
    amount: Amount,
    fee: Amount,
    flags: Vec<&'static str>,
}

fn charge_view(state: &AppState, contract: &Hash, period: u32, c: &Charge) -> ChargeView {
    ChargeView {
        contract: HexHash(*contract),
        period,
        amount: amount_of(state, i128::from(c.amount)),
        fee: amount_of(state, i128::from(c.fee)),
        flags: c.flags(),
    }
}

/// The answer for one submitted entry.
#[derive(Debug, Serialize, Default)]
pub struct EntryResult {
    index: usize,
    /// `appended`, `duplicate`, `rejected` (by settlement) or `invalid` (not decoded or not
    /// validly signed).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leaf_hash: Option<HexHash>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt_id: Option<HexHash>,
    #[serde(skip_serializing_if = "Option::is_none")]
    charge: Option<ChargeView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    postings: Option<Vec<PostingView>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SubmitResponse {
    results: Vec<EntryResult>,
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .unwrap_or("")
}

/// Decode and verify on the blocking pool: entries that pass, with their request index,
/// and results for those that do not.
fn check_entries(
    raw: Vec<Result<Vec<u8>, &'static str>>,
    offset: usize,
) -> (Vec<(usize, VerifiedEntry)>, Vec<EntryResult>) {
    let mut invalid = Vec::new();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut indices = Vec::with_capacity(raw.len());
    for (index, r) in raw.into_iter().enumerate() {
        let index = index + offset;
        let bytes = match r {
            Ok(b) => b,
            Err(detail) => {
                invalid.push(EntryResult {
                    index,
                    status: "invalid",
                    code: Some("malformed-base64"),
                    detail: Some(detail.into()),
                    ..Default::default()
                });
                continue;
            }
        };
        match Entry::decode(&bytes) {
            Ok(e) => {
                decoded.push(e);
                indices.push(index);
            }
            Err(e) => invalid.push(EntryResult {
                index,
                status: "invalid",
                code: Some(e.code()),
                detail: Some(e.to_string()),
                ..Default::default()
            }),
        }
    }
    let mut valid = Vec::with_capacity(decoded.len());
    for (index, verdict) in indices.into_iter().zip(verify_all(decoded)) {
        match verdict {
            Ok(v) => valid.push((index, v)),
            Err(e) => invalid.push(EntryResult {
                index,
                status: "invalid",
                code: Some(e.code()),
                detail: Some(e.to_string()),
                ..Default::default()
            }),
        }
    }
    (valid, invalid)
}

/// How much a submission's answer says about each logged entry (`specs/api.md`, "Minimal
/// answers").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Position, kind, receipt id, charge and postings (the default).
    Full,
    /// Position only (`Prefer: return=minimal`, RFC 7240): for crawlers that submit at a
    /// high rate and read what they were charged later, if at all.
    Minimal,
}

/// The answer the client prefers: `Minimal` when a `Prefer` field (RFC 7240 §2: a comma
/// list of `token [= word] *(; parameter)`, names case-insensitive, any number of fields)
/// asks for `return=minimal` and none asks for `return=representation`. A request asking
/// for both, or anything else, gets the full answer, which is always correct to send.
fn preferred_answer(headers: &HeaderMap) -> Answer {
    let (mut minimal, mut full) = (false, false);
    for value in headers.get_all("prefer") {
        let Ok(value) = value.to_str() else { continue };
        for preference in value.split(',') {
            let head = preference.split(';').next().unwrap_or("");
            let Some((name, word)) = head.split_once('=') else { continue };
            if !name.trim().eq_ignore_ascii_case("return") {
                continue;
            }
            let word = word.trim();
            let word = word.strip_prefix('"').and_then(|w| w.strip_suffix('"')).unwrap_or(word);
            minimal |= word.eq_ignore_ascii_case("minimal");
            full |= word.eq_ignore_ascii_case("representation");
        }
    }
    if minimal && !full { Answer::Minimal } else { Answer::Full }
}

/// `POST /v1/entries`.
pub async fn submit(State(state): Shared, headers: HeaderMap, body: Body) -> Result<Response, Problem> {
    let answer = preferred_answer(&headers);
    let max = state.config.entries_per_request_max;
    let media = content_type(&headers).to_ascii_lowercase();
    if media != "application/json" && media != ENTRIES_MEDIA_TYPE {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!("send application/json or {ENTRIES_MEDIA_TYPE}"),
        ));
    }
    let bytes = axum::body::to_bytes(body, state.config.body_bytes_max).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            format!("the body is over {} bytes (or was cut off)", state.config.body_bytes_max),
        )
    })?;
    let parsed = if media == "application/json" {
        submission::parse_json(&bytes, max)
    } else {
        submission::parse_binary(&bytes, max)
    };
    let raw = parsed.map_err(|e| match e {
        BodyError::TooManyEntries(_) => Problem::new(StatusCode::PAYLOAD_TOO_LARGE, e.code(), e.to_string()),
        e => Problem::bad_request(e.code(), e.to_string()),
    })?;
    state.metrics.batch_entries.observe(raw.len() as f64);
    let count = raw.len();
    let (mut results, appended) = if count < PARALLEL_VERIFY_MIN {
        verify_and_queue(&state, raw).await?
    } else {
        verify_then_queue(&state, raw).await?
    };
    if let Some((Valid { indices, kinds, receipt_ids }, outcomes)) = appended {
        for (((index, kind), receipt_id), outcome) in indices.into_iter().zip(kinds).zip(receipt_ids).zip(outcomes) {
            results.push(outcome_view(&state, answer, index, kind, receipt_id, outcome)?);
        }
    }
    results.sort_by_key(|r| r.index);
    debug_assert_eq!(results.len(), count);
    let mut response = Json(SubmitResponse { results }).into_response();
    if answer == Answer::Minimal {
        response.headers_mut().insert("preference-applied", HeaderValue::from_static("return=minimal"));
    }
    Ok(response)
}

/// What a submission's answer needs from its valid entries once they are queued.
struct Valid {
    indices: Vec<usize>,
    kinds: Vec<EntryKind>,
    receipt_ids: Vec<Option<Hash>>,
}

impl Valid {
    /// Split verified entries (with their request index) into what the answer needs and
    /// the entries to queue.
    fn split(valid: Vec<(usize, VerifiedEntry)>) -> (Self, Vec<VerifiedEntry>) {
        let (indices, entries): (Vec<usize>, Vec<VerifiedEntry>) = valid.into_iter().unzip();
        let kinds = entries.iter().map(|e| e.kind()).collect();
        let receipt_ids = entries.iter().map(|e| e.receipt_id()).collect();
        (Self { indices, kinds, receipt_ids }, entries)
    }
}

/// Invalid entries' results, and the valid entries with the sequencer's outcomes for them.
type Answered = (Vec<EntryResult>, Option<(Valid, Vec<Outcome>)>);

fn pool_closed(_: verify::PoolClosed) -> Problem {
    Problem::unavailable("verification-failed", "verification did not complete")
}

fn count_invalid(state: &AppState, results: &[EntryResult]) {
    for r in results {
        state.metrics.invalid.add(r.code.unwrap_or("invalid"), 1);
    }
}

/// A small submission: one pool thread verifies it and queues its valid entries for the
/// sequencer at once, from that thread. The request's task is woken by the sequencer's
/// answer (or, when nothing was queued, by the verdicts), not in between.
async fn verify_and_queue(state: &Arc<AppState>, raw: Vec<Result<Vec<u8>, &'static str>>) -> Result<Answered, Problem> {
    let started = Instant::now();
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job_state = state.clone();
    let job = state.verifier.run(move || {
        let (valid, invalid) = check_entries(raw, 0);
        job_state.metrics.verify_seconds.observe(started.elapsed().as_secs_f64());
        if valid.is_empty() {
            return (invalid, None);
        }
        let (valid, entries) = Valid::split(valid);
        let queued = Instant::now();
        (invalid, Some((valid, job_state.ledger.append_to(entries, reply).map(|()| queued))))
    });
    // The job sends its verdicts before the sequencer can answer, but this task waits for
    // the answer first: nothing is waiting on the verdicts' channel then, so sending them
    // wakes no one. With nothing queued, `reply` is dropped and the verdicts say why.
    let answer = answer.await;
    let (invalid, queued) = job.await.map_err(pool_closed)?;
    count_invalid(state, &invalid);
    let Some((valid, queued)) = queued else { return Ok((invalid, None)) };
    let queued_at = queued?;
    let outcomes = answer.map_err(|_| LedgerError::Closed)??;
    state.metrics.commit_seconds.observe(queued_at.elapsed().as_secs_f64());
    Ok((invalid, Some((valid, outcomes))))
}

/// A large submission: verified in parts on the pool's threads (one per core), so one
/// request is not held to one core's speed; the parts queue behind earlier requests'. Its
/// valid entries are queued together once every part is done.
async fn verify_then_queue(
    state: &Arc<AppState>,
    mut raw: Vec<Result<Vec<u8>, &'static str>>,
) -> Result<Answered, Problem> {
    let count = raw.len();
    let started = Instant::now();
    let parts = state.verifier.threads();
    let part = count.div_ceil(parts).max(1);
    let mut pending = Vec::with_capacity(parts);
    while !raw.is_empty() {
        let rest = raw.split_off(part.min(raw.len()));
        let offset = count - raw.len() - rest.len();
        let chunk = std::mem::replace(&mut raw, rest);
        pending.push(state.verifier.run(move || check_entries(chunk, offset)));
    }
    let (mut valid, mut invalid) = (Vec::with_capacity(count), Vec::new());
    for p in pending {
        let (v, r) = p.await.map_err(pool_closed)?;
        valid.extend(v);
        invalid.extend(r);
    }
    state.metrics.verify_seconds.observe(started.elapsed().as_secs_f64());
    count_invalid(state, &invalid);
    if valid.is_empty() {
        return Ok((invalid, None));
    }
    let (valid, entries) = Valid::split(valid);
    let started = Instant::now();
    let outcomes = state.ledger.append(entries).await?;
    state.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
    Ok((invalid, Some((valid, outcomes))))
}

fn position_fields(r: &mut EntryResult, p: &Position) {
    r.seq = Some(p.seq);
    r.leaf_hash = Some(HexHash(p.leaf_hash));
    r.time_ms = Some(p.time_ms);
}

fn outcome_view(
    state: &AppState,
    answer: Answer,
    index: usize,
    kind: EntryKind,
    receipt_id: Option<Hash>,
    outcome: Outcome,
) -> Result<EntryResult, Problem> {
    let mut r = EntryResult { index, ..Default::default() };
    if answer == Answer::Full {
        r.kind = Some(kind.as_str());
        r.receipt_id = receipt_id.map(HexHash);
    }
    match outcome {
        Outcome::Appended(p, effect) => {
            state.metrics.appended.add(kind.as_str(), 1);
            r.status = "appended";
            position_fields(&mut r, &p);
            if answer == Answer::Full {
                if let (Some(c), Some(contract)) = (&effect.charge, &effect.contract) {
                    r.charge = Some(charge_view(state, contract, effect.period, c));
                }
                r.postings = Some(postings_view(state, &effect.postings));
            }
        }
        Outcome::Duplicate(p) => {
            state.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
            r.status = "duplicate";
            position_fields(&mut r, &p);
            if answer == Answer::Full {
                // The original answer: what the entry settled when it was appended.
                let (charge, postings) = original_effect(state, p.seq)?;
                r.charge = charge;
                r.postings = Some(postings);
            }
        }
        Outcome::Rejected(rejection) => {
            state.metrics.rejected.add(rejection.code(), 1);
            r.status = "rejected";
            r.code = Some(rejection.code());
            r.detail = Some(rejection.to_string());
        }
    }
    Ok(r)
}

/// What the entry at `seq` settled: a receipt's charge and postings, or another entry's
/// postings.
fn original_effect(state: &AppState, seq: u64) -> Result<(Option<ChargeView>, Vec<PostingView>), Problem> {
    if let Some(record) = state.ledger.settlement()?.charge(seq)? {
        let charge = charge_view(state, &record.contract, record.period, &record.charge);
        return Ok((Some(charge), postings_view(state, &record.postings)));
    }
    let postings = state.ledger.store().effects(seq)?.unwrap_or_default();
    Ok((None, postings_view(state, &postings)))
}

// ---------------------------------------------------------------------------------------
// Authenticated reads.

#[derive(Debug, Serialize)]
pub struct MeView {
    participant: u64,
    role: Role,
    name: String,
}

/// `GET /v1/me`.
pub async fn me(State(state): Shared, caller: Caller) -> Result<Json<MeView>, Problem> {
    let engine = state.ledger.settlement()?;
    let name = match engine.participant(caller.participant) {
        Some(p) => p.name.as_str().to_string(),
        None => state.ledger.genesis().map(|g| g.origin).unwrap_or_default(),
    };
    Ok(Json(MeView { participant: caller.participant, role: caller.role, name }))
}

#[derive(Debug, Serialize)]
pub struct BalanceView {
    account: String,
    balance: String,
}

#[derive(Debug, Serialize)]
pub struct BalancesView {
    asset: String,
    accounts: Vec<BalanceView>,
}

fn party_accounts(party: u64) -> [Account; 4] {
    [Account::Escrow(party), Account::Payable(party), Account::Partner(party), Account::Clearing(party)]
}

/// `GET /v1/balances`: every account (collective and auditors).
pub async fn all_balances(State(state): Shared, caller: Caller) -> Result<Json<BalancesView>, Problem> {
    if !caller.sees_all() {
        return Err(Problem::forbidden("only the collective and auditors see every account"));
    }
    let engine = state.ledger.settlement()?;
    let accounts =
        engine.balances().map(|(a, b)| BalanceView { account: a.label(), balance: amount(&state, *b) }).collect();
    Ok(Json(BalancesView { asset: state.asset_code(), accounts }))
}

/// `GET /v1/parties/{party}/balances`: a participant's own accounts (zero balances included).
pub async fn balances(
    State(state): Shared,
    caller: Caller,
    Path(party): Path<u64>,
) -> Result<Json<BalancesView>, Problem> {
    caller.may_read(party)?;
    let engine = state.ledger.settlement()?;
    let accounts = party_accounts(party)
        .iter()
        .map(|a| BalanceView { account: a.label(), balance: amount(&state, engine.balance(*a)) })
        .collect();
    Ok(Json(BalancesView { asset: state.asset_code(), accounts }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    #[serde(default)]
    from: u64,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    period: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct HistoryLine {
    seq: u64,
    time_ms: u64,
    kind: &'static str,
    postings: Vec<PostingView>,
}

#[derive(Debug, Serialize)]
pub struct HistoryView {
    lines: Vec<HistoryLine>,
    /// Pass as `from` for the next page; absent at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_from: Option<u64>,
}

/// One page of the entries indexed for `party`: at most `limit` (default and cap 1,000)
/// from `from`, and where the next page starts.
fn party_page(state: &AppState, party: u64, q: &PageQuery) -> Result<(Vec<u64>, Option<u64>), Problem> {
    let limit = q.limit.unwrap_or(PAGE_ENTRIES_MAX).clamp(1, PAGE_ENTRIES_MAX);
    let mut seqs = state.ledger.party_entries(party, q.from, limit + 1)?;
    let next_from = seqs.get(limit).copied();
    seqs.truncate(limit);
    Ok((seqs, next_from))
}

/// `GET /v1/parties/{party}/history`: every entry that moved the party's money (or that it
/// authored), with the postings on its own accounts.
pub async fn history(
    State(state): Shared,
    caller: Caller,
    Path(party): Path<u64>,
    Query(q): Query<PageQuery>,
) -> Result<Json<HistoryView>, Problem> {
    caller.may_read(party)?;
    let store = state.ledger.store();
    let (seqs, next_from) = party_page(&state, party, &q)?;
    let mut lines = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let leaf = store.leaf(seq)?.ok_or_else(|| Problem::from(missing(seq)))?;
        let postings = match state.ledger.settlement()?.charge(seq)? {
            Some(record) => record.postings,
            None => store.effects(seq)?.unwrap_or_default(),
        };
        let mine: Vec<Posting> = postings.into_iter().filter(|p| p.account.party() == Some(party)).collect();
        lines.push(HistoryLine {
            seq,
            time_ms: leaf.time_ms,
            kind: leaf.kind.as_str(),
            postings: postings_view(&state, &mine),
        });
    }
    Ok(Json(HistoryView { lines, next_from }))
}

fn missing(seq: u64) -> tally_ledger::LedgerError {
    tally_ledger::LedgerError::Corrupted(format!("indexed entry {seq} is missing"))
}

#[derive(Debug, Serialize)]
pub struct StatementLine {
    seq: u64,
    time_ms: u64,
    lab: u64,
    url: String,
    usage: Usage,
    charge: ChargeView,
    /// What this receipt credited to the party's accounts.
    credited: Vec<PostingView>,
    reversed: bool,
    /// The full entry (base64): the party checks its signatures, recomputes its leaf
    /// record and checks inclusion against a checkpoint it verified.
    entry: String,
}

#[derive(Debug, Serialize)]
pub struct StatementView {
    participant: u64,
    period: u32,
    lines: Vec<StatementLine>,
    /// Sum of `credited` over the lines of this page.
    total: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_from: Option<u64>,
}

/// `GET /v1/parties/{party}/statement?period=K`: every receipt of period K that credited
/// the party, with amounts.
pub async fn statement(
    State(state): Shared,
    caller: Caller,
    Path(party): Path<u64>,
    Query(q): Query<PageQuery>,
) -> Result<Json<StatementView>, Problem> {
    caller.may_read(party)?;
    let period = q.period.ok_or_else(|| Problem::bad_request("missing-parameter", "period is required"))?;
    let store = state.ledger.store();
    let (seqs, next_from) = party_page(&state, party, &q)?;
    let mut lines = Vec::new();
    let mut total = 0i128;
    for seq in seqs {
        let Some(record) = state.ledger.settlement()?.charge(seq)? else { continue };
        if record.period != period {
            continue;
        }
        let credited: Vec<Posting> =
            record.postings.iter().filter(|p| p.amount > 0 && p.account.party() == Some(party)).copied().collect();
        if credited.is_empty() && !record.usage.iter().any(|(p, _)| *p == party) {
            continue;
        }
        let entry = store.entry(seq)?.ok_or_else(|| Problem::from(missing(seq)))?;
        let leaf = store.leaf(seq)?.ok_or_else(|| Problem::from(missing(seq)))?;
        let EntryBody::Receipt(receipt) = entry.body() else { continue };
        total += credited.iter().map(|p| p.amount).sum::<i128>();
        lines.push(StatementLine {
            seq,
            time_ms: leaf.time_ms,
            lab: record.lab,
            url: receipt.core.url.as_str().to_string(),
            usage: receipt.core.usage,
            charge: charge_view(&state, &record.contract, record.period, &record.charge),
            credited: postings_view(&state, &credited),
            reversed: record.reversed,
            entry: B64.encode(entry.as_bytes()),
        });
    }
    Ok(Json(StatementView { participant: party, period, lines, total: amount(&state, total), next_from }))
}

#[derive(Debug, Serialize)]
pub struct PayoutView {
    period: u32,
    amount: String,
    /// `pending`, `confirmed` or `failed`.
    status: &'static str,
}

#[derive(Debug, Serialize)]
pub struct PayoutsView {
    participant: u64,
    payouts: Vec<PayoutView>,
}

/// `GET /v1/parties/{party}/payouts`: every payout created for the party, by period.
pub async fn payouts(
    State(state): Shared,
    caller: Caller,
    Path(party): Path<u64>,
) -> Result<Json<PayoutsView>, Problem> {
    caller.may_read(party)?;
    let engine = state.ledger.settlement()?;
    let open = engine.meta().map_or(0, |m| m.period);
    let mut payouts = Vec::new();
    for period in 0..open {
        if let Some(p) = engine.payout(period, party)? {
            let status = match p.status {
                tally_settlement::engine::PAYOUT_PENDING => "pending",
                tally_settlement::engine::PAYOUT_CONFIRMED => "confirmed",
                _ => "failed",
            };
            payouts.push(PayoutView { period, amount: amount(&state, p.amount as i128), status });
        }
    }
    Ok(Json(PayoutsView { participant: party, payouts }))
}

#[derive(Debug, Serialize)]
pub struct ContractSpend {
    contract: String,
    name: String,
    accepted: bool,
    start_ms: u64,
    end_ms: u64,
    spent_this_period: String,
    spend_cap: Option<String>,
    credit_limit: String,
}

#[derive(Debug, Serialize)]
pub struct SpendView {
    lab: u64,
    escrow: String,
    contracts: Vec<ContractSpend>,
}

/// `GET /v1/labs/{lab}/spend`: the lab's escrow and, per contract, spend this period.
pub async fn spend(State(state): Shared, caller: Caller, Path(lab): Path<u64>) -> Result<Json<SpendView>, Problem> {
    caller.may_read(lab)?;
    let engine = state.ledger.settlement()?;
    let contracts = engine
        .contracts()
        .filter(|(_, c)| c.terms.lab == lab)
        .map(|(id, c)| ContractSpend {
            contract: hex::encode(id),
            name: c.terms.name.as_str().to_string(),
            accepted: c.accepted,
            start_ms: c.terms.start_ms,
            end_ms: c.terms.end_ms,
            spent_this_period: amount(&state, i128::from(engine.spent(c.seq))),
            spend_cap: (c.terms.spend_cap > 0).then(|| amount(&state, i128::from(c.terms.spend_cap))),
            credit_limit: amount(&state, i128::from(c.terms.credit_limit)),
        })
        .collect();
    Ok(Json(SpendView { lab, escrow: amount(&state, engine.balance(Account::Escrow(lab))), contracts }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteQuery {
    lab: u64,
    contract: String,
    url: String,
    usage: String,
    #[serde(default)]
    at: Option<u64>,
}

fn parse_usage(text: &str) -> Result<Usage, Problem> {
    Usage::parse(text).ok_or_else(|| Problem::bad_request("bad-parameter", format!("unknown use {text:?}")))
}

fn parse_hash(field: &str, text: &str) -> Result<Hash, Problem> {
    hex::decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Problem::bad_request("bad-parameter", format!("{field} must be 64 hex characters")))
}

fn now_ms() -> u64 {
    (tally_ledger::system_clock())()
}

#[derive(Debug, Serialize)]
pub struct QuoteView {
    charge: ChargeView,
}

/// `GET /v1/quote`: what a fetch would cost now, without appending anything.
pub async fn quote(State(state): Shared, caller: Caller, Query(q): Query<QuoteQuery>) -> Result<Response, Problem> {
    caller.may_read(q.lab)?;
    let usage = parse_usage(&q.usage)?;
    let contract = parse_hash("contract", &q.contract)?;
    tally_core::entry::check_canonical_url(&q.url)
        .map_err(|r| Problem::bad_request("bad-parameter", format!("url: {r}")))?;
    let engine = state.ledger.settlement()?;
    match engine.quote(q.lab, &contract, &q.url, usage, q.at.unwrap_or_else(now_ms))? {
        Ok(c) => {
            let period = engine.meta().map_or(0, |m| m.period);
            Ok(Json(QuoteView { charge: charge_view(&state, &contract, period, &c) }).into_response())
        }
        Err(r) => Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY, r.code(), r.to_string())),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessQuery {
    lab: u64,
    publisher: u64,
    #[serde(default)]
    usage: Option<String>,
    #[serde(default)]
    at: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct AccessView {
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    contract: Option<String>,
}

/// `GET /v1/access`: may this lab fetch from this publisher now? Asked by the publisher's
/// edge (or the lab itself).
pub async fn access(
    State(state): Shared,
    caller: Caller,
    Query(q): Query<AccessQuery>,
) -> Result<Json<AccessView>, Problem> {
    if !(caller.sees_all() || caller.participant == q.publisher || caller.participant == q.lab) {
        return Err(Problem::forbidden("the access check is for the publisher, the lab, the collective and auditors"));
    }
    let usage = q.usage.as_deref().map(parse_usage).transpose()?;
    let a = state.ledger.settlement()?.access(q.lab, q.publisher, usage, q.at.unwrap_or_else(now_ms));
    Ok(Json(AccessView { allowed: a.allowed, reason: a.reason, contract: a.contract.map(hex::encode) }))
}

/// `GET /v1/export?from=N`: full entries with their leaf records, streamed from `from` to
/// the committed size when the request arrived (auditors and the collective).
pub async fn export(State(state): Shared, caller: Caller, Query(q): Query<PageQuery>) -> Result<Response, Problem> {
    if !caller.sees_all() {
        return Err(Problem::forbidden("the export is for auditors and the collective"));
    }
    let end = state.ledger.size();
    if q.from > end {
        return Err(Problem::bad_request("out-of-range", format!("from {} is beyond the log's size {end}", q.from)));
    }
    let stream = futures_util::stream::unfold((state, q.from), move |(state, from)| async move {
        if from >= end {
            return None;
        }
        let chunk = {
            let state = state.clone();
            tokio::task::spawn_blocking(move || state.ledger.store().export(from, end, PAGE_ENTRIES_MAX)).await
        };
        match chunk {
            Ok(Ok(records)) => {
                let next = from + records.len() as u64;
                let mut buf = Vec::new();
                for (leaf, entry) in records {
                    buf.extend_from_slice(&(leaf.len() as u32).to_le_bytes());
                    buf.extend_from_slice(&leaf);
                    buf.extend_from_slice(&(entry.len() as u32).to_le_bytes());
                    buf.extend_from_slice(&entry);
                }
                Some((Ok::<Bytes, std::io::Error>(Bytes::from(buf)), (state, next)))
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "export failed");
                Some((Err(std::io::Error::other(e.to_string())), (state, end)))
            }
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), (state, end))),
        }
    });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(EXPORT_MEDIA_TYPE));
    response.headers_mut().insert("tally-export-end", HeaderValue::from(end));
    Ok(response)
}

// ---------------------------------------------------------------------------------------
// Public audit API.

#[derive(Debug, Serialize)]
pub struct InfoView {
    origin: String,
    collective_key: String,
    asset_code: String,
    asset_scale: u8,
    size: u64,
    period: u32,
}

/// `GET /v1/info`: what this ledger is (unauthenticated and unverified: clients pin the
/// origin and key from elsewhere and use this only for display and the asset's scale).
pub async fn info(State(state): Shared) -> Result<Json<InfoView>, Problem> {
    let g = state
        .ledger
        .genesis()
        .ok_or_else(|| Problem::not_found("no-genesis", "the ledger has no genesis entry yet"))?;
    let period = state.ledger.settlement()?.meta().map_or(0, |m| m.period);
    Ok(Json(InfoView {
        origin: g.origin,
        collective_key: hex::encode(g.collective_key.as_bytes()),
        asset_code: g.asset_code,
        asset_scale: g.asset_scale,
        size: state.ledger.size(),
        period,
    }))
}

/// `GET /checkpoint`: the newest signed checkpoint (C2SP tlog-checkpoint).
pub async fn checkpoint(State(state): Shared) -> Result<Response, Problem> {
    let (_, note) = state
        .ledger
        .latest_checkpoint()
        .ok_or_else(|| Problem::not_found("no-checkpoint", "the log has no checkpoint yet"))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], note)
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointsQuery {
    #[serde(default)]
    from_size: u64,
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct CheckpointView {
    size: u64,
    note: String,
}

#[derive(Debug, Serialize)]
pub struct CheckpointsView {
    checkpoints: Vec<CheckpointView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_from_size: Option<u64>,
}

/// `GET /v1/checkpoints?from_size=N`: every checkpoint the log signed, in size order (for
/// auditors and witnesses; each is public anyway).
pub async fn checkpoints(
    State(state): Shared,
    Query(q): Query<CheckpointsQuery>,
) -> Result<Json<CheckpointsView>, Problem> {
    let limit = q.limit.unwrap_or(PAGE_ENTRIES_MAX).clamp(1, PAGE_ENTRIES_MAX);
    let mut found = state.ledger.store().checkpoints(q.from_size, limit + 1)?;
    let next_from_size = (found.len() > limit).then(|| found[limit].0);
    found.truncate(limit);
    let checkpoints = found.into_iter().map(|(size, note)| CheckpointView { size, note }).collect();
    Ok(Json(CheckpointsView { checkpoints, next_from_size }))
}

/// `GET /tile/...`: tiles and entry bundles (C2SP tlog-tiles).
pub async fn tile(State(state): Shared, Path(path): Path<String>) -> Result<Response, Problem> {
    let full = format!("tile/{path}");
    let parsed = TilePath::parse(&full)
        .ok_or_else(|| Problem::not_found("bad-tile-path", format!("{full} is not a tlog-tiles path")))?;
    let bytes = match parsed {
        TilePath::Hashes { level, index, width } => state.ledger.tile(level, index, width)?,
        TilePath::Entries { index, width } => state.ledger.entry_bundle(index, width)?,
    };
    // A full tile never changes; a partial one is replaced by a wider one as the log grows,
    // but a given partial path's bytes never change either: every path is immutable.
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    size: u64,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    leaf_hash: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct InclusionView {
    index: u64,
    size: u64,
    leaf_hash: String,
    /// Sibling hashes, leaf side first, base64.
    proof: Vec<String>,
}

/// `GET /v1/proof/inclusion?size=S&index=N` or `&leaf_hash=<hex>`.
pub async fn inclusion(State(state): Shared, Query(q): Query<InclusionQuery>) -> Result<Json<InclusionView>, Problem> {
    let store = state.ledger.store();
    let index = match (q.index, &q.leaf_hash) {
        (Some(i), None) => i,
        (None, Some(h)) => state
            .ledger
            .seq_of_leaf(&parse_hash("leaf_hash", h)?)?
            .ok_or_else(|| Problem::not_found("unknown-leaf", "no leaf with that hash"))?,
        _ => return Err(Problem::bad_request("bad-parameter", "give exactly one of index or leaf_hash")),
    };
    let proof = state.ledger.inclusion_proof(index, q.size)?;
    let leaf: LeafRecord = store.leaf(index)?.ok_or_else(|| Problem::from(missing(index)))?;
    Ok(Json(InclusionView {
        index,
        size: q.size,
        leaf_hash: hex::encode(leaf.leaf_hash()),
        proof: proof.iter().map(|h| B64.encode(h)).collect(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    first: u64,
    second: u64,
}

#[derive(Debug, Serialize)]
pub struct ConsistencyView {
    first: u64,
    second: u64,
    proof: Vec<String>,
}

/// `GET /v1/proof/consistency?first=M&second=N`.
pub async fn consistency(
    State(state): Shared,
    Query(q): Query<ConsistencyQuery>,
) -> Result<Json<ConsistencyView>, Problem> {
    let proof = state.ledger.consistency_proof(q.first, q.second)?;
    Ok(Json(ConsistencyView { first: q.first, second: q.second, proof: proof.iter().map(|h| B64.encode(h)).collect() }))
}

// ---------------------------------------------------------------------------------------
// Operations.

/// `GET /healthz`: the process serves requests.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: the ledger is open and its sequencer has not stopped.
pub async fn readyz(State(state): Shared) -> Result<&'static str, Problem> {
    drop(state.ledger.settlement().map_err(|_| Problem::unavailable("not-ready", "the sequencer has stopped"))?);
    Ok("ready\n")
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(state): Shared) -> Response {
    let memory = state.ledger.store().memory().ok();
    let text = state.metrics.render(state.ledger.size(), memory.as_ref());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI).into_response()
}

/// Any other path.
pub async fn not_found() -> Problem {
    Problem::not_found("not-found", "no such resource; see /openapi.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefer(fields: &[&str]) -> Answer {
        let mut headers = HeaderMap::new();
        for f in fields {
            headers.append("prefer", HeaderValue::from_str(f).unwrap());
        }
        preferred_answer(&headers)
    }

    #[test]
    fn return_minimal_in_any_spelling_rfc_7240_allows() {
        assert_eq!(prefer(&[]), Answer::Full);
        assert_eq!(prefer(&["return=minimal"]), Answer::Minimal);
        assert_eq!(prefer(&["Return = \"MINIMAL\""]), Answer::Minimal);
        assert_eq!(prefer(&["respond-async, wait=10, return=minimal; foo=bar"]), Answer::Minimal);
        assert_eq!(prefer(&["handling=lenient", "return=minimal"]), Answer::Minimal);
    }

    #[test]
    fn anything_else_gets_the_full_answer() {
        assert_eq!(prefer(&["return=representation"]), Answer::Full);
        // Contradictory preferences: the full answer is always correct to send.
        assert_eq!(prefer(&["return=minimal", "return=representation"]), Answer::Full);
        assert_eq!(prefer(&["return=minimal, return=representation"]), Answer::Full);
        // Not the `return` preference, or not its value.
        assert_eq!(prefer(&["returns=minimal"]), Answer::Full);
        assert_eq!(prefer(&["return=minimalist"]), Answer::Full);
        assert_eq!(prefer(&["x; return=minimal"]), Answer::Full);
        assert_eq!(prefer(&["return"]), Answer::Full);
    }
}
