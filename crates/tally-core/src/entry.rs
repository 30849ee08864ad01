//! Ledger entries: one signed envelope for every kind, canonical bytes, and the public
//! leaf record that goes into the Merkle tree.
//!
//! Entry bytes: `kind (u8) || author key (32) || signature (64) || body`. The signature is
//! over `"tally/<kind>/v1" || 0x00 || body`, so a signature for one kind can never be
//! replayed as another. See `specs/encoding.md`.

use std::collections::HashMap;

use bincode::{Decode, Encode};
use sha2::{Digest, Sha256};

use crate::codec::{self, CodecError, Text};
use crate::kinds::{
    self, Accept, Admit, Claim, ClosePeriod, ContractTerms, Deposit, Dispute, PayoutResult, Register, Remit, Reserve,
    Resolve, UpdateParticipant,
};
use crate::merkle::{self, Hash};
use crate::sig::{self, BatchItem, PublicKey, PublicKeyBytes, SignatureBytes, SignatureError, SigningKey};
use crate::u8_enum;

/// Largest entry, in bytes, that the ledger accepts.
pub const ENTRY_BYTES_MAX: usize = 64 * 1024;
/// Bytes before the body: kind, author key, signature.
pub const ENTRY_HEADER_BYTES: usize = 1 + 32 + 64;
/// Longest canonical URL in a receipt or registration.
pub const URL_BYTES_MAX: usize = 2048;
/// Longest log origin (also the checkpoint key name).
pub const ORIGIN_BYTES_MAX: usize = 128;
/// Longest display name.
pub const NAME_BYTES_MAX: usize = 128;
/// Longest asset code.
pub const ASSET_CODE_BYTES_MAX: usize = 12;
/// Largest asset scale (decimal places of the minor unit). 18 keeps one whole unit within
/// an i64 of minor units and well inside rust_decimal's 28 digits.
pub const ASSET_SCALE_MAX: u8 = 18;
/// Encoded size of a leaf record.
pub const LEAF_RECORD_BYTES: usize = 1 + 1 + 8 + 8 + 8 + 32;
/// Leaf record format version.
pub const LEAF_RECORD_VERSION: u8 = 1;

const _: () = assert!(ENTRY_BYTES_MAX <= u32::MAX as usize);
// Entry bundles carry leaf records with a u16 length prefix (C2SP tlog-tiles).
const _: () = assert!(LEAF_RECORD_BYTES <= u16::MAX as usize);
const _: () = assert!(URL_BYTES_MAX + ENTRY_HEADER_BYTES + 512 < ENTRY_BYTES_MAX);

u8_enum! {
    /// What an entry is. Codes are stable forever; new kinds take new codes.
    pub enum EntryKind {
        Genesis = 1 => "genesis",
        Receipt = 2 => "receipt",
        Admit = 3 => "admit",
        UpdateParticipant = 4 => "update-participant",
        Register = 5 => "register",
        Reserve = 6 => "reserve",
        Contract = 7 => "contract",
        Accept = 8 => "accept",
        Deposit = 9 => "deposit",
        ClosePeriod = 10 => "close-period",
        PayoutResult = 11 => "payout-result",
        Dispute = 12 => "dispute",
        Resolve = 13 => "resolve",
        Claim = 14 => "claim",
        Remit = 15 => "remit",
    }
}

impl EntryKind {
    /// The signing-domain prefix for this kind: `tally/<kind>/v1` and a zero byte.
    pub fn domain(self) -> &'static [u8] {
        match self {
            EntryKind::Genesis => b"tally/genesis/v1\0",
            EntryKind::Receipt => b"tally/receipt/v1\0",
            EntryKind::Admit => b"tally/admit/v1\0",
            EntryKind::UpdateParticipant => b"tally/update-participant/v1\0",
            EntryKind::Register => b"tally/register/v1\0",
            EntryKind::Reserve => b"tally/reserve/v1\0",
            EntryKind::Contract => b"tally/contract/v1\0",
            EntryKind::Accept => b"tally/accept/v1\0",
            EntryKind::Deposit => b"tally/deposit/v1\0",
            EntryKind::ClosePeriod => b"tally/close-period/v1\0",
            EntryKind::PayoutResult => b"tally/payout-result/v1\0",
            EntryKind::Dispute => b"tally/dispute/v1\0",
            EntryKind::Resolve => b"tally/resolve/v1\0",
            EntryKind::Claim => b"tally/claim/v1\0",
            EntryKind::Remit => b"tally/remit/v1\0",
        }
    }
}

