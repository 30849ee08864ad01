//! Bodies of the entry kinds the settlement engine executes: participants, content,
//! contracts, money movements, periods, payouts, disputes and federation.
//!
//! Byte layouts are in `specs/encoding.md`, meaning in `specs/settlement.md`. Field rules
//! that need no ledger state are checked here, on decode and on signing; rules that need
//! state (who may author, whether a contract exists) are the settlement engine's.

use bincode::{Decode, Encode};
use sha2::{Digest, Sha256};

use crate::codec::{CodecError, List, Text};
use crate::decimal::Dec;
use crate::entry::{NAME_BYTES_MAX, URL_BYTES_MAX, Usage, check_canonical_url};
use crate::merkle::Hash;
use crate::sig::{PublicKey, PublicKeyBytes};
use crate::u8_enum;

/// The participant id of the collective itself (from genesis).
pub const COLLECTIVE_ID: u64 = 0;
/// Basis points in a whole.
pub const BPS: u16 = 10_000;
/// Largest amount of money in one entry, in minor units (10^18). Sums of many such
/// amounts stay far inside the engine's 128-bit balances.
pub const AMOUNT_MAX: u64 = 1_000_000_000_000_000_000;
/// Largest word count of one article.
pub const WORDS_MAX: u32 = 10_000_000;
/// Largest number of articles one registration may cover.
pub const ARTICLES_MAX: u32 = 1_000_000_000;
/// Deepest URL prefix (path segments) that can be registered, reserved or priced.
pub const PREFIX_DEPTH_MAX: usize = 16;
/// Most syndication partners on one registration.
pub const PARTNERS_MAX: usize = 16;
/// Most rules in a contract's rate table.
pub const RATE_RULES_MAX: usize = 256;
/// Most free paths in a contract.
pub const FREE_PATHS_MAX: usize = 64;
/// Most tier levels in a tiered distribution.
pub const TIER_LEVELS_MAX: usize = 8;
/// Most lines in one federation remittance.
pub const REMIT_LINES_MAX: usize = 1024;
/// Longest free-text note, reason or reference.
pub const NOTE_BYTES_MAX: usize = 256;
/// Largest tier multiplier.
pub const MULTIPLIER_MAX: u64 = 100;
/// Most decimal places of a tier multiplier.
pub const MULTIPLIER_SCALE_MAX: u8 = 4;

u8_enum! {
    /// What a participant is to the collective.
    pub enum Role {
        Collective = 1 => "collective",
        Lab = 2 => "lab",
        Publisher = 3 => "publisher",
        Auditor = 4 => "auditor",
        Witness = 5 => "witness",
        /// Another collective whose catalogue this one licenses (and settles with net).
        Federated = 6 => "federated",
    }
}

u8_enum! {
    /// A content tier; prices may carry a multiplier per tier.
    pub enum Tier {
        Premium = 1 => "premium",
        Standard = 2 => "standard",
        Commodity = 3 => "commodity",
    }
}

impl Tier {
    /// Index into per-tier arrays: premium 0, standard 1, commodity 2.
    pub fn index(self) -> usize {
        usize::from(self.code() - 1)
    }
}

u8_enum! {
    /// How a URL pattern matches.
    pub enum MatchKind {
        /// Exactly this URL.
        Exact = 1 => "exact",
        /// Every URL that starts with this one (which ends in `/`).
        Prefix = 2 => "prefix",
    }
}

/// A URL or URL prefix, for registrations, reservations, rate rules and free paths.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode, serde::Serialize)]
pub struct UrlPattern {
    pub kind: MatchKind,
    pub url: Text<URL_BYTES_MAX>,
}

impl UrlPattern {
    pub fn exact(url: &str) -> Result<Self, CodecError> {
        let p = Self { kind: MatchKind::Exact, url: Text::new(url)? };
        p.validate("pattern")?;
        Ok(p)
    }

