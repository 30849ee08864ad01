//! The `tally` subcommands that talk to a node: build and sign entries, submit them, read
//! private data, verify as a publisher, export and audit. Human output by default, JSON
//! with `--json`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};
use tally_audit::{Auditor, Pins, Report};
use tally_client::{Client, ClientError, Crawler, EntryResult, Verifier, read_key};
use tally_core::Hash;
use tally_core::codec::{List, Text};
use tally_core::entry::{Body, Entry, Genesis, Usage};
use tally_core::kinds::*;
use tally_core::sig::SigningKey;
use tally_core::tile::{TilePath, tile_width};
use tally_settlement::terms::{parse_amount, parse_terms};

pub type CliResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Output mode.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    pub fn value(&self, v: &Value, human: impl FnOnce() -> String) {
        if self.json {
            emit(&format!("{}\n", serde_json::to_string_pretty(v).expect("JSON values serialize")));
        } else {
            emit(&human());
        }
    }
}

/// Write a command's output to stdout. When whoever reads it has stopped reading (`tally
/// ... | head`, `| grep -q`), the command is done: it exits quietly with success rather
/// than panicking as `print!` does on a closed pipe. Any other write failure is an error.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("tally: cannot write the output: {e}");
        std::process::exit(1);
    }
}

#[derive(Debug, Deserialize)]
pub struct Info {
    pub origin: String,
    pub collective_key: String,
    pub asset_code: String,
    pub asset_scale: u8,
    pub size: u64,
    pub period: u32,
}

pub async fn info(client: &Client) -> CliResult<Info> {
    Ok(client.get_json("/v1/info").await?)
}

pub fn key(path: &Path) -> CliResult<SigningKey> {
    Ok(read_key(path)?)
}

pub fn parse_hash(text: &str) -> CliResult<Hash> {
    Ok(hex::decode(text).ok().and_then(|b| b.try_into().ok()).ok_or("expected 64 hex characters")?)
}

fn nonce() -> [u8; 16] {
    rand::random()
}

/// One line per result, for people.
pub fn describe(results: &[EntryResult]) -> String {
    let mut s = String::new();
    for r in results {
        let kind = r.kind.as_deref().unwrap_or("entry");
        match r.status.as_str() {
            "appended" | "duplicate" => {
                s.push_str(&format!("{kind} {}: seq {}", r.status, r.seq.unwrap_or(0)));
                if let Some(c) = &r.charge {
                    s.push_str(&format!(", charged {} (fee {})", c.amount, c.fee));
                    if !c.flags.is_empty() {
                        s.push_str(&format!(" [{}]", c.flags.join(", ")));
                    }
                }
                s.push('\n');
            }
            status => s.push_str(&format!(
                "{kind} {status}: {} — {}\n",
                r.code.as_deref().unwrap_or("?"),
                r.detail.as_deref().unwrap_or("")
            )),
        }
    }
    s
}

fn results_json(results: &[EntryResult]) -> Value {
    json!(
        results
            .iter()
            .map(|r| json!({
                "index": r.index, "status": r.status, "kind": r.kind, "seq": r.seq, "leaf_hash": r.leaf_hash,
                "time_ms": r.time_ms, "receipt_id": r.receipt_id, "code": r.code, "detail": r.detail,
                "charge": r.charge.as_ref().map(|c| json!({"contract": c.contract, "period": c.period, "amount": c.amount, "fee": c.fee, "flags": c.flags})),
            }))
            .collect::<Vec<_>>()
    )
}

/// Sign `body` with `key`, submit it, print the answer; fail if it was not logged.
pub async fn sign_and_submit(client: &Client, out: Out, key: &SigningKey, body: Body) -> CliResult<EntryResult> {
    let entry = Entry::sign(key, body)?;
    let results = client.submit(&[entry]).await?;
    out.value(&results_json(&results), || describe(&results));
    let r = results.into_iter().next().ok_or("no result")?;
    if !r.logged() {
        return Err(format!("refused: {}", r.code.clone().unwrap_or_default()).into());
    }
    Ok(r)
}

pub fn genesis_body(
    key: &SigningKey,
    origin: &str,
    name: &str,
    asset: &str,
    scale: u8,
    now_ms: u64,
) -> CliResult<Body> {
    Ok(Body::Genesis(Genesis {
        origin: Text::new(origin)?,
        collective_name: Text::new(name)?,
        collective_key: key.public_bytes(),
        asset_code: Text::new(asset)?,
        asset_scale: scale,
        created_ms: now_ms,
    }))
}

pub fn public_key(file: Option<&Path>, hex_key: Option<&str>) -> CliResult<[u8; 32]> {
    match (file, hex_key) {
        (Some(f), None) => Ok(key(f)?.public_bytes()),
        (None, Some(h)) => parse_hash(h),
        _ => Err("give exactly one of --participant-key FILE or --public HEX".into()),
    }
}

pub fn admit_body(id: u64, role: &str, name: &str, key: [u8; 32]) -> CliResult<Body> {
    Ok(Body::Admit(Admit {
        participant: id,
        role: Role::parse(role).ok_or("role is lab, publisher, auditor, witness or federated")?,
        key,
        name: Text::new(name)?,
    }))
}

