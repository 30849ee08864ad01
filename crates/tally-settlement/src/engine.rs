//! The engine: apply one verified entry to the state, producing postings or a rejection.
//!
//! Every handler checks everything first and changes state only after the last check, so
//! a rejected entry changes nothing. The only inputs are the state, the entry, its
//! sequence number and the sequencer's time for it (both from the log itself), so replay
//! from the log reaches the same state byte for byte.

use std::collections::{BTreeMap, HashMap};

use bincode::{Decode, Encode};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use tally_core::Hash;
use tally_core::codec::Text;
use tally_core::decimal::Dec;
use tally_core::entry::{Body, EntryKind, Genesis, NAME_BYTES_MAX, Receipt, URL_BYTES_MAX, Usage, VerifiedEntry};
use tally_core::kinds::*;
use tally_core::sig::PublicKeyBytes;

use crate::money::{Account, Posting, share, share_bps, to_units};
use crate::rejection::Rejection;
use crate::state::{Overlay, Resident, StateError, StateStore, Table, Writes, root_of};

/// How far a receipt's fetch time may be ahead of the sequencer's time.
pub const FETCH_SKEW_MAX_MS: u64 = 5 * 60 * 1000;

// Table prefixes (specs/settlement.md, "State").
const T_META: u8 = 0x01;
const T_PARTICIPANTS: u8 = 0x02;
const T_CONTRACTS: u8 = 0x03;
const T_BALANCES: u8 = 0x04;
const T_PAYOUTS: u8 = 0x05;
const T_DISPUTES: u8 = 0x06;
const T_USAGE: u8 = 0x07;
const T_SPEND: u8 = 0x08;
const I_PATTERNS: u8 = 0x10;
const I_CHARGES: u8 = 0x11;
/// Table prefix of per-receipt charge records: one written for every receipt, keyed by its
/// sequence number and rarely read, unlike every other table. A store may keep them apart.
pub const CHARGES_TABLE: u8 = I_CHARGES;
/// First key byte of the URL-pattern registry (registrations and reservations): written only
/// by registry entries, read (mostly missed) by every receipt.
pub const PATTERNS_TABLE: u8 = I_PATTERNS;
const I_MARKERS: u8 = 0x12;
const I_UNCLAIMED: u8 = 0x13;
const I_SETTLED: u8 = 0x14;

/// Ledger-wide facts and running totals.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Meta {
    /// Entries applied: the sequence number the next entry must have.
    pub applied: u64,
    pub asset_code: Text<12>,
    pub asset_scale: u8,
    pub collective_key: PublicKeyBytes,
    /// The open period's number (the first is 0) and when it started (the last cutoff).
    pub period: u32,
    pub period_start_ms: u64,
    /// All deposits ever, and all confirmed payouts ever, in minor units.
    pub deposits: u128,
    pub paid_out: u128,
    /// Digest of every write to an indexed table (see `state.rs`).
    pub index_digest: Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Participant {
    pub role: Role,
    /// `None` once revoked, until rotated.
    pub key: Option<PublicKeyBytes>,
    pub name: Text<NAME_BYTES_MAX>,
    pub suspended: bool,
    /// Articles registered by this participant (for tiered distribution).
    pub articles: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ContractRecord {
    /// The sequence number of the contract entry.
    pub seq: u64,
    pub terms: ContractTerms,
    pub accepted: bool,
    /// Blanket: how much of the fee has left the pool.
    pub released: u64,
}

/// A payout created at a period close.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct PayoutRecord {
    pub amount: u128,
    /// 0 pending, 1 confirmed, 2 failed.
    pub status: u8,
}

pub const PAYOUT_PENDING: u8 = 0;
pub const PAYOUT_CONFIRMED: u8 = 1;
pub const PAYOUT_FAILED: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DisputeRecord {
    pub by: u64,
}

/// A registration as stored.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Registration {
    pub owner: u64,
    pub articles: u32,
    pub words: u32,
    pub tier: Tier,
    pub uniqueness_bps: u16,
    pub partners: Vec<Partner>,
}

/// What is stored under one URL pattern: a registration and reserved uses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Encode, Decode)]
pub struct PatternRecord {
    pub registration: Option<Registration>,
    /// Bit `code` set for each reserved [`Usage`] (a use or a category).
    pub reserved: u8,
}

/// What a receipt did, kept for disputes and for idempotent answers.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ChargeRecord {
    pub lab: u64,
    pub contract: Hash,
    pub period: u32,
    pub charge: Charge,
    pub postings: Vec<Posting>,
    /// Blanket use credited to each party, in basis points of a fetch.
    pub usage: Vec<(u64, u64)>,
    /// The once-per-article marker this receipt set, if it set one.
    pub marker: Option<Hash>,
    /// The URL whose unclaimed money this receipt added to, and how much.
    pub unclaimed: Option<(Text<URL_BYTES_MAX>, u64)>,
    pub reversed: bool,
}

/// The price of one fetch and how it was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct Charge {
    /// Minor units drawn from the lab's escrow.
    pub amount: u64,
    /// Of which the collective's fee.
    pub fee: u64,
    /// A free path: nothing charged.
    pub free: bool,
    /// Once-per-article and already charged this term: nothing charged.
    pub repeat: bool,
    /// Cut to stay within the contract's spend cap for the period.
    pub capped: bool,
    /// Nobody had registered the content: the net is held as unclaimed.
    pub unregistered: bool,
    /// A blanket licence: use is measured, nothing charged per fetch.
    pub blanket: bool,
    /// After this charge the lab's escrow is below its credit limit.
    pub over_limit: bool,
}

impl Charge {
    /// The names of the flags that are set, in a fixed order (as the API reports them).
    pub fn flags(&self) -> Vec<&'static str> {
        [
            ("free", self.free),
            ("repeat", self.repeat),
            ("capped", self.capped),
            ("unregistered", self.unregistered),
            ("blanket", self.blanket),
            ("over-limit", self.over_limit),
        ]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| *n)
        .collect()
    }
}

/// What an applied entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    /// The movements, summing to zero (empty for entries that move no money).
    pub postings: Vec<Posting>,
    /// For a receipt: its price, the contract it was priced under and its period.
    pub charge: Option<Charge>,
    pub contract: Option<Hash>,
    pub period: u32,
}

impl Effect {
    fn none() -> Self {
        Self { postings: Vec::new(), charge: None, contract: None, period: 0 }
    }

    fn moves(postings: Vec<Posting>) -> Self {
        Self { postings, charge: None, contract: None, period: 0 }
    }
}

/// The access check's answer for a lab at a publisher's edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub allowed: bool,
    /// Why not (a stable code), when not allowed.
    pub reason: Option<&'static str>,
    /// The contract that grants access, when allowed.
    pub contract: Option<Hash>,
}

/// What the engine needs to know about the registration a URL resolves to.
struct Resolved {
    registration: Option<Registration>,
    reserved: u8,
}

/// Everything decided about a receipt before anything changes.
struct ReceiptPlan {
    contract: Hash,
    contract_seq: u64,
    charge: Charge,
    postings: Vec<Posting>,
    usage: Vec<(u64, u64)>,
    marker: Option<Hash>,
    unclaimed: Option<(Text<URL_BYTES_MAX>, u64)>,
}