    pub fn prefix(url: &str) -> Result<Self, CodecError> {
        let p = Self { kind: MatchKind::Prefix, url: Text::new(url)? };
        p.validate("pattern")?;
        Ok(p)
    }

    /// Canonical URL; a prefix ends in `/`, has no query and at most 16 path segments.
    pub fn validate(&self, field: &'static str) -> Result<(), CodecError> {
        let url = self.url.as_str();
        check_canonical_url(url).map_err(|reason| invalid(field, reason))?;
        if self.kind == MatchKind::Prefix {
            if !url.ends_with('/') || url.contains('?') {
                return Err(invalid(field, "a prefix ends in '/' and has no query"));
            }
            if prefix_candidates(url).count() > PREFIX_DEPTH_MAX {
                return Err(invalid(field, "a prefix has at most 16 path segments"));
            }
        }
        Ok(())
    }

    /// The key this pattern is stored under: the match kind code, then the URL.
    pub fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + self.url.as_str().len());
        k.push(self.kind.code());
        k.extend_from_slice(self.url.as_str().as_bytes());
        k
    }

    pub fn matches(&self, url: &str) -> bool {
        match self.kind {
            MatchKind::Exact => self.url.as_str() == url,
            MatchKind::Prefix => prefix_candidates(url).any(|p| p == self.url.as_str()),
        }
    }
}

/// The prefixes of a canonical URL that a prefix pattern could equal, longest first:
/// the URL up to and including each `/` of its path (before any query), at most
/// [`PREFIX_DEPTH_MAX`] of them, counted from the root.
pub fn prefix_candidates(url: &str) -> impl Iterator<Item = &str> {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let path_start = url[scheme_end..].find('/').map_or(url.len(), |i| scheme_end + i);
    let path_end = url.find('?').unwrap_or(url.len());
    let slashes: Vec<usize> = url[path_start..path_end]
        .bytes()
        .enumerate()
        .filter(|(_, b)| *b == b'/')
        .map(|(i, _)| path_start + i)
        .take(PREFIX_DEPTH_MAX + 1)
        .collect();
    slashes.into_iter().rev().map(move |i| &url[..=i])
}

/// Admit a participant (collective only).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct Admit {
    /// Chosen by the collective; never 0 (the collective) and never reused.
    pub participant: u64,
    pub role: Role,
    #[serde(serialize_with = "crate::codec::hex_bytes")]
    pub key: PublicKeyBytes,
    pub name: Text<NAME_BYTES_MAX>,
}

/// A change to an admitted participant (collective only).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantChange {
    /// Replace the participant's key (also ends a revocation).
    RotateKey(#[serde(serialize_with = "crate::codec::hex_bytes")] PublicKeyBytes),
    /// The key no longer signs for anyone; the participant needs a new key to act.
    RevokeKey,
    /// The participant may author nothing and a lab gets no access until reinstated.
    Suspend,
    Reinstate,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct UpdateParticipant {
    pub participant: u64,
    pub change: ParticipantChange,
    /// Chosen by the author to tell apart deliberate repeats of an otherwise identical
    /// entry (an entry is idempotent by content; see `Entry::dedup_id`).
    #[serde(serialize_with = "crate::codec::hex_bytes")]
    pub nonce: [u8; 16],
}

/// A syndication partner's share of a registered work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct Partner {
    pub participant: u64,
    pub share_bps: u16,
}

/// Register (or re-register, replacing) content (publisher or federated collective).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct Register {
    pub pattern: UrlPattern,
    /// Articles the pattern covers: 1 for an exact URL.
    pub articles: u32,
    /// Words per article (for a prefix: the average).
    pub words: u32,
    pub tier: Tier,
    /// How original the content is, in basis points (recorded for distribution models).
    pub uniqueness_bps: u16,
    /// Partners and their shares of the net royalty; the author (canonical publisher)
    /// keeps the rest, including every rounding remainder.
    pub partners: List<Partner, PARTNERS_MAX>,
    /// Chosen by the author to tell apart deliberate repeats of an otherwise identical
    /// entry (an entry is idempotent by content; see `Entry::dedup_id`).
    #[serde(serialize_with = "crate::codec::hex_bytes")]
    pub nonce: [u8; 16],
}

