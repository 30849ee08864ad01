//! Crash recovery: a child process appends under load from four threads and is killed with
//! SIGKILL at a random moment, over and over on the same data directory. After every kill
//! the ledger reopens and we check that every acknowledged receipt is present exactly once
//! at its acknowledged position, that nothing unacknowledged is half-present, that proofs
//! verify against the newest checkpoint, and that the checkpoint signed after recovery is
//! consistent with every checkpoint signed before it, that settlement charged every logged
//! receipt exactly once with the books balanced, and that the auditor's full replay passes.
//!
//! Rounds: `TALLY_CRASH_ROUNDS` (default 20).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::Rng;
use tally_core::Hash;
use tally_core::checkpoint::open_checkpoint;
use tally_core::merkle;
use tally_ledger::{Ledger, LedgerConfig};
use tally_settlement::Account;
use tally_tests::{DEPOSIT_MICROS, ORIGIN, PRICE_MICROS, collective_key};

struct Ack {
    seq: u64,
    leaf_hash: Hash,
}

fn parse_ack(line: &str) -> Option<(Hash, Ack)> {
    let mut parts = line.split(' ');
    if parts.next()? != "ack" {
        return None;
    }
    let seq = parts.next()?.parse().ok()?;
    let leaf_hash = hex::decode(parts.next()?).ok()?.try_into().ok()?;
    let id = hex::decode(parts.next()?).ok()?.try_into().ok()?;
    Some((id, Ack { seq, leaf_hash }))
}

/// Run the child for `run_ms` and kill it; return the acknowledgements it printed.
fn run_and_kill(dir: &std::path::Path, run_ms: u64) -> Vec<(Hash, Ack)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally-crash-child"))
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn crash child");
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout).lines().map_while(Result::ok).filter_map(|l| parse_ack(&l)).collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(run_ms));
    child.kill().expect("SIGKILL the child"); // std sends SIGKILL on Unix
    child.wait().expect("reap the child");
    // A line cut by the kill fails to parse and is dropped: it was never a full ack.
    reader.join().expect("reader thread")
}

#[test]
fn sigkill_under_load_loses_nothing_acknowledged() {
    let rounds: usize = std::env::var("TALLY_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let key = collective_key().public_key();
    let mut acked: HashMap<Hash, Ack> = HashMap::new();
    let mut signed: Vec<(u64, Hash)> = Vec::new();
    let mut rng = rand::thread_rng();
    for round in 0..rounds {
        let run_ms = rng.gen_range(150..600);
        for (id, ack) in run_and_kill(dir.path(), run_ms) {
            if let Some(prev) = acked.get(&id) {
                assert_eq!(prev.seq, ack.seq, "round {round}: a receipt was acknowledged at two positions");
            }
            acked.insert(id, ack);
        }
        // Read-only open first: recovery checks, and the newest checkpoint from before the crash.
        let before = {
            let ledger = Ledger::open(dir.path(), LedgerConfig::new(None)).expect("recovery after SIGKILL");
            ledger.latest_checkpoint()
        };
        if let Some((_, note)) = &before {
            let cp = open_checkpoint(note, ORIGIN, &key).unwrap();
            if signed.last().is_none_or(|(s, _)| *s != cp.size) {
                signed.push((cp.size, cp.root));
            }
        }
        // Open with the key: it signs a checkpoint over anything committed since.
        let ledger = Ledger::open(dir.path(), LedgerConfig::new(Some(collective_key()))).unwrap();
        let size = ledger.size();
        let store = ledger.store();
        for (id, ack) in &acked {
            assert!(ack.seq < size, "round {round}: acknowledged seq {} is beyond size {size}", ack.seq);
            let leaf = store.leaf(ack.seq).unwrap().expect("acknowledged leaf is present");
            assert_eq!(leaf.leaf_hash(), ack.leaf_hash, "round {round}: seq {} changed", ack.seq);
            assert_eq!(ledger.dedup(id).unwrap(), Some(ack.seq), "round {round}: receipt index");
        }
        // Nothing half-present: every position has its entry, its leaf and, for receipts,
        // a dedup entry pointing back at it (so no receipt is in the log twice).
        for seq in 0..size {
            let entry = store.entry(seq).unwrap().expect("entry below size");
            let leaf = store.leaf(seq).unwrap().expect("leaf below size");
            assert!(leaf.matches(&entry), "round {round}: leaf {seq} does not describe its entry");
            if let Some(id) = entry.receipt_id() {
                assert_eq!(ledger.dedup(&id).unwrap(), Some(seq), "round {round}: receipt at {seq} twice or unindexed");
            }
        }
        assert!(store.entry(size).unwrap().is_none() && store.leaf(size).unwrap().is_none());
        // Settlement moved with the log, never ahead or behind it: every logged receipt was
        // charged exactly once, and the books balance.
        let receipts = (0..size).filter(|seq| store.entry(*seq).unwrap().unwrap().receipt_id().is_some()).count();
        {
            let engine = ledger.settlement().unwrap();
            assert_eq!(engine.applied(), size, "round {round}: settlement is at the log's size");
            engine.check_invariants().unwrap_or_else(|e| panic!("round {round}: {e}"));
            let spent: i128 = (1..=4u64).map(|lab| DEPOSIT_MICROS - engine.balance(Account::Escrow(lab))).sum();
            assert_eq!(spent, receipts as i128 * i128::from(PRICE_MICROS), "round {round}: charges match receipts");
        }
        let (cp_size, note) = ledger.latest_checkpoint().expect("a checkpoint after recovery");
        let cp = open_checkpoint(&note, ORIGIN, &key).unwrap();
        assert_eq!(cp_size, size);
        for (old_size, old_root) in &signed {
            let proof = ledger.consistency_proof(*old_size, cp.size).unwrap();
            merkle::verify_consistency(*old_size, cp.size, old_root, &cp.root, &proof)
                .unwrap_or_else(|e| panic!("round {round}: checkpoint {} inconsistent with {old_size}: {e}", cp.size));
        }
        for ack in acked.values().take(50) {
            let proof = ledger.inclusion_proof(ack.seq, cp.size).unwrap();
            merkle::verify_inclusion(&ack.leaf_hash, ack.seq, cp.size, &proof, &cp.root).unwrap();
        }
        signed.push((cp.size, cp.root));
        // And an outside auditor, replaying everything, agrees.
        let report = tally_tests::audit_ledger(&ledger, key);
        assert!(report.ok && report.entries == size, "round {round}: {}", report.summary());
        ledger.shutdown();
    }
    eprintln!(
        "crash test: {rounds} SIGKILL rounds, {} receipts acknowledged, {} checkpoints cross-checked",
        acked.len(),
        signed.len()
    );
    assert!(acked.len() > rounds, "the child acknowledged work in most rounds ({} acks)", acked.len());
}
