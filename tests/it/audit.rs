//! The auditor: it passes on real ledgers (random workloads, every worked example) and
//! fails, naming the first bad sequence number, when one byte of an entry, a leaf record, a
//! tile or a checkpoint changes, when an entry is removed or two are swapped, and when the
//! node's state diverges so that the state root it signs differs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;
use tally_audit::{Auditor, Pins, Report};
use tally_core::checkpoint::{Checkpoint, open_checkpoint};
use tally_core::entry::VerifiedEntry;
use tally_core::tile::{TilePath, tile_width};
use tally_ledger::{Ledger, LedgerConfig};
use tally_tests::{ORIGIN, collective_key};

/// What an auditor gets from a node: export records, every checkpoint, and the tiles and
/// entry bundles at the newest checkpoint.
#[derive(Clone)]
struct Export {
    records: Vec<(Vec<u8>, Vec<u8>)>,
    notes: Vec<String>,
    tiles: Vec<(String, Vec<u8>)>,
}

/// Log `entries` at their own sequencer times (one group each, a checkpoint after every
/// group) and export it.
fn export(entries: &[(VerifiedEntry, u64)]) -> Export {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(0));
    let mut config = LedgerConfig::new(Some(collective_key()));
    config.checkpoint_interval_ms = 0;
    let clock = now.clone();
    config.clock = Arc::new(move || clock.load(Ordering::SeqCst));
    let ledger = Ledger::open(dir.path(), config).unwrap();
    for (entry, time) in entries {
        now.store(*time, Ordering::SeqCst);
        assert!(matches!(ledger.append_blocking(vec![entry.clone()]).unwrap()[0], tally_ledger::Outcome::Appended(..)));
    }
    ledger.checkpoint_blocking().unwrap();
    let size = ledger.size();
    let store = ledger.store();
    let records = store.export(0, size, usize::MAX).unwrap();
    let notes = store.checkpoints(0, usize::MAX).unwrap().into_iter().map(|(_, n)| n).collect();
    Export { records, notes, tiles: served_tiles(&ledger, size) }
}

/// Every tile and entry bundle of the tree of `size`, as the node serves them.
fn served_tiles(ledger: &Ledger, size: u64) -> Vec<(String, Vec<u8>)> {
    let mut tiles = Vec::new();
    for level in 0..3u8 {
        for index in 0.. {
            let width = tile_width(level, index, size);
            if width == 0 {
                break;
            }
            tiles.push((TilePath::Hashes { level, index, width }.render(), ledger.tile(level, index, width).unwrap()));
            if level == 0 {
                tiles.push((TilePath::Entries { index, width }.render(), ledger.entry_bundle(index, width).unwrap()));
            }
        }
    }
    tiles
}

fn pins() -> Pins {
    Pins { origin: ORIGIN.to_string(), key: collective_key().public_key() }
}

fn audit(e: &Export) -> Report {
    let mut auditor = Auditor::new(pins(), e.notes.clone(), e.tiles.clone());
    for (leaf, entry) in &e.records {
        if !auditor.push(leaf, entry) {
            break;
        }
    }
    auditor.finish()
}

fn first_bad(report: &Report) -> Option<u64> {
    assert!(!report.ok, "the audit must fail");
    report.divergence.as_ref().unwrap().seq
}

/// The auditor passes on random workloads and on every worked example.
#[test]
fn audit_passes_on_honest_ledgers() {
    for seed in 1..=3 {
        let e = export(&crate::settlement_props::random_log(seed, 300));
        let report = audit(&e);
        assert!(report.ok, "seed {seed}: {}", report.summary());
        assert_eq!(report.entries, e.records.len() as u64);
        assert_eq!(report.checkpoints, e.notes.len());
        assert!(report.tiles > 0 && report.bundles > 0);
    }
    for (name, scenario) in crate::scenarios::all() {
        let run = crate::scenarios::run(&name, &scenario);
        let report = audit(&export(&run.appended));
        assert!(report.ok, "{name}: {}", report.summary());
        assert_eq!(report.state_root, hex::encode(run.engine.state_root()));
    }
}