/// Reserve (opt out) or release a use of content (publisher or federated collective).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct Reserve {
    pub pattern: UrlPattern,
    /// A specific use or a category (`all`, `ai-all`).
    pub usage: Usage,
    /// True to reserve, false to lift an earlier reservation of the same pattern and use.
    pub reserved: bool,
    /// Chosen by the author to tell apart deliberate repeats of an otherwise identical
    /// entry (an entry is idempotent by content; see `Entry::dedup_id`).
    #[serde(serialize_with = "crate::codec::hex_bytes")]
    pub nonce: [u8; 16],
}

/// A price: per article plus per 1,000 words, in whole units of the asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct Rate {
    pub per_article: Dec,
    pub per_kwords: Dec,
}

/// A rate that applies to URLs matching a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct RateRule {
    pub pattern: UrlPattern,
    pub rate: Rate,
}

u8_enum! {
    /// When a fetch is charged.
    pub enum ChargeBasis {
        EveryFetch = 1 => "every-fetch",
        /// The first fetch of each URL during the contract's term; later ones are free.
        OncePerArticle = 2 => "once-per-article",
    }
}

/// Transactional (priced per receipt) or blanket (a flat fee for the term).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Licence {
    Transactional,
    /// `fee` minor units for the whole term, drawn from escrow when the lab accepts and
    /// distributed by measured use at each period close.
    Blanket {
        fee: u64,
    },
}

/// One level of a tiered distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct TierLevel {
    /// Publishers with at least this many registered articles are in the level (the
    /// highest level they reach).
    pub min_articles: u32,
    /// The level's share of the money distributed.
    pub share_bps: u16,
}

/// How pool money is distributed among publishers at period close.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// Pro rata to measured use.
    PerUsage,
    /// A fixed share per level, equal within a level.
    Tiered { levels: List<TierLevel, TIER_LEVELS_MAX> },
    /// `base_bps` equally among every publisher with use, the rest by use.
    Hybrid { base_bps: u16 },
}

/// The terms of a licence. A contract's id is the hash of these bytes; they never change.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct ContractTerms {
    /// The licensee lab's participant id.
    pub lab: u64,
    pub name: Text<NAME_BYTES_MAX>,
    /// Uses the licence covers: strictly increasing codes, at least one.
    pub scope: List<Usage, 6>,
    /// Term start (inclusive) and end (exclusive), unix milliseconds of fetch time.
    pub start_ms: u64,
    pub end_ms: u64,
    pub licence: Licence,
    pub basis: ChargeBasis,
    /// The rate where no rule matches.
    pub rate: Rate,
    /// Multipliers for premium, standard and commodity content (at most 100, 4 places).
    pub tier_multipliers: [Dec; 3],
    /// Per-URL and per-path rates: an exact URL rule beats a prefix rule; a longer prefix
    /// beats a shorter one.
    pub rate_table: List<RateRule, RATE_RULES_MAX>,
    /// URLs that cost nothing (checked before the rate table).
    pub free_paths: List<UrlPattern, FREE_PATHS_MAX>,
    /// Most the lab pays under this contract per period, minor units; 0 for no cap.
    pub spend_cap: u64,
    /// How far below zero the lab's escrow may go before it loses access.
    pub credit_limit: u64,
    /// The collective's fee on every charge and distribution.
    pub fee_bps: u16,
    pub distribution: Distribution,
    /// Word count assumed for content nobody registered (priced at the standard tier).
    pub unregistered_words: u32,
}

