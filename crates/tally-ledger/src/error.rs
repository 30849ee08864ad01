//! Errors of the durable log. Operating errors are values; broken invariants are `Corrupted`.

/// What went wrong opening, reading or appending to the ledger.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    /// RocksDB failed (I/O, disk full, checksum mismatch on read).
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
    /// Stored data breaks an invariant: never served, always reported.
    #[error("ledger data is corrupted: {0}")]
    Corrupted(String),
    /// The signing key given to the ledger is not the collective key in its genesis entry.
    #[error("the signing key is not the collective key of this ledger")]
    WrongSigningKey,
    /// The append queue is full; try again later.
    #[error("the append queue is full")]
    Busy,
    /// The sequencer has stopped (shutdown or a fatal storage error).
    #[error("the ledger is closed")]
    Closed,
    /// A proof was asked for positions or sizes outside the committed tree.
    #[error("no proof for {first}..{second}: the committed tree has {committed} entries")]
    OutOfRange { first: u64, second: u64, committed: u64 },
    /// A tile or entry bundle that the committed tree does not have (yet).
    #[error("tile {level}/{index} of width {width} does not exist at tree size {committed}")]
    NoSuchTile { level: u8, index: u64, width: u16, committed: u64 },
    /// The data directory's filesystem has less free space than the configured reserve;
    /// nothing was written. Appends resume by themselves once space is freed.
    #[error("storage is full: {free} bytes free, below the reserve of {reserve}; nothing was written")]
    StorageFull { free: u64, reserve: u64 },
    /// Too many entries in one append call.
    #[error("{len} entries in one append is over the limit of {max}")]
    TooManyEntries { len: usize, max: usize },
}

impl LedgerError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            LedgerError::Storage(_) => "storage-error",
            LedgerError::Corrupted(_) => "corrupted",
            LedgerError::WrongSigningKey => "wrong-signing-key",
            LedgerError::Busy => "busy",
            LedgerError::Closed => "closed",
            LedgerError::OutOfRange { .. } => "out-of-range",
            LedgerError::NoSuchTile { .. } => "no-such-tile",
            LedgerError::StorageFull { .. } => "storage-full",
            LedgerError::TooManyEntries { .. } => "too-many-entries",
        }
    }
}
