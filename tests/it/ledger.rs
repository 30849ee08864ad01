//! The durable ledger through its public API: genesis rules, idempotent entries, settlement
//! committed with the log, recovery,
//! checkpoints, proofs and tiles checked the way an outside client would check them.

use std::sync::OnceLock;

use proptest::prelude::*;
use tally_core::checkpoint::open_checkpoint;
use tally_core::entry::LeafRecord;
use tally_core::merkle::{self, MemoryTree, NodeReader};
use tally_core::tile::{TileNodes, parse_entry_bundle, tile_width};
use tally_ledger::{Ledger, LedgerConfig, LedgerError, Outcome, Rejection, state_root_of};
use tally_settlement::Account;
use tally_tests::*;

fn config() -> LedgerConfig {
    let mut c = LedgerConfig::new(Some(collective_key()));
    c.checkpoint_interval_ms = 0;
    c
}

fn appended(outcomes: &[Outcome]) -> Vec<u64> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Appended(p, _) => p.seq,
            other => panic!("expected an append, got {other:?}"),
        })
        .collect()
}

/// A ledger with the standard set-up for `labs` labs.
fn set_up(ledger: &Ledger, labs: u8) -> u64 {
    let out = ledger.append_blocking(all_verified(setup(labs))).unwrap();
    appended(&out);
    ledger.size()
}

/// The first entry must be genesis, and there is only ever one genesis: a second one is
/// refused, while the same genesis sent again is answered with the original.
#[test]
fn genesis_comes_first_and_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), config()).unwrap();
    let r = verified(receipt(&lab_key(1), 1, 1, [1; 16]));
    assert_eq!(ledger.append_blocking(vec![r.clone()]).unwrap(), vec![Outcome::Rejected(Rejection::GenesisRequired)]);
    assert_eq!(ledger.size(), 0);
    let size = set_up(&ledger, 1);
    assert_eq!(appended(&ledger.append_blocking(vec![r]).unwrap()), vec![size]);
    let g = genesis(&collective_key());
    let Outcome::Duplicate(p) = &ledger.append_blocking(vec![verified(g)]).unwrap()[0] else { panic!("duplicate") };
    assert_eq!(p.seq, 0);
    let other = tally_core::entry::Entry::sign(&lab_key(7), {
        let mut b = match genesis(&lab_key(7)).body().clone() {
            tally_core::entry::Body::Genesis(g) => g,
            _ => unreachable!("a genesis"),
        };
        b.created_ms += 1;
        tally_core::entry::Body::Genesis(b)
    })
    .unwrap();
    assert_eq!(
        ledger.append_blocking(vec![verified(other)]).unwrap(),
        vec![Outcome::Rejected(Rejection::GenesisExists)]
    );
    assert_eq!(ledger.size(), size + 1);
    assert_eq!(ledger.genesis().unwrap().origin, ORIGIN);
}

/// A receipt sent twice, in one call or in two, is appended and charged once; the retry is
/// answered with the original position.
#[test]
fn receipts_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), config()).unwrap();
    let size = set_up(&ledger, 2);
    let r = verified(receipt(&lab_key(1), 1, 9, [9; 16]));
    let out = ledger.append_blocking(vec![r.clone(), r.clone()]).unwrap();
    let Outcome::Appended(first, effect) = &out[0] else { panic!("first is appended: {out:?}") };
    assert_eq!(effect.charge.unwrap().amount, PRICE_MICROS);
    assert_eq!(out[1], Outcome::Duplicate(*first));
    let again = ledger.append_blocking(vec![r]).unwrap();
    assert_eq!(again, vec![Outcome::Duplicate(*first)]);
    assert_eq!(ledger.size(), size + 1);
    let spent = DEPOSIT_MICROS - ledger.settlement().unwrap().balance(Account::Escrow(1));
    assert_eq!(spent, i128::from(PRICE_MICROS), "charged once");
    // The same nonce from another lab is a different receipt.
    let other = verified(receipt(&lab_key(2), 2, 9, [9; 16]));
    assert_eq!(appended(&ledger.append_blocking(vec![other]).unwrap()), vec![size + 1]);
}