/// Domain of contract ids.
pub const CONTRACT_ID_DOMAIN: &[u8] = b"tally/contract-id/v1\0";

impl ContractTerms {
    /// `SHA-256("tally/contract-id/v1" || 0x00 || terms bytes)`.
    pub fn id(&self) -> Hash {
        let mut h = Sha256::new();
        h.update(CONTRACT_ID_DOMAIN);
        h.update(crate::codec::encode(self));
        h.finalize().into()
    }

    /// Whether the contract covers the specific use `usage`.
    pub fn covers(&self, usage: Usage) -> bool {
        self.scope.iter().any(|s| s.covers(usage))
    }
}

/// The lab's countersignature that activates a contract.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct Accept {
    #[serde(serialize_with = "crate::codec::hex_bytes")]
    pub contract_id: Hash,
}

/// Money received from outside: into a lab's escrow or a federated collective's clearing
/// account (collective only).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct Deposit {
    pub participant: u64,
    pub amount: u64,
    /// The external reference (bank transfer id).
    pub reference: Text<NOTE_BYTES_MAX>,
}

/// Close the open period (collective only).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct ClosePeriod {
    /// The number of the period being closed (the first is 0): guards against replays.
    pub period: u32,
    /// Receipts fetched before this time belong to the closed period; later ones must not
    /// be before it.
    pub cutoff_ms: u64,
    /// Publishers whose net position is below this are carried to the next period.
    pub payout_min: u64,
}

/// What happened to a payout (collective only).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PayoutOutcome {
    Confirmed {
        reference: Text<NOTE_BYTES_MAX>,
    },
    /// The money returns to the party's payable account.
    Failed {
        reason: Text<NOTE_BYTES_MAX>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct PayoutResult {
    pub period: u32,
    pub participant: u64,
    pub outcome: PayoutOutcome,
}

/// Contest a receipt (the lab that signed it or a publisher it credited).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct Dispute {
    pub receipt_seq: u64,
    pub reason: Text<NOTE_BYTES_MAX>,
    /// Chosen by the author to tell apart deliberate repeats of an otherwise identical
    /// entry (an entry is idempotent by content; see `Entry::dedup_id`).
    #[serde(serialize_with = "crate::codec::hex_bytes")]
    pub nonce: [u8; 16],
}

u8_enum! {
    pub enum Resolution {
        /// The receipt stands.
        Uphold = 1 => "uphold",
        /// Every posting of the receipt is reversed by a compensating posting.
        Reverse = 2 => "reverse",
    }
}

/// Decide a dispute (collective only).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct Resolve {
    pub receipt_seq: u64,
    pub resolution: Resolution,
    pub note: Text<NOTE_BYTES_MAX>,
    /// Chosen by the author to tell apart deliberate repeats of an otherwise identical
    /// entry (an entry is idempotent by content; see `Entry::dedup_id`).
    #[serde(serialize_with = "crate::codec::hex_bytes")]
    pub nonce: [u8; 16],
}

/// Claim the money held for an unregistered URL that the author has since registered.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct Claim {
    pub url: Text<URL_BYTES_MAX>,
}

/// One publisher's royalty in a federation remittance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct RemitLine {
    pub participant: u64,
    pub amount: u64,
}

/// Royalties a federated collective owes this collective's publishers for use by its own
/// licensees (federated collective only). Credited to the publishers at once and owed by
/// the federated collective's clearing account.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct Remit {
    pub reference: Text<NOTE_BYTES_MAX>,
    pub lines: List<RemitLine, REMIT_LINES_MAX>,
}

fn invalid(field: &'static str, reason: &'static str) -> CodecError {
    CodecError::Invalid { field, reason }
}

fn check_name(field: &'static str, name: &str) -> Result<(), CodecError> {
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(invalid(field, "must be non-empty with no control characters"));
    }
    Ok(())
}

