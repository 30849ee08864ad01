//! Tally's core: the entry format and its canonical bytes, keys and the one signature rule,
//! the RFC 6962 Merkle tree with proofs, C2SP checkpoints, signed notes and tiles.
//!
//! Nothing here does I/O, reads a clock or keeps global state: the ledger, the settlement
//! engine, the node, the auditor and clients all build on these same definitions, so they
//! agree on every byte. Start with [`entry`] for what is logged and [`merkle`] for how.

pub mod checkpoint;
pub mod codec;
pub mod decimal;
pub mod entry;
pub mod httpsig;
pub mod kinds;
pub mod merkle;
pub mod sig;
pub mod submission;
pub mod tile;

pub use merkle::Hash;