/// One changed byte, anywhere, is caught and named.
#[test]
fn audit_names_the_first_bad_sequence_number() {
    let honest = export(&crate::settlement_props::random_log(7, 400));
    assert!(audit(&honest).ok);
    let n = honest.records.len();
    let mut rng = rand::thread_rng();
    for _ in 0..25 {
        // A byte of an entry.
        let k = rng.gen_range(0..n);
        let mut e = honest.clone();
        let at = rng.gen_range(0..e.records[k].1.len());
        e.records[k].1[at] ^= 1 << rng.gen_range(0..8);
        assert_eq!(first_bad(&audit(&e)), Some(k as u64), "entry {k} byte {at}");
        // A byte of a leaf record.
        let mut e = honest.clone();
        let at = rng.gen_range(0..e.records[k].0.len());
        e.records[k].0[at] ^= 1 << rng.gen_range(0..8);
        assert_eq!(first_bad(&audit(&e)), Some(k as u64), "leaf record {k} byte {at}");
        // A byte of a level-0 tile names the leaf whose hash it holds; of a higher tile,
        // the first leaf under the changed hash.
        let mut e = honest.clone();
        let t = rng.gen_range(0..e.tiles.len());
        let at = rng.gen_range(0..e.tiles[t].1.len());
        e.tiles[t].1[at] ^= 1 << rng.gen_range(0..8);
        let want = match TilePath::parse(&e.tiles[t].0).unwrap() {
            TilePath::Hashes { level, index, .. } => ((index * 256) + (at / 32) as u64) << (8 * u32::from(level)),
            TilePath::Entries { index, .. } => {
                // Records are 2 + 58 bytes: the flipped byte is in record at / 60.
                index * 256 + (at / 60) as u64
            }
        };
        assert_eq!(first_bad(&audit(&e)), Some(want), "{} byte {at}", e.tiles[t].0);
        // A byte of a checkpoint: its signature no longer verifies; named by its size.
        let mut e = honest.clone();
        let c = rng.gen_range(0..e.notes.len());
        let size: u64 = e.notes[c].lines().nth(1).unwrap().parse().unwrap();
        let mut bytes = e.notes[c].clone().into_bytes();
        let first_lines = e.notes[c].lines().take(2).map(|l| l.len() + 1).sum::<usize>();
        let at = rng.gen_range(first_lines..bytes.len());
        bytes[at] ^= 1 << rng.gen_range(0..7);
        e.notes[c] = String::from_utf8_lossy(&bytes).into_owned();
        assert_eq!(first_bad(&audit(&e)), Some(size), "checkpoint {size} byte {at}");
    }
    // An entry removed, or two swapped.
    for k in [1, n / 2, n - 2] {
        let mut e = honest.clone();
        e.records.remove(k);
        assert_eq!(first_bad(&audit(&e)), Some(k as u64), "entry {k} removed");
        let mut e = honest.clone();
        e.records.swap(k, k + 1);
        assert_eq!(first_bad(&audit(&e)), Some(k as u64), "entries {k} and {} swapped", k + 1);
    }
}

/// The replayed state kept on disk (as `tally audit --dir` keeps it) gives the same report as
/// in memory, over a log long enough for reversals and second fetches to read charge
/// records and markers back, and catches the same tampering.
#[test]
fn audit_with_state_on_disk_matches_memory() {
    let replay = |e: &Export, dir: &std::path::Path| {
        let state = tally_ledger::ScratchState::create(dir).unwrap();
        let paths = e.tiles.iter().map(|(p, _)| p.clone()).collect();
        let tiles: std::collections::HashMap<String, Vec<u8>> = e.tiles.iter().cloned().collect();
        let mut auditor = Auditor::with_tiles(pins(), e.notes.clone(), paths, Box::new(tiles), state).unwrap();
        for (leaf, entry) in &e.records {
            if !auditor.push(leaf, entry) {
                break;
            }
        }
        auditor.finish()
    };
    let scratch = tempfile::tempdir().unwrap();
    let honest = export(&crate::settlement_props::random_log(3, 600));
    let (memory, disk) = (audit(&honest), replay(&honest, &scratch.path().join("honest")));
    assert!(disk.ok, "{}", disk.summary());
    assert_eq!(
        (disk.entries, disk.checkpoints, disk.tiles, disk.bundles, &disk.root, &disk.state_root, &disk.balances),
        (
            memory.entries,
            memory.checkpoints,
            memory.tiles,
            memory.bundles,
            &memory.root,
            &memory.state_root,
            &memory.balances
        )
    );
    let k = honest.records.len() / 2;
    let mut e = honest.clone();
    e.records[k].1[40] ^= 1;
    let report = replay(&e, &scratch.path().join("tampered"));
    assert_eq!(first_bad(&report), first_bad(&audit(&e)));
}