u8_enum! {
    /// RSL 1.0 usage tokens. `All` and `AiAll` are categories for scopes and reservations;
    /// a receipt names one specific use.
    pub enum Usage {
        All = 1 => "all",
        AiAll = 2 => "ai-all",
        AiTrain = 3 => "ai-train",
        AiInput = 4 => "ai-input",
        AiIndex = 5 => "ai-index",
        Search = 6 => "search",
    }
}

impl Usage {
    /// True for a specific use, false for a category.
    pub fn is_specific(self) -> bool {
        !matches!(self, Usage::All | Usage::AiAll)
    }

    /// Whether a scope or reservation naming `self` covers the specific use `other`.
    pub fn covers(self, other: Usage) -> bool {
        match self {
            Usage::All => true,
            Usage::AiAll => matches!(other, Usage::AiTrain | Usage::AiInput | Usage::AiIndex),
            _ => self == other,
        }
    }
}

/// The first entry of every ledger: who runs it and what it counts in.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Genesis {
    /// The log's origin line and checkpoint key name, e.g. `tally.example/collective`.
    pub origin: Text<ORIGIN_BYTES_MAX>,
    /// The collective's display name.
    pub collective_name: Text<NAME_BYTES_MAX>,
    /// The collective's key; must equal the entry's author.
    pub collective_key: PublicKeyBytes,
    /// The ledger's one asset, e.g. `USD`.
    pub asset_code: Text<ASSET_CODE_BYTES_MAX>,
    /// Decimal places of the asset's minor unit (6 for USD micros).
    pub asset_scale: u8,
    /// When the collective created the ledger, unix milliseconds.
    pub created_ms: u64,
}

/// A publisher's countersignature that it served this fetch (proof of delivery).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Delivery {
    pub publisher_key: PublicKeyBytes,
    /// Over `"tally/delivery/v1" || 0x00 || receipt core bytes`.
    pub signature: SignatureBytes,
}

/// The fields of a receipt that both the lab and a delivering publisher sign.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReceiptCore {
    pub lab_id: u64,
    pub contract_id: Hash,
    pub url: Text<URL_BYTES_MAX>,
    pub content_sha256: Hash,
    pub response_bytes: u64,
    pub fetch_time_ms: u64,
    pub usage: Usage,
    /// 128 random bits chosen by the lab: the idempotency key with the lab's key, and what
    /// keeps the public commitment to this receipt from being guessed.
    pub nonce: [u8; 16],
}

/// One fetch of one article by a lab's crawler.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Receipt {
    pub core: ReceiptCore,
    pub delivery: Option<Delivery>,
}

/// Domain for delivery countersignatures.
pub const DELIVERY_DOMAIN: &[u8] = b"tally/delivery/v1\0";
/// Domain for the idempotency key of entries other than receipts.
pub const ENTRY_ID_DOMAIN: &[u8] = b"tally/entry-id/v1\0";
/// Domain for receipt ids.
pub const RECEIPT_ID_DOMAIN: &[u8] = b"tally/receipt-id/v1\0";

/// `SHA-256("tally/receipt-id/v1" || 0x00 || lab key || nonce)`: the idempotency key.
pub fn receipt_id(lab_key: &PublicKeyBytes, nonce: &[u8; 16]) -> Hash {
    let mut h = Sha256::new();
    h.update(RECEIPT_ID_DOMAIN);
    h.update(lab_key);
    h.update(nonce);
    h.finalize().into()
}

/// An entry body of any kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Genesis(Genesis),
    Receipt(Receipt),
    Admit(Admit),
    UpdateParticipant(UpdateParticipant),
    Register(Register),
    Reserve(Reserve),
    Contract(ContractTerms),
    Accept(Accept),
    Deposit(Deposit),
    ClosePeriod(ClosePeriod),
    PayoutResult(PayoutResult),
    Dispute(Dispute),
    Resolve(Resolve),
    Claim(Claim),
    Remit(Remit),
}

