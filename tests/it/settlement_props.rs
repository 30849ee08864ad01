//! Property tests of the settlement engine over long random sequences of entries, valid
//! and invalid: postings always sum to zero, balances always equal deposits less confirmed
//! payouts, a rejected entry changes nothing (not even a pending write), and replaying the
//! appended entries from empty state, or reopening the engine from its stored state part
//! way through, gives the same state root bytes.

use proptest::prelude::*;
use tally_core::codec::{List, Text};
use tally_core::decimal::Dec;
use tally_core::entry::{Body, Entry, Receipt, ReceiptCore, Usage, VerifiedEntry};
use tally_core::kinds::*;
use tally_core::sig::SigningKey;
use tally_settlement::{Account, Engine, MemoryStore, StateError, StateStore};
use tally_tests::{collective_key, genesis, participant_key, verified};

const LABS: [u64; 3] = [1, 2, 3];
const PUBLISHERS: [u64; 5] = [10, 11, 12, 13, 14];
const FEDERATED: u64 = 50;
const START_MS: u64 = 1_767_225_600_000;
const DAY_MS: u64 = 86_400_000;

fn key(id: u64) -> SigningKey {
    if id == COLLECTIVE_ID { collective_key() } else { participant_key(id) }
}

fn url(i: u8) -> String {
    match i % 8 {
        0..=3 => format!("https://planet.example/news/{i}"),
        4 => format!("https://planet.example/premium/{i}"),
        5 => format!("https://journal.example/paper/{i}"),
        6 => format!("https://syndicated.example/{i}"),
        _ => format!("https://nobody.example/{i}"),
    }
}

/// The exact pattern of `url(i)`, or a prefix of it: its section or its site, which the
/// receipts of many other articles also fall under.
fn pattern(i: u8, prefix: bool) -> UrlPattern {
    let url = url(i);
    if !prefix {
        return UrlPattern::exact(&url).unwrap();
    }
    let section = &url[..=url.rfind('/').unwrap()];
    let site = &url[..=url["https://".len()..].find('/').unwrap() + "https://".len()];
    UrlPattern::prefix(if i.is_multiple_of(2) { section } else { site }).unwrap()
}

fn terms(lab: u64, kind: u8) -> ContractTerms {
    let d = |s: &str| Dec::parse(s).unwrap();
    ContractTerms {
        lab,
        name: Text::new(format!("contract {lab}/{kind}")).unwrap(),
        scope: List::new(if kind == 1 { vec![Usage::AiTrain, Usage::Search] } else { vec![Usage::AiAll] }).unwrap(),
        start_ms: START_MS,
        end_ms: START_MS + 60 * DAY_MS,
        licence: if kind == 2 { Licence::Blanket { fee: 50_000_000 } } else { Licence::Transactional },
        basis: if kind == 1 { ChargeBasis::OncePerArticle } else { ChargeBasis::EveryFetch },
        rate: Rate { per_article: d("0.0013"), per_kwords: d("0.00077") },
        tier_multipliers: [d("1.75"), Dec::ONE, d("0.33")],
        rate_table: List::new(vec![RateRule {
            pattern: UrlPattern::prefix("https://planet.example/premium/").unwrap(),
            rate: Rate { per_article: d("0.011"), per_kwords: Dec::ZERO },
        }])
        .unwrap(),
        free_paths: List::new(vec![UrlPattern::exact("https://planet.example/news/3").unwrap()]).unwrap(),
        spend_cap: if kind == 1 { 30_000 } else { 0 },
        credit_limit: 20_000,
        fee_bps: 1250 + u16::from(kind) * 500,
        distribution: match lab {
            1 => Distribution::PerUsage,
            2 => Distribution::Hybrid { base_bps: 3333 },
            _ => Distribution::Tiered {
                levels: List::new(vec![
                    TierLevel { min_articles: 1000, share_bps: 5000 },
                    TierLevel { min_articles: 10, share_bps: 3000 },
                ])
                .unwrap(),
            },
        },
        unregistered_words: 700,
    }
}

fn register(pattern: UrlPattern, articles: u32, tier: Tier, partners: Vec<Partner>, n: u8) -> Body {
    Body::Register(Register {
        pattern,
        articles,
        words: 300 + u32::from(n) * 97,
        tier,
        uniqueness_bps: 7000,
        partners: List::new(partners).unwrap(),
        nonce: [n; 16],
    })
}

