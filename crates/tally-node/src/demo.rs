//! `tally demo`: a whole market on one node, driven over HTTP like real participants would.
//!
//! It starts a node on embedded RocksDB, then — only through the node's API — sets up a
//! collective with publishers (a few thousand registered articles across tiers, a
//! syndication deal, an opt-out) and two labs (a per-article transactional licence and a
//! blanket licence), funds escrow, lets both labs' crawlers submit signed receipts
//! concurrently, closes the period, pays out, has a publisher verify its statement, and
//! runs a full audit replay of the node's export. Everything printed comes from the node.

use std::path::PathBuf;
use std::time::Instant;

use serde::Deserialize;
use tally_audit::Pins;
use tally_client::{Client, Crawler, EntryResult, Verifier};
use tally_core::entry::{Body, Entry, Usage};
use tally_core::kinds::*;
use tally_core::sig::SigningKey;
use tally_settlement::terms::parse_terms;

use crate::cli::{self, CliResult};
use crate::{FileConfig, Node};

const ORIGIN: &str = "demo.tally.example/collective";
const DAY_MS: u64 = 86_400_000;
/// Publishers: id, name, site, articles registered one by one, words, tier.
const PUBLISHERS: [(u64, &str, &str, u32, u32, Tier); 4] = [
    (10, "Daily Planet", "https://planet.example/", 1_500, 850, Tier::Standard),
    (11, "Science Journal", "https://journal.example/", 600, 4_200, Tier::Premium),
    (12, "Recipe Hub", "https://recipes.example/", 900, 400, Tier::Commodity),
    (13, "Wire Service", "https://wire.example/", 300, 600, Tier::Standard),
];
const NORTHWIND: u64 = 1;
const BLUEFIN: u64 = 2;
const AUDITOR: u64 = 90;

fn key(id: u64) -> SigningKey {
    // Deterministic demo keys, so a reader can re-run the printed commands.
    SigningKey::from_seed(&[id as u8; 32])
}

fn now_ms() -> u64 {
    (tally_ledger::system_clock())()
}

async fn submit_all(client: &Client, entries: Vec<Entry>) -> CliResult<Vec<EntryResult>> {
    let mut results = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(4096) {
        let r = client.submit(chunk).await?;
        if let Some(bad) = r.iter().find(|r| !r.logged()) {
            return Err(format!("set-up entry refused: {:?} {:?}", bad.code, bad.detail).into());
        }
        results.extend(r);
    }
    Ok(results)
}

fn signed(key: &SigningKey, body: Body) -> Entry {
    Entry::sign(key, body).expect("demo entries are well-formed")
}

fn crawl_url(rng: &mut impl rand::Rng) -> String {
    match rng.gen_range(0..20) {
        0..=7 => format!(
            "https://planet.example/{}/{}",
            ["news", "politics", "sport"][rng.gen_range(0..3)],
            rng.gen_range(0..1_500)
        ),
        8..=9 => format!("https://planet.example/wire/{}", rng.gen_range(0..400)),
        10..=12 => format!("https://journal.example/papers/{}", rng.gen_range(0..600)),
        13..=16 => format!("https://recipes.example/dishes/{}", rng.gen_range(0..900)),
        17..=18 => format!("https://wire.example/feed/{}", rng.gen_range(0..300)),
        _ => format!("https://unregistered.example/post/{}", rng.gen_range(0..5_000)),
    }
}

/// An amount the node printed (whole units, 6 places) as minor units.
fn minor(text: &str) -> i128 {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text),
    };
    let v = tally_settlement::terms::parse_amount(digits, 6).map_or(0, i128::from);
    if negative { -v } else { v }
}

#[derive(Deserialize)]
struct Balances {
    accounts: Vec<Balance>,
}

#[derive(Deserialize)]
struct Balance {
    account: String,
    balance: String,
}