/// Entries of every kind are idempotent: a deposit sent again is not a second deposit.
/// A rejected entry is not logged and changes nothing, and the checkpoint carries the
/// settlement state root, which survives a reopen.
#[test]
fn settlement_commits_with_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let root_before;
    {
        let ledger = Ledger::open(dir.path(), config()).unwrap();
        let setup = setup(1);
        let deposit = setup.last().unwrap().clone();
        let size = set_up(&ledger, 1);
        let Outcome::Duplicate(p) = &ledger.append_blocking(vec![verified(deposit)]).unwrap()[0] else {
            panic!("a resent deposit is a duplicate")
        };
        assert_eq!(p.seq, size - 1);
        assert_eq!(ledger.settlement().unwrap().balance(Account::Escrow(1)), DEPOSIT_MICROS);
        // Lab 2 was never admitted: its receipt is refused and nothing moves.
        let root = ledger.settlement().unwrap().state_root();
        let stranger = verified(receipt(&lab_key(2), 2, 1, [1; 16]));
        assert_eq!(ledger.append_blocking(vec![stranger]).unwrap(), vec![Outcome::Rejected(Rejection::UnknownAuthor)]);
        assert_eq!(ledger.size(), size);
        assert_eq!(ledger.settlement().unwrap().state_root(), root);
        let (cp_size, note) = ledger.checkpoint_blocking().unwrap().unwrap();
        assert_eq!(cp_size, size);
        assert_eq!(state_root_of(&note), Some(root));
        root_before = root;
        ledger.shutdown();
    }
    let ledger = Ledger::open(dir.path(), LedgerConfig::new(None)).unwrap();
    assert_eq!(ledger.settlement().unwrap().state_root(), root_before);
    ledger.settlement().unwrap().check_invariants().unwrap();
}

/// After many appends and a reopen, the checkpoint verifies under the pinned key, every
/// entry is included under it, its leaf record matches the entry, and tiles and entry
/// bundles fetched from the store rebuild the same root.
#[test]
fn reopened_ledger_serves_verifiable_checkpoint_proofs_and_tiles() {
    let dir = tempfile::tempdir().unwrap();
    let n = setup(1).len() as u64 + 700;
    {
        let ledger = Ledger::open(dir.path(), config()).unwrap();
        set_up(&ledger, 1);
        let mut rng = rand::thread_rng();
        for _ in 0..7 {
            let batch = (0..100).map(|_| verified(random_receipt(1, &mut rng))).collect();
            ledger.append_blocking(batch).unwrap();
        }
        ledger.shutdown();
    }
    let ledger = Ledger::open(dir.path(), config()).unwrap();
    assert_eq!(ledger.size(), n);
    let (size, note) = ledger.latest_checkpoint().unwrap();
    assert_eq!(size, n);
    let key = collective_key().public_key();
    let cp = open_checkpoint(&note, ORIGIN, &key).unwrap();
    let store = ledger.store();
    let mut times = Vec::new();
    for seq in 0..n {
        let entry = store.entry(seq).unwrap().unwrap();
        let leaf = store.leaf(seq).unwrap().unwrap();
        assert!(leaf.matches(&entry), "leaf {seq} describes its entry");
        times.push(leaf.time_ms);
        let proof = ledger.inclusion_proof(seq, cp.size).unwrap();
        merkle::verify_inclusion(&leaf.leaf_hash(), seq, cp.size, &proof, &cp.root).unwrap();
    }
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "sequencer time never decreases");
    // Tiles, as a tlog client would fetch them, rebuild the checkpoint root.
    let mut tiles = TileNodes::new();
    for level in 0..2u8 {
        for index in 0.. {
            let width = tile_width(level, index, n);
            if width == 0 {
                break;
            }
            tiles.insert(level, index, &ledger.tile(level, index, width).unwrap()).unwrap();
        }
    }
    assert_eq!(merkle::root_at(&tiles, n).unwrap(), cp.root);
    // Entry bundles hold leaf records that hash to the level-0 tile.
    let bundle = ledger.entry_bundle(2, tile_width(0, 2, n)).unwrap();
    let mut i = 512u64;
    assert_eq!(tile_width(0, 2, n), (n - 512) as u16);
    for record in parse_entry_bundle(&bundle).unwrap() {
        assert_eq!(LeafRecord::decode(record).unwrap().seq, i);
        assert_eq!(tally_core::merkle::leaf_hash(record), tiles.node(0, i).unwrap());
        i += 1;
    }
    assert_eq!(i, n);
}

