//! Why the engine refused an entry. A rejected entry changes nothing and is not logged.

/// A typed rejection with a stable code (`specs/settlement.md` lists them all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the ledger has no genesis entry yet; the first entry must be one")]
    GenesisRequired,
    #[error("the ledger already has its genesis entry")]
    GenesisExists,
    #[error("the author's key is not the current key of any participant")]
    UnknownAuthor,
    #[error("the author is suspended")]
    AuthorSuspended,
    #[error("a {role} may not author a {kind} entry")]
    WrongRole { role: &'static str, kind: &'static str },
    #[error("participant {0} does not exist")]
    UnknownParticipant(u64),
    #[error("participant {0} already exists")]
    ParticipantExists(u64),
    #[error("participant {participant} is a {role}, not a {needed}")]
    ParticipantRole { participant: u64, role: &'static str, needed: &'static str },
    #[error("the key is already some participant's key")]
    KeyInUse,
    #[error("the collective's own key and standing are fixed by genesis")]
    CollectiveFixed,
    #[error("the participant is already in that state")]
    NoChange,
    #[error("the receipt names lab {claimed} but is signed by participant {signer}")]
    LabMismatch { claimed: u64, signer: u64 },
    #[error("no such contract")]
    UnknownContract,
    #[error("the contract is for another lab")]
    NotContractLab,
    #[error("the lab has not accepted (countersigned) the contract")]
    ContractNotActive,
    #[error("the contract is already accepted")]
    ContractAlreadyActive,
    #[error("a contract with these terms already exists")]
    ContractExists,
    #[error("the contract's term has ended")]
    TermEnded,
    #[error("the use is outside the contract's scope")]
    UsageOutOfScope,
    #[error("the fetch time is outside the contract's term")]
    OutsideTerm,
    #[error("the fetch time is before the open period")]
    BeforeOpenPeriod,
    #[error("the fetch time is more than 5 minutes after the sequencer's time")]
    FetchInFuture,
    #[error("the publisher has reserved this use of this content")]
    UsageReserved,
    #[error("the price does not fit in the asset's range")]
    AmountOverflow,
    #[error("the URL pattern is registered to another participant")]
    RegisteredToOther,
    #[error("the content is not registered to the author")]
    NotOwner,
    #[error("there is no money held for this URL")]
    NothingToClaim,
    #[error("deposits go to labs and federated collectives")]
    DepositRole,
    #[error("period {given} is not the open period {open}")]
    WrongPeriod { given: u32, open: u32 },
    #[error("the cutoff must be after the previous cutoff and not after the sequencer's time")]
    BadCutoff,
    #[error("no pending payout for that period and participant")]
    UnknownPayout,
    #[error("no receipt at that sequence number")]
    UnknownReceipt,
    #[error("only the lab that signed the receipt or a publisher it credited may dispute it")]
    NotParty,
    #[error("the receipt is already disputed")]
    DisputeExists,
    #[error("the receipt has no open dispute")]
    NoOpenDispute,
    #[error("the receipt was already reversed")]
    AlreadyReversed,
    #[error("the money held for this receipt's URL has been claimed; reverse is not possible")]
    HeldMoneyClaimed,
}

impl Rejection {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::GenesisRequired => "genesis-required",
            Rejection::GenesisExists => "genesis-exists",
            Rejection::UnknownAuthor => "unknown-author",
            Rejection::AuthorSuspended => "author-suspended",
            Rejection::WrongRole { .. } => "wrong-role",
            Rejection::UnknownParticipant(_) => "unknown-participant",
            Rejection::ParticipantExists(_) => "participant-exists",
            Rejection::ParticipantRole { .. } => "participant-role",
            Rejection::KeyInUse => "key-in-use",
            Rejection::CollectiveFixed => "collective-fixed",
            Rejection::NoChange => "no-change",
            Rejection::LabMismatch { .. } => "lab-mismatch",
            Rejection::UnknownContract => "unknown-contract",
            Rejection::NotContractLab => "not-contract-lab",
            Rejection::ContractNotActive => "contract-not-active",
            Rejection::ContractAlreadyActive => "contract-already-active",
            Rejection::ContractExists => "contract-exists",
            Rejection::TermEnded => "term-ended",
            Rejection::UsageOutOfScope => "usage-out-of-scope",
            Rejection::OutsideTerm => "outside-term",
            Rejection::BeforeOpenPeriod => "before-open-period",
            Rejection::FetchInFuture => "fetch-in-future",
            Rejection::UsageReserved => "usage-reserved",
            Rejection::AmountOverflow => "amount-overflow",
            Rejection::RegisteredToOther => "registered-to-other",
            Rejection::NotOwner => "not-owner",
            Rejection::NothingToClaim => "nothing-to-claim",
            Rejection::DepositRole => "deposit-role",
            Rejection::WrongPeriod { .. } => "wrong-period",
            Rejection::BadCutoff => "bad-cutoff",
            Rejection::UnknownPayout => "unknown-payout",
            Rejection::UnknownReceipt => "unknown-receipt",
            Rejection::NotParty => "not-party",
            Rejection::DisputeExists => "dispute-exists",
            Rejection::NoOpenDispute => "no-open-dispute",
            Rejection::AlreadyReversed => "already-reversed",
            Rejection::HeldMoneyClaimed => "held-money-claimed",
        }
    }
}