#[allow(clippy::too_many_arguments)]
pub fn register_body(
    exact: Option<&str>,
    prefix: Option<&str>,
    articles: Option<u32>,
    words: u32,
    tier: &str,
    uniqueness_bps: u16,
    partners: &[String],
) -> CliResult<Body> {
    let pattern = match (exact, prefix) {
        (Some(u), None) => UrlPattern::exact(u)?,
        (None, Some(u)) => UrlPattern::prefix(u)?,
        _ => return Err("give exactly one of --exact URL or --prefix URL".into()),
    };
    let mut list = Vec::new();
    for p in partners {
        let (id, bps) = p.split_once(':').ok_or("a partner is ID:BPS, e.g. 13:3000")?;
        list.push(Partner { participant: id.parse()?, share_bps: bps.parse()? });
    }
    Ok(Body::Register(Register {
        articles: articles.unwrap_or(if pattern.kind == MatchKind::Exact { 1 } else { 1000 }),
        pattern,
        words,
        tier: Tier::parse(tier).ok_or("tier is premium, standard or commodity")?,
        uniqueness_bps,
        partners: List::new(list)?,
        nonce: nonce(),
    }))
}

pub fn contract_body(terms_file: &Path, scale: u8) -> CliResult<(Hash, Body)> {
    let text = std::fs::read_to_string(terms_file).map_err(|e| format!("{}: {e}", terms_file.display()))?;
    let terms = parse_terms(&text, scale)?;
    Ok((terms.id(), Body::Contract(terms)))
}

pub fn deposit_body(to: u64, amount: &str, reference: &str, scale: u8) -> CliResult<Body> {
    Ok(Body::Deposit(Deposit {
        participant: to,
        amount: parse_amount(amount, scale)?,
        reference: Text::new(reference)?,
    }))
}

pub fn close_body(period: u32, cutoff_ms: u64, payout_min: &str, scale: u8) -> CliResult<Body> {
    Ok(Body::ClosePeriod(ClosePeriod { period, cutoff_ms, payout_min: parse_amount(payout_min, scale)? }))
}

pub fn payout_body(period: u32, to: u64, confirm: Option<&str>, fail: Option<&str>) -> CliResult<Body> {
    let outcome = match (confirm, fail) {
        (Some(r), None) => PayoutOutcome::Confirmed { reference: Text::new(r)? },
        (None, Some(r)) => PayoutOutcome::Failed { reason: Text::new(r)? },
        _ => return Err("give exactly one of --confirm REFERENCE or --fail REASON".into()),
    };
    Ok(Body::PayoutResult(PayoutResult { period, participant: to, outcome }))
}

/// Sign a receipt per URL and submit them as a crawler would.
pub async fn submit_receipts(
    out: Out,
    mut crawler: Crawler,
    usage: &str,
    urls: &[String],
    now_ms: u64,
) -> CliResult<Vec<EntryResult>> {
    let usage = Usage::parse(usage).ok_or("usage is ai-train, ai-input, ai-index or search")?;
    for url in urls {
        crawler.receipt(url, url.as_bytes(), usage, now_ms)?;
    }
    let results = crawler.flush().await?;
    out.value(&results_json(&results), || describe(&results));
    Ok(results)
}

/// A signed GET printed as JSON (both modes: the answer is data).
pub async fn signed_get(client: &Client, out: Out, key: &SigningKey, path: &str) -> CliResult<Value> {
    let v: Value = client.get_signed(key, path).await?;
    out.value(&v, || format!("{}\n", serde_json::to_string_pretty(&v).expect("JSON")));
    Ok(v)
}

/// Publisher verification of a statement.
pub async fn verify(
    out: Out,
    verifier: &Verifier,
    key: &SigningKey,
    party: u64,
    period: u32,
    state: &Path,
) -> CliResult<()> {
    let (cp, lines) = verifier.verify_statement(key, party, period).await?;
    let v = json!({"checkpoint_size": cp.size, "root": hex::encode(cp.root), "lines_verified": lines.len(), "state": state.display().to_string()});
    out.value(&v, || {
        format!(
            "checkpoint {} verified under the pinned key and consistent with the last one kept in {};\n\
             {} statement lines: every entry's signatures check and every receipt is included under it\n",
            cp.size,
            state.display(),
            lines.len()
        )
    });
    Ok(())
}