/// `$m!(Variant, binding)` for every body kind: keeps the per-kind dispatch in one list.
macro_rules! each_body {
    ($self:expr, $b:ident => $e:expr) => {
        match $self {
            Body::Genesis($b) => $e,
            Body::Receipt($b) => $e,
            Body::Admit($b) => $e,
            Body::UpdateParticipant($b) => $e,
            Body::Register($b) => $e,
            Body::Reserve($b) => $e,
            Body::Contract($b) => $e,
            Body::Accept($b) => $e,
            Body::Deposit($b) => $e,
            Body::ClosePeriod($b) => $e,
            Body::PayoutResult($b) => $e,
            Body::Dispute($b) => $e,
            Body::Resolve($b) => $e,
            Body::Claim($b) => $e,
            Body::Remit($b) => $e,
        }
    };
}

impl Body {
    pub fn kind(&self) -> EntryKind {
        match self {
            Body::Genesis(_) => EntryKind::Genesis,
            Body::Receipt(_) => EntryKind::Receipt,
            Body::Admit(_) => EntryKind::Admit,
            Body::UpdateParticipant(_) => EntryKind::UpdateParticipant,
            Body::Register(_) => EntryKind::Register,
            Body::Reserve(_) => EntryKind::Reserve,
            Body::Contract(_) => EntryKind::Contract,
            Body::Accept(_) => EntryKind::Accept,
            Body::Deposit(_) => EntryKind::Deposit,
            Body::ClosePeriod(_) => EntryKind::ClosePeriod,
            Body::PayoutResult(_) => EntryKind::PayoutResult,
            Body::Dispute(_) => EntryKind::Dispute,
            Body::Resolve(_) => EntryKind::Resolve,
            Body::Claim(_) => EntryKind::Claim,
            Body::Remit(_) => EntryKind::Remit,
        }
    }

    fn encode(&self) -> Vec<u8> {
        each_body!(self, b => codec::encode(b))
    }

    fn decode(kind: EntryKind, bytes: &[u8]) -> Result<Self, CodecError> {
        let d = bytes;
        Ok(match kind {
            EntryKind::Genesis => Body::Genesis(codec::decode_exact(d)?),
            EntryKind::Receipt => Body::Receipt(codec::decode_exact(d)?),
            EntryKind::Admit => Body::Admit(codec::decode_exact(d)?),
            EntryKind::UpdateParticipant => Body::UpdateParticipant(codec::decode_exact(d)?),
            EntryKind::Register => Body::Register(codec::decode_exact(d)?),
            EntryKind::Reserve => Body::Reserve(codec::decode_exact(d)?),
            EntryKind::Contract => Body::Contract(codec::decode_exact(d)?),
            EntryKind::Accept => Body::Accept(codec::decode_exact(d)?),
            EntryKind::Deposit => Body::Deposit(codec::decode_exact(d)?),
            EntryKind::ClosePeriod => Body::ClosePeriod(codec::decode_exact(d)?),
            EntryKind::PayoutResult => Body::PayoutResult(codec::decode_exact(d)?),
            EntryKind::Dispute => Body::Dispute(codec::decode_exact(d)?),
            EntryKind::Resolve => Body::Resolve(codec::decode_exact(d)?),
            EntryKind::Claim => Body::Claim(codec::decode_exact(d)?),
            EntryKind::Remit => Body::Remit(codec::decode_exact(d)?),
        })
    }

    /// Field rules beyond the byte layout; decoding and signing both enforce them.
    fn validate(&self, author: &PublicKeyBytes) -> Result<(), CodecError> {
        match self {
            Body::Genesis(g) => validate_genesis(g, author),
            Body::Receipt(r) => validate_receipt(r),
            Body::Admit(a) => kinds::validate_admit(a),
            Body::UpdateParticipant(u) => kinds::validate_update(u),
            Body::Register(r) => kinds::validate_register(r),
            Body::Reserve(r) => kinds::validate_reserve(r),
            Body::Contract(t) => kinds::check_terms(t),
            Body::Accept(_) | Body::Dispute(_) | Body::Resolve(_) => Ok(()),
            Body::Deposit(d) => kinds::validate_deposit(d),
            Body::ClosePeriod(c) => kinds::validate_close(c),
            Body::PayoutResult(p) => kinds::validate_payout(p),
            Body::Claim(c) => kinds::validate_claim(c),
            Body::Remit(r) => kinds::validate_remit(r),
        }
    }
}

