//! Tally end to end on local RocksDB: a collective admits publishers and two labs, records a
//! per-word transactional licence and a blanket licence, funds escrow; the labs' crawlers
//! submit signed receipts concurrently (with retries) and every receipt is priced and split
//! the moment it lands; the collective closes the period and pays out; then an outside
//! auditor who trusts nothing but the collective's public key checks the public log and
//! replays every entry, re-executing settlement to the signed state root.
//!
//! Run: `cargo run --example demo [-- --data DIR --receipts N]`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, RngCore};
use tally_core::checkpoint::open_checkpoint;
use tally_core::codec::{List, Text};
use tally_core::entry::{Body, Entry, Genesis, LeafRecord, Receipt, ReceiptCore, Usage, VerifiedEntry, verify_entries};
use tally_core::kinds::*;
use tally_core::merkle::{self, NodeReader};
use tally_core::sig::SigningKey;
use tally_core::tile::{TileNodes, parse_entry_bundle, tile_width};
use tally_ledger::{Ledger, LedgerConfig, Outcome, state_root_of, system_clock};
use tally_settlement::terms::{format_amount, parse_terms};
use tally_settlement::{Account, Engine, MemoryStore};

const ORIGIN: &str = "demo.tally.example/collective";
const DAY_MS: u64 = 86_400_000;
const SCALE: u8 = 6;

/// Publishers: id, name, site prefix, articles, words per article, tier.
const PUBLISHERS: [(u64, &str, &str, u32, u32, Tier); 4] = [
    (10, "Daily Planet", "https://planet.example/", 60_000, 850, Tier::Standard),
    (11, "Science Journal", "https://journal.example/", 12_000, 4_200, Tier::Premium),
    (12, "Recipe Hub", "https://recipes.example/", 2_500, 400, Tier::Commodity),
    (13, "Wire Service", "https://wire.example/", 900, 600, Tier::Standard),
];
/// Labs: id, name.
const LABS: [(u64, &str); 2] = [(1, "Northwind AI"), (2, "Bluefin Labs")];

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn usd(minor: i128) -> String {
    format!("${}", format_amount(minor, SCALE))
}

fn key(id: u64) -> SigningKey {
    SigningKey::from_seed(&[id as u8; 32])
}

fn nonce(rng: &mut impl RngCore) -> [u8; 16] {
    let mut n = [0u8; 16];
    rng.fill_bytes(&mut n);
    n
}

/// A URL a crawler might fetch: mostly members' sites, some syndicated wire copy, a few
/// sites nobody registered.
fn crawl_url(rng: &mut impl RngCore) -> String {
    let n = rng.gen_range(1..3_000);
    match rng.gen_range(0..20) {
        0..=7 => format!("https://planet.example/{}/story-{n}", ["news", "politics", "sport"][n % 3]),
        8..=9 => format!("https://planet.example/wire/{n}"),
        10..=13 => format!("https://journal.example/papers/{n}"),
        14..=17 => format!("https://recipes.example/dishes/{n}"),
        18 => format!("https://wire.example/feed/{n}"),
        _ => format!("https://unregistered.example/post/{n}"),
    }
}

