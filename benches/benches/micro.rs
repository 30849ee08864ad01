//! Criterion micro-benchmarks of the per-receipt pieces: canonical decode, signature
//! verification (single and batched), Merkle append, leaf record hashing, and one
//! synced store commit.
//!
//! Run: `cargo bench -p tally-benches --bench micro`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tally_core::entry::{Entry, LeafRecord, verify_entries};
use tally_core::merkle::{Frontier, leaf_hash};
use tally_ledger::{Ledger, LedgerConfig};
use tally_tests::{collective_key, verified};

fn pieces(c: &mut Criterion) {
    let receipts = tally_benches::presigned_receipts(1024, 8);
    let bytes: Vec<Vec<u8>> = receipts.iter().map(|e| e.as_bytes().to_vec()).collect();
    let mut g = c.benchmark_group("receipt");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % bytes.len();
            Entry::decode(&bytes[i]).expect("valid")
        })
    });
    g.bench_function("verify-single", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % receipts.len();
            receipts[i].clone().verify().expect("valid")
        })
    });
    g.bench_function("leaf-record-hash", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            LeafRecord::for_entry(&receipts[(i % 1024) as usize], i, i).leaf_hash()
        })
    });
    g.bench_function("merkle-append", |b| {
        let mut f = Frontier::new();
        let leaf = leaf_hash(b"x");
        b.iter(|| f.append(leaf, |_, _, _| {}))
    });
    g.finish();
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements(64));
    g.bench_function("verify-64", |b| b.iter(|| verify_entries(&receipts[..64])));
    g.finish();
    let mut g = c.benchmark_group("store");
    g.sample_size(20);
    g.bench_function("commit-64-synced", |b| {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger = Ledger::open(dir.path(), LedgerConfig::new(Some(collective_key()))).expect("open");
        ledger.append_blocking(tally_tests::all_verified(tally_tests::setup(1))).expect("set-up");
        let mut rng = rand::thread_rng();
        b.iter_batched(
            || (0..64).map(|_| verified(tally_tests::random_receipt(1, &mut rng))).collect::<Vec<_>>(),
            |batch| ledger.append_blocking(batch).expect("append"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, pieces);
criterion_main!(benches);