/// Requests for tiles, bundles and proofs the committed tree does not have are typed
/// errors, never panics or "corrupted" (a node serves these straight from request paths).
#[test]
fn requests_outside_the_tree_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), config()).unwrap();
    let size = set_up(&ledger, 1);
    let mut rng = rand::thread_rng();
    ledger.append_blocking((size..300).map(|_| verified(random_receipt(1, &mut rng))).collect()).unwrap();
    assert_eq!(ledger.size(), 300);
    assert_eq!(ledger.tile(0, 0, 256).unwrap().len(), 8192);
    assert_eq!(ledger.tile(0, 1, 44).unwrap().len(), 44 * 32);
    assert_eq!(ledger.tile(1, 0, 1).unwrap().len(), 32);
    for (level, index, width) in
        [(0u8, 1u64, 45u16), (0, 2, 1), (0, 0, 0), (1, 0, 2), (2, 0, 1), (63, 0, 1), (0, u64::MAX, 1)]
    {
        let err = ledger.tile(level, index, width).unwrap_err();
        assert_eq!(err.code(), "no-such-tile", "{level}/{index}.p/{width}: {err}");
    }
    assert_eq!(ledger.entry_bundle(1, 45).unwrap_err().code(), "no-such-tile");
    assert_eq!(ledger.inclusion_proof(300, 300).unwrap_err().code(), "out-of-range");
    assert_eq!(ledger.inclusion_proof(0, 301).unwrap_err().code(), "out-of-range");
    assert_eq!(ledger.consistency_proof(0, 10).unwrap_err().code(), "out-of-range");
    assert_eq!(ledger.consistency_proof(11, 10).unwrap_err().code(), "out-of-range");
    assert_eq!(ledger.consistency_proof(10, 301).unwrap_err().code(), "out-of-range");
}

/// A ledger refuses to run with a key other than its genesis collective key.
#[test]
fn wrong_signing_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let ledger = Ledger::open(dir.path(), config()).unwrap();
        set_up(&ledger, 1);
    }
    let err = Ledger::open(dir.path(), LedgerConfig::new(Some(lab_key(9)))).unwrap_err();
    assert!(matches!(err, LedgerError::WrongSigningKey), "{err}");
    let read_only = Ledger::open(dir.path(), LedgerConfig::new(None)).unwrap();
    assert_eq!(read_only.size(), setup(1).len() as u64);
    assert!(matches!(read_only.append_blocking(vec![]), Err(LedgerError::Closed)));
}

/// A graceful shutdown leaves nothing in the write-ahead log to replay: the memtables are
/// written to table files, so the next open starts in a moment instead of replaying up to
/// the whole memtable budget. Dropping the ledger instead (as a crash would) leaves the log
/// to replay, and both open to the same ledger.
#[test]
fn shutdown_flushes_so_the_next_open_replays_nothing() {
    let wal_bytes = |dir: &std::path::Path| -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|f| f.unwrap())
            .filter(|f| f.file_name().to_string_lossy().ends_with(".log"))
            .map(|f| f.metadata().unwrap().len())
            .sum()
    };
    let mut rng = rand::thread_rng();
    let receipts: Vec<_> = (0..500).map(|_| random_receipt(1, &mut rng)).collect();
    let (flushed, dropped) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&flushed, &dropped] {
        let ledger = Ledger::open(dir.path(), config()).unwrap();
        set_up(&ledger, 1);
        ledger.append_blocking(all_verified(receipts.clone())).unwrap();
        if std::ptr::eq(dir, &flushed) { ledger.shutdown() } else { drop(ledger) }
    }
    let (after_shutdown, after_drop) = (wal_bytes(flushed.path()), wal_bytes(dropped.path()));
    assert!(after_drop > 100_000, "500 receipts are in the log of the dropped ledger: {after_drop} bytes");
    assert!(after_shutdown < 1_000, "nothing is left to replay after a shutdown: {after_shutdown} bytes");
    let sizes: Vec<u64> =
        [&flushed, &dropped].iter().map(|d| Ledger::open(d.path(), LedgerConfig::new(None)).unwrap().size()).collect();
    assert_eq!(sizes, vec![setup(1).len() as u64 + 500; 2]);
}