fn invalid(field: &'static str, reason: &'static str) -> CodecError {
    CodecError::Invalid { field, reason }
}

fn validate_genesis(g: &Genesis, author: &PublicKeyBytes) -> Result<(), CodecError> {
    check_note_name(g.origin.as_str()).map_err(|r| invalid("origin", r))?;
    if g.collective_name.as_str().is_empty() || g.collective_name.as_str().chars().any(char::is_control) {
        return Err(invalid("collective_name", "must be non-empty with no control characters"));
    }
    if g.collective_key != *author {
        return Err(invalid("collective_key", "must be the key that signs the genesis entry"));
    }
    if PublicKey::for_registration(&g.collective_key).is_err() {
        return Err(invalid("collective_key", "must be a registrable key (canonical, prime order)"));
    }
    let code = g.asset_code.as_str();
    if code.len() < 3 || !code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
        return Err(invalid("asset_code", "must be 3-12 characters of A-Z and 0-9"));
    }
    if g.asset_scale > ASSET_SCALE_MAX {
        return Err(invalid("asset_scale", "must be at most 18"));
    }
    Ok(())
}

fn validate_receipt(r: &Receipt) -> Result<(), CodecError> {
    check_canonical_url(r.core.url.as_str()).map_err(|reason| invalid("url", reason))?;
    if !r.core.usage.is_specific() {
        return Err(invalid("usage", "a receipt names one specific use, not a category"));
    }
    if r.core.fetch_time_ms == 0 {
        return Err(invalid("fetch_time_ms", "must be set"));
    }
    Ok(())
}

/// A signed-note key name: non-empty, no Unicode spaces, no `+`, no control characters.
pub fn check_note_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control() || c == '+') {
        return Err("must contain no spaces, control characters or '+'");
    }
    Ok(())
}

/// The canonical URL form (specs/encoding.md): `http` or `https` in lower case, a lower-case
/// host of `a-z 0-9 . -` with an optional port that is not the scheme's default, then a
/// path starting with `/`; printable ASCII only (anything else percent-encoded), no
/// fragment. The URL is kept as given; this only checks it is already canonical.
pub fn check_canonical_url(url: &str) -> Result<(), &'static str> {
    if !url.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("must be printable ASCII with no spaces (percent-encode the rest)");
    }
    if url.contains('#') {
        return Err("must not carry a fragment");
    }
    let (rest, default_port) = if let Some(rest) = url.strip_prefix("https://") {
        (rest, "443")
    } else if let Some(rest) = url.strip_prefix("http://") {
        (rest, "80")
    } else {
        return Err("must start with http:// or https:// in lower case");
    };
    let slash = rest.find('/').ok_or("must have a path starting with '/'")?;
    let authority = &rest[..slash];
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let host_ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && !host.starts_with('.')
        && !host.ends_with('.');
    if !host_ok {
        return Err("host must be lower-case letters, digits, '.' and '-'");
    }
    if let Some(port) = port {
        let digits_ok = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        if !digits_ok || port.starts_with('0') || port == default_port {
            return Err("port must be a number without leading zeros, omitted when it is the default");
        }
    }
    Ok(())
}

/// A decoded entry that keeps its canonical bytes. It is not yet known to be validly
/// signed; [`Entry::verify`] or [`verify_entries`] turn it into a [`VerifiedEntry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    bytes: Vec<u8>,
    body: Body,
}

impl Entry {
    /// Sign `body` as `key` and build the entry. Fails if the body breaks a field rule.
    pub fn sign(key: &SigningKey, body: Body) -> Result<Self, CodecError> {
        let author = key.public_bytes();
        body.validate(&author)?;
        let body_bytes = body.encode();
        let signature = key.sign(&[body.kind().domain(), &body_bytes]);
        let mut bytes = Vec::with_capacity(ENTRY_HEADER_BYTES + body_bytes.len());
        bytes.push(body.kind().code());
        bytes.extend_from_slice(&author);
        bytes.extend_from_slice(&signature);
        bytes.extend_from_slice(&body_bytes);
        if bytes.len() > ENTRY_BYTES_MAX {
            return Err(CodecError::TooLarge { len: bytes.len(), max: ENTRY_BYTES_MAX });
        }
        Ok(Self { bytes, body })
    }