fn check_amount(field: &'static str, amount: u64) -> Result<(), CodecError> {
    if amount > AMOUNT_MAX {
        return Err(invalid(field, "amounts are at most 10^18 minor units"));
    }
    Ok(())
}

fn check_bps(field: &'static str, bps: u16) -> Result<(), CodecError> {
    if bps > BPS {
        return Err(invalid(field, "basis points are at most 10000"));
    }
    Ok(())
}

pub(crate) fn validate_admit(a: &Admit) -> Result<(), CodecError> {
    if a.participant == COLLECTIVE_ID {
        return Err(invalid("participant", "id 0 is the collective"));
    }
    if a.role == Role::Collective {
        return Err(invalid("role", "there is one collective, named by genesis"));
    }
    if PublicKey::for_registration(&a.key).is_err() {
        return Err(invalid("key", "must be a registrable key (canonical, prime order)"));
    }
    check_name("name", a.name.as_str())
}

pub(crate) fn validate_update(u: &UpdateParticipant) -> Result<(), CodecError> {
    if let ParticipantChange::RotateKey(key) = &u.change
        && PublicKey::for_registration(key).is_err()
    {
        return Err(invalid("key", "must be a registrable key (canonical, prime order)"));
    }
    Ok(())
}

pub(crate) fn validate_register(r: &Register) -> Result<(), CodecError> {
    r.pattern.validate("pattern")?;
    if r.articles == 0 || r.articles > ARTICLES_MAX {
        return Err(invalid("articles", "must be 1 to 10^9"));
    }
    if r.pattern.kind == MatchKind::Exact && r.articles != 1 {
        return Err(invalid("articles", "an exact URL is one article"));
    }
    if r.words > WORDS_MAX {
        return Err(invalid("words", "at most 10,000,000 words per article"));
    }
    check_bps("uniqueness_bps", r.uniqueness_bps)?;
    let mut total: u32 = 0;
    for (i, p) in r.partners.iter().enumerate() {
        if p.share_bps == 0 {
            return Err(invalid("partners", "a partner's share must be more than 0"));
        }
        if r.partners.as_slice()[..i].iter().any(|q| q.participant == p.participant) {
            return Err(invalid("partners", "a partner appears once"));
        }
        total += u32::from(p.share_bps);
    }
    if total > u32::from(BPS) {
        return Err(invalid("partners", "partner shares add up to at most 10000 basis points"));
    }
    Ok(())
}

pub(crate) fn validate_reserve(r: &Reserve) -> Result<(), CodecError> {
    r.pattern.validate("pattern")
}

fn check_multiplier(m: Dec) -> Result<(), CodecError> {
    if m.scale() > MULTIPLIER_SCALE_MAX || m.to_decimal() > rust_decimal::Decimal::from(MULTIPLIER_MAX) {
        return Err(invalid("tier_multipliers", "a multiplier is at most 100 with at most 4 decimal places"));
    }
    Ok(())
}