/// The fixed opening: participants, registrations, three contracts per lab, deposits.
fn opening() -> Vec<(u64, Body)> {
    let c = COLLECTIVE_ID;
    let mut out = Vec::new();
    for id in LABS {
        out.push((
            c,
            Body::Admit(Admit {
                participant: id,
                role: Role::Lab,
                key: key(id).public_bytes(),
                name: Text::new("lab").unwrap(),
            }),
        ));
    }
    for id in PUBLISHERS {
        out.push((
            c,
            Body::Admit(Admit {
                participant: id,
                role: Role::Publisher,
                key: key(id).public_bytes(),
                name: Text::new("pub").unwrap(),
            }),
        ));
    }
    out.push((
        c,
        Body::Admit(Admit {
            participant: FEDERATED,
            role: Role::Federated,
            key: key(FEDERATED).public_bytes(),
            name: Text::new("fed").unwrap(),
        }),
    ));
    out.push((10, register(UrlPattern::prefix("https://planet.example/").unwrap(), 5000, Tier::Standard, vec![], 1)));
    out.push((
        10,
        register(UrlPattern::prefix("https://planet.example/premium/").unwrap(), 40, Tier::Premium, vec![], 2),
    ));
    out.push((
        11,
        register(
            UrlPattern::prefix("https://syndicated.example/").unwrap(),
            300,
            Tier::Commodity,
            vec![Partner { participant: 12, share_bps: 3333 }, Partner { participant: 13, share_bps: 1111 }],
            3,
        ),
    ));
    out.push((
        FEDERATED,
        register(UrlPattern::prefix("https://journal.example/").unwrap(), 20, Tier::Premium, vec![], 4),
    ));
    for lab in LABS {
        for kind in 0..3 {
            out.push((c, Body::Contract(terms(lab, kind))));
            out.push((lab, Body::Accept(Accept { contract_id: terms(lab, kind).id() })));
        }
        out.push((
            c,
            Body::Deposit(Deposit {
                participant: lab,
                amount: 100_000_000,
                reference: Text::new(format!("open-{lab}")).unwrap(),
            }),
        ));
    }
    out
}

#[derive(Debug, Clone)]
enum Op {
    /// `fault` below 4 makes the receipt invalid in one way (unknown lab, unknown contract,
    /// wrong signer, fetched long ago); otherwise it is well-formed.
    Receipt {
        lab: u8,
        contract: u8,
        url: u8,
        usage: u8,
        fault: u8,
        back_ms: u32,
    },
    Deposit {
        lab: u8,
        amount: u32,
    },
    Close {
        payout_min: u32,
    },
    Payout {
        pick: u8,
        confirm: bool,
    },
    Dispute {
        pick: u8,
        by_publisher: bool,
    },
    Resolve {
        pick: u8,
        reverse: bool,
    },
    Reserve {
        url: u8,
        usage: u8,
        on: bool,
        prefix: bool,
    },
    Suspend {
        who: u8,
        on: bool,
    },
    Remit {
        publisher: u8,
        amount: u32,
    },
    Claim {
        url: u8,
        by: u8,
    },
    Register {
        url: u8,
        by: u8,
        prefix: bool,
    },
    Wait {
        ms: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        16 => (0..3u8, 0..3u8, any::<u8>(), 0..4u8, 0..20u8, 0..5_000u32).prop_map(|(lab, contract, url, usage, fault, back_ms)| Op::Receipt { lab, contract, url, usage, fault, back_ms }),
        1 => (0..3u8, any::<u32>()).prop_map(|(lab, amount)| Op::Deposit { lab, amount }),
        1 => (0..200_000u32).prop_map(|payout_min| Op::Close { payout_min }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(pick, confirm)| Op::Payout { pick, confirm }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(pick, by_publisher)| Op::Dispute { pick, by_publisher }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(pick, reverse)| Op::Resolve { pick, reverse }),
        1 => (any::<u8>(), 0..6u8, any::<bool>(), prop::bool::weighted(0.3)).prop_map(|(url, usage, on, prefix)| Op::Reserve { url, usage, on, prefix }),
        1 => (0..9u8, prop::bool::weighted(0.3)).prop_map(|(who, on)| Op::Suspend { who, on }),
        1 => (0..6u8, 0..1_000_000u32).prop_map(|(publisher, amount)| Op::Remit { publisher, amount }),
        1 => (any::<u8>(), 0..5u8).prop_map(|(url, by)| Op::Claim { url, by }),
        1 => (any::<u8>(), 0..5u8, prop::bool::weighted(0.3)).prop_map(|(url, by, prefix)| Op::Register { url, by, prefix }),
        2 => (0..3 * DAY_MS as u32).prop_map(|ms| Op::Wait { ms }),
    ]
}

