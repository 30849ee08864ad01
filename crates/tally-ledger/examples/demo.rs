//! The ledger end to end on local RocksDB: a collective starts a ledger, three labs' crawlers
//! submit signed receipts concurrently (with retries), the ledger signs a checkpoint, and
//! then an outside verifier who trusts nothing but the collective's public key audits the
//! log from its public tiles, entry bundles and proofs.
//!
//! Run: `cargo run --example demo [-- --data DIR --receipts N]`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, RngCore};
use tally_core::checkpoint::open_checkpoint;
use tally_core::codec::Text;
use tally_core::entry::{Body, Entry, Genesis, LeafRecord, Receipt, ReceiptCore, Usage, verify_entries};
use tally_core::merkle::{self, NodeReader};
use tally_core::sig::SigningKey;
use tally_core::tile::{TileNodes, parse_entry_bundle, tile_width};
use tally_ledger::{Ledger, LedgerConfig, Outcome};

const ORIGIN: &str = "demo.tally.example/collective";
const LABS: [&str; 3] = ["northwind-ai", "bluefin-labs", "quarry-research"];

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn receipt(lab: &SigningKey, lab_id: u64, rng: &mut impl RngCore) -> Entry {
    let mut nonce = [0u8; 16];
    rng.fill_bytes(&mut nonce);
    let site = ["news.example", "science.example", "recipes.example"][rng.gen_range(0..3)];
    let core = ReceiptCore {
        lab_id,
        contract_id: [lab_id as u8; 32],
        url: Text::new(format!("https://{site}/articles/{}", rng.gen_range(1..2_000))).expect("short"),
        content_sha256: rand::random(),
        response_bytes: rng.gen_range(8_000..90_000),
        fetch_time_ms: 1_767_225_600_000 + rng.gen_range(0..86_400_000),
        usage: [Usage::AiTrain, Usage::AiInput, Usage::Search][rng.gen_range(0..3)],
        nonce,
    };
    Entry::sign(lab, Body::Receipt(Receipt { core, delivery: None })).expect("valid receipt")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let receipts_per_lab: usize = arg("--receipts").and_then(|n| n.parse().ok()).unwrap_or(3_000);
    let temp;
    let dir: PathBuf = match arg("--data") {
        Some(d) => d.into(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    println!("Tally ledger demo — RocksDB at {}\n", dir.display());

    // 1. The collective starts the ledger.
    let collective = SigningKey::generate();
    let ledger = Arc::new(Ledger::open(&dir, LedgerConfig::new(Some(SigningKey::from_seed(&collective.seed()))))?);
    if ledger.size() == 0 {
        let g = Genesis {
            origin: Text::new(ORIGIN)?,
            collective_name: Text::new("Demo Publishers' Collective")?,
            collective_key: collective.public_bytes(),
            asset_code: Text::new("USD")?,
            asset_scale: 6,
            created_ms: 1_767_225_600_000,
        };
        ledger.append_blocking(vec![Entry::sign(&collective, Body::Genesis(g))?.verify()?])?;
    } else {
        return Err("--data must name an empty directory: the demo makes a new collective key".into());
    }
    println!("1. genesis appended: origin {ORIGIN}, asset USD at 6 decimals");
    println!("   collective key {}", hex(&collective.public_bytes()));

    // 2. Three labs' crawlers submit signed receipts in batches, concurrently, with retries.
    let start = Instant::now();
    let totals: Vec<(usize, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = LABS
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let ledger = ledger.clone();
                s.spawn(move || {
                    let lab = SigningKey::generate();
                    let mut rng = rand::thread_rng();
                    let (mut appended, mut duplicates) = (0, 0);
                    let mut last: Vec<Entry> = Vec::new();
                    while appended < receipts_per_lab {
                        let n = (receipts_per_lab - appended).min(250);
                        let mut batch: Vec<Entry> = (0..n).map(|_| receipt(&lab, i as u64 + 1, &mut rng)).collect();
                        // A crawler that timed out resends its last receipts: never charged twice.
                        batch.extend(last.iter().take(5).cloned());
                        let verified =
                            batch.iter().cloned().map(Entry::verify).collect::<Result<Vec<_>, _>>().expect("signed");
                        for outcome in ledger.append_blocking(verified).expect("append") {
                            match outcome {
                                Outcome::Appended(..) => appended += 1,
                                Outcome::Duplicate(_) => duplicates += 1,
                                Outcome::Rejected(r) => panic!("rejected: {r}"),
                            }
                        }
                        last = batch;
                    }
                    (appended, duplicates)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("crawler")).collect()
    });
    let elapsed = start.elapsed();
    println!("\n2. crawlers submitted signed receipts (each append acknowledged only once synced to disk):");
    for (name, (appended, duplicates)) in LABS.iter().zip(&totals) {
        println!("   {name:<16} {appended:>6} receipts appended, {duplicates:>4} retries answered as duplicates");
    }
    let total: usize = totals.iter().map(|t| t.0).sum();
    println!(
        "   {total} receipts in {:.2} s ({:.0}/s through the sequencer)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );

    // 3. The collective signs a checkpoint.
    let (size, note) = ledger.checkpoint_blocking()?.ok_or("no checkpoint")?;
    println!("\n3. signed checkpoint (C2SP tlog-checkpoint) at size {size}:\n");
    for line in note.lines() {
        println!("   {line}");
    }

    // 4. An outside verifier audits the public log, pinning only origin and key.
    println!("\n4. audit by an outside verifier (trusts only the origin and the collective's key):");
    let pinned = collective.public_key();
    let cp = open_checkpoint(&note, ORIGIN, &pinned)?;
    println!("   checkpoint signature verifies under the pinned key");
    let store = ledger.store();
    let mut tiles = TileNodes::new();
    let mut tile_count = 0;
    for level in 0..8u8 {
        for index in 0.. {
            let width = tile_width(level, index, cp.size);
            if width == 0 {
                break;
            }
            tiles.insert(level, index, &ledger.tile(level, index, width)?)?;
            tile_count += 1;
        }
    }
    let root = merkle::root_at(&tiles, cp.size).map_err(|e| e.to_string())?;
    assert_eq!(root, cp.root, "tiles rebuild the checkpoint root");
    println!("   {tile_count} tiles fetched; they rebuild the checkpoint root {}", hex(&root[..8]));
    let mut records = 0u64;
    for index in 0.. {
        let width = tile_width(0, index, cp.size);
        if width == 0 {
            break;
        }
        let bundle = ledger.entry_bundle(index, width)?;
        for record in parse_entry_bundle(&bundle)? {
            assert_eq!(merkle::leaf_hash(record), tiles.node(0, records).map_err(|e| e.to_string())?);
            records += 1;
        }
    }
    println!("   {records} public leaf records in entry bundles all hash into the tiles");
    let mut rng = rand::thread_rng();
    for _ in 0..3 {
        let seq = rng.gen_range(1..cp.size);
        let entry = store.entry(seq)?.ok_or("entry")?;
        let leaf = LeafRecord::decode(&store.leaf_records(seq, seq + 1)?[0])?;
        assert!(leaf.matches(&entry));
        let proof = ledger.inclusion_proof(seq, cp.size)?;
        merkle::verify_inclusion(&leaf.leaf_hash(), seq, cp.size, &proof, &cp.root).map_err(|e| e.to_string())?;
        let Body::Receipt(r) = entry.body() else { continue };
        println!(
            "   receipt {seq:>5} ({}, {}) is included: {}-hash proof verifies",
            r.core.url,
            r.core.usage,
            proof.len()
        );
    }
    let full: Vec<Entry> =
        (0..cp.size).map(|s| store.entry(s).map(|e| e.expect("below size"))).collect::<Result<_, _>>()?;
    let bad = verify_entries(&full).iter().filter(|r| r.is_err()).count();
    let mismatched =
        (0..cp.size).filter(|&s| !store.leaf(s).ok().flatten().is_some_and(|l| l.matches(&full[s as usize]))).count();
    println!(
        "   auditor replay of all {} full entries: {bad} bad signatures, {mismatched} leaf mismatches",
        full.len()
    );
    if bad + mismatched > 0 {
        return Err("audit failed".into());
    }
    println!("\nAudit passed. Pricing receipts and paying royalties arrive with the settlement engine;");
    println!("see README.md for what is built and specs/ for the formats.");
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