    /// Decode canonical entry bytes. Anything non-canonical is refused: unknown kinds,
    /// trailing bytes, over-long fields, bad UTF-8, out-of-range values.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.len() > ENTRY_BYTES_MAX {
            return Err(CodecError::TooLarge { len: bytes.len(), max: ENTRY_BYTES_MAX });
        }
        if bytes.len() < ENTRY_HEADER_BYTES {
            return Err(CodecError::Malformed(format!(
                "{} bytes is shorter than the {ENTRY_HEADER_BYTES}-byte header",
                bytes.len()
            )));
        }
        let kind = EntryKind::from_code(bytes[0]).ok_or(CodecError::UnknownKind(bytes[0]))?;
        let body = Body::decode(kind, &bytes[ENTRY_HEADER_BYTES..])?;
        let entry = Self { bytes: bytes.to_vec(), body };
        entry.body.validate(entry.author())?;
        Ok(entry)
    }

    pub fn kind(&self) -> EntryKind {
        self.body.kind()
    }

    pub fn author(&self) -> &PublicKeyBytes {
        self.bytes[1..33].try_into().expect("header is present")
    }

    pub fn signature(&self) -> &SignatureBytes {
        self.bytes[33..97].try_into().expect("header is present")
    }

    pub fn body(&self) -> &Body {
        &self.body
    }

    pub fn body_bytes(&self) -> &[u8] {
        &self.bytes[ENTRY_HEADER_BYTES..]
    }

    /// The canonical bytes: what is stored, exported and committed to.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The receipt id, for receipts.
    pub fn receipt_id(&self) -> Option<Hash> {
        match &self.body {
            Body::Receipt(r) => Some(receipt_id(self.author(), &r.core.nonce)),
            _ => None,
        }
    }

    /// The idempotency key: an entry submitted again is answered with the original.
    /// For a receipt it is the receipt id; for any other kind it is
    /// `SHA-256("tally/entry-id/v1" || 0x00 || kind || author || body)`. The signature is
    /// left out on purpose: a signer may produce many valid signatures of one body (an HSM
    /// with random nonces, a retry through another signing path), and a retried deposit
    /// must not count twice because its signature bytes differ.
    pub fn dedup_id(&self) -> Hash {
        if let Some(id) = self.receipt_id() {
            return id;
        }
        let mut h = Sha256::new();
        h.update(ENTRY_ID_DOMAIN);
        h.update([self.bytes[0]]);
        h.update(self.author());
        h.update(self.body_bytes());
        h.finalize().into()
    }

    /// Check every signature the entry carries under Tally's one rule.
    pub fn verify(self) -> Result<VerifiedEntry, EntryError> {
        let mut results = verify_entries(std::slice::from_ref(&self));
        results.pop().expect("one result per entry")?;
        Ok(VerifiedEntry(self))
    }
}

/// Why an entry was refused before it reached the sequencer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("author signature: {0}")]
    AuthorSignature(SignatureError),
    #[error("delivery countersignature: {0}")]
    DeliverySignature(SignatureError),
}

impl EntryError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            EntryError::Codec(e) => e.code(),
            EntryError::AuthorSignature(
                SignatureError::KeyEncoding | SignatureError::KeySmallOrder | SignatureError::KeyTorsion,
            ) => "bad-author-key",
            EntryError::AuthorSignature(_) => "bad-signature",
            EntryError::DeliverySignature(
                SignatureError::KeyEncoding | SignatureError::KeySmallOrder | SignatureError::KeyTorsion,
            ) => "bad-publisher-key",
            EntryError::DeliverySignature(_) => "bad-delivery-signature",
        }
    }
}

/// An entry whose signatures all passed. Only verification makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEntry(Entry);

impl VerifiedEntry {
    pub fn entry(&self) -> &Entry {
        &self.0
    }

    pub fn into_entry(self) -> Entry {
        self.0
    }
}

impl std::ops::Deref for VerifiedEntry {
    type Target = Entry;
    fn deref(&self) -> &Entry {
        &self.0
    }
}

/// One signature an entry carries, with what it signs.
struct SignatureCheck<'a> {
    entry: usize,
    delivery: bool,
    key: PublicKey,
    domain: &'static [u8],
    message: std::borrow::Cow<'a, [u8]>,
    signature: &'a SignatureBytes,
}

