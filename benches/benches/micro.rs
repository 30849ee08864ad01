//! Criterion micro-benchmarks of the per-receipt pieces: canonical decode, signature
//! verification (single, batched, and receipts countersigned by publishers), Merkle append,
//! leaf record hashing, settlement apply (pricing, split, postings, state writes; memory
//! state), and one synced store commit.
//!
//! Run: `cargo bench -p tally-benches --bench micro`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tally_core::entry::{Body, Entry, LeafRecord, sign_delivery, verify_entries};
use tally_core::merkle::{Frontier, leaf_hash};
use tally_core::sig::SigningKey;
use tally_ledger::{Ledger, LedgerConfig};
use tally_settlement::{Engine, MemoryStore};
use tally_tests::{all_verified, collective_key, lab_key, setup, verified};

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
    let mut g = c.benchmark_group("settlement");
    g.throughput(Throughput::Elements(64));
    g.bench_function("apply-64-receipts", |b| {
        let mut engine = Engine::open(MemoryStore::default()).expect("memory");
        for (seq, e) in all_verified(setup(8)).iter().enumerate() {
            engine.apply(e, seq as u64, 1_700_000_000_000).expect("memory").expect("set-up applies");
        }
        let work: Vec<_> = receipts.iter().cloned().map(verified).collect();
        let mut i = 0;
        b.iter(|| {
            for _ in 0..64 {
                i = (i + 1) % work.len();
                let seq = engine.applied();
                engine.apply(&work[i], seq, 1_701_000_000_000).expect("memory").expect("settles");
            }
            // What the sequencer does once per group.
            let writes = engine.take_writes();
            engine.store_mut().apply(writes);
        })
    });
    g.finish();
    // The node's request-sized batch (32, one pool job) and the full chunk (64).
    for n in [32, 64] {
        let mut g = c.benchmark_group("batch");
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("verify-{n}"), |b| b.iter(|| verify_entries(&receipts[..n])));
        g.finish();
    }
    // The same, each receipt countersigned by one of four publishers' edges (two
    // signatures a receipt; a publisher's key is decompressed once per batch).
    let publishers: Vec<SigningKey> = (0..4u8).map(|i| SigningKey::from_seed(&[100 + i; 32])).collect();
    let delivered: Vec<Entry> = receipts[..32]
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let Body::Receipt(mut r) = e.body().clone() else { unreachable!("receipts") };
            r.delivery = Some(sign_delivery(&publishers[i % 4], &r.core));
            let lab = (1..=8).map(lab_key).find(|k| k.public_bytes() == *e.author()).expect("a lab signed it");
            Entry::sign(&lab, Body::Receipt(r)).expect("signs")
        })
        .collect();
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements(32));
    g.bench_function("verify-32-delivered", |b| b.iter(|| verify_entries(&delivered)));
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
