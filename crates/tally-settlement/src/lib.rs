//! Tally's settlement engine: a deterministic state machine over verified ledger entries.
//!
//! Given the state and the next verified entry (with its sequence number and the
//! sequencer's time, both part of the log), [`Engine::apply`] returns the postings it made
//! or a typed [`Rejection`] that changed nothing. No I/O, no clock, no randomness: the node
//! and an auditor replaying the log reach the same [`Engine::state_root`].
//!
//! `specs/settlement.md` defines every entry kind, the arithmetic and the state layout.

pub mod engine;
pub mod money;
pub mod rejection;
pub mod state;
pub mod terms;

pub use engine::{Access, Charge, ChargeRecord, Effect, Engine, Meta, Participant};
pub use money::{Account, Posting};
pub use rejection::Rejection;
pub use state::{ApplyWrites, MemoryStore, StateError, StateStore, Writes};