fn append(ledger: &Ledger, entries: Vec<Entry>) -> Result<Vec<Outcome>, Box<dyn std::error::Error>> {
    let verified = entries.into_iter().map(Entry::verify).collect::<Result<Vec<_>, _>>()?;
    let out = ledger.append_blocking(verified)?;
    if let Some(Outcome::Rejected(r)) = out.iter().find(|o| matches!(o, Outcome::Rejected(_))) {
        return Err(format!("rejected: {} ({r})", r.code()).into());
    }
    Ok(out)
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
    println!("Tally demo: a node's ledger on RocksDB at {}\n", dir.display());
    let collective = SigningKey::generate();
    let ledger = Arc::new(Ledger::open(&dir, LedgerConfig::new(Some(SigningKey::from_seed(&collective.seed()))))?);
    if ledger.size() != 0 {
        return Err("--data must name an empty directory: the demo makes a new collective key".into());
    }
    let now = (system_clock())();
    let sign = |k: &SigningKey, b: Body| Entry::sign(k, b).expect("demo entries are well-formed");

    // 1. The collective, its members and its licensees.
    let mut setup = vec![sign(
        &collective,
        Body::Genesis(Genesis {
            origin: Text::new(ORIGIN)?,
            collective_name: Text::new("Demo Publishers' Collective")?,
            collective_key: collective.public_bytes(),
            asset_code: Text::new("USD")?,
            asset_scale: SCALE,
            created_ms: now,
        }),
    )];
    let admit = |id: u64, role: Role, name: &str| {
        sign(
            &collective,
            Body::Admit(Admit {
                participant: id,
                role,
                key: key(id).public_bytes(),
                name: Text::new(name).expect("short"),
            }),
        )
    };
    for (id, name, ..) in PUBLISHERS {
        setup.push(admit(id, Role::Publisher, name));
    }
    for (id, name) in LABS {
        setup.push(admit(id, Role::Lab, name));
    }
    for (id, _, prefix, articles, words, tier) in PUBLISHERS {
        setup.push(sign(
            &key(id),
            Body::Register(Register {
                pattern: UrlPattern::prefix(prefix)?,
                articles,
                words,
                tier,
                uniqueness_bps: 7_000,
                partners: List::default(),
                nonce: [0; 16],
            }),
        ));
    }
    // Syndication: the Daily Planet runs Wire Service copy under /wire/ and shares 30%.
    setup.push(sign(
        &key(10),
        Body::Register(Register {
            pattern: UrlPattern::prefix("https://planet.example/wire/")?,
            articles: 4_000,
            words: 600,
            tier: Tier::Standard,
            uniqueness_bps: 2_000,
            partners: List::new(vec![Partner { participant: 13, share_bps: 3_000 }])?,
            nonce: [0; 16],
        }),
    ));
    // Recipe Hub opts out of training.
    setup.push(sign(
        &key(12),
        Body::Reserve(Reserve {
            pattern: UrlPattern::prefix("https://recipes.example/")?,
            usage: Usage::AiTrain,
            reserved: true,
            nonce: [0; 16],
        }),
    ));
    let (start, end) = (now - DAY_MS, now + 30 * DAY_MS);
    let northwind = parse_terms(
        &format!(
            r#"{{"lab": 1, "name": "Northwind per-word", "scope": ["ai-all"], "start_ms": {start}, "end_ms": {end},
            "licence": "transactional", "basis": "every-fetch",
            "rate": {{"per_article": "0.0008", "per_kwords": "0.0012"}},
            "tier_multipliers": {{"premium": "2", "standard": "1", "commodity": "0.5"}},
            "rate_table": [{{"prefix": "https://journal.example/papers/", "per_article": "0.004", "per_kwords": "0.0015"}}],
            "credit_limit": "5", "fee_bps": 1500, "distribution": "per-usage", "unregistered_words": 700}}"#
        ),
        SCALE,
    )?;
    let bluefin = parse_terms(
        &format!(
            r#"{{"lab": 2, "name": "Bluefin blanket", "scope": ["ai-input", "search"], "start_ms": {start}, "end_ms": {end},
            "licence": {{"blanket": {{"fee": "3100"}}}}, "basis": "every-fetch", "rate": {{}},
            "fee_bps": 1500, "distribution": {{"hybrid": {{"base_bps": 4000}}}}}}"#
        ),
        SCALE,
    )?;
    let contracts = [northwind.id(), bluefin.id()];
    setup.push(sign(&collective, Body::Contract(northwind)));
    setup.push(sign(&collective, Body::Contract(bluefin)));
    for (lab, contract) in [(1u64, contracts[0]), (2, contracts[1])] {
        setup.push(sign(&key(lab), Body::Accept(Accept { contract_id: contract })));
        setup.push(sign(
            &collective,
            Body::Deposit(Deposit {
                participant: lab,
                amount: 5_000_000_000,
                reference: Text::new(format!("wire-{lab}"))?,
            }),
        ));
    }
    let n = setup.len();
    append(&ledger, setup)?;
    println!("1. The collective set up its market in {n} signed entries:");
    println!("   genesis (origin {ORIGIN}, USD at 6 decimals), 4 publishers with 79,400 registered articles");
    println!("   across three tiers, a syndication deal (Wire Service gets 30% of /wire/ on the Daily Planet),");
    println!("   an opt-out (Recipe Hub reserves ai-train), and two labs with funded escrow of $5,000 each:");
    println!("   Northwind AI  transactional: $0.0008/article + $0.0012/1,000 words, premium x2, commodity x0.5");
    println!("   Bluefin Labs  blanket: $3,100 for 31 days, distributed 40% equally + 60% by use");

    // 2. Crawlers submit receipts.
    let started = Instant::now();
    let totals: Vec<(usize, usize, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = LABS
            .iter()
            .zip(contracts)
            .map(|(&(lab, _), contract)| {
                let ledger = ledger.clone();
                s.spawn(move || {
                    let signer = key(lab);
                    let mut rng = rand::thread_rng();
                    let (mut appended, mut duplicates, mut refused) = (0, 0, 0);
                    let mut last: Vec<Entry> = Vec::new();
                    while appended < receipts_per_lab {
                        let n = (receipts_per_lab - appended).min(250);
                        let mut batch: Vec<Entry> = (0..n)
                            .map(|_| {
                                let usage = if lab == 1 {
                                    [Usage::AiTrain, Usage::AiInput][rng.gen_range(0..2)]
                                } else {
                                    [Usage::AiInput, Usage::Search][rng.gen_range(0..2)]
                                };
                                let core = ReceiptCore {
                                    lab_id: lab,
                                    contract_id: contract,
                                    url: Text::new(crawl_url(&mut rng)).expect("short"),
                                    content_sha256: rand::random(),
                                    response_bytes: rng.gen_range(8_000..90_000),
                                    fetch_time_ms: (system_clock())(),
                                    usage,
                                    nonce: nonce(&mut rng),
                                };
                                Entry::sign(&signer, Body::Receipt(Receipt { core, delivery: None })).expect("valid")
                            })
                            .collect();
                        // A crawler that timed out resends its last receipts: never charged twice.
                        batch.extend(last.iter().take(5).cloned());
                        let verified: Vec<VerifiedEntry> =
                            batch.iter().cloned().map(|e| e.verify().expect("signed")).collect();
                        for outcome in ledger.append_blocking(verified).expect("append") {
                            match outcome {
                                Outcome::Appended(..) => appended += 1,
                                Outcome::Duplicate(_) => duplicates += 1,
                                Outcome::Rejected(_) => refused += 1,
                            }
                        }
                        last = batch;
                    }
                    (appended, duplicates, refused)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("crawler")).collect()
    });
    let elapsed = started.elapsed();
    println!("\n2. Crawlers submitted signed receipts; each is priced and split as it lands, and acknowledged");
    println!("   only once synced to disk:");
    for ((_, name), (appended, duplicates, refused)) in LABS.iter().zip(&totals) {
        println!(
            "   {name:<14} {appended:>6} receipts settled, {duplicates:>3} retries answered as duplicates, {refused:>4} refused (opted out)"
        );
    }
    let total: usize = totals.iter().map(|t| t.0).sum();
    println!(
        "   {total} receipts in {:.2} s ({:.0}/s through the sequencer)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    let mut earned_before: BTreeMap<u64, i128> = BTreeMap::new();
    {
        let engine = ledger.settlement()?;
        println!("   live balances, before any period close:");
        for (id, name) in LABS {
            println!("     {name:<16} escrow {:>14}", usd(engine.balance(Account::Escrow(id))));
        }
        for (id, name, ..) in PUBLISHERS {
            let earned = engine.balance(Account::Payable(id)) + engine.balance(Account::Partner(id));
            earned_before.insert(id, earned);
            println!("     {name:<16} earned {:>14}", usd(earned));
        }
        println!(
            "     {:<16} held   {:>14}  (for URLs nobody registered yet)",
            "unclaimed",
            usd(engine.balance(Account::Unclaimed))
        );
        println!("     {:<16} fee    {:>14}", "the collective", usd(engine.balance(Account::Fee)));
    }

    // 3. The collective closes the period and pays out.
    let cutoff = (system_clock())();
    let close =
        sign(&collective, Body::ClosePeriod(ClosePeriod { period: 0, cutoff_ms: cutoff, payout_min: 1_000_000 }));
    let Outcome::Appended(_, effect) = append(&ledger, vec![close])?.remove(0) else { return Err("close".into()) };
    let released: i128 =
        effect.postings.iter().filter(|p| matches!(p.account, Account::Pool(_))).map(|p| -p.amount).sum();
    let fee: i128 = effect.postings.iter().filter(|p| p.account == Account::Fee).map(|p| p.amount).sum();
    println!(
        "\n3. The collective closed period 0. The blanket fee accrued so far (1 day of 31), {}, left the",
        usd(released)
    );
    println!("   pool: {} to the collective's fee, the rest 40% equally and 60% by measured use. Every", usd(fee));
    println!("   publisher above $1 gets a payout of its receipts' royalties plus its blanket share:");
    let payouts: Vec<((u32, u64), u128)> =
        ledger.settlement()?.pending_payouts().map(|(k, p)| (*k, p.amount)).collect();
    let confirmations: Vec<Entry> = payouts
        .iter()
        .map(|((period, id), _)| {
            sign(
                &collective,
                Body::PayoutResult(PayoutResult {
                    period: *period,
                    participant: *id,
                    outcome: PayoutOutcome::Confirmed {
                        reference: Text::new(format!("ach-{period}-{id}")).expect("short"),
                    },
                }),
            )
        })
        .collect();
    append(&ledger, confirmations)?;
    for ((_, id), amount) in &payouts {
        let name = PUBLISHERS.iter().find(|p| p.0 == *id).map_or("?", |p| p.1);
        let receipts = earned_before.get(id).copied().unwrap_or(0);
        println!(
            "     {name:<16} receipts {:>11} + blanket {:>11} = paid {:>11} (confirmed)",
            usd(receipts),
            usd(*amount as i128 - receipts),
            usd(*amount as i128)
        );
    }

    // 4. A signed checkpoint with the state root.
    let (size, note) = ledger.checkpoint_blocking()?.ok_or("no checkpoint")?;
    println!("\n4. Signed checkpoint (C2SP tlog-checkpoint) at size {size}, with the settlement state root:\n");
    for line in note.lines() {
        println!("   {line}");
    }

    // 5. An outside auditor.
    println!("\n5. Audit by an outside verifier (trusts only the origin and the collective's key):");
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
    if root != cp.root {
        return Err("tiles do not rebuild the checkpoint root".into());
    }
    println!("   {tile_count} tiles rebuild the checkpoint root {}", hex(&root[..8]));
    let mut records = 0u64;
    for index in 0.. {
        let width = tile_width(0, index, cp.size);
        if width == 0 {
            break;
        }
        for record in parse_entry_bundle(&ledger.entry_bundle(index, width)?)? {
            if merkle::leaf_hash(record) != tiles.node(0, records).map_err(|e| e.to_string())? {
                return Err(format!("entry bundle record {records} does not hash into its tile").into());
            }
            records += 1;
        }
    }
    println!("   {records} public leaf records in entry bundles hash into the tiles");
    let full: Vec<Entry> =
        (0..cp.size).map(|s| store.entry(s).map(|e| e.expect("below size"))).collect::<Result<_, _>>()?;
    let bad = verify_entries(&full).iter().filter(|r| r.is_err()).count();
    let mut replay = Engine::open(MemoryStore::default())?;
    let mut mismatched = 0;
    for (seq, entry) in full.iter().enumerate() {
        let leaf = LeafRecord::decode(&store.leaf_records(seq as u64, seq as u64 + 1)?[0])?;
        mismatched += usize::from(!leaf.matches(entry));
        let verified = entry.clone().verify()?;
        replay.apply(&verified, seq as u64, leaf.time_ms)?.map_err(|r| format!("replay refused entry {seq}: {r}"))?;
        let proof = ledger.inclusion_proof(seq as u64, cp.size)?;
        merkle::verify_inclusion(&leaf.leaf_hash(), seq as u64, cp.size, &proof, &cp.root)
            .map_err(|e| e.to_string())?;
    }
    println!(
        "   all {} full entries: {bad} bad signatures, {mismatched} leaf mismatches, every inclusion proof verifies",
        full.len()
    );
    let signed = state_root_of(&note).ok_or("checkpoint has no state root")?;
    let replayed = replay.state_root();
    println!(
        "   settlement re-executed from empty state: state root {} (signed: {})",
        hex(&replayed[..8]),
        hex(&signed[..8])
    );
    replay.check_invariants()?;
    let inside = -replay.balance(Account::World);
    println!("   books balance: postings sum to zero; {} inside = deposits less confirmed payouts", usd(inside));
    if bad + mismatched > 0 || replayed != signed {
        return Err("audit failed".into());
    }
    println!("\nAudit passed. See README.md for the tests and specs/ for every format and rule.");
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