/// The field rules of contract terms (applied on decode and signing; exposed for tools
/// that build terms from documents).
pub fn check_terms(t: &ContractTerms) -> Result<(), CodecError> {
    check_name("name", t.name.as_str())?;
    if t.scope.is_empty() || t.scope.as_slice().windows(2).any(|w| w[0] >= w[1]) {
        return Err(invalid("scope", "at least one use, in increasing code order, each once"));
    }
    if t.start_ms >= t.end_ms {
        return Err(invalid("end_ms", "the term ends after it starts"));
    }
    if let Licence::Blanket { fee } = t.licence {
        check_amount("licence.fee", fee)?;
    }
    for m in t.tier_multipliers {
        check_multiplier(m)?;
    }
    for (i, rule) in t.rate_table.iter().enumerate() {
        rule.pattern.validate("rate_table")?;
        if t.rate_table.as_slice()[..i].iter().any(|r| r.pattern == rule.pattern) {
            return Err(invalid("rate_table", "a pattern appears once"));
        }
    }
    for (i, p) in t.free_paths.iter().enumerate() {
        p.validate("free_paths")?;
        if t.free_paths.as_slice()[..i].contains(p) {
            return Err(invalid("free_paths", "a pattern appears once"));
        }
    }
    check_amount("spend_cap", t.spend_cap)?;
    check_amount("credit_limit", t.credit_limit)?;
    check_bps("fee_bps", t.fee_bps)?;
    match &t.distribution {
        Distribution::PerUsage => {}
        Distribution::Tiered { levels } => {
            if levels.is_empty() || levels.as_slice().windows(2).any(|w| w[0].min_articles <= w[1].min_articles) {
                return Err(invalid("distribution", "tier levels are listed from most articles to fewest, each once"));
            }
            let total: u32 = levels.iter().map(|l| u32::from(l.share_bps)).sum();
            if total > u32::from(BPS) {
                return Err(invalid("distribution", "tier shares add up to at most 10000 basis points"));
            }
        }
        Distribution::Hybrid { base_bps } => check_bps("distribution", *base_bps)?,
    }
    if t.unregistered_words > WORDS_MAX {
        return Err(invalid("unregistered_words", "at most 10,000,000 words"));
    }
    Ok(())
}

pub(crate) fn validate_deposit(d: &Deposit) -> Result<(), CodecError> {
    if d.amount == 0 {
        return Err(invalid("amount", "a deposit is more than 0"));
    }
    check_amount("amount", d.amount)?;
    check_name("reference", d.reference.as_str())
}

pub(crate) fn validate_close(c: &ClosePeriod) -> Result<(), CodecError> {
    if c.cutoff_ms == 0 {
        return Err(invalid("cutoff_ms", "must be set"));
    }
    check_amount("payout_min", c.payout_min)
}

pub(crate) fn validate_payout(p: &PayoutResult) -> Result<(), CodecError> {
    match &p.outcome {
        PayoutOutcome::Confirmed { reference } => check_name("reference", reference.as_str()),
        PayoutOutcome::Failed { reason } => check_name("reason", reason.as_str()),
    }
}

pub(crate) fn validate_claim(c: &Claim) -> Result<(), CodecError> {
    check_canonical_url(c.url.as_str()).map_err(|reason| invalid("url", reason))
}

pub(crate) fn validate_remit(r: &Remit) -> Result<(), CodecError> {
    check_name("reference", r.reference.as_str())?;
    if r.lines.is_empty() {
        return Err(invalid("lines", "at least one line"));
    }
    for (i, l) in r.lines.iter().enumerate() {
        if l.amount == 0 {
            return Err(invalid("lines", "each amount is more than 0"));
        }
        check_amount("lines", l.amount)?;
        if r.lines.as_slice()[..i].iter().any(|m| m.participant == l.participant) {
            return Err(invalid("lines", "a publisher appears once"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prefix candidates are the path's `/` boundaries, longest first, query ignored.
    #[test]
    fn prefix_candidates_follow_the_path() {
        let got: Vec<&str> = prefix_candidates("https://a.example/x/y/z?q=/w").collect();
        assert_eq!(got, ["https://a.example/x/y/", "https://a.example/x/", "https://a.example/"]);
        let got: Vec<&str> = prefix_candidates("https://a.example/").collect();
        assert_eq!(got, ["https://a.example/"]);
        assert!(UrlPattern::prefix("https://a.example/x/").unwrap().matches("https://a.example/x/y"));
        assert!(!UrlPattern::prefix("https://a.example/x/").unwrap().matches("https://a.example/xy"));
        assert!(UrlPattern::prefix("https://a.example/x").is_err());
        assert!(UrlPattern::prefix("https://a.example/x/?q").is_err());
        let deep = format!("https://a.example/{}", "d/".repeat(PREFIX_DEPTH_MAX));
        assert!(UrlPattern::prefix(&deep).is_err());
    }
}