struct World {
    engine: Engine<MemoryStore>,
    appended: Vec<(VerifiedEntry, u64)>,
    /// Every entry offered, appended or rejected, with its time.
    offered: Vec<(VerifiedEntry, u64)>,
    clock: u64,
    receipts: Vec<u64>,
    nonce: u64,
    rejections: usize,
    codes: std::collections::BTreeMap<&'static str, usize>,
}

impl World {
    /// Empty state, then genesis and the opening entries, with nonces from `nonce` up.
    fn opened(nonce: u64) -> Self {
        let mut w = World {
            engine: Engine::open(MemoryStore::default()).unwrap(),
            appended: Vec::new(),
            offered: Vec::new(),
            clock: START_MS,
            receipts: Vec::new(),
            nonce,
            rejections: 0,
            codes: Default::default(),
        };
        w.apply(COLLECTIVE_ID, genesis(&collective_key()).body().clone());
        for (author, body) in opening() {
            w.apply(author, body);
        }
        w
    }

    fn apply(&mut self, author: u64, body: Body) {
        let entry = verified(Entry::sign(&key(author), body).expect("generated entries are well-formed"));
        let seq = self.appended.len() as u64;
        let kind = entry.kind();
        let root = self.engine.state_root();
        self.offered.push((entry.clone(), self.clock));
        match self.engine.apply(&entry, seq, self.clock).expect("memory state does not fail") {
            Ok(effect) => {
                assert_eq!(effect.postings.iter().map(|p| p.amount).sum::<i128>(), 0, "postings sum to zero");
                if entry.receipt_id().is_some() {
                    self.receipts.push(seq);
                }
                self.appended.push((entry, self.clock));
                let writes = self.engine.take_writes();
                self.engine.store_mut().apply(writes);
            }
            Err(r) => {
                self.rejections += 1;
                *self.codes.entry(r.code()).or_insert(0) += 1;
                assert_eq!(self.engine.state_root(), root, "a rejection changes nothing");
                assert!(self.engine.take_writes().is_empty(), "a rejection leaves no write behind");
            }
        }
        self.engine.check_invariants().unwrap_or_else(|e| panic!("after {kind:?}: {e}"));
        let world = self.engine.balance(Account::World);
        let inside: i128 = self.engine.balances().filter(|(a, _)| **a != Account::World).map(|(_, b)| *b).sum();
        assert_eq!(inside, -world, "every unit inside the ledger came from a deposit and has not been paid out");
    }

    fn fresh(&mut self) -> [u8; 16] {
        self.nonce += 1;
        let mut n = [0u8; 16];
        n[..8].copy_from_slice(&self.nonce.to_le_bytes());
        n
    }