/// The settlement engine over a state store.
#[derive(Debug)]
pub struct Engine<S> {
    store: S,
    meta: Table<(), Meta>,
    participants: Table<u64, Participant>,
    contracts: Table<Hash, ContractRecord>,
    balances: Table<Account, i128>,
    payouts: Table<(u32, u64), PayoutRecord>,
    disputes: Table<u64, DisputeRecord>,
    usage: Table<(u64, u64), u64>,
    spend: Table<u64, u64>,
    /// Derived on load: current key to participant, contract sequence number to id.
    keys: HashMap<PublicKeyBytes, u64>,
    contract_ids: HashMap<u64, Hash>,
    overlay: Overlay,
}

fn reject<T>(r: Rejection) -> Result<Result<T, Rejection>, StateError> {
    Ok(Err(r))
}

/// `?` for rejections inside handlers that return `Result<Result<_, Rejection>, StateError>`.
macro_rules! check {
    ($cond:expr, $rej:expr) => {
        if !$cond {
            return reject($rej);
        }
    };
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return reject(r),
        }
    };
}

/// A state key: its parts back to back, allocated once at its final size. Keys are built
/// for every receipt several times over (read-ahead, resolution, the writes), and growing a
/// one-byte vector to its length reallocated each of them.
fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn marker_key(contract_seq: u64, url: &str) -> (Hash, Vec<u8>) {
    let h: Hash = Sha256::digest(url.as_bytes()).into();
    let k = marker_key_from_hash(contract_seq, &h);
    (h, k)
}

fn marker_key_from_hash(contract_seq: u64, h: &Hash) -> Vec<u8> {
    key(&[&[I_MARKERS], &contract_seq.to_be_bytes(), h])
}

fn pattern_key(kind: MatchKind, url: &str) -> Vec<u8> {
    key(&[&[I_PATTERNS, kind.code()], url.as_bytes()])
}

/// The registry keys of every pattern that could match `url`: its exact pattern, then its
/// prefixes, longest first (the order [`Engine::resolve`] gives precedence in).
fn candidate_keys(url: &str) -> impl Iterator<Item = Vec<u8>> + '_ {
    std::iter::once(pattern_key(MatchKind::Exact, url))
        .chain(prefix_candidates(url).map(|p| pattern_key(MatchKind::Prefix, p)))
}

fn charge_key(seq: u64) -> Vec<u8> {
    key(&[&[I_CHARGES], &seq.to_be_bytes()])
}

fn unclaimed_key(url: &str) -> Vec<u8> {
    key(&[&[I_UNCLAIMED], url.as_bytes()])
}

fn settled_key(period: u32, participant: u64) -> Vec<u8> {
    key(&[&[I_SETTLED], &period.to_be_bytes(), &participant.to_be_bytes()])
}

fn usage_bit(u: Usage) -> u8 {
    1 << u.code()
}

fn reserved_covers(mask: u8, usage: Usage) -> bool {
    Usage::ALL.iter().any(|r| mask & usage_bit(*r) != 0 && r.covers(usage))
}

/// Which roles may author each kind (genesis is the collective's by construction).
fn allowed(kind: EntryKind, role: Role) -> bool {
    use EntryKind as K;
    match kind {
        K::Genesis => false,
        K::Receipt | K::Accept => role == Role::Lab,
        K::Admit | K::UpdateParticipant | K::Contract | K::Deposit | K::ClosePeriod | K::PayoutResult | K::Resolve => {
            role == Role::Collective
        }
        K::Register | K::Reserve => matches!(role, Role::Publisher | Role::Federated),
        K::Claim => role == Role::Publisher,
        K::Dispute => matches!(role, Role::Lab | Role::Publisher),
        K::Remit => role == Role::Federated,
    }
}

/// The rate for `url` under `terms`: an exact rule, else the longest matching prefix rule,
/// else the contract's default rate.
pub fn rate_for(terms: &ContractTerms, url: &str) -> Rate {
    let mut best: Option<(usize, Rate)> = None;
    for rule in &terms.rate_table {
        match rule.pattern.kind {
            MatchKind::Exact if rule.pattern.url.as_str() == url => return rule.rate,
            MatchKind::Prefix if rule.pattern.matches(url) => {
                let len = rule.pattern.url.as_str().len();
                if best.is_none_or(|(l, _)| len > l) {
                    best = Some((len, rule.rate));
                }
            }
            _ => {}
        }
    }
    best.map_or(terms.rate, |(_, r)| r)
}

/// The exact price of one fetch of `words` words at `tier`, in minor units:
/// `(per_article + per_kwords × words / 1000) × multiplier[tier]`, truncated at `scale`.
pub fn price(rate: Rate, words: u32, tier: Tier, multipliers: &[Dec; 3], scale: u8) -> Option<u64> {
    let per_word = rate.per_kwords.to_decimal().checked_mul(Decimal::from(words))?.checked_mul(Decimal::new(1, 3))?;
    let base = rate.per_article.to_decimal().checked_add(per_word)?;
    let exact = base.checked_mul(multipliers[tier.index()].to_decimal())?;
    to_units(exact, scale).filter(|u| *u <= AMOUNT_MAX)
}

/// Distribute `net` among the parties with measured use (`units`, in party order) by the
/// contract's model. Each share truncates; what is left stays in the pool.
pub fn distribute(
    model: &Distribution,
    net: u64,
    units: &[(u64, u64)],
    articles: impl Fn(u64) -> u64,
) -> Vec<(u64, u64)> {
    let total: u64 = units.iter().map(|(_, u)| *u).sum();
    if total == 0 {
        return Vec::new();
    }
    match model {
        Distribution::PerUsage => units.iter().map(|(p, u)| (*p, share(net, *u, total))).collect(),
        Distribution::Hybrid { base_bps } => {
            let base = share_bps(net, *base_bps);
            let each = base / units.len() as u64;
            let rest = net - base;
            units.iter().map(|(p, u)| (*p, each + share(rest, *u, total))).collect()
        }
        Distribution::Tiered { levels } => {
            let level_of = |party: u64| levels.iter().position(|l| articles(party) >= u64::from(l.min_articles));
            let mut members = vec![0u64; levels.len()];
            for (p, _) in units {
                if let Some(l) = level_of(*p) {
                    members[l] += 1;
                }
            }
            units
                .iter()
                .filter_map(|(p, _)| {
                    let l = level_of(*p)?;
                    Some((*p, share_bps(net, levels.as_slice()[l].share_bps) / members[l]))
                })
                .collect()
        }
    }
}

/// Split `net` between a registration's owner and partners: each partner gets its share
/// (truncated), the owner the rest. `owner_account` is where the owner's part goes.
fn split_registration(net: u64, reg: &Registration, owner_account: Account, out: &mut Vec<Posting>) {
    let mut rest = net;
    for p in &reg.partners {
        let part = share_bps(net, p.share_bps);
        rest -= part;
        push(out, Account::Partner(p.participant), part);
    }
    push(out, owner_account, rest);
}

