//! Runs the worked examples of `specs/settlement.md` (the JSON scenarios in
//! `specs/examples/`): every entry is signed, applied to the engine and checked against the
//! expected charge, rejection code or balances to the last minor unit. Each scenario is
//! then replayed into a fresh engine and through the durable ledger (with the same sequencer
//! times), and all three must reach the same state root.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use tally_core::Hash;
use tally_core::codec::{List, Text};
use tally_core::entry::{Body, Entry, Genesis, Receipt, ReceiptCore, Usage, VerifiedEntry, sign_delivery};
use tally_core::kinds::*;
use tally_core::sig::SigningKey;
use tally_ledger::{Ledger, LedgerConfig, Outcome};
use tally_settlement::terms::{PatternDoc, format_amount, parse_amount, parse_terms};
use tally_settlement::{Account, Engine, MemoryStore};
use tally_tests::{collective_key, participant_key, verified};

/// Sequencer time of the first step: 2026-01-01T00:00:00Z.
pub const CLOCK_START_MS: u64 = 1_767_225_600_000;
const SCALE: u8 = 6;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub title: String,
    pub steps: Vec<Step>,
}

/// One step: an action, optionally at a given sequencer time, optionally expected to be
/// rejected with a code.
#[derive(Debug, Deserialize)]
pub struct Step {
    #[serde(flatten)]
    action: Action,
    #[serde(default)]
    time: Option<u64>,
    #[serde(default)]
    reject: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartnerDoc {
    id: u64,
    share_bps: u16,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
enum Action {
    Admit {
        id: u64,
        role: String,
        name: String,
    },
    Update {
        id: u64,
        change: String,
    },
    Deposit {
        to: u64,
        amount: String,
        reference: String,
    },
    Register {
        by: u64,
        #[serde(flatten)]
        pattern: PatternDoc,
        #[serde(default)]
        articles: Option<u32>,
        words: u32,
        tier: String,
        #[serde(default)]
        partners: Vec<PartnerDoc>,
    },
    Reserve {
        by: u64,
        #[serde(flatten)]
        pattern: PatternDoc,
        usage: String,
        #[serde(default = "yes")]
        reserved: bool,
    },
    Contract {
        name: String,
        terms: serde_json::Value,
    },
    Accept {
        by: u64,
        contract: String,
    },
    Receipt {
        by: u64,
        contract: String,
        url: String,
        #[serde(default)]
        usage: Option<String>,
        #[serde(default)]
        at: Option<u64>,
        #[serde(default)]
        label: Option<String>,
        #[serde(default)]
        delivered_by: Option<u64>,
        #[serde(default)]
        charge: Option<String>,
        #[serde(default)]
        fee: Option<String>,
        #[serde(default)]
        flags: Vec<String>,
    },
    Quote {
        lab: u64,
        contract: String,
        url: String,
        usage: String,
        charge: String,
    },
    Close {
        period: u32,
        cutoff: u64,
        #[serde(default)]
        payout_min: Option<String>,
    },
    Payout {
        period: u32,
        to: u64,
        #[serde(default)]
        confirmed: Option<String>,
        #[serde(default)]
        failed: Option<String>,
    },
    Dispute {
        by: u64,
        receipt: String,
    },
    Resolve {
        receipt: String,
        resolution: String,
    },
    Claim {
        by: u64,
        url: String,
    },
    Remit {
        by: u64,
        lines: BTreeMap<String, String>,
    },
    Access {
        lab: u64,
        publisher: u64,
        #[serde(default)]
        usage: Option<String>,
        #[serde(default)]
        at: Option<u64>,
        expect: String,
    },
    Expect {
        balances: BTreeMap<String, String>,
        #[serde(default)]
        payouts: BTreeMap<String, String>,
    },
}

fn yes() -> bool {
    true
}

fn amount(text: &str) -> i128 {
    match text.strip_prefix('-') {
        Some(t) => -i128::from(parse_amount(t, SCALE).expect("scenario amount")),
        None => i128::from(parse_amount(text, SCALE).expect("scenario amount")),
    }
}

/// Current signing keys by participant; a rotation replaces one.
struct Keys(HashMap<u64, SigningKey>);

impl Keys {
    fn get(&self, id: u64) -> SigningKey {
        match self.0.get(&id) {
            Some(k) => SigningKey::from_seed(&k.seed()),
            None if id == COLLECTIVE_ID => collective_key(),
            None => participant_key(id),
        }
    }
}

/// What the ledger must answer for one submitted entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Appended,
    Duplicate,
    Rejected(String),
}

/// The result of running a scenario: the entries appended with their sequencer times, and
/// every entry submitted (including refused ones) with what the ledger must answer.
pub struct Run {
    pub appended: Vec<(VerifiedEntry, u64)>,
    pub attempts: Vec<(Entry, u64, Expected)>,
    pub engine: Engine<MemoryStore>,
}

fn genesis_entry() -> Entry {
    let g = Genesis {
        origin: Text::new(tally_tests::ORIGIN).unwrap(),
        collective_name: Text::new("Example Collective").unwrap(),
        collective_key: collective_key().public_bytes(),
        asset_code: Text::new("USD").unwrap(),
        asset_scale: SCALE,
        created_ms: CLOCK_START_MS,
    };
    Entry::sign(&collective_key(), Body::Genesis(g)).unwrap()
}

/// Run a scenario, checking every expectation; panics with the step number on a mismatch.
pub fn run(name: &str, scenario: &Scenario) -> Run {
    let mut engine = Engine::open(MemoryStore::default()).unwrap();
    let mut appended = Vec::new();
    let mut attempts = Vec::new();
    let mut clock = CLOCK_START_MS;
    let mut contracts: HashMap<String, Hash> = HashMap::new();
    let mut receipts: HashMap<String, u64> = HashMap::new();
    let mut nonce = 0u64;
    let mut keys = Keys(HashMap::new());
    let mut rotated: Option<(u64, SigningKey)> = None;
    let mut dedup = std::collections::HashSet::new();
    let g = verified(genesis_entry());
    engine.apply(&g, 0, clock).unwrap().unwrap();
    attempts.push((g.entry().clone(), clock, Expected::Appended));
    appended.push((g, clock));
    for (i, step) in scenario.steps.iter().enumerate() {
        let at = format!("{name} step {}", i + 1);
        clock = step.time.map_or(clock + 1, |t| {
            assert!(t >= clock, "{at}: time goes forward");
            t
        });
        nonce += 1;
        let mut fresh = [0u8; 16];
        fresh[..8].copy_from_slice(&nonce.to_le_bytes());
        let contract = |n: &str| *contracts.get(n).unwrap_or_else(|| panic!("{at}: no contract {n:?}"));
        let (author, body, expect_charge) = match &step.action {
            Action::Admit { id, role, name } => (
                COLLECTIVE_ID,
                Body::Admit(Admit {
                    participant: *id,
                    role: Role::parse(role).unwrap_or_else(|| panic!("{at}: role {role}")),
                    key: keys.get(*id).public_bytes(),
                    name: Text::new(name.as_str()).unwrap(),
                }),
                None,
            ),
            Action::Update { id, change } => {
                let change = match change.as_str() {
                    "suspend" => ParticipantChange::Suspend,
                    "reinstate" => ParticipantChange::Reinstate,
                    "revoke" => ParticipantChange::RevokeKey,
                    "rotate" => {
                        let new = participant_key(id + 1_000_000 * (1 + keys.0.len() as u64));
                        let change = ParticipantChange::RotateKey(new.public_bytes());
                        rotated = Some((*id, new));
                        change
                    }
                    other => panic!("{at}: change {other}"),
                };
                (
                    COLLECTIVE_ID,
                    Body::UpdateParticipant(UpdateParticipant { participant: *id, change, nonce: fresh }),
                    None,
                )
            }
            Action::Deposit { to, amount: a, reference } => (
                COLLECTIVE_ID,
                Body::Deposit(Deposit {
                    participant: *to,
                    amount: parse_amount(a, SCALE).unwrap(),
                    reference: Text::new(reference.as_str()).unwrap(),
                }),
                None,
            ),
            Action::Register { by, pattern, articles, words, tier, partners } => (
                *by,
                Body::Register(Register {
                    pattern: pattern.to_pattern(&at).unwrap_or_else(|e| panic!("{e}")),
                    articles: articles.unwrap_or(1),
                    words: *words,
                    tier: Tier::parse(tier).unwrap_or_else(|| panic!("{at}: tier {tier}")),
                    uniqueness_bps: 5000,
                    partners: List::new(
                        partners.iter().map(|p| Partner { participant: p.id, share_bps: p.share_bps }).collect(),
                    )
                    .unwrap(),
                    nonce: fresh,
                }),
                None,
            ),
            Action::Reserve { by, pattern, usage, reserved } => (
                *by,
                Body::Reserve(Reserve {
                    pattern: pattern.to_pattern(&at).unwrap_or_else(|e| panic!("{e}")),
                    usage: Usage::parse(usage).unwrap(),
                    reserved: *reserved,
                    nonce: fresh,
                }),
                None,
            ),
            Action::Contract { name: n, terms } => {
                let terms = parse_terms(&terms.to_string(), SCALE).unwrap_or_else(|e| panic!("{at}: {e}"));
                contracts.insert(n.clone(), terms.id());
                (COLLECTIVE_ID, Body::Contract(terms), None)
            }
            Action::Accept { by, contract: c } => (*by, Body::Accept(Accept { contract_id: contract(c) }), None),
            Action::Receipt { by, contract: c, url, usage, at: fetch, label, delivered_by, charge, fee, flags } => {
                let core = ReceiptCore {
                    lab_id: *by,
                    contract_id: contract(c),
                    url: Text::new(url.as_str()).unwrap(),
                    content_sha256: [7; 32],
                    response_bytes: 10_000,
                    fetch_time_ms: fetch.unwrap_or(clock),
                    usage: Usage::parse(usage.as_deref().unwrap_or("ai-train")).unwrap(),
                    nonce: fresh,
                };
                let delivery = delivered_by.map(|p| sign_delivery(&keys.get(p), &core));
                if let Some(l) = label {
                    receipts.insert(l.clone(), appended.len() as u64);
                }
                (*by, Body::Receipt(Receipt { core, delivery }), Some((charge.clone(), fee.clone(), flags.clone())))
            }
            Action::Quote { lab, contract: c, url, usage, charge } => {
                let q = engine.quote(*lab, &contract(c), url, Usage::parse(usage).unwrap(), clock).unwrap();
                let q = q.unwrap_or_else(|r| panic!("{at}: quote rejected: {}", r.code()));
                assert_eq!(i128::from(q.amount), amount(charge), "{at}: quote");
                continue;
            }
            Action::Close { period, cutoff, payout_min } => (
                COLLECTIVE_ID,
                Body::ClosePeriod(ClosePeriod {
                    period: *period,
                    cutoff_ms: *cutoff,
                    payout_min: payout_min.as_deref().map_or(0, |m| parse_amount(m, SCALE).unwrap()),
                }),
                None,
            ),
            Action::Payout { period, to, confirmed, failed } => {
                let outcome = match (confirmed, failed) {
                    (Some(r), None) => PayoutOutcome::Confirmed { reference: Text::new(r.as_str()).unwrap() },
                    (None, Some(r)) => PayoutOutcome::Failed { reason: Text::new(r.as_str()).unwrap() },
                    _ => panic!("{at}: a payout is confirmed or failed"),
                };
                (COLLECTIVE_ID, Body::PayoutResult(PayoutResult { period: *period, participant: *to, outcome }), None)
            }
            Action::Dispute { by, receipt } => (
                *by,
                Body::Dispute(Dispute {
                    receipt_seq: receipts[receipt],
                    reason: Text::new("contested").unwrap(),
                    nonce: fresh,
                }),
                None,
            ),
            Action::Resolve { receipt, resolution } => (
                COLLECTIVE_ID,
                Body::Resolve(Resolve {
                    receipt_seq: receipts[receipt],
                    resolution: Resolution::parse(resolution).unwrap(),
                    note: Text::new("decided").unwrap(),
                    nonce: fresh,
                }),
                None,
            ),
            Action::Claim { by, url } => (*by, Body::Claim(Claim { url: Text::new(url.as_str()).unwrap() }), None),
            Action::Remit { by, lines } => (
                *by,
                Body::Remit(Remit {
                    reference: Text::new("remittance").unwrap(),
                    lines: List::new(
                        lines
                            .iter()
                            .map(|(p, a)| RemitLine {
                                participant: p.parse().unwrap(),
                                amount: parse_amount(a, SCALE).unwrap(),
                            })
                            .collect(),
                    )
                    .unwrap(),
                }),
                None,
            ),
            Action::Access { lab, publisher, usage, at: when, expect } => {
                let a = engine.access(
                    *lab,
                    *publisher,
                    usage.as_deref().map(|u| Usage::parse(u).unwrap()),
                    when.unwrap_or(clock),
                );
                let got = if a.allowed { "allowed" } else { a.reason.unwrap() };
                assert_eq!(got, expect, "{at}: access");
                continue;
            }
            Action::Expect { balances, payouts } => {
                let got: BTreeMap<String, String> =
                    engine.balances().map(|(a, b)| (a.label(), format_amount(*b, SCALE))).collect();
                let want: BTreeMap<String, String> = balances
                    .iter()
                    .map(|(a, b)| {
                        assert!(Account::parse(a).is_some(), "{at}: account {a}");
                        (a.clone(), format_amount(amount(b), SCALE))
                    })
                    .collect();
                assert_eq!(got, want, "{at}: balances");
                for (k, v) in payouts {
                    let (period, party) = k.split_once(':').expect("payouts are keyed period:participant");
                    let p = engine.payout(period.parse().unwrap(), party.parse().unwrap()).unwrap();
                    let p = p.unwrap_or_else(|| panic!("{at}: no payout {k}"));
                    let status = ["pending", "confirmed", "failed"][usize::from(p.status)];
                    let (want, want_status) = v.split_once(' ').unwrap_or((v, "pending"));
                    assert_eq!((p.amount as i128, status), (amount(want), want_status), "{at}: payout {k}");
                }
                engine.check_invariants().unwrap_or_else(|e| panic!("{at}: {e}"));
                continue;
            }
        };
        let entry = verified(Entry::sign(&keys.get(author), body).unwrap_or_else(|e| panic!("{at}: {e}")));
        let seq = appended.len() as u64;
        let expected = match step.reject.as_deref() {
            None => Expected::Appended,
            Some("duplicate") => Expected::Duplicate,
            Some(code) => Expected::Rejected(code.to_string()),
        };
        attempts.push((entry.entry().clone(), clock, expected));
        if dedup.contains(&entry.dedup_id()) {
            // The ledger answers an entry it already has with the original, before settlement.
            assert_eq!(step.reject.as_deref(), Some("duplicate"), "{at}: the ledger answers this entry as a duplicate");
            continue;
        }
        let before = engine.state_root();
        let result = engine.apply(&entry, seq, clock).unwrap();
        match (&step.reject, result) {
            (Some(code), Err(r)) => {
                rotated = None;
                assert_eq!(r.code(), code, "{at}: rejection");
                assert_eq!(engine.state_root(), before, "{at}: a rejection changes nothing");
                if let Some(l) = match &step.action {
                    Action::Receipt { label, .. } => label.as_ref(),
                    _ => None,
                } {
                    receipts.remove(l);
                }
            }
            (Some(code), Ok(_)) => panic!("{at}: expected rejection {code}, but it was applied"),
            (None, Err(r)) => panic!("{at}: rejected: {} ({r})", r.code()),
            (None, Ok(effect)) => {
                if let Some((id, new)) = rotated.take() {
                    keys.0.insert(id, new);
                }
                assert_eq!(effect.postings.iter().map(|p| p.amount).sum::<i128>(), 0, "{at}: postings sum to zero");
                if let Some((charge, fee, flags)) = expect_charge {
                    let c = effect.charge.expect("receipts have a charge");
                    if let Some(charge) = charge {
                        assert_eq!(i128::from(c.amount), amount(&charge), "{at}: charge");
                    }
                    if let Some(fee) = fee {
                        assert_eq!(i128::from(c.fee), amount(&fee), "{at}: fee");
                    }
                    assert_eq!(c.flags(), flags, "{at}: flags");
                }
                dedup.insert(entry.dedup_id());
                appended.push((entry, clock));
            }
        }
        let writes = engine.take_writes();
        engine.store_mut().apply(writes);
    }
    Run { appended, attempts, engine }
}

pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/examples")
}

