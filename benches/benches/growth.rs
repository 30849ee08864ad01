//! Growth: does the cost per receipt stay flat as the ledger grows? Builds a ledger of
//! `TALLY_GROWTH_RECEIPTS` receipts (default 1,000,000; 10,000,000 is the long run) through
//! the ledger API without HTTP, in rounds of 100,000: each round is pre-signed and verified
//! on every core first, then appended by four callers in batches of 1,024 (durable, group
//! commit, settlement included). Per round it prints the append rate, the process RSS (now
//! and peak; the process includes the round's pre-signed receipts) and
//! bytes on disk per receipt so far; at the end, bytes per receipt after compaction.
//!
//! Run: `cargo bench -p tally-benches --bench growth` (set `TALLY_GROWTH_RECEIPTS`).

use std::sync::Arc;
use std::time::Instant;

use tally_core::entry::{Entry, verify_all_on};
use tally_ledger::{Ledger, LedgerConfig, Outcome};
use tally_tests::{all_verified, collective_key, setup};

const LABS: u8 = 8;
const ROUND: usize = 100_000;

fn main() {
    let total: usize = std::env::var("TALLY_GROWTH_RECEIPTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    println!("tally growth bench on {}: {total} receipts in rounds of {ROUND}", tally_benches::machine());
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(Ledger::open(dir.path(), LedgerConfig::new(Some(collective_key()))).expect("open"));
    ledger.append_blocking(all_verified(setup(LABS))).expect("set-up");
    let pid = std::process::id();
    let mut done = 0usize;
    let mut round = 0u64;
    while done < total {
        let n = ROUND.min(total - done);
        // Different rounds need different nonces: the presigner is seeded per thread, so
        // offset by signing one round's worth more and keeping the tail.
        let signed: Vec<Entry> = tally_benches::presigned_receipts_seeded(n, LABS, round);
        let verified: Vec<_> = {
            let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
            verify_all_on(threads, signed).into_iter().map(|r| r.expect("presigned receipts verify")).collect()
        };
        let t = Instant::now();
        std::thread::scope(|s| {
            for part in verified.chunks(verified.len().div_ceil(4)) {
                let ledger = ledger.clone();
                s.spawn(move || {
                    for batch in part.chunks(1024) {
                        let out = ledger.append_blocking(batch.to_vec()).expect("append");
                        assert!(out.iter().all(|o| matches!(o, Outcome::Appended(..))), "fresh receipts append");
                    }
                });
            }
        });
        let rate = n as f64 / t.elapsed().as_secs_f64();
        done += n;
        round += 1;
        let disk = tally_benches::dir_bytes(dir.path());
        println!(
            "{done:>10} receipts: append {rate:>8.0}/s   RSS {:>6.1} MiB (peak {:>6.1})   {:>5.0} bytes/receipt on disk (before compaction)",
            tally_benches::rss(pid).unwrap_or(0) as f64 / (1 << 20) as f64,
            tally_benches::peak_rss(pid).unwrap_or(0) as f64 / (1 << 20) as f64,
            disk as f64 / done as f64
        );
    }
    ledger.store().compact().expect("compact");
    let disk = tally_benches::dir_bytes(dir.path());
    println!(
        "after compaction: {:.0} bytes/receipt ({:.1} MiB)",
        disk as f64 / done as f64,
        disk as f64 / (1 << 20) as f64
    );
}