fn push(out: &mut Vec<Posting>, account: Account, amount: u64) {
    if amount > 0 {
        out.push(Posting { account, amount: i128::from(amount) });
    }
}

fn usage_split(reg: &Registration) -> Vec<(u64, u64)> {
    let mut rest = u64::from(BPS);
    let mut out = Vec::with_capacity(reg.partners.len() + 1);
    for p in &reg.partners {
        rest -= u64::from(p.share_bps);
        out.push((p.participant, u64::from(p.share_bps)));
    }
    if rest > 0 {
        out.push((reg.owner, rest));
    }
    out
}

impl<S: StateStore> Engine<S> {
    /// Open the engine over committed state (empty state for a new ledger).
    pub fn open(store: S) -> Result<Self, StateError> {
        let participants: Table<u64, Participant> = Table::load(T_PARTICIPANTS, &store)?;
        let contracts: Table<Hash, ContractRecord> = Table::load(T_CONTRACTS, &store)?;
        let keys = participants.iter().filter_map(|(id, p)| p.key.map(|k| (k, *id))).collect();
        let contract_ids = contracts.iter().map(|(id, c)| (c.seq, *id)).collect();
        Ok(Self {
            meta: Table::load(T_META, &store)?,
            participants,
            contracts,
            balances: Table::load(T_BALANCES, &store)?,
            payouts: Table::load(T_PAYOUTS, &store)?,
            disputes: Table::load(T_DISPUTES, &store)?,
            usage: Table::load(T_USAGE, &store)?,
            spend: Table::load(T_SPEND, &store)?,
            keys,
            contract_ids,
            overlay: Overlay::default(),
            store,
        })
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        self.overlay.forget_reads();
        &mut self.store
    }