/// Whatever was served must check out: a tile or bundle beyond the replayed log (an export
/// cut short, with the checkpoints it still reaches) and a path that names no tile each
/// fail the audit, named at the first leaf they cover.
#[test]
fn served_tiles_the_replay_never_reaches_fail_the_audit() {
    let honest = export(&crate::settlement_props::random_log(5, 700));
    assert!(audit(&honest).ok);
    let kept = 256;
    assert!(honest.records.len() > kept, "{} entries: the cut must drop some", honest.records.len());
    let mut cut = honest.clone();
    cut.records.truncate(kept);
    cut.notes.retain(|n| n.lines().nth(1).unwrap().parse::<usize>().unwrap() <= kept);
    let report = audit(&cut);
    assert_eq!(first_bad(&report), Some(256), "{}", report.summary());
    let what = report.divergence.unwrap().what;
    assert!(what.contains("goes beyond the replayed"), "{what}");
    // Without the tiles past the cut, the same records pass.
    cut.tiles.retain(|(path, _)| !path.contains(".p/") || path.starts_with("tile/1/"));
    cut.tiles.retain(|(path, _)| path != "tile/1/000.p/1");
    let report = audit(&cut);
    assert!(report.ok, "{}", report.summary());
    let mut junk = honest.clone();
    junk.tiles.push(("tile/not-a-tile".into(), vec![0; 32]));
    let report = audit(&junk);
    assert!(!report.ok);
    assert_eq!(report.divergence.as_ref().unwrap().seq, None);
    assert!(report.divergence.unwrap().what.contains("tile/not-a-tile is not a tile path"));
}

/// A node whose state was tampered with signs a state root that replay does not reach: the
/// auditor names that checkpoint (the collective's key signs it, so the signature is fine).
#[test]
fn audit_catches_a_divergent_state_root() {
    let mut e = export(&crate::settlement_props::random_log(11, 200));
    let key = collective_key();
    let c = e.notes.len() / 2;
    let cp: Checkpoint = open_checkpoint(&e.notes[c], ORIGIN, &key.public_key()).unwrap();
    let mut forged = cp.clone();
    forged.extensions = vec![format!("{}{}", tally_ledger::STATE_ROOT_EXTENSION, "A".repeat(43) + "=")];
    e.notes[c] = forged.sign(ORIGIN, &key);
    let report = audit(&e);
    assert_eq!(first_bad(&report), Some(cp.size));
    assert!(report.divergence.unwrap().what.contains("state root"));
}

/// Replays longer than one chunk: verification of a chunk runs while the previous one is
/// applied. An honest ledger of three chunks passes, and an entry whose signature does not
/// verify (logged with a leaf record made to match it, as a dishonest node would) is named
/// at its own position, in any chunk, including the last.
#[test]
fn audit_pipelines_chunks_and_names_a_bad_signature_in_any_of_them() {
    use tally_core::entry::{Entry, LeafRecord};
    let chunk = tally_audit::CHUNK_ENTRIES;
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path(), LedgerConfig::new(Some(collective_key()))).unwrap();
    ledger.append_blocking(tally_tests::all_verified(tally_tests::setup(2))).unwrap();
    let mut rng = rand::thread_rng();
    let receipts: Vec<Entry> =
        (0..2 * chunk + 500).map(|i| tally_tests::random_receipt(i as u8 % 2 + 1, &mut rng)).collect();
    for batch in receipts.chunks(4096) {
        ledger.append_blocking(tally_tests::all_verified(batch.to_vec())).unwrap();
    }
    ledger.checkpoint_blocking().unwrap();
    let size = ledger.size();
    let honest = Export {
        records: ledger.store().export(0, size, usize::MAX).unwrap(),
        notes: ledger.store().checkpoints(0, usize::MAX).unwrap().into_iter().map(|(_, n)| n).collect(),
        tiles: served_tiles(&ledger, size),
    };
    let report = audit(&honest);
    assert!(report.ok, "{}", report.summary());
    assert_eq!(report.entries, size);
    // Every tile and bundle checked, each as the replay completed it: 66 full level-0
    // tiles and bundles, the partial ones, and the partial level-1 tile.
    assert_eq!((report.tiles, report.bundles), (honest.tiles.len() / 2 + 1, honest.tiles.len() / 2));
    assert_eq!(report.bundles as u64, size.div_ceil(256));
    // The node's tiles would name the forged leaf records below before their signatures.
    let honest = Export { tiles: Vec::new(), ..honest };
    for k in [chunk as u64 / 2, chunk as u64 + 7, size - 3] {
        let mut e = honest.clone();
        let (leaf, entry) = &mut e.records[k as usize];
        // Flip a bit of the signature (bytes 33..97, after the kind and the author key),
        // then make the leaf record describe the changed entry so that only the signature
        // is wrong.
        entry[40] ^= 1;
        let forged = Entry::decode(entry).expect("still canonical");
        let time = LeafRecord::decode(leaf).unwrap().time_ms;
        *leaf = LeafRecord::for_entry(&forged, k, time).encode().to_vec();
        let report = audit(&e);
        assert_eq!(first_bad(&report), Some(k), "bad signature at {k}: {}", report.summary());
        assert!(report.summary().contains("signature"), "{}", report.summary());
    }
}