/// Download an export: entries.bin, checkpoints/<size>.note, and the tiles and bundles at
/// the newest checkpoint under tiles/.
pub async fn export(client: &Client, key: &SigningKey, dir: &Path) -> CliResult<(u64, usize, usize)> {
    std::fs::create_dir_all(dir.join("checkpoints"))?;
    let notes = client.checkpoint_notes().await?;
    let mut newest = 0;
    for note in &notes {
        let size: u64 = note.lines().nth(1).and_then(|l| l.parse().ok()).ok_or("a checkpoint without a size line")?;
        newest = newest.max(size);
        std::fs::write(dir.join("checkpoints").join(format!("{size}.note")), note)?;
    }
    // Written as it arrives: the export is as large as the ledger.
    let mut response = client.get_signed_response(key, "/v1/export?from=0").await?;
    let path = dir.join("entries.bin");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    while let Some(chunk) = response.chunk().await.map_err(|e| ClientError::Network(e.to_string()))? {
        std::io::Write::write_all(&mut file, &chunk)?;
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let mut tiles = 0;
    for path in tile_paths(newest) {
        let data = client.get_bytes(&format!("/{path}")).await?;
        let file = dir.join("tiles").join(&path);
        std::fs::create_dir_all(file.parent().expect("tile paths have parents"))?;
        std::fs::write(file, data)?;
        tiles += 1;
    }
    // Counted by reading it back, record by record: a cut download is an error here.
    let mut entries = 0;
    for record in tally_audit::ExportRecords::new(std::io::BufReader::new(std::fs::File::open(&path)?)) {
        record?;
        entries += 1;
    }
    Ok((entries, notes.len(), tiles))
}

/// Every tile and entry bundle of a tree of `size`.
pub fn tile_paths(size: u64) -> Vec<String> {
    let mut out = Vec::new();
    for level in 0..8u8 {
        let mut any = false;
        for index in 0.. {
            let width = tile_width(level, index, size);
            if width == 0 {
                break;
            }
            any = true;
            out.push(TilePath::Hashes { level, index, width }.render());
            if level == 0 {
                out.push(TilePath::Entries { index, width }.render());
            }
        }
        if !any {
            break;
        }
    }
    out
}

/// Audit an export directory, with the replayed state in a scratch directory made inside
/// `scratch` (or inside `dir`).
pub fn audit_dir(dir: &Path, scratch: Option<&Path>, pins: Pins, progress: bool) -> CliResult<Report> {
    let mut notes = Vec::new();
    for f in std::fs::read_dir(dir.join("checkpoints"))? {
        notes.push(std::fs::read_to_string(f?.path())?);
    }
    // The tiles' names now, their bytes as the replay reaches each; the records one by
    // one: the export is as large as the ledger, and the audit's memory is not.
    let mut paths = Vec::new();
    let tiles_dir = dir.join("tiles");
    if tiles_dir.exists() {
        collect_tiles(&tiles_dir, &tiles_dir, &mut paths)?;
    }
    let file = std::fs::File::open(dir.join("entries.bin"))?;
    let total = file.metadata()?.len();
    let records = tally_audit::ExportRecords::new(std::io::BufReader::with_capacity(1 << 20, file));
    // The replayed settlement state grows with the ledger (a charge record per receipt):
    // it goes to a scratch database (inside the export directory unless told otherwise),
    // removed when the audit ends.
    let parent = scratch.unwrap_or(dir);
    let scratch = tempfile::Builder::new().prefix(".audit-state-").tempdir_in(parent).map_err(|e| {
        format!(
            "cannot make the audit's scratch state in {}: {e} (give --scratch DIR on a writable disk)",
            parent.display()
        )
    })?;
    let state = tally_ledger::ScratchState::create(&scratch.path().join("state"))?;
    let auditor = Auditor::with_tiles(pins, notes, paths, Box::new(tally_audit::TileDir(tiles_dir)), state)
        .map_err(|e| format!("the auditor's state store: {e}"))?;
    Ok(audit_records(auditor, records, total, progress)?)
}

/// The paths of the files under `dir`, relative to `root`, with `/` separators.
fn collect_tiles(root: &Path, dir: &Path, out: &mut Vec<String>) -> CliResult<()> {
    for f in std::fs::read_dir(dir)? {
        let path = f?.path();
        if path.is_dir() {
            collect_tiles(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root)?.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

/// Replay an export's records as they are read, with a progress line on a terminal (by
/// bytes of the export's `total`). `Err` if the export is cut or unreadable.
pub fn audit_records<R: std::io::Read, S: tally_settlement::ApplyWrites>(
    mut auditor: Auditor<S>,
    mut records: tally_audit::ExportRecords<R>,
    total: u64,
    progress: bool,
) -> Result<Report, String> {
    use std::io::{IsTerminal, Write};
    let show = progress && std::io::stderr().is_terminal();
    let mut i = 0u64;
    while let Some(record) = records.next() {
        let (leaf, entry) = record?;
        if !auditor.push(&leaf, &entry) {
            break;
        }
        if show && i.is_multiple_of(4096) {
            let done = (records.offset().min(total) * 40 / total.max(1)) as usize;
            eprint!("\raudit [{}{}] {i} entries", "#".repeat(done), " ".repeat(40 - done));
            let _ = std::io::stderr().flush();
        }
        i += 1;
    }
    if show {
        eprintln!("\raudit [{}] {i} entries", "#".repeat(40));
    }
    Ok(auditor.finish())
}

/// Where a command keeps a publisher's verified checkpoint by default.
pub fn default_state_dir(party: u64) -> PathBuf {
    std::env::temp_dir().join(format!("tally-verify-{party}"))
}