/// Index records are journaled with their group and written out later, in sorted runs
/// (`tally-ledger/src/index.rs`). With runs turning over every few groups, from a crash
/// image, and after a clean shutdown, every lookup sees every entry: by idempotency key (a
/// receipt sent again is a duplicate of its first position), by leaf hash and by
/// participant; and the answers are those of a ledger whose index records all stay in
/// memory, and of one whose records are all written out.
#[test]
fn index_lookups_see_every_entry_while_runs_are_written_out() {
    use rand::{Rng, SeedableRng};
    let root = tempfile::tempdir().unwrap();
    let open = |name: &str, run: u64| {
        Ledger::open(&root.path().join(name), LedgerConfig { index_run_entries: run, ..config() }).unwrap()
    };
    // Runs of 16 entries and of one; and runs never written out (all in the window).
    let ledgers = [open("runs-16", 16), open("runs-1", 1), open("window", u64::MAX / 4)];
    for ledger in &ledgers {
        set_up(ledger, 2);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let mut sent: Vec<(tally_core::Hash, u64)> = Vec::new();
    let parties = [0, 1, 2, PUBLISHER_ID];
    let check = |ledger: &Ledger, sent: &[(tally_core::Hash, u64)], reference: &Ledger| {
        for (id, seq) in sent {
            assert_eq!(ledger.dedup(id).unwrap(), Some(*seq));
        }
        for seq in 0..ledger.size() {
            let leaf = ledger.store().leaf(seq).unwrap().unwrap();
            assert_eq!(ledger.seq_of_leaf(&leaf.leaf_hash()).unwrap(), Some(seq));
        }
        let size = ledger.size();
        for party in parties {
            for (from, limit) in [(0, usize::MAX), (3, 5), (size / 2, 7), (size - 1, 2)] {
                assert_eq!(
                    ledger.party_entries(party, from, limit).unwrap(),
                    reference.party_entries(party, from, limit).unwrap(),
                    "party {party} from {from}, at most {limit}"
                );
            }
        }
    };
    for round in 0..30u8 {
        let receipts: Vec<_> = (0..rng.gen_range(1..24)).map(|_| random_receipt(1 + round % 2, &mut rng)).collect();
        let ids: Vec<_> = receipts.iter().map(|r| r.receipt_id().unwrap()).collect();
        let mut seqs = Vec::new();
        for ledger in &ledgers {
            seqs.push(appended(&ledger.append_blocking(all_verified(receipts.clone())).unwrap()));
        }
        assert!(seqs.iter().all(|s| *s == seqs[0]));
        sent.extend(ids.into_iter().zip(seqs[0].iter().copied()));
        check(&ledgers[0], &sent, &ledgers[2]);
        check(&ledgers[1], &sent, &ledgers[2]);
        check(&ledgers[2], &sent, &ledgers[0]);
    }
    assert!(ledgers[2].party_entries(1, 0, usize::MAX).unwrap().len() > 100, "the comparison is not vacuous");
    // Every receipt sent again is a duplicate of its first position, wherever its index
    // records are.
    let first_seqs: Vec<u64> = sent.iter().map(|(_, seq)| *seq).collect();
    let size_before = ledgers[0].size();
    let store = ledgers[0].store();
    let resent: Vec<_> = first_seqs.iter().map(|seq| store.entry(*seq).unwrap().unwrap()).collect();
    for (outcome, seq) in ledgers[0].append_blocking(all_verified(resent)).unwrap().iter().zip(&first_seqs) {
        assert!(matches!(outcome, Outcome::Duplicate(p) if p.seq == *seq), "{outcome:?} for {seq}");
    }
    assert_eq!(ledgers[0].size(), size_before);

    // A crash image (the copy of an open, idle ledger) rebuilds its window from the index
    // journal and answers the same; so does a ledger reopened after a clean shutdown, with
    // every index record written out.
    tally_tests::copy_dir(&root.path().join("runs-16"), &root.path().join("crashed"));
    let [runs_16, runs_1, window] = ledgers;
    let crashed = open("crashed", 16);
    check(&crashed, &sent, &window);
    runs_16.shutdown();
    let reopened = Ledger::open(&root.path().join("runs-16"), LedgerConfig::new(None)).unwrap();
    check(&reopened, &sent, &window);
    check(&window, &sent, &reopened);
    check(&runs_1, &sent, &reopened);
}

/// A ledger of 3,000 receipts, built once and shared by the property test below.
fn shared_ledger() -> &'static (tempfile::TempDir, Ledger, MemoryTree) {
    static LEDGER: OnceLock<(tempfile::TempDir, Ledger, MemoryTree)> = OnceLock::new();
    LEDGER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path(), config()).unwrap();
        set_up(&ledger, 3);
        let mut rng = rand::thread_rng();
        for _ in 0..3 {
            let batch = (0..1000).map(|_| verified(random_receipt(3, &mut rng))).collect();
            ledger.append_blocking(batch).unwrap();
        }
        let mut tree = MemoryTree::new();
        for seq in 0..ledger.size() {
            tree.push(ledger.store().leaf(seq).unwrap().unwrap().leaf_hash());
        }
        (dir, ledger, tree)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// For random sizes and indices, the store's roots and proofs equal those of an
    /// in-memory tree of the same leaves, and verify.
    #[test]
    fn store_roots_and_proofs_agree_with_memory(size in 1u64..=3001, index_seed in any::<u64>(), size1_seed in any::<u64>()) {
        let (_, ledger, tree) = shared_ledger();
        let index = index_seed % size;
        let size1 = 1 + size1_seed % size;
        let root = merkle::root_at(ledger.store(), size).unwrap();
        prop_assert_eq!(root, merkle::root_at(tree, size).unwrap());
        let proof = ledger.inclusion_proof(index, size).unwrap();
        prop_assert_eq!(&proof, &merkle::inclusion_proof(tree, index, size).unwrap());
        prop_assert!(merkle::verify_inclusion(&tree.node(0, index).unwrap(), index, size, &proof, &root).is_ok());
        let cproof = ledger.consistency_proof(size1, size).unwrap();
        let root1 = merkle::root_at(tree, size1).unwrap();
        prop_assert!(merkle::verify_consistency(size1, size, &root1, &root, &cproof).is_ok());
    }
}

