//! Tally's integration tests, linked once: known-answer vectors, the durable ledger, and
//! crash recovery under SIGKILL.

mod crash;
mod ledger;
mod scenarios;
mod spec_vectors;
mod vectors;
