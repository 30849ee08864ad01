//! The process the crash tests kill. It opens a ledger, appends receipts from several
//! threads as fast as it can, and prints one line per acknowledged entry *after* the
//! append returned (so after the batch was synced):
//!
//! `ack <seq> <leaf hash hex> <receipt id hex>`
//!
//! Usage: `tally-crash-child <data dir>`. It never exits on its own.

use std::io::Write;
use std::sync::Arc;

use tally_ledger::{Ledger, LedgerConfig, Outcome};
use tally_tests::{all_verified, collective_key, random_receipt, setup, verified};

fn main() {
    let dir = std::env::args().nth(1).expect("usage: tally-crash-child <data dir>");
    let mut config = LedgerConfig::new(Some(collective_key()));
    config.checkpoint_interval_ms = 20;
    // Small index runs, so that kills land while runs are sorted and written out and the
    // index journal is rebuilt from every state it can be left in.
    config.index_run_entries = 512;
    let ledger = Arc::new(Ledger::open(std::path::Path::new(&dir), config).expect("open ledger"));
    if ledger.size() == 0 {
        ledger.append_blocking(all_verified(setup(4))).expect("set-up");
    }
    let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let ledger = ledger.clone();
            let stdout = stdout.clone();
            std::thread::spawn(move || {
                let mut rng = rand::thread_rng();
                let mut previous: Vec<tally_core::entry::Entry> = Vec::new();
                loop {
                    let n = rand::Rng::gen_range(&mut rng, 1..40);
                    let mut batch: Vec<_> = (0..n).map(|_| random_receipt(t + 1, &mut rng)).collect();
                    // Resubmit part of the last batch: retries must never append twice.
                    batch.extend(previous.iter().take(3).cloned());
                    let outcomes = match ledger.append_blocking(batch.iter().cloned().map(verified).collect()) {
                        Ok(o) => o,
                        Err(tally_ledger::LedgerError::Busy) => continue,
                        Err(e) => panic!("append failed: {e}"),
                    };
                    let mut out = String::new();
                    for (entry, outcome) in batch.iter().zip(outcomes) {
                        if let Outcome::Appended(p, _) | Outcome::Duplicate(p) = outcome {
                            let id = entry.receipt_id().expect("receipts have ids");
                            out.push_str(&format!("ack {} {} {}\n", p.seq, hex::encode(p.leaf_hash), hex::encode(id)));
                        }
                    }
                    let mut lock = stdout.lock().expect("stdout");
                    lock.write_all(out.as_bytes()).expect("write");
                    lock.flush().expect("flush");
                    previous = batch;
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
