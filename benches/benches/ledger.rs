//! Prints verifications/s (one at a time, batched, batched on every core) and durable
//! appends/s through the ledger with sync on, at a few caller shapes.
//!
//! Run: `cargo bench -p tally-benches --bench ledger` (set `TALLY_BENCH_RECEIPTS` to change
//! the workload size, default 40,000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_core::entry::{Entry, VerifiedEntry, verify_entries};
use tally_ledger::{Ledger, LedgerConfig, Outcome};
use tally_tests::{all_verified, collective_key, setup, verified};

/// Labs signing the workload (each admitted with a funded contract by `setup`).
const LABS: u8 = 8;

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn verification(receipts: &[Entry]) {
    let n = receipts.len().min(20_000);
    let sample = &receipts[..n];
    let t = Instant::now();
    for e in sample {
        e.clone().verify().expect("valid");
    }
    let single = rate(n, t.elapsed());
    let t = Instant::now();
    assert!(verify_entries(sample).iter().all(Result::is_ok));
    let batch = rate(n, t.elapsed());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all_cores = tally_benches::ceiling(sample);
    // Reference point on this machine: ed25519-dalek's own strict verifier on the same
    // messages (it parses each key once up front, as a node's key registry would).
    let prepared: Vec<(ed25519_dalek::VerifyingKey, Vec<u8>, ed25519_dalek::Signature)> = sample
        .iter()
        .map(|e| {
            let key = ed25519_dalek::VerifyingKey::from_bytes(e.author()).expect("valid key");
            let msg = [e.kind().domain(), e.body_bytes()].concat();
            (key, msg, ed25519_dalek::Signature::from_bytes(e.signature()))
        })
        .collect();
    let t = Instant::now();
    for (key, msg, sig) in &prepared {
        key.verify_strict(msg, sig).expect("valid");
    }
    let dalek = rate(n, t.elapsed());
    println!("reference: dalek verify_strict    {dalek:>10.0} signatures/s (keys pre-parsed)");
    println!("verify, one at a time, 1 core     {single:>10.0} receipts/s");
    println!("verify, batched (64), 1 core      {batch:>10.0} receipts/s");
    println!("verify, batched (64), {threads} cores     {all_cores:>10.0} receipts/s   <- the ceiling");
}

/// `callers` threads each append `per_append` receipts at a time until the workload is
/// used up; every append waits for its synced commit.
fn appends(receipts: &[VerifiedEntry], callers: usize, per_append: usize, limit: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Arc::new(Ledger::open(dir.path(), LedgerConfig::new(Some(collective_key()))).expect("open"));
    ledger.append_blocking(all_verified(setup(LABS))).expect("set-up");
    let work = &receipts[..limit.min(receipts.len())];
    let t = Instant::now();
    let latencies: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = work
            .chunks(work.len().div_ceil(callers))
            .map(|mine| {
                let ledger = ledger.clone();
                s.spawn(move || {
                    let mut lat = Vec::new();
                    for batch in mine.chunks(per_append) {
                        let start = Instant::now();
                        let out = ledger.append_blocking(batch.to_vec()).expect("append");
                        lat.push(start.elapsed());
                        assert!(out.iter().all(|o| matches!(o, Outcome::Appended(..))));
                    }
                    lat
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("caller")).collect()
    });
    let elapsed = t.elapsed();
    let mut lat = latencies;
    lat.sort();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "append, {callers:>3} callers x {per_append:>4}/append {:>10.0} receipts/s  ({} appends, latency p50 {:.2} ms, p99 {:.2} ms)",
        rate(work.len(), elapsed),
        lat.len(),
        p(0.5),
        p(0.99)
    );
}

fn main() {
    let count: usize = std::env::var("TALLY_BENCH_RECEIPTS").ok().and_then(|v| v.parse().ok()).unwrap_or(40_000);
    println!("tally ledger bench on {}", tally_benches::machine());
    let receipts = tally_benches::presigned_receipts(count, LABS);
    verification(&receipts);
    let verified: Vec<VerifiedEntry> = receipts.into_iter().map(verified).collect();
    println!("durable appends (RocksDB WAL fsync per group; signatures already verified):");
    appends(&verified, 1, 1, 2_000);
    appends(&verified, 16, 1, 8_000);
    appends(&verified, 4, 64, count);
    appends(&verified, 16, 256, count);
}