/// Where a test holds the sequencer: see [`holding_config`].
type Hold = std::sync::Arc<std::sync::Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>>;

/// A config whose sequencer, once [`hold_next`] was called, stops in the first one-entry
/// group after writing it (before its sync), tells the test and waits to be let go.
fn holding_config() -> (LedgerConfig, Hold) {
    let hold: Hold = Default::default();
    let mut c = config();
    let observer_hold = hold.clone();
    c.on_group = Some(std::sync::Arc::new(move |stats: &tally_ledger::GroupStats| {
        if stats.entries == 1
            && let Some((entered, go_on)) = observer_hold.lock().unwrap().take()
        {
            entered.send(()).unwrap();
            let _ = go_on.recv();
        }
    }));
    (c, hold)
}

/// Arm the hold: returns (in the group, let go). Made after the ledger, so that a failed
/// assertion drops the sender first and the held sequencer gets going (rather than the
/// ledger's drop waiting for it forever).
fn hold_next(hold: &Hold) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
    let (entered, in_commit) = std::sync::mpsc::channel();
    let (release, go_on) = std::sync::mpsc::channel();
    *hold.lock().unwrap() = Some((entered, go_on));
    (in_commit, release)
}

/// The append queue is bounded: with the sequencer held inside a commit and the queue full,
/// the next append is refused with `Busy` at once (its reply dropped unanswered), and every
/// append queued before it is committed once the sequencer goes on.
#[test]
fn a_full_queue_refuses_appends_and_keeps_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (c, hold) = holding_config();
    let ledger = Ledger::open(dir.path(), c).unwrap();
    let size = set_up(&ledger, 1);
    let (in_commit, release) = hold_next(&hold);
    let (reply, first) = tokio::sync::oneshot::channel();
    ledger.append_to(vec![verified(receipt(&lab_key(1), 1, 0, [0; 16]))], reply).unwrap();
    in_commit.recv().unwrap();
    let mut answers = Vec::new();
    for i in 1..=tally_ledger::QUEUE_REQUESTS_MAX as u64 {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let r = verified(receipt(&lab_key(1), 1, i, (i as u128).to_be_bytes()));
        ledger.append_to(vec![r], reply).unwrap();
        answers.push(answer);
    }
    let (reply, refused) = tokio::sync::oneshot::channel();
    let extra = verified(receipt(&lab_key(1), 1, 1 << 20, [0xee; 16]));
    assert!(matches!(ledger.append_to(vec![extra], reply), Err(LedgerError::Busy)));
    assert!(refused.blocking_recv().is_err(), "a refused append's reply is dropped unanswered");
    release.send(()).unwrap();
    assert_eq!(appended(&first.blocking_recv().unwrap().unwrap()), vec![size]);
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(appended(&answer.blocking_recv().unwrap().unwrap()), vec![size + 1 + i as u64]);
    }
    assert_eq!(ledger.size(), size + 1 + tally_ledger::QUEUE_REQUESTS_MAX as u64);
}

