//! Tally's durable, append-only, verifiable log on RocksDB.
//!
//! [`Ledger`] owns one sequencer thread that assigns sequence numbers and writes each group
//! of appends as one write batch, and one syncer thread that, under load, makes groups
//! durable (one fsync for every group written meanwhile) while the next is applied; no one
//! is answered before their entries are durable; [`Store`] holds the column families and serves every
//! read (entries, leaf records, tiles, entry bundles, proofs, checkpoints). The byte layout
//! is in `specs/storage.md`.

mod background;
mod error;
mod index;
mod ledger;
mod scratch;
mod store;

pub use error::LedgerError;
pub use ledger::{
    AppendReply, Clock, ENTRIES_PER_APPEND_MAX, GROUP_ENTRIES_MAX, GenesisInfo, GroupObserver, GroupStats, Ledger,
    LedgerConfig, MIN_FREE_BYTES_DEFAULT, Outcome, Position, QUEUE_REQUESTS_MAX, SyncObserver, SyncStats, system_clock,
};
pub use scratch::ScratchState;
pub use store::{BLOCK_CACHE_BYTES, Backlog, MEMTABLES_BYTES_MAX, Store, StoreMemory};
pub use tally_settlement::Rejection;
pub use tally_settlement::state::{STATE_ROOT_EXTENSION, state_root_of};