    fn run(&mut self, op: &Op) {
        self.clock += 1000;
        let c = COLLECTIVE_ID;
        match *op {
            Op::Wait { ms } => self.clock += u64::from(ms),
            Op::Receipt { lab, contract, url: u, usage, fault, back_ms } => {
                let lab_id = if fault == 0 { 4 } else { u64::from(lab) + 1 }; // lab 4 was never admitted
                let contract_id = if fault == 1 { [9; 32] } else { terms(lab_id.min(3), contract).id() };
                let author = if fault == 2 { 1 + lab_id % 3 } else { lab_id };
                let back_ms = if fault == 3 { 5 * DAY_MS as u32 } else { back_ms };
                let core = ReceiptCore {
                    lab_id,
                    contract_id,
                    url: Text::new(url(u)).unwrap(),
                    content_sha256: [u; 32],
                    response_bytes: 1000,
                    fetch_time_ms: self.clock.saturating_sub(u64::from(back_ms)),
                    usage: [Usage::AiTrain, Usage::AiInput, Usage::AiIndex, Usage::Search][usize::from(usage)],
                    nonce: self.fresh(),
                };
                self.apply(author, Body::Receipt(Receipt { core, delivery: None }));
            }
            Op::Deposit { lab, amount } => {
                let reference = Text::new(format!("dep-{}", self.fresh()[0])).unwrap();
                let participant = if lab == 2 { FEDERATED } else { u64::from(lab) + 1 };
                self.apply(c, Body::Deposit(Deposit { participant, amount: u64::from(amount) + 1, reference }))
            }
            Op::Close { payout_min } => {
                let period = self.engine.meta().unwrap().period;
                self.apply(
                    c,
                    Body::ClosePeriod(ClosePeriod { period, cutoff_ms: self.clock, payout_min: u64::from(payout_min) }),
                )
            }
            Op::Payout { pick, confirm } => {
                let pending: Vec<(u32, u64)> = self.engine.pending_payouts().map(|(k, _)| *k).collect();
                let (period, participant) =
                    pending.get(usize::from(pick) % pending.len().max(1)).copied().unwrap_or((0, 10));
                let outcome = if confirm {
                    PayoutOutcome::Confirmed { reference: Text::new("ok").unwrap() }
                } else {
                    PayoutOutcome::Failed { reason: Text::new("bounced").unwrap() }
                };
                self.apply(c, Body::PayoutResult(PayoutResult { period, participant, outcome }))
            }
            Op::Dispute { pick, by_publisher } => {
                let Some(&seq) = self.receipts.get(usize::from(pick) % self.receipts.len().max(1)) else { return };
                let rec = self.engine.charge(seq).unwrap().unwrap();
                let by = if by_publisher { PUBLISHERS[usize::from(pick) % 5] } else { rec.lab };
                let nonce = self.fresh();
                self.apply(by, Body::Dispute(Dispute { receipt_seq: seq, reason: Text::new("why").unwrap(), nonce }))
            }
            Op::Resolve { pick, reverse } => {
                let Some(&seq) = self.receipts.get(usize::from(pick) % self.receipts.len().max(1)) else { return };
                let resolution = if reverse { Resolution::Reverse } else { Resolution::Uphold };
                let nonce = self.fresh();
                self.apply(
                    c,
                    Body::Resolve(Resolve { receipt_seq: seq, resolution, note: Text::new("n").unwrap(), nonce }),
                )
            }
            Op::Reserve { url: u, usage, on, prefix } => {
                let nonce = self.fresh();
                let pattern = pattern(u, prefix);
                self.apply(
                    10,
                    Body::Reserve(Reserve { pattern, usage: Usage::ALL[usize::from(usage)], reserved: on, nonce }),
                )
            }
            Op::Suspend { who, on } => {
                let participant = [1, 2, 3, 10, 11, 12, 13, 14, FEDERATED][usize::from(who)];
                let change = if on { ParticipantChange::Suspend } else { ParticipantChange::Reinstate };
                let nonce = self.fresh();
                self.apply(c, Body::UpdateParticipant(UpdateParticipant { participant, change, nonce }))
            }
            Op::Remit { publisher, amount } => {
                let participant = if publisher == 5 { 1 } else { PUBLISHERS[usize::from(publisher)] };
                let lines = List::new(vec![RemitLine { participant, amount: u64::from(amount) + 1 }]).unwrap();
                let reference = Text::new(format!("remit-{}", self.fresh()[0])).unwrap();
                self.apply(FEDERATED, Body::Remit(Remit { reference, lines }))
            }
            Op::Claim { url: u, by } => {
                self.apply(PUBLISHERS[usize::from(by)], Body::Claim(Claim { url: Text::new(url(u)).unwrap() }))
            }
            Op::Register { url: u, by, prefix } => {
                let by = PUBLISHERS[usize::from(by)];
                let n = self.fresh()[0];
                self.apply(by, register(pattern(u, prefix), 1, Tier::ALL[usize::from(u % 3)], vec![], n))
            }
        }
    }
}