fn load(path: &Path) -> Scenario {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every worked example in `specs/examples/`, by file name.
pub fn all() -> Vec<(String, Scenario)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files.into_iter().map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), load(&p))).collect()
}

/// Every worked example runs, matching to the last unit, and replays to the same state.
#[test]
fn worked_examples_match_to_the_last_unit() {
    let examples = all();
    assert!(examples.len() >= 8, "the spec's worked examples are present");
    for (name, scenario) in &examples {
        let run = run(name, scenario);
        // Replay from empty state: same root.
        let mut replay = Engine::open(MemoryStore::default()).unwrap();
        for (seq, (entry, time)) in run.appended.iter().enumerate() {
            replay.apply(entry, seq as u64, *time).unwrap().unwrap();
        }
        assert_eq!(replay.state_root(), run.engine.state_root(), "{name}: replay reaches the same state root");
        eprintln!("{name}: {} ({} entries) ok", scenario.title, run.appended.len());
    }
}

/// The same entries through the durable ledger, one group per step at the step's time,
/// reach the same state root, which the ledger signs into its checkpoint; a reopen
/// recovers it.
#[test]
fn worked_examples_through_the_ledger() {
    for (name, scenario) in all() {
        let run = run(&name, &scenario);
        let dir = tempfile::tempdir().unwrap();
        let now = Arc::new(AtomicU64::new(0));
        let mut config = LedgerConfig::new(Some(collective_key()));
        config.checkpoint_interval_ms = u64::MAX;
        let clock = now.clone();
        config.clock = Arc::new(move || clock.load(Ordering::SeqCst));
        let ledger = Ledger::open(dir.path(), config).unwrap();
        for (entry, time) in &run.appended {
            now.store(*time, Ordering::SeqCst);
            let out = ledger.append_blocking(vec![entry.clone()]).unwrap();
            assert!(matches!(out[0], Outcome::Appended(..)), "{name}: {out:?}");
        }
        let (_, note) = ledger.checkpoint_blocking().unwrap().unwrap();
        assert_eq!(tally_ledger::state_root_of(&note), Some(run.engine.state_root()), "{name}: signed state root");
        ledger.shutdown();
        let reopened = Ledger::open(dir.path(), LedgerConfig::new(None)).unwrap();
        assert_eq!(reopened.settlement().unwrap().state_root(), run.engine.state_root(), "{name}: after reopen");
    }
}