/// Verify the signatures of many entries at once (batch fast path, same result as one at a
/// time). Returns, per entry, `Ok(())` or the first signature that failed.
pub fn verify_entries(entries: &[Entry]) -> Vec<Result<(), EntryError>> {
    let mut results: Vec<Result<(), EntryError>> = vec![Ok(()); entries.len()];
    let mut checks: Vec<SignatureCheck<'_>> = Vec::with_capacity(entries.len());
    // A lab signs thousands of receipts with one key: decompress each distinct key once.
    let mut keys: HashMap<&PublicKeyBytes, Result<PublicKey, SignatureError>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        match *keys.entry(e.author()).or_insert_with(|| PublicKey::from_bytes(e.author())) {
            Ok(key) => checks.push(SignatureCheck {
                entry: i,
                delivery: false,
                key,
                domain: e.kind().domain(),
                message: std::borrow::Cow::Borrowed(e.body_bytes()),
                signature: e.signature(),
            }),
            Err(err) => {
                results[i] = Err(EntryError::AuthorSignature(err));
                continue;
            }
        }
        if let Body::Receipt(Receipt { core, delivery: Some(d) }) = &e.body {
            // A publisher's edge countersigns all its deliveries with one key too.
            match *keys.entry(&d.publisher_key).or_insert_with(|| PublicKey::from_bytes(&d.publisher_key)) {
                Ok(key) => checks.push(SignatureCheck {
                    entry: i,
                    delivery: true,
                    key,
                    domain: DELIVERY_DOMAIN,
                    message: std::borrow::Cow::Owned(codec::encode(core)),
                    signature: &d.signature,
                }),
                Err(err) => results[i] = Err(EntryError::DeliverySignature(err)),
            }
        }
    }
    let parts: Vec<[&[u8]; 2]> = checks.iter().map(|c| [c.domain, c.message.as_ref()]).collect();
    let items: Vec<BatchItem<'_>> =
        checks.iter().zip(&parts).map(|(c, p)| BatchItem { key: &c.key, message: p, signature: c.signature }).collect();
    for (check, outcome) in checks.iter().zip(sig::verify_batch(&items)) {
        // The first failure found for an entry is the one reported.
        if let (Err(err), true) = (outcome, results[check.entry].is_ok()) {
            results[check.entry] =
                Err(if check.delivery { EntryError::DeliverySignature(err) } else { EntryError::AuthorSignature(err) });
        }
    }
    results
}

/// [`verify_entries`], keeping the entries: each becomes a [`VerifiedEntry`] or its error.
/// The batch fast path's verdict is final; nothing is verified twice.
pub fn verify_all(entries: Vec<Entry>) -> Vec<Result<VerifiedEntry, EntryError>> {
    let verdicts = verify_entries(&entries);
    entries.into_iter().zip(verdicts).map(|(e, v)| v.map(|()| VerifiedEntry(e))).collect()
}

/// [`verify_all`] split across `threads` scoped threads (at least one), verdicts in order:
/// for callers that hold a large batch and no pool of their own (the auditor, benches).
pub fn verify_all_on(threads: usize, entries: Vec<Entry>) -> Vec<Result<VerifiedEntry, EntryError>> {
    let per = entries.len().div_ceil(threads.max(1)).max(1);
    let mut parts = Vec::new();
    let mut rest = entries;
    while !rest.is_empty() {
        let tail = rest.split_off(per.min(rest.len()));
        parts.push(rest);
        rest = tail;
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = parts.into_iter().map(|part| s.spawn(move || verify_all(part))).collect();
        handles.into_iter().flat_map(|h| h.join().expect("verification thread")).collect()
    })
}

/// Sign a delivery countersignature for a receipt core, as a publisher's edge would.
pub fn sign_delivery(publisher: &SigningKey, core: &ReceiptCore) -> Delivery {
    let signature = publisher.sign(&[DELIVERY_DOMAIN, &codec::encode(core)]);
    Delivery { publisher_key: publisher.public_bytes(), signature }
}

/// The short public identifier of a key in leaf records: `SHA-256(key)[:8]`.
pub fn key_id(key: &PublicKeyBytes) -> [u8; 8] {
    let digest: Hash = Sha256::digest(key).into();
    digest[..8].try_into().expect("8 of 32 bytes")
}