/// A group is written before it is durable (the sequencer hands it to the syncer when more
/// is queued, and applies the next meanwhile), but nothing of it is answered or served
/// until the sync: not its size, not its idempotency key, not the settlement state it made.
#[test]
fn a_written_group_is_neither_answered_nor_served_until_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (c, hold) = holding_config();
    let ledger = Ledger::open(dir.path(), c).unwrap();
    let size = set_up(&ledger, 1);
    let (in_commit, release) = hold_next(&hold);
    let first = verified(receipt(&lab_key(1), 1, 1, [1; 16]));
    let first_id = first.dedup_id();
    let (reply, first_answer) = tokio::sync::oneshot::channel();
    ledger.append_to(vec![first], reply).unwrap();
    in_commit.recv().unwrap();
    // Written (in the store and the index window), not yet synced.
    assert_eq!(ledger.size(), size);
    assert_eq!(ledger.dedup(&first_id).unwrap(), None);
    std::thread::scope(|s| {
        // A reader of the settlement state waits for the sync.
        let reader = s.spawn(|| ledger.settlement().unwrap().applied());
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!reader.is_finished(), "the engine was served before its last group was durable");
        // With a second append queued, the first group goes to the syncer.
        let (reply, second_answer) = tokio::sync::oneshot::channel();
        ledger.append_to(vec![verified(receipt(&lab_key(1), 1, 2, [2; 16]))], reply).unwrap();
        release.send(()).unwrap();
        assert_eq!(reader.join().unwrap(), size + 1);
        assert_eq!(appended(&first_answer.blocking_recv().unwrap().unwrap()), vec![size]);
        assert_eq!(appended(&second_answer.blocking_recv().unwrap().unwrap()), vec![size + 1]);
    });
    assert_eq!(ledger.dedup(&first_id).unwrap(), Some(size));
    assert_eq!(ledger.size(), size + 2);
}