/// A random but valid-and-invalid mix of `ops` operations from `seed`, applied: the
/// logged entries with their sequencer times (for the auditor's tests).
pub fn random_log(seed: u64, ops: usize) -> Vec<(VerifiedEntry, u64)> {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(
        ProptestConfig::default(),
        proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &{
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&seed.to_le_bytes());
            s
        }),
    );
    let ops = prop::collection::vec(op(), ops).new_tree(&mut runner).unwrap().current();
    let mut w = World::opened(seed << 32);
    for op in &ops {
        w.run(op);
    }
    w.appended
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_workloads_keep_the_books(ops in prop::collection::vec(op(), 100..400), reopen_at in any::<prop::sample::Index>()) {
        let mut w = World::opened(0);
        prop_assert_eq!(w.rejections, 0, "the opening is valid");
        let reopen = reopen_at.index(ops.len());
        for (i, op) in ops.iter().enumerate() {
            if i == reopen {
                // Restart from stored state: the engine loads exactly what it wrote.
                let root = w.engine.state_root();
                let store = w.engine.store().clone();
                w.engine = Engine::open(store).unwrap();
                prop_assert_eq!(w.engine.state_root(), root);
            }
            w.run(op);
        }
        // `TALLY_PROP_STATS=1 cargo test --test it settlement_props -- --nocapture` shows the mix.
        if std::env::var("TALLY_PROP_STATS").is_ok() {
            let mut kinds = std::collections::BTreeMap::new();
            for (e, _) in &w.appended { *kinds.entry(e.kind().as_str()).or_insert(0) += 1; }
            eprintln!("appended {kinds:?}, rejected {:?}", w.codes);
        }
        let mut replay = Engine::open(MemoryStore::default()).unwrap();
        for (seq, (entry, time)) in w.appended.iter().enumerate() {
            prop_assert!(replay.apply(entry, seq as u64, *time).unwrap().is_ok(), "replay applies every logged entry");
        }
        prop_assert_eq!(replay.state_root(), w.engine.state_root());
        let writes = replay.take_writes();
        replay.store_mut().apply(writes);
        prop_assert_eq!(replay.store(), w.engine.store(), "replay stores the same bytes");
    }
}

/// A memory store that counts the keys read from it.
#[derive(Default)]
struct Counting {
    inner: MemoryStore,
    reads: std::cell::Cell<usize>,
}

impl StateStore for Counting {
    // As the node's store says, so that the engine reads ahead.
    const BATCHED_READS: bool = true;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.reads.set(self.reads.get() + 1);
        self.inner.get(key)
    }

    fn scan(&self, prefix: u8) -> Result<tally_settlement::state::Pairs, StateError> {
        self.inner.scan(prefix)
    }
}

/// Apply `offered` in groups of the given sizes, committing after each group as the node
/// does, reading ahead with [`Engine::prefetch`] or not: every outcome, in order.
fn apply_in_groups(
    engine: &mut Engine<Counting>,
    offered: &[(VerifiedEntry, u64)],
    sizes: &[usize],
    read_ahead: bool,
) -> Vec<Result<tally_settlement::Effect, tally_settlement::Rejection>> {
    let mut outcomes = Vec::new();
    let mut seq = 0;
    let mut rest = offered;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (group, tail) = rest.split_at((*size).min(rest.len()));
        rest = tail;
        if read_ahead {
            engine.prefetch(group.iter().map(|(e, _)| e)).expect("memory state does not fail");
        }
        let receipts_only = group.iter().all(|(e, _)| matches!(e.body(), Body::Receipt(_)));
        let before = engine.store().reads.get();
        for (entry, time) in group {
            let outcome = engine.apply(entry, seq, *time).expect("memory state does not fail");
            seq += u64::from(outcome.is_ok());
            outcomes.push(outcome);
        }
        if read_ahead && receipts_only {
            // Everything a receipt reads from indexed state was read ahead.
            assert_eq!(engine.store().reads.get(), before, "a receipt read state that was not read ahead");
        }
        let writes = engine.take_writes();
        engine.store_mut().inner.apply(writes);
    }
    outcomes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    /// Reading a group's state ahead changes nothing: the same outcome for every entry
    /// (rejections included), the same state root and the same stored bytes as applying
    /// without it, whatever the group boundaries. Within a group, earlier entries' writes
    /// (a registration, a first fetch's marker, money held) win over what was read ahead.
    #[test]
    fn reading_ahead_changes_no_outcome(
        ops in prop::collection::vec(op(), 100..300),
        sizes in prop::collection::vec(1..40usize, 1..8),
    ) {
        let mut w = World::opened(0);
        for op in &ops {
            w.run(op);
        }
        let mut plain = Engine::open(Counting::default()).unwrap();
        let mut ahead = Engine::open(Counting::default()).unwrap();
        let expected = apply_in_groups(&mut plain, &w.offered, &sizes, false);
        let got = apply_in_groups(&mut ahead, &w.offered, &sizes, true);
        prop_assert_eq!(&got, &expected);
        prop_assert_eq!(got.iter().filter(|o| o.is_ok()).count(), w.appended.len());
        prop_assert_eq!(ahead.state_root(), w.engine.state_root());
        prop_assert_eq!(&ahead.store().inner, w.engine.store());
        prop_assert_eq!(&plain.store().inner, w.engine.store());
    }
}