/// The public, canonical record of one log position. Anyone holding the full entry
/// recomputes it; everyone else sees only this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct LeafRecord {
    pub version: u8,
    pub kind: EntryKind,
    /// Position in the log, from 0.
    pub seq: u64,
    /// Sequencer time, unix milliseconds; never decreases along the log.
    pub time_ms: u64,
    pub author_key_id: [u8; 8],
    /// `SHA-256(entry bytes)`.
    pub commitment: Hash,
}

impl LeafRecord {
    pub fn for_entry(entry: &Entry, seq: u64, time_ms: u64) -> Self {
        Self {
            version: LEAF_RECORD_VERSION,
            kind: entry.kind(),
            seq,
            time_ms,
            author_key_id: key_id(entry.author()),
            commitment: Sha256::digest(entry.as_bytes()).into(),
        }
    }

    pub fn encode(&self) -> [u8; LEAF_RECORD_BYTES] {
        let v = codec::encode(self);
        v.try_into().expect("leaf records have a fixed size")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let record: Self = codec::decode_exact(bytes)?;
        if record.version != LEAF_RECORD_VERSION {
            return Err(invalid("version", "unknown leaf record version"));
        }
        Ok(record)
    }

    /// `SHA-256(0x00 || leaf record)`.
    pub fn leaf_hash(&self) -> Hash {
        merkle::leaf_hash(&self.encode())
    }