/// Run the demo; `receipts` per lab.
pub async fn run(data: Option<PathBuf>, receipts: usize, serve: bool) -> CliResult<()> {
    let started = Instant::now();
    let temp;
    let dir = match data {
        Some(d) => d,
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let key_file = dir.join("collective.key");
    if key_file.exists() || dir.join("ledger").exists() {
        return Err(format!("{} already holds a ledger; give an empty --data directory", dir.display()).into());
    }
    let collective = crate::config::write_new_key(&key_file)?;
    let config = FileConfig {
        data: Some(dir.join("ledger")),
        listen: Some("127.0.0.1:0".parse()?),
        key_file: Some(key_file.clone()),
        checkpoint_interval_ms: Some(200),
        ..FileConfig::default()
    }
    .resolve()?;
    let node = Node::start(config).await?;
    let base = format!("http://{}", node.addr);
    let client = Client::new(&base);
    println!("Tally demo: a node on embedded RocksDB at {}, listening on {base}\n", dir.join("ledger").display());

    // 1. The collective, its members and licensees: all as signed entries over HTTP.
    let now = now_ms();
    let mut setup = vec![signed(
        &collective,
        cli::genesis_body(&collective, ORIGIN, "Demo Publishers' Collective", "USD", 6, now)?,
    )];
    let admit = |id: u64, role: &str, name: &str| {
        signed(&collective, cli::admit_body(id, role, name, key(id).public_bytes()).expect("valid"))
    };
    for (id, name, ..) in PUBLISHERS {
        setup.push(admit(id, "publisher", name));
    }
    setup.push(admit(NORTHWIND, "lab", "Northwind AI"));
    setup.push(admit(BLUEFIN, "lab", "Bluefin Labs"));
    setup.push(admit(AUDITOR, "auditor", "Ledger Audit LLP"));
    let mut articles = 0;
    for (id, _, site, count, words, tier) in PUBLISHERS {
        // A site-wide prefix, and every article registered on its own with its word count.
        setup.push(signed(
            &key(id),
            cli::register_body(None, Some(site), Some(count), words, tier.as_str(), 6_000, &[])?,
        ));
        for n in 0..count {
            let section = if id == 10 { ["news/", "politics/", "sport/"][n as usize % 3] } else { "" };
            let path = match id {
                11 => format!("papers/{n}"),
                12 => format!("dishes/{n}"),
                13 => format!("feed/{n}"),
                _ => format!("{section}{}", n / 3 * 3 + n % 3),
            };
            let words = words / 2 + (n * 37) % words;
            setup.push(signed(
                &key(id),
                cli::register_body(Some(&format!("{site}{path}")), None, None, words, tier.as_str(), 6_000, &[])?,
            ));
            articles += 1;
        }
    }
    // Syndication: the Daily Planet runs Wire Service copy under /wire/ and shares 30%.
    setup.push(signed(
        &key(10),
        cli::register_body(
            None,
            Some("https://planet.example/wire/"),
            Some(400),
            600,
            "standard",
            2_000,
            &["13:3000".into()],
        )?,
    ));
    // An opt-out: Recipe Hub reserves training use.
    setup.push(signed(
        &key(12),
        Body::Reserve(Reserve {
            pattern: UrlPattern::prefix("https://recipes.example/")?,
            usage: Usage::AiTrain,
            reserved: true,
            nonce: [0; 16],
        }),
    ));
    let (start, end) = (now - DAY_MS, now + 30 * DAY_MS);
    let per_article = parse_terms(
        &format!(
            r#"{{"lab": {NORTHWIND}, "name": "Northwind per-article", "scope": ["ai-train", "ai-input"], "start_ms": {start}, "end_ms": {end},
            "licence": "transactional", "basis": "once-per-article",
            "rate": {{"per_article": "0.0015", "per_kwords": "0.0008"}},
            "tier_multipliers": {{"premium": "2", "standard": "1", "commodity": "0.5"}},
            "rate_table": [{{"prefix": "https://planet.example/politics/", "per_article": "0.003", "per_kwords": "0.0008"}}],
            "free_paths": [{{"prefix": "https://planet.example/sport/"}}],
            "credit_limit": "25", "fee_bps": 1500, "distribution": "per-usage", "unregistered_words": 700}}"#
        ),
        6,
    )?;
    let blanket = parse_terms(
        &format!(
            r#"{{"lab": {BLUEFIN}, "name": "Bluefin blanket", "scope": ["ai-input", "search"], "start_ms": {start}, "end_ms": {end},
            "licence": {{"blanket": {{"fee": "3100"}}}}, "basis": "every-fetch", "rate": {{}},
            "fee_bps": 1500, "distribution": {{"hybrid": {{"base_bps": 4000}}}}}}"#
        ),
        6,
    )?;
    let contracts = [(NORTHWIND, per_article.id()), (BLUEFIN, blanket.id())];
    setup.push(signed(&collective, Body::Contract(per_article)));
    setup.push(signed(&collective, Body::Contract(blanket)));
    for (lab, contract) in contracts {
        setup.push(signed(&key(lab), Body::Accept(Accept { contract_id: contract })));
        setup.push(signed(&collective, cli::deposit_body(lab, "5000", &format!("wire-{lab}"), 6)?));
    }
    let n = setup.len();
    submit_all(&client, setup).await?;
    println!("1. Set-up: {n} signed entries over HTTP");
    println!("   genesis (origin {ORIGIN}, USD at 6 decimals); 4 publishers registering {articles} articles one");
    println!("   by one (premium, standard, commodity), a syndication deal (Wire Service gets 30% of the Daily");
    println!("   Planet's /wire/), an opt-out (Recipe Hub reserves ai-train), an auditor, and two labs with");
    println!("   $5,000 escrow each:");
    println!("     Northwind AI  per-article, once per article: $0.0015 + $0.0008/1,000 words; premium x2,");
    println!("                   commodity x0.5; politics at $0.003; sport free");
    println!("     Bluefin Labs  blanket: $3,100 for 31 days, distributed 40% equally and 60% by use");

    // 2. Crawlers.
    let t = Instant::now();
    let mut handles = Vec::new();
    for (lab, contract) in contracts {
        let client = client.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(lab);
            let mut crawler = Crawler::new(client, key(lab), lab, contract);
            let usages: &[Usage] =
                if lab == NORTHWIND { &[Usage::AiTrain, Usage::AiInput] } else { &[Usage::AiInput, Usage::Search] };
            let mut all = Vec::new();
            for i in 0..receipts {
                let url = crawl_url(&mut rng);
                crawler.receipt(&url, url.as_bytes(), usages[i % usages.len()], now_ms())?;
                if crawler.pending() == 500 {
                    all.extend(crawler.flush().await?);
                }
            }
            all.extend(crawler.flush().await?);
            Ok::<_, tally_client::ClientError>(all)
        }));
    }
    let mut totals = Vec::new();
    for h in handles {
        totals.push(h.await??);
    }
    let elapsed = t.elapsed().as_secs_f64();
    println!("\n2. Two crawlers submitted signed receipts concurrently; each was priced and split as it landed:");
    for ((lab, _), results) in contracts.iter().zip(&totals) {
        let name = if *lab == NORTHWIND { "Northwind AI" } else { "Bluefin Labs" };
        let count = |s: &str| results.iter().filter(|r| r.status == s).count();
        let flagged = |f: &str| {
            results.iter().filter(|r| r.charge.as_ref().is_some_and(|c| c.flags.iter().any(|x| x == f))).count()
        };
        println!(
            "   {name:<14} {} settled ({} free path, {} repeat fetches, {} unregistered), {} refused (opt-out)",
            count("appended"),
            flagged("free"),
            flagged("repeat"),
            flagged("unregistered"),
            count("rejected")
        );
    }
    let total: usize = totals.iter().map(|r| r.len()).sum();
    println!("   {total} receipts in {elapsed:.2} s over HTTP ({:.0}/s)", total as f64 / elapsed);
    // A crawler that lost its answers resends the same signed receipts: the node answers
    // with the originals and charges nothing more.
    let mut retrying = Crawler::new(client.clone(), key(NORTHWIND), NORTHWIND, contracts[0].1);
    for i in 0..3 {
        retrying.receipt(&format!("https://journal.example/papers/{}", 700 + i), b"paper", Usage::AiInput, now_ms())?;
    }
    let resend = retrying.pending_entries().to_vec();
    let first = retrying.flush().await?;
    let second = client.submit(&resend).await?;
    for (a, b) in first.iter().zip(&second) {
        println!(
            "   retry of a receipt: first {} at seq {} charged {}, then {} at seq {} (same charge, not charged again)",
            a.status,
            a.seq.unwrap_or(0),
            a.charge.as_ref().map_or("-", |c| c.amount.as_str()),
            b.status,
            b.seq.unwrap_or(0)
        );
    }

    println!("   live balances, read by each party with its own signed request:");
    for (lab, name) in [(NORTHWIND, "Northwind AI"), (BLUEFIN, "Bluefin Labs")] {
        let b: Balances = client.get_signed(&key(lab), &format!("/v1/parties/{lab}/balances")).await?;
        let escrow =
            b.accounts.iter().find(|a| a.account == format!("escrow:{lab}")).map_or("0", |a| a.balance.as_str());
        println!("     {name:<16} escrow  ${escrow}");
    }
    let mut earned_before = std::collections::BTreeMap::new();
    for (id, name, ..) in PUBLISHERS {
        let b: Balances = client.get_signed(&key(id), &format!("/v1/parties/{id}/balances")).await?;
        let earned: Vec<String> = b
            .accounts
            .iter()
            .filter(|a| a.balance != "0.000000")
            .map(|a| format!("{} ${}", a.account, a.balance))
            .collect();
        let total: i128 = b.accounts.iter().map(|a| minor(&a.balance)).sum();
        earned_before.insert(id, total);
        println!("     {name:<16} {}", if earned.is_empty() { "nothing yet".to_string() } else { earned.join(", ") });
    }

    // 3. Period close and payouts.
    let info = cli::info(&client).await?;
    let close = signed(&collective, cli::close_body(info.period, now_ms(), "1", 6)?);
    let close_result = client.submit(&[close]).await?.remove(0);
    let close_seq = close_result.seq.ok_or("close refused")?;
    println!(
        "\n3. The collective closed period {} (entry {close_seq}): the blanket fee accrued so far was",
        info.period
    );
    println!("   distributed (40% equally, 60% by use) and every publisher owed at least $1 got a payout:");
    #[derive(Deserialize)]
    struct Payouts {
        payouts: Vec<Payout>,
    }
    #[derive(Deserialize)]
    struct Payout {
        period: u32,
        amount: String,
    }
    let mut confirmations = Vec::new();
    for (id, name, ..) in PUBLISHERS {
        let p: Payouts = client.get_signed(&key(id), &format!("/v1/parties/{id}/payouts")).await?;
        if let Some(payout) = p.payouts.iter().find(|p| p.period == info.period) {
            let paid = minor(&payout.amount);
            let receipts = earned_before.get(&id).copied().unwrap_or(0);
            println!(
                "     {name:<16} receipts ${:>10} + blanket share ${:>10} = payout ${:>10}",
                tally_settlement::terms::format_amount(receipts, 6),
                tally_settlement::terms::format_amount(paid - receipts, 6),
                payout.amount
            );
            confirmations.push(signed(
                &collective,
                cli::payout_body(info.period, id, Some(&format!("ach-{}-{id}", info.period)), None)?,
            ));
        }
    }
    submit_all(&client, confirmations).await?;
    println!("   the collective confirmed each payout with its bank reference (the money left the ledger)");

    // 4. A publisher verifies its statement.
    let pinned = collective.public_key();
    let state = dir.join("publisher-10");
    // Wait for the checkpoint that covers everything so far (signed just after each group).
    let size = cli::info(&client).await?.size;
    for _ in 0..100 {
        let note = client.checkpoint_note().await?;
        if note.lines().nth(1).and_then(|l| l.parse::<u64>().ok()).is_some_and(|s| s >= size) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let verifier = Verifier::new(client.clone(), ORIGIN, pinned, &state);
    let (cp, lines) = verifier.verify_statement(&key(10), 10, info.period).await?;
    println!(
        "\n4. The Daily Planet verified its statement for period {}: checkpoint {} is signed by the pinned",
        info.period, cp.size
    );
    println!("   collective key; each of its {} receipt lines is validly signed and included under it", lines.len());
    println!("   (the verified checkpoint is kept in {} for the next consistency check)", state.display());

    // 5. A full audit replay.
    let export_dir = dir.join("export");
    let (entries, checkpoints, tiles) = cli::export(&client, &key(AUDITOR), &export_dir).await?;
    let report = cli::audit_dir(&export_dir, None, Pins { origin: ORIGIN.into(), key: pinned }, true)?;
    println!(
        "\n5. The auditor exported {entries} entries, {checkpoints} checkpoints and {tiles} tiles and replayed them:"
    );
    for line in report.summary().lines() {
        println!("   {line}");
    }
    if !report.ok {
        node.shutdown().await;
        return Err("the audit failed".into());
    }
    println!("\nDone in {:.1} s.", started.elapsed().as_secs_f64());
    if serve {
        println!("\nThe node keeps running on {base} (Ctrl-C to stop). Try, from another shell:");
    } else {
        println!("\nTo keep the node running, add --serve (and --data DIR to keep the ledger). Then try:");
    }
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys)?;
    for (id, name) in [(10, "planet"), (NORTHWIND, "northwind"), (AUDITOR, "auditor")] {
        std::fs::write(keys.join(format!("{name}.key")), hex::encode(key(id).seed()))?;
    }
    let k = keys.display();
    println!("   curl -s {base}/checkpoint");
    println!("   curl -s {base}/metrics | grep tally_entries");
    println!(
        "   tally sign-request --key {k}/planet.key {base}/v1/parties/10/payouts > h && curl -s -H @h {base}/v1/parties/10/payouts"
    );
    println!(
        "   tally --node {base} quote --key {k}/northwind.key --lab 1 --contract {} --url https://journal.example/papers/7",
        hex::encode(contracts[0].1)
    );
    println!(
        "   tally --node {base} verify --key {k}/planet.key --party 10 --period 0 --pin {} --origin {ORIGIN}",
        hex::encode(pinned.as_bytes())
    );
    println!(
        "   tally --node {base} audit --key {k}/auditor.key --pin {} --origin {ORIGIN}",
        hex::encode(pinned.as_bytes())
    );
    println!("   (the collective's key is {}/collective.key; participant keys are in {k})", dir.display());
    if serve {
        crate::shutdown_signal().await;
    }
    node.shutdown().await;
    Ok(())
}

use rand::SeedableRng;
