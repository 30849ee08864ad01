//! Tally's integration tests, linked once: known-answer vectors, the durable ledger, and
//! crash recovery under SIGKILL.

mod abuse;
mod audit;
mod client;
mod corruption;
mod crash;
mod disk_full;
mod fuzz_regressions;
mod ledger;
mod node;
mod scenarios;
mod settlement_props;
mod spec_vectors;
mod vectors;