    /// Does this record describe `entry`?
    pub fn matches(&self, entry: &Entry) -> bool {
        *self == Self::for_entry(entry, self.seq, self.time_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(key: &SigningKey, url: &str) -> Entry {
        let core = ReceiptCore {
            lab_id: 7,
            contract_id: [3; 32],
            url: Text::new(url).unwrap(),
            content_sha256: [4; 32],
            response_bytes: 5120,
            fetch_time_ms: 1_700_000_000_000,
            usage: Usage::AiTrain,
            nonce: [9; 16],
        };
        Entry::sign(key, Body::Receipt(Receipt { core, delivery: None })).unwrap()
    }

    /// Entries decode to themselves, verify, and refuse any trailing or missing byte.
    #[test]
    fn entries_round_trip_and_reject_noncanonical_bytes() {
        let key = SigningKey::from_seed(&[1; 32]);
        let e = receipt(&key, "https://news.example/a/1");
        let back = Entry::decode(e.as_bytes()).unwrap();
        assert_eq!(back, e);
        back.verify().unwrap();
        let mut long = e.as_bytes().to_vec();
        long.push(0);
        assert_eq!(Entry::decode(&long), Err(CodecError::TrailingBytes(1)));
        let short = &e.as_bytes()[..e.as_bytes().len() - 1];
        assert!(matches!(Entry::decode(short), Err(CodecError::Malformed(_))));
        let mut unknown = e.as_bytes().to_vec();
        unknown[0] = 0xee;
        assert_eq!(Entry::decode(&unknown), Err(CodecError::UnknownKind(0xee)));
    }

    /// URL canonical form: each rule has an example that passes and one that fails.
    #[test]
    fn url_rules() {
        for ok in ["https://a.example/", "http://a.example:8080/x?y=1", "https://a-b.example/%C3%A9"] {
            assert_eq!(check_canonical_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "HTTPS://a.example/",
            "https://A.example/",
            "https://a.example",
            "https://a.example/#frag",
            "https://a.example/ space",
            "https://a.example:443/",
            "https://a.example:080/",
            "ftp://a.example/",
            "https://a.example/é",
            "https:///x",
        ] {
            assert!(check_canonical_url(bad).is_err(), "{bad}");
        }
    }

    /// A signing key refuses to sign a body that breaks a field rule.
    #[test]
    fn signing_enforces_field_rules() {
        let key = SigningKey::from_seed(&[1; 32]);
        let mut r = match receipt(&key, "https://a.example/").body().clone() {
            Body::Receipt(r) => r,
            _ => unreachable!("built a receipt"),
        };
        r.core.usage = Usage::AiAll;
        assert!(matches!(Entry::sign(&key, Body::Receipt(r)), Err(CodecError::Invalid { field: "usage", .. })));
    }

    proptest::proptest! {
        /// Decoding never panics, and whatever it accepts is canonical: the body re-encodes
        /// to exactly the bytes that were decoded. Inputs are valid receipts with one to
        /// four bytes changed, truncated or extended.
        #[test]
        fn decode_accepts_only_canonical_bytes(edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..4), cut in proptest::prelude::any::<u8>(), extra in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3)) {
            let key = SigningKey::from_seed(&[1; 32]);
            let mut bytes = receipt(&key, "https://news.example/a/1").as_bytes().to_vec();
            for (at, value) in edits {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            if cut % 4 == 0 {
                bytes.truncate(bytes.len() - usize::from(cut % 16));
            }
            bytes.extend(extra);
            if let Ok(entry) = Entry::decode(&bytes) {
                proptest::prop_assert_eq!(entry.body().encode(), entry.body_bytes().to_vec());
                proptest::prop_assert_eq!(entry.as_bytes(), &bytes[..]);
            }
        }
    }

    /// A tampered delivery countersignature is caught and named.
    #[test]
    fn delivery_signature_is_checked() {
        let lab = SigningKey::from_seed(&[1; 32]);
        let publisher = SigningKey::from_seed(&[2; 32]);
        let mut r = match receipt(&lab, "https://a.example/").body().clone() {
            Body::Receipt(r) => r,
            _ => unreachable!("built a receipt"),
        };
        r.delivery = Some(sign_delivery(&publisher, &r.core));
        let good = Entry::sign(&lab, Body::Receipt(r.clone())).unwrap();
        good.verify().unwrap();
        r.delivery.as_mut().unwrap().signature[0] ^= 1;
        let bad = Entry::sign(&lab, Body::Receipt(r)).unwrap();
        assert!(matches!(bad.verify(), Err(EntryError::DeliverySignature(_))));
    }

    /// Many receipts countersigned with one publisher key (decompressed once per batch): a
    /// tampered countersignature fails only its receipt, and a weak publisher key is named
    /// as the publisher's even where the same bytes are no author's key.
    #[test]
    fn a_shared_publisher_key_is_checked_for_every_receipt() {
        let lab = SigningKey::from_seed(&[1; 32]);
        let publisher = SigningKey::from_seed(&[2; 32]);
        let delivered = |n: usize| {
            let Body::Receipt(mut r) = receipt(&lab, &format!("https://a.example/{n}")).body().clone() else {
                unreachable!("a receipt")
            };
            let mut d = sign_delivery(&publisher, &r.core);
            match n {
                3 => d.signature[40] ^= 1,
                5 => d.publisher_key = [0; 32], // a small-order point's encoding
                _ => {}
            }
            r.delivery = Some(d);
            Entry::sign(&lab, Body::Receipt(r)).unwrap()
        };
        let entries: Vec<Entry> = (0..8).map(delivered).collect();
        let verdicts = verify_entries(&entries);
        for (n, v) in verdicts.iter().enumerate() {
            match (n, v) {
                (3, Err(EntryError::DeliverySignature(SignatureError::Equation))) => {}
                (5, Err(e)) => assert_eq!(e.code(), "bad-publisher-key", "{e}"),
                (3 | 5, other) => panic!("receipt {n}: {other:?}"),
                (_, other) => assert_eq!(other, &Ok(()), "receipt {n}"),
            }
        }
    }

    #[test]
    fn verify_all_on_keeps_order_and_finds_the_bad_one_on_any_thread_count() {
        let lab = SigningKey::from_seed(&[1; 32]);
        let entries: Vec<Entry> = (0..7).map(|n| receipt(&lab, &format!("https://a.example/{n}"))).collect();
        let mut tampered = entries.clone();
        let mut bytes = tampered[5].as_bytes().to_vec();
        bytes[40] ^= 1; // inside the signature (bytes 33..97: after the kind and author key)
        tampered[5] = Entry::decode(&bytes).unwrap();
        for threads in [0, 1, 3, 7, 16] {
            let verdicts = verify_all_on(threads, tampered.clone());
            assert_eq!(verdicts.len(), 7, "{threads} threads");
            for (n, (verdict, entry)) in verdicts.iter().zip(&entries).enumerate() {
                match verdict {
                    Ok(v) if n != 5 => assert_eq!(v.as_bytes(), entry.as_bytes(), "{threads} threads, entry {n}"),
                    Err(_) if n == 5 => {}
                    other => panic!("{threads} threads, entry {n}: {other:?}"),
                }
            }
        }
        assert!(verify_all_on(2, Vec::new()).is_empty());
    }
}