    /// Read ahead, in one batched lookup per step, the committed state that applying
    /// `entries` will read for their receipts: the registry patterns that could match each
    /// URL, each once-per-article marker, then the money held for each URL that no
    /// registration covers. Applying reads the same values with or without this (the
    /// outcome cannot differ); it only saves a store lookup per receipt and read. What was
    /// read ahead is kept until the next [`Engine::take_writes`]. Nothing is done for a store
    /// without [`StateStore::BATCHED_READS`].
    pub fn prefetch<'a>(&mut self, entries: impl IntoIterator<Item = &'a VerifiedEntry>) -> Result<(), StateError> {
        if !S::BATCHED_READS {
            return Ok(());
        }
        let receipts: Vec<&Receipt> = entries
            .into_iter()
            .filter_map(|e| match e.body() {
                Body::Receipt(r) => Some(r),
                _ => None,
            })
            .collect();
        // Typically an exact pattern, two or three prefixes and a marker per receipt.
        let mut keys = Vec::with_capacity(receipts.len() * 6);
        for r in &receipts {
            let url = r.core.url.as_str();
            keys.extend(candidate_keys(url));
            if let Some(c) = self.contracts.get(&r.core.contract_id)
                && c.terms.basis == ChargeBasis::OncePerArticle
            {
                keys.push(marker_key(c.seq, url).1);
            }
        }
        self.overlay.prefetch(&self.store, keys)?;
        let mut unregistered = Vec::new();
        for r in &receipts {
            let url = r.core.url.as_str();
            if self.resolve(url)?.registration.is_none() {
                unregistered.push(unclaimed_key(url));
            }
        }
        self.overlay.prefetch(&self.store, unregistered)
    }

    pub fn meta(&self) -> Option<&Meta> {
        self.meta.get(&())
    }

    /// Entries applied so far.
    pub fn applied(&self) -> u64 {
        self.meta().map_or(0, |m| m.applied)
    }

    pub fn participant(&self, id: u64) -> Option<&Participant> {
        self.participants.get(&id)
    }

    pub fn participants(&self) -> impl Iterator<Item = (&u64, &Participant)> {
        self.participants.iter()
    }

    /// The participant whose current key is `key` (the collective is 0).
    pub fn participant_by_key(&self, key: &PublicKeyBytes) -> Option<u64> {
        match self.meta() {
            Some(m) if m.collective_key == *key => Some(COLLECTIVE_ID),
            _ => self.keys.get(key).copied(),
        }
    }

    pub fn contract(&self, id: &Hash) -> Option<&ContractRecord> {
        self.contracts.get(id)
    }

    pub fn contracts(&self) -> impl Iterator<Item = (&Hash, &ContractRecord)> {
        self.contracts.iter()
    }

    pub fn balance(&self, account: Account) -> i128 {
        self.balances.get(&account).copied().unwrap_or(0)
    }

    /// Every non-zero balance, in account order.
    pub fn balances(&self) -> impl Iterator<Item = (&Account, &i128)> {
        self.balances.iter()
    }

    /// Blanket use measured so far in the open period, per (contract seq, party).
    pub fn period_usage(&self) -> impl Iterator<Item = (&(u64, u64), &u64)> {
        self.usage.iter()
    }

    /// What contract `contract_seq` has charged in the open period (for its spend cap).
    pub fn spent(&self, contract_seq: u64) -> u64 {
        self.spend.get(&contract_seq).copied().unwrap_or(0)
    }

    pub fn pending_payouts(&self) -> impl Iterator<Item = (&(u32, u64), &PayoutRecord)> {
        self.payouts.iter()
    }

    /// A payout by period and participant, pending or settled.
    pub fn payout(&self, period: u32, participant: u64) -> Result<Option<PayoutRecord>, StateError> {
        if let Some(p) = self.payouts.get(&(period, participant)) {
            return Ok(Some(p.clone()));
        }
        self.overlay.get(&self.store, &settled_key(period, participant))
    }

    /// What the receipt at `seq` did, if there is a receipt there.
    pub fn charge(&self, seq: u64) -> Result<Option<ChargeRecord>, StateError> {
        self.overlay.get(&self.store, &charge_key(seq))
    }

    /// The registration and reservations stored under one pattern.
    pub fn pattern(&self, pattern: &UrlPattern) -> Result<Option<PatternRecord>, StateError> {
        self.overlay.get(&self.store, &pattern_key(pattern.kind, pattern.url.as_str()))
    }

    /// Money held for an unregistered URL.
    pub fn unclaimed(&self, url: &str) -> Result<u64, StateError> {
        Ok(self.overlay.get(&self.store, &unclaimed_key(url))?.unwrap_or(0))
    }

    /// The hash over the canonical resident state (which includes the digest of every
    /// indexed write): equal on the node and on any replay of the same log prefix.
    pub fn state_root(&self) -> Hash {
        let mut records = Vec::new();
        for table in self.resident() {
            table.records(&mut records);
        }
        root_of(records)
    }

    /// The writes made since the last call, to commit with the log entries they came from.
    pub fn take_writes(&mut self) -> Writes {
        let mut w = Vec::new();
        for table in self.resident_mut() {
            table.flush(&mut w);
        }
        self.overlay.drain(&mut w);
        w
    }

    /// Every resident table: the one list that the state root and the commit both use.
    fn resident(&self) -> [&dyn Resident; 8] {
        [
            &self.meta,
            &self.participants,
            &self.contracts,
            &self.balances,
            &self.payouts,
            &self.disputes,
            &self.usage,
            &self.spend,
        ]
    }

    fn resident_mut(&mut self) -> [&mut dyn Resident; 8] {
        [
            &mut self.meta,
            &mut self.participants,
            &mut self.contracts,
            &mut self.balances,
            &mut self.payouts,
            &mut self.disputes,
            &mut self.usage,
            &mut self.spend,
        ]
    }

    /// The per-entry money check, O(1): the money inside the ledger (the negated world
    /// account) equals all deposits less all confirmed payouts.
    pub fn check_money(&self) -> Result<(), String> {
        let Some(meta) = self.meta() else { return Ok(()) };
        let inside = -self.balance(Account::World);
        let expected = meta.deposits as i128 - meta.paid_out as i128;
        if inside != expected {
            return Err(format!("money inside the ledger is {inside}, deposits less payouts is {expected}"));
        }
        Ok(())
    }

    /// Check the money invariants over the resident state; `Err` names the first broken one.
    pub fn check_invariants(&self) -> Result<(), String> {
        let total: i128 = self.balances.iter().map(|(_, b)| *b).sum();
        if total != 0 {
            return Err(format!("balances sum to {total}, not 0"));
        }
        let Some(meta) = self.meta() else { return Ok(()) };
        let inside = -self.balance(Account::World);
        let expected = meta.deposits as i128 - meta.paid_out as i128;
        if inside != expected {
            return Err(format!("money inside the ledger is {inside}, deposits less payouts is {expected}"));
        }
        let pending: i128 =
            self.payouts.iter().filter(|(_, p)| p.status == PAYOUT_PENDING).map(|(_, p)| p.amount as i128).sum();
        if self.balance(Account::InFlight) != pending {
            return Err(format!("in-flight is {}, pending payouts are {pending}", self.balance(Account::InFlight)));
        }
        for (_, c) in self.contracts.iter() {
            if let Licence::Blanket { fee } = c.terms.licence {
                let held = if c.accepted { i128::from(fee) - i128::from(c.released) } else { 0 };
                if self.balance(Account::Pool(c.seq)) != held {
                    return Err(format!(
                        "pool {} holds {}, expected {held}",
                        c.seq,
                        self.balance(Account::Pool(c.seq))
                    ));
                }
            }
        }
        Ok(())
    }

    fn meta_ref(&self) -> &Meta {
        self.meta.get(&()).expect("checked: genesis applied")
    }

    fn meta_mut(&mut self) -> &mut Meta {
        self.meta.get_mut(&()).expect("checked: genesis applied")
    }

    fn iput<V: Encode>(&mut self, key: Vec<u8>, value: Option<&V>) {
        let meta = self.meta.get_mut(&()).expect("indexed writes happen after genesis");
        self.overlay.put(&mut meta.index_digest, key, value);
    }

    fn post(&mut self, postings: &[Posting]) {
        debug_assert_eq!(postings.iter().map(|p| p.amount).sum::<i128>(), 0, "postings sum to zero");
        for p in postings {
            let new = self.balance(p.account) + p.amount;
            if new == 0 {
                self.balances.remove(&p.account);
            } else {
                self.balances.insert(p.account, new);
            }
        }
    }

    /// Apply the entry at `seq`, sequenced at `time_ms`. `Ok(Err(_))` is a rejection (the
    /// state is unchanged); `Err(_)` is a storage failure and the caller must stop.
    pub fn apply(
        &mut self,
        entry: &VerifiedEntry,
        seq: u64,
        time_ms: u64,
    ) -> Result<Result<Effect, Rejection>, StateError> {
        let Some(applied) = self.meta().map(|m| m.applied) else {
            return match entry.body() {
                Body::Genesis(g) if seq == 0 => Ok(Ok(self.genesis(g))),
                Body::Genesis(_) => Err(StateError::Storage(format!("genesis offered at {seq}, not 0"))),
                _ => reject(Rejection::GenesisRequired),
            };
        };
        if let Body::Genesis(_) = entry.body() {
            return reject(Rejection::GenesisExists);
        }
        if seq != applied {
            return Err(StateError::Storage(format!("entry {seq} offered but the state is at {applied}")));
        }
        let author = tri!(self.author(entry));
        let result = match entry.body() {
            Body::Genesis(_) => unreachable!("handled above"),
            Body::Receipt(r) => self.receipt(author, r, seq, time_ms)?,
            Body::Admit(a) => self.admit(a)?,
            Body::UpdateParticipant(u) => self.update(u)?,
            Body::Register(r) => self.register(author, r)?,
            Body::Reserve(r) => self.reserve(author, r)?,
            Body::Contract(t) => self.contract_entry(t, seq)?,
            Body::Accept(a) => self.accept(author, a, time_ms)?,
            Body::Deposit(d) => self.deposit(d)?,
            Body::ClosePeriod(c) => self.close_period(c, time_ms)?,
            Body::PayoutResult(p) => self.payout_result(p)?,
            Body::Dispute(d) => self.dispute(author, d)?,
            Body::Resolve(r) => self.resolve_dispute(r)?,
            Body::Claim(c) => self.claim(author, c)?,
            Body::Remit(r) => self.remit(author, r)?,
        };
        if let Ok(effect) = &result {
            self.post(&effect.postings);
            self.meta_mut().applied = seq + 1;
        }
        Ok(result)
    }

    fn genesis(&mut self, g: &Genesis) -> Effect {
        self.meta.insert(
            (),
            Meta {
                applied: 1,
                asset_code: Text::new(g.asset_code.as_str()).expect("validated: at most 12 bytes"),
                asset_scale: g.asset_scale,
                collective_key: g.collective_key,
                period: 0,
                period_start_ms: 0,
                deposits: 0,
                paid_out: 0,
                index_digest: [0; 32],
            },
        );
        Effect::none()
    }

    /// The author's participant id, role checked for the entry kind.
    fn author(&self, entry: &VerifiedEntry) -> Result<u64, Rejection> {
        let id = self.participant_by_key(entry.author()).ok_or(Rejection::UnknownAuthor)?;
        let role = if id == COLLECTIVE_ID {
            Role::Collective
        } else {
            let p = self.participants.get(&id).expect("keys index admitted participants");
            if p.suspended {
                return Err(Rejection::AuthorSuspended);
            }
            p.role
        };
        if !allowed(entry.kind(), role) {
            return Err(Rejection::WrongRole { role: role.as_str(), kind: entry.kind().as_str() });
        }
        Ok(id)
    }

    fn participant_with(&self, id: u64, roles: &[Role]) -> Result<&Participant, Rejection> {
        let p = self.participants.get(&id).ok_or(Rejection::UnknownParticipant(id))?;
        if !roles.contains(&p.role) {
            return Err(Rejection::ParticipantRole {
                participant: id,
                role: p.role.as_str(),
                needed: roles[0].as_str(),
            });
        }
        Ok(p)
    }

    fn admit(&mut self, a: &Admit) -> Result<Result<Effect, Rejection>, StateError> {
        check!(self.participants.get(&a.participant).is_none(), Rejection::ParticipantExists(a.participant));
        check!(self.participant_by_key(&a.key).is_none(), Rejection::KeyInUse);
        self.participants.insert(
            a.participant,
            Participant { role: a.role, key: Some(a.key), name: a.name.clone(), suspended: false, articles: 0 },
        );
        self.keys.insert(a.key, a.participant);
        Ok(Ok(Effect::none()))
    }

    fn update(&mut self, u: &UpdateParticipant) -> Result<Result<Effect, Rejection>, StateError> {
        check!(u.participant != COLLECTIVE_ID, Rejection::CollectiveFixed);
        let p = tri!(self.participants.get(&u.participant).ok_or(Rejection::UnknownParticipant(u.participant)));
        let old_key = p.key;
        match &u.change {
            ParticipantChange::RotateKey(key) => {
                check!(self.participant_by_key(key).is_none(), Rejection::KeyInUse);
                if let Some(old) = old_key {
                    self.keys.remove(&old);
                }
                self.keys.insert(*key, u.participant);
                self.participants.get_mut(&u.participant).expect("exists").key = Some(*key);
            }
            ParticipantChange::RevokeKey => {
                let old = tri!(old_key.ok_or(Rejection::NoChange));
                self.keys.remove(&old);
                self.participants.get_mut(&u.participant).expect("exists").key = None;
            }
            ParticipantChange::Suspend | ParticipantChange::Reinstate => {
                let suspend = matches!(u.change, ParticipantChange::Suspend);
                check!(p.suspended != suspend, Rejection::NoChange);
                self.participants.get_mut(&u.participant).expect("exists").suspended = suspend;
            }
        }
        Ok(Ok(Effect::none()))
    }

    /// The registration `url` resolves to (exact, then longest prefix) and the union of
    /// reservations on every pattern that matches it.
    fn resolve(&self, url: &str) -> Result<Resolved, StateError> {
        let mut out = Resolved { registration: None, reserved: 0 };
        // Every candidate is needed (reservations at any level apply), so they are looked up
        // together: one batched store read instead of one read per path segment.
        let keys: Vec<Vec<u8>> = candidate_keys(url).collect();
        // Exact first, then the longest prefix: the first registration found wins.
        for rec in self.overlay.get_many::<_, PatternRecord>(&self.store, &keys)?.into_iter().flatten() {
            out.reserved |= rec.reserved;
            if out.registration.is_none() {
                out.registration = rec.registration;
            }
        }
        Ok(out)
    }

    fn register(&mut self, author: u64, r: &Register) -> Result<Result<Effect, Rejection>, StateError> {
        let key = pattern_key(r.pattern.kind, r.pattern.url.as_str());
        let mut rec: PatternRecord = self.overlay.get(&self.store, &key)?.unwrap_or_default();
        let old_articles = match &rec.registration {
            Some(old) if old.owner != author => return reject(Rejection::RegisteredToOther),
            Some(old) => u64::from(old.articles),
            None => 0,
        };
        for p in &r.partners {
            check!(
                p.participant != author,
                Rejection::ParticipantRole {
                    participant: p.participant,
                    role: "owner",
                    needed: "partner other than the owner",
                }
            );
            tri!(self.participant_with(p.participant, &[Role::Publisher]));
        }
        rec.registration = Some(Registration {
            owner: author,
            articles: r.articles,
            words: r.words,
            tier: r.tier,
            uniqueness_bps: r.uniqueness_bps,
            partners: r.partners.as_slice().to_vec(),
        });
        self.iput(key, Some(&rec));
        let p = self.participants.get_mut(&author).expect("authors are admitted");
        p.articles = p.articles - old_articles + u64::from(r.articles);
        Ok(Ok(Effect::none()))
    }

    fn reserve(&mut self, author: u64, r: &Reserve) -> Result<Result<Effect, Rejection>, StateError> {
        let covering = self.resolve(r.pattern.url.as_str())?;
        check!(covering.registration.is_some_and(|reg| reg.owner == author), Rejection::NotOwner);
        let key = pattern_key(r.pattern.kind, r.pattern.url.as_str());
        let mut rec: PatternRecord = self.overlay.get(&self.store, &key)?.unwrap_or_default();
        let before = rec.reserved;
        if r.reserved {
            rec.reserved |= usage_bit(r.usage);
        } else {
            rec.reserved &= !usage_bit(r.usage);
        }
        check!(rec.reserved != before, Rejection::NoChange);
        self.iput(key, Some(&rec));
        Ok(Ok(Effect::none()))
    }

    fn contract_entry(&mut self, t: &ContractTerms, seq: u64) -> Result<Result<Effect, Rejection>, StateError> {
        tri!(self.participant_with(t.lab, &[Role::Lab]));
        let id = t.id();
        check!(self.contracts.get(&id).is_none(), Rejection::ContractExists);
        self.contracts.insert(id, ContractRecord { seq, terms: t.clone(), accepted: false, released: 0 });
        self.contract_ids.insert(seq, id);
        Ok(Ok(Effect::none()))
    }

    fn accept(&mut self, author: u64, a: &Accept, time_ms: u64) -> Result<Result<Effect, Rejection>, StateError> {
        let c = tri!(self.contracts.get(&a.contract_id).ok_or(Rejection::UnknownContract));
        check!(c.terms.lab == author, Rejection::NotContractLab);
        check!(!c.accepted, Rejection::ContractAlreadyActive);
        check!(time_ms < c.terms.end_ms, Rejection::TermEnded);
        let mut postings = Vec::new();
        if let Licence::Blanket { fee } = c.terms.licence
            && fee > 0
        {
            postings.push(Posting { account: Account::Escrow(author), amount: -i128::from(fee) });
            postings.push(Posting { account: Account::Pool(c.seq), amount: i128::from(fee) });
        }
        self.contracts.get_mut(&a.contract_id).expect("exists").accepted = true;
        Ok(Ok(Effect::moves(postings)))
    }

    fn deposit(&mut self, d: &Deposit) -> Result<Result<Effect, Rejection>, StateError> {
        let p = tri!(self.participants.get(&d.participant).ok_or(Rejection::UnknownParticipant(d.participant)));
        let account = match p.role {
            Role::Lab => Account::Escrow(d.participant),
            Role::Federated => Account::Clearing(d.participant),
            _ => return reject(Rejection::DepositRole),
        };
        self.meta_mut().deposits += u128::from(d.amount);
        let amount = i128::from(d.amount);
        Ok(Ok(Effect::moves(vec![Posting { account: Account::World, amount: -amount }, Posting { account, amount }])))
    }

    /// Price a fetch of `url` for `usage` under contract `contract_id` by `lab`, without
    /// changing anything. Checks the lab, contract, scope, reservations and term (at
    /// `fetch_time_ms`); not the period or the sequencer's clock.
    pub fn quote(
        &self,
        lab: u64,
        contract_id: &Hash,
        url: &str,
        usage: Usage,
        fetch_time_ms: u64,
    ) -> Result<Result<Charge, Rejection>, StateError> {
        Ok(self.plan_receipt(lab, contract_id, url, usage, fetch_time_ms)?.map(|p| p.charge))
    }

    fn plan_receipt(
        &self,
        lab: u64,
        contract_id: &Hash,
        url: &str,
        usage: Usage,
        fetch_time_ms: u64,
    ) -> Result<Result<ReceiptPlan, Rejection>, StateError> {
        let meta = tri!(self.meta().ok_or(Rejection::GenesisRequired));
        tri!(self.participant_with(lab, &[Role::Lab]));
        let c = tri!(self.contracts.get(contract_id).ok_or(Rejection::UnknownContract));
        let t = &c.terms;
        check!(t.lab == lab, Rejection::NotContractLab);
        check!(c.accepted, Rejection::ContractNotActive);
        check!(t.covers(usage), Rejection::UsageOutOfScope);
        check!(t.start_ms <= fetch_time_ms && fetch_time_ms < t.end_ms, Rejection::OutsideTerm);
        let resolved = self.resolve(url)?;
        check!(!reserved_covers(resolved.reserved, usage), Rejection::UsageReserved);
        let reg = resolved.registration;
        let owner_role = reg.as_ref().and_then(|r| self.participants.get(&r.owner)).map(|p| p.role);
        let blanket = matches!(t.licence, Licence::Blanket { .. });
        let (marker, repeat) = match t.basis {
            ChargeBasis::EveryFetch => (None, false),
            ChargeBasis::OncePerArticle => {
                let (h, key) = marker_key(c.seq, url);
                let seen = self.overlay.get::<_, u64>(&self.store, &key)?.is_some();
                (if seen { None } else { Some(h) }, seen)
            }
        };
        let free = t.free_paths.iter().any(|p| p.matches(url));
        let mut charge = Charge {
            amount: 0,
            fee: 0,
            free,
            repeat,
            capped: false,
            unregistered: reg.is_none(),
            blanket,
            over_limit: false,
        };
        if !(free || repeat || blanket) {
            let (words, tier) = reg.as_ref().map_or((t.unregistered_words, Tier::Standard), |r| (r.words, r.tier));
            let full = tri!(
                price(rate_for(t, url), words, tier, &t.tier_multipliers, meta.asset_scale)
                    .ok_or(Rejection::AmountOverflow)
            );
            charge.amount = full;
            if t.spend_cap > 0 {
                let spent = self.spend.get(&c.seq).copied().unwrap_or(0);
                let room = t.spend_cap.saturating_sub(spent);
                if full > room {
                    charge.amount = room;
                    charge.capped = true;
                }
            }
        }
        let mut postings = Vec::new();
        let mut unclaimed = None;
        if charge.amount > 0 {
            charge.fee = share_bps(charge.amount, t.fee_bps);
            let net = charge.amount - charge.fee;
            postings.push(Posting { account: Account::Escrow(lab), amount: -i128::from(charge.amount) });
            push(&mut postings, Account::Fee, charge.fee);
            match (&reg, owner_role) {
                (Some(r), Some(Role::Federated)) => {
                    split_registration(net, r, Account::Clearing(r.owner), &mut postings)
                }
                (Some(r), _) => split_registration(net, r, Account::Payable(r.owner), &mut postings),
                (None, _) => {
                    push(&mut postings, Account::Unclaimed, net);
                    if net > 0 {
                        unclaimed = Some((Text::new(url).expect("receipt URLs are bounded"), net));
                    }
                }
            }
        }
        let escrow_after = self.balance(Account::Escrow(lab)) - i128::from(charge.amount);
        charge.over_limit = escrow_after < -i128::from(t.credit_limit);
        let usage_units = match (&reg, blanket && !repeat) {
            (Some(r), true) => usage_split(r),
            _ => Vec::new(),
        };
        Ok(Ok(ReceiptPlan {
            contract: *contract_id,
            contract_seq: c.seq,
            charge,
            postings,
            usage: usage_units,
            marker,
            unclaimed,
        }))
    }

    fn receipt(
        &mut self,
        author: u64,
        r: &Receipt,
        seq: u64,
        time_ms: u64,
    ) -> Result<Result<Effect, Rejection>, StateError> {
        let core = &r.core;
        check!(core.lab_id == author, Rejection::LabMismatch { claimed: core.lab_id, signer: author });
        let meta = self.meta_ref();
        check!(core.fetch_time_ms >= meta.period_start_ms, Rejection::BeforeOpenPeriod);
        check!(core.fetch_time_ms <= time_ms.saturating_add(FETCH_SKEW_MAX_MS), Rejection::FetchInFuture);
        if let Some(d) = &r.delivery {
            let publisher = tri!(self.participant_by_key(&d.publisher_key).ok_or(Rejection::UnknownAuthor));
            tri!(self.participant_with(publisher, &[Role::Publisher, Role::Federated]));
        }
        let url = core.url.as_str();
        let plan = tri!(self.plan_receipt(author, &core.contract_id, url, core.usage, core.fetch_time_ms)?);
        let period = meta.period;
        if let Some(h) = &plan.marker {
            self.iput(marker_key_from_hash(plan.contract_seq, h), Some(&seq));
        }
        if let Some((u, amount)) = &plan.unclaimed {
            let held = self.unclaimed(url)?;
            self.iput(unclaimed_key(u.as_str()), Some(&(held + amount)));
        }
        if plan.charge.amount > 0 {
            let spent = self.spend.get(&plan.contract_seq).copied().unwrap_or(0);
            self.spend.insert(plan.contract_seq, spent + plan.charge.amount);
        }
        for (party, units) in &plan.usage {
            let k = (plan.contract_seq, *party);
            let u = self.usage.get(&k).copied().unwrap_or(0);
            self.usage.insert(k, u + units);
        }
        let record = ChargeRecord {
            lab: author,
            contract: plan.contract,
            period,
            charge: plan.charge,
            postings: plan.postings.clone(),
            usage: plan.usage,
            marker: plan.marker,
            unclaimed: plan.unclaimed,
            reversed: false,
        };
        self.iput(charge_key(seq), Some(&record));
        Ok(Ok(Effect { postings: plan.postings, charge: Some(plan.charge), contract: Some(plan.contract), period }))
    }

    fn claim(&mut self, author: u64, c: &Claim) -> Result<Result<Effect, Rejection>, StateError> {
        let url = c.url.as_str();
        let held = self.unclaimed(url)?;
        check!(held > 0, Rejection::NothingToClaim);
        let reg = tri!(self.resolve(url)?.registration.filter(|r| r.owner == author).ok_or(Rejection::NotOwner));
        let mut postings = vec![Posting { account: Account::Unclaimed, amount: -i128::from(held) }];
        split_registration(held, &reg, Account::Payable(author), &mut postings);
        self.iput::<u64>(unclaimed_key(url), None);
        Ok(Ok(Effect::moves(postings)))
    }

    fn remit(&mut self, author: u64, r: &Remit) -> Result<Result<Effect, Rejection>, StateError> {
        let mut postings = Vec::with_capacity(r.lines.len() + 1);
        let mut total: i128 = 0;
        for line in &r.lines {
            tri!(self.participant_with(line.participant, &[Role::Publisher]));
            total += i128::from(line.amount);
            postings.push(Posting { account: Account::Payable(line.participant), amount: i128::from(line.amount) });
        }
        postings.push(Posting { account: Account::Clearing(author), amount: -total });
        Ok(Ok(Effect::moves(postings)))
    }

    fn dispute(&mut self, author: u64, d: &Dispute) -> Result<Result<Effect, Rejection>, StateError> {
        let rec = tri!(self.charge(d.receipt_seq)?.ok_or(Rejection::UnknownReceipt));
        let credited = rec.postings.iter().any(|p| p.amount > 0 && p.account.party() == Some(author))
            || rec.usage.iter().any(|(party, _)| *party == author);
        check!(rec.lab == author || credited, Rejection::NotParty);
        check!(!rec.reversed, Rejection::AlreadyReversed);
        check!(self.disputes.get(&d.receipt_seq).is_none(), Rejection::DisputeExists);
        self.disputes.insert(d.receipt_seq, DisputeRecord { by: author });
        Ok(Ok(Effect::none()))
    }

    fn resolve_dispute(&mut self, r: &Resolve) -> Result<Result<Effect, Rejection>, StateError> {
        check!(self.disputes.get(&r.receipt_seq).is_some(), Rejection::NoOpenDispute);
        let mut rec = self
            .charge(r.receipt_seq)?
            .ok_or_else(|| StateError::Storage(format!("dispute open on {} but no charge record", r.receipt_seq)))?;
        if r.resolution == Resolution::Uphold {
            self.disputes.remove(&r.receipt_seq);
            return Ok(Ok(Effect::none()));
        }
        let mut held_after = None;
        if let Some((url, amount)) = &rec.unclaimed {
            let held = self.unclaimed(url.as_str())?;
            check!(held >= *amount, Rejection::HeldMoneyClaimed);
            held_after = Some((url.clone(), held - amount));
        }
        let contract_seq = self.contracts.get(&rec.contract).map(|c| c.seq).expect("charged contracts exist");
        let open = self.meta_ref().period;
        // Changes start here.
        self.disputes.remove(&r.receipt_seq);
        if let Some((url, left)) = held_after {
            let key = unclaimed_key(url.as_str());
            if left == 0 { self.iput::<u64>(key, None) } else { self.iput(key, Some(&left)) }
        }
        if let Some(h) = &rec.marker {
            self.iput::<u64>(marker_key_from_hash(contract_seq, h), None);
        }
        if rec.period == open {
            if rec.charge.amount > 0
                && let Some(spent) = self.spend.get_mut(&contract_seq)
            {
                *spent -= rec.charge.amount.min(*spent);
            }
            for (party, units) in &rec.usage {
                let k = (contract_seq, *party);
                let left = self.usage.get(&k).copied().unwrap_or(0).saturating_sub(*units);
                if left == 0 {
                    self.usage.remove(&k);
                } else {
                    self.usage.insert(k, left);
                }
            }
        }
        let postings: Vec<Posting> =
            rec.postings.iter().map(|p| Posting { account: p.account, amount: -p.amount }).collect();
        rec.reversed = true;
        self.iput(charge_key(r.receipt_seq), Some(&rec));
        Ok(Ok(Effect::moves(postings)))
    }

    fn close_period(&mut self, c: &ClosePeriod, time_ms: u64) -> Result<Result<Effect, Rejection>, StateError> {
        let meta = self.meta_ref();
        check!(c.period == meta.period, Rejection::WrongPeriod { given: c.period, open: meta.period });
        check!(c.cutoff_ms > meta.period_start_ms && c.cutoff_ms <= time_ms, Rejection::BadCutoff);
        let cutoff = c.cutoff_ms;
        let mut moves: BTreeMap<Account, i128> = BTreeMap::new();
        let add = |moves: &mut BTreeMap<Account, i128>, a: Account, amount: i128| {
            if amount != 0 {
                *moves.entry(a).or_insert(0) += amount;
            }
        };
        // 1. Blanket pools, in contract order: release what has accrued by the cutoff.
        let mut blankets: Vec<(u64, Hash)> = self
            .contracts
            .iter()
            .filter(|(_, r)| {
                r.accepted && matches!(r.terms.licence, Licence::Blanket { .. }) && r.terms.start_ms < cutoff
            })
            .map(|(id, r)| (r.seq, *id))
            .collect();
        blankets.sort_unstable();
        let mut released_now = Vec::with_capacity(blankets.len());
        for (seq, id) in blankets {
            let rec = self.contracts.get(&id).expect("listed above");
            let t = &rec.terms;
            let Licence::Blanket { fee } = t.licence else { unreachable!("filtered to blanket") };
            let accrued = share(fee, cutoff.min(t.end_ms) - t.start_ms, t.end_ms - t.start_ms);
            let amount = accrued - rec.released;
            let units: Vec<(u64, u64)> =
                self.usage.iter().filter(|((s, _), _)| *s == seq).map(|((_, party), u)| (*party, *u)).collect();
            let mut released = rec.released;
            if amount > 0 && !units.is_empty() {
                let fee_part = share_bps(amount, t.fee_bps);
                add(&mut moves, Account::Fee, i128::from(fee_part));
                released += fee_part;
                let articles = |party: u64| self.participants.get(&party).map_or(0, |p| p.articles);
                for (party, part) in distribute(&t.distribution, amount - fee_part, &units, articles) {
                    let federated = self.participants.get(&party).is_some_and(|p| p.role == Role::Federated);
                    let account = if federated { Account::Clearing(party) } else { Account::Payable(party) };
                    add(&mut moves, account, i128::from(part));
                    released += part;
                }
            }
            if cutoff >= t.end_ms {
                // The term is over: whatever is left (remainders, unused periods) is the fee's.
                add(&mut moves, Account::Fee, i128::from(fee - released));
                released = fee;
            }
            add(&mut moves, Account::Pool(seq), -i128::from(released - rec.released));
            released_now.push((id, released));
        }
        // 2. Net positions and payouts, in participant order.
        let mut payouts = Vec::new();
        for (id, p) in self.participants.iter() {
            if p.suspended {
                continue;
            }
            let accounts: &[Account] = match p.role {
                Role::Publisher => &[Account::Payable(*id), Account::Partner(*id)],
                Role::Federated => &[Account::Clearing(*id)],
                _ => continue,
            };
            let after = |a: Account| self.balance(a) + moves.get(&a).copied().unwrap_or(0);
            let position: i128 = accounts.iter().map(|a| after(*a)).sum();
            if position <= 0 || position < i128::from(c.payout_min) {
                continue;
            }
            payouts.push((*id, accounts.iter().map(|a| (*a, after(*a))).collect::<Vec<_>>(), position));
        }
        for (id, accounts, position) in &payouts {
            for (a, b) in accounts {
                add(&mut moves, *a, -b);
            }
            add(&mut moves, Account::InFlight, *position);
            self.payouts.insert((c.period, *id), PayoutRecord { amount: *position as u128, status: PAYOUT_PENDING });
        }
        // 3. Open the next period.
        for (id, released) in released_now {
            self.contracts.get_mut(&id).expect("exists").released = released;
        }
        let usage_keys: Vec<(u64, u64)> = self.usage.iter().map(|(k, _)| *k).collect();
        for k in usage_keys {
            self.usage.remove(&k);
        }
        let spend_keys: Vec<u64> = self.spend.iter().map(|(k, _)| *k).collect();
        for k in spend_keys {
            self.spend.remove(&k);
        }
        let meta = self.meta_mut();
        meta.period += 1;
        meta.period_start_ms = cutoff;
        let postings =
            moves.into_iter().filter(|(_, v)| *v != 0).map(|(account, amount)| Posting { account, amount }).collect();
        Ok(Ok(Effect::moves(postings)))
    }

    fn payout_result(&mut self, p: &PayoutResult) -> Result<Result<Effect, Rejection>, StateError> {
        let key = (p.period, p.participant);
        let rec = tri!(self.payouts.get(&key).cloned().ok_or(Rejection::UnknownPayout));
        let amount = rec.amount as i128;
        let role = self.participants.get(&p.participant).map(|x| x.role);
        let (postings, status) = match &p.outcome {
            PayoutOutcome::Confirmed { .. } => {
                self.meta_mut().paid_out += rec.amount;
                (
                    vec![
                        Posting { account: Account::InFlight, amount: -amount },
                        Posting { account: Account::World, amount },
                    ],
                    PAYOUT_CONFIRMED,
                )
            }
            PayoutOutcome::Failed { .. } => {
                let back = if role == Some(Role::Federated) {
                    Account::Clearing(p.participant)
                } else {
                    Account::Payable(p.participant)
                };
                (
                    vec![Posting { account: Account::InFlight, amount: -amount }, Posting { account: back, amount }],
                    PAYOUT_FAILED,
                )
            }
        };
        self.payouts.remove(&key);
        self.iput(settled_key(p.period, p.participant), Some(&PayoutRecord { amount: rec.amount, status }));
        Ok(Ok(Effect::moves(postings)))
    }

    /// The access check a publisher's edge asks: may `lab` fetch from `publisher` for
    /// `usage` (any use if `None`) at `at_ms`?
    pub fn access(&self, lab: u64, publisher: u64, usage: Option<Usage>, at_ms: u64) -> Access {
        let deny = |reason| Access { allowed: false, reason: Some(reason), contract: None };
        match self.participants.get(&lab) {
            Some(p) if p.role == Role::Lab && !p.suspended && p.key.is_some() => {}
            Some(p) if p.role == Role::Lab => return deny("lab-suspended"),
            _ => return deny("unknown-lab"),
        }
        match self.participants.get(&publisher) {
            Some(p) if matches!(p.role, Role::Publisher | Role::Federated) && !p.suspended => {}
            _ => return deny("unknown-publisher"),
        }
        let escrow = self.balance(Account::Escrow(lab));
        let mut reason = "no-contract";
        for (id, c) in self.contracts.iter() {
            let t = &c.terms;
            if t.lab != lab || !c.accepted || !(t.start_ms <= at_ms && at_ms < t.end_ms) {
                continue;
            }
            if usage.is_some_and(|u| !t.covers(u)) {
                reason = "usage-out-of-scope";
                continue;
            }
            if escrow < -i128::from(t.credit_limit) {
                reason = "over-credit-limit";
                continue;
            }
            if t.spend_cap > 0 && self.spend.get(&c.seq).copied().unwrap_or(0) >= t.spend_cap {
                reason = "spend-cap-reached";
                continue;
            }
            return Access { allowed: true, reason: None, contract: Some(*id) };
        }
        deny(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tally_core::codec::List;
    use tally_core::decimal::{DEC_SCALE_MAX, DEC_VALUE_MAX};

    fn dec(mantissa: u64, scale: u8) -> Dec {
        Dec::new(mantissa, scale).unwrap()
    }

    /// The same price in plain integers: scale 12 for the base, 16 after the multiplier.
    fn integer_price(rate: Rate, words: u32, m: Dec, scale: u8) -> Option<u64> {
        let at = |d: Dec, s: u32| u128::from(d.mantissa()) * 10u128.pow(s - u32::from(d.scale()));
        let base = at(rate.per_article, 12) + at(rate.per_kwords, 9) * u128::from(words);
        let exact = base * at(m, 4); // scale 16
        let minor = if scale <= 16 {
            exact / 10u128.pow(16 - u32::from(scale))
        } else {
            exact * 10u128.pow(u32::from(scale) - 16)
        };
        u64::try_from(minor).ok().filter(|u| *u <= AMOUNT_MAX)
    }

    proptest! {
        /// rust_decimal's arithmetic is exact for every rate, word count and multiplier the
        /// encoding allows: the price equals the same computation in 128-bit integers, with
        /// only the one truncation.
        #[test]
        fn prices_are_exact_within_the_bounds(
            pa in 0..=DEC_VALUE_MAX * 1_000_000_000, sa in 0..=DEC_SCALE_MAX,
            pk in 0..=DEC_VALUE_MAX * 1_000_000_000, sk in 0..=DEC_SCALE_MAX,
            words in 0..=WORDS_MAX, mm in 0..=MULTIPLIER_MAX * 10_000, ms in 0..=MULTIPLIER_SCALE_MAX,
            scale in 0..=18u8,
        ) {
            let clamp = |m: u64, s: u8| m.min(DEC_VALUE_MAX * 10u64.pow(u32::from(s)));
            let rate = Rate { per_article: dec(clamp(pa, sa), sa), per_kwords: dec(clamp(pk, sk), sk) };
            let m = dec(mm.min(MULTIPLIER_MAX * 10u64.pow(u32::from(ms))), ms);
            let mut multipliers = [Dec::ONE; 3];
            multipliers[0] = m;
            prop_assert_eq!(price(rate, words, Tier::Premium, &multipliers, scale), integer_price(rate, words, m, scale));
        }
    }

    /// The largest price the bounds allow still computes (at micro-dollars it is refused as
    /// over 10^18 minor units rather than rounded).
    #[test]
    fn the_largest_price_is_exact_or_refused() {
        let max = dec(DEC_VALUE_MAX * 1_000_000_000, 9);
        let rate = Rate { per_article: max, per_kwords: max };
        let m = [dec(MULTIPLIER_MAX, 0); 3];
        assert_eq!(price(rate, WORDS_MAX, Tier::Standard, &m, 0), Some(1_000_100_000_000));
        assert_eq!(
            price(rate, WORDS_MAX, Tier::Standard, &m, 6),
            Some(1_000_100_000_000_000_000).filter(|u| *u <= AMOUNT_MAX)
        );
    }

    /// Distribution shares never exceed what is distributed, for every model.
    #[test]
    fn distributions_never_exceed_the_amount() {
        let units = [(10, 7u64), (11, 1), (12, 1)];
        let levels = List::new(vec![
            TierLevel { min_articles: 5, share_bps: 6000 },
            TierLevel { min_articles: 1, share_bps: 4000 },
        ])
        .unwrap();
        for model in [Distribution::PerUsage, Distribution::Hybrid { base_bps: 3333 }, Distribution::Tiered { levels }]
        {
            let shares = distribute(&model, 1_000_001, &units, |p| if p == 10 { 5 } else { 1 });
            let total: u64 = shares.iter().map(|(_, s)| s).sum();
            assert!((1_000_001 - 3..=1_000_001).contains(&total), "{model:?}: {total}");
        }
    }
}
