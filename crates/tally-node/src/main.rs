//! The `tally` command: run a node, and act as the collective, a lab, a publisher or an
//! auditor against one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;
use tally_audit::Pins;
use tally_client::Client;
use tally_core::sig::PublicKey;
use tally_node::cli::{self, CliResult, Out};
use tally_node::{FileConfig, Node};

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Tally: a verifiable ledger for collective licensing of content to AI labs",
    long_about = "Tally: a verifiable ledger for collective licensing of content to AI labs.\n\n\
                  Start with `tally demo`. Commands that talk to a node take --node (or TALLY_NODE) and the\n\
                  acting participant's key file (--key); amounts are in whole units of the ledger's asset."
)]
struct Cli {
    /// The node's base URL.
    #[arg(long, global = true, env = "TALLY_NODE", default_value = "http://127.0.0.1:8700")]
    node: String,
    /// Print JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: the HTTP API over a ledger on embedded RocksDB.
    ///
    /// Settings come from flags, then TALLY_* environment variables, then the config file
    /// (TOML; see specs/api.md), then defaults.
    Node {
        /// Data directory (created if missing).
        #[arg(long, env = "TALLY_DATA")]
        data: Option<PathBuf>,
        /// TOML config file.
        #[arg(long, env = "TALLY_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:8700].
        #[arg(long, env = "TALLY_LISTEN")]
        listen: Option<SocketAddr>,
        /// The collective's key file (hex seed) [default: <data>/collective.key].
        #[arg(long, env = "TALLY_KEY_FILE")]
        key_file: Option<PathBuf>,
    },
    /// Run a whole market on a fresh node and audit it: the first thing to try.
    Demo {
        /// Keep the ledger here (an empty or new directory) instead of a temporary one.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Receipts each of the two labs' crawlers submits.
        #[arg(long, default_value_t = 5_000)]
        receipts: usize,
        /// Keep the node running after the demo until Ctrl-C.
        #[arg(long)]
        serve: bool,
    },
    /// Make a new Ed25519 key file (mode 0600) and print its public key.
    Keygen {
        /// Where to write the key; refuses to overwrite.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print RFC 9421 signature headers for a GET of URL, for `curl -H @file`.
    SignRequest {
        #[arg(long)]
        key: PathBuf,
        /// The full URL, e.g. http://127.0.0.1:8700/v1/me
        url: String,
    },
    /// Collective: start the ledger (the node must run with the same key).
    Genesis {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        origin: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "USD")]
        asset: String,
        /// Decimal places of the asset's minor unit.
        #[arg(long, default_value_t = 6)]
        scale: u8,
    },
    /// Collective: admit a participant.
    Admit {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        id: u64,
        /// lab, publisher, auditor, witness or federated
        #[arg(long)]
        role: String,
        #[arg(long)]
        name: String,
        /// The participant's key file...
        #[arg(long)]
        participant_key: Option<PathBuf>,
        /// ...or its public key as hex.
        #[arg(long)]
        public: Option<String>,
    },
    /// Publisher: register content (an exact URL or a URL prefix).
    Register {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        exact: Option<String>,
        #[arg(long)]
        prefix: Option<String>,
        /// Articles a prefix covers (1 for an exact URL).
        #[arg(long)]
        articles: Option<u32>,
        /// Words per article.
        #[arg(long)]
        words: u32,
        /// premium, standard or commodity
        #[arg(long, default_value = "standard")]
        tier: String,
        #[arg(long, default_value_t = 5000)]
        uniqueness_bps: u16,
        /// A syndication partner and its share, ID:BPS (repeatable).
        #[arg(long)]
        partner: Vec<String>,
    },
    /// Collective: record a contract from a JSON terms document (specs/settlement.md).
    Contract {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        terms: PathBuf,
    },
    /// Lab: accept (countersign) a contract.
    Accept {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        contract: String,
    },
    /// Collective: record a deposit into a lab's escrow (or a federated collective's).
    Deposit {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        to: u64,
        /// In whole units, e.g. 250.00
        #[arg(long)]
        amount: String,
        #[arg(long)]
        reference: String,
    },
    /// Lab: sign a receipt for each URL fetched and submit them.
    Submit {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        lab: u64,
        #[arg(long)]
        contract: String,
        #[arg(long, default_value = "ai-train")]
        usage: String,
        urls: Vec<String>,
    },
    /// Lab: what a fetch would cost now.
    Quote {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        lab: u64,
        #[arg(long)]
        contract: String,
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "ai-train")]
        usage: String,
    },
    /// A participant's statement for a period (every receipt that credited it).
    Statement {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        party: u64,
        #[arg(long)]
        period: u32,
    },
    /// Publisher: verify the statement against a checkpoint signed by the pinned key and
    /// consistent with the last one verified.
    Verify {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        party: u64,
        #[arg(long)]
        period: u32,
        /// The collective's public key (hex), from a source you trust.
        #[arg(long)]
        pin: String,
        /// The log's origin (its checkpoints' first line), from the same source as the pin.
        #[arg(long)]
        origin: String,
        /// Where the last verified checkpoint (and any evidence) is kept.
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Collective: close the open period.
    ClosePeriod {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        period: u32,
        /// Cutoff, unix ms [default: now].
        #[arg(long)]
        cutoff: Option<u64>,
        /// Smallest payout, in whole units.
        #[arg(long, default_value = "0")]
        payout_min: String,
    },
    /// Collective: confirm or fail a payout.
    Payout {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        period: u32,
        #[arg(long)]
        to: u64,
        #[arg(long)]
        confirm: Option<String>,
        #[arg(long)]
        fail: Option<String>,
    },
    /// Auditor: download the full export (entries, checkpoints, tiles) to a directory.
    Export {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Auditor: replay an export (a directory, or the node's export with --key) and check
    /// everything; exits non-zero on any mismatch.
    Audit {
        /// An export directory from `tally export`...
        #[arg(long)]
        dir: Option<PathBuf>,
        /// ...or the auditor's key, to export from the node first.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The collective's public key (hex), from a source you trust.
        #[arg(long)]
        pin: String,
        /// The log's origin (its checkpoints' first line), from the same source as the pin.
        #[arg(long)]
        origin: String,
        /// Where to keep the replayed settlement state while auditing (a directory on a
        /// writable disk; removed after) [default: inside the export directory].
        #[arg(long, value_name = "DIR")]
        scratch: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A node logs its requests' outcomes at info; the other commands print their own
    // output and log only warnings. TALLY_LOG overrides either.
    let default = if matches!(cli.command, Command::Node { .. }) { "info,tower_http=warn" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG").unwrap_or_else(|_| default.into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tally: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tally: {e}");
            ExitCode::FAILURE
        }
    }
}

fn now_ms() -> u64 {
    (tally_ledger::system_clock())()
}

async fn run(cli: Cli) -> CliResult<ExitCode> {
    let out = Out { json: cli.json };
    let client = Client::new(&cli.node);
    let scale = || async { cli::info(&client).await.map(|i| i.asset_scale) };
    match cli.command {
        Command::Node { data, config, listen, key_file } => {
            let flags = FileConfig { data, listen, key_file, ..FileConfig::default() };
            let file = match &config {
                Some(path) => FileConfig::load(path)?,
                None => FileConfig::default(),
            };
            let node = Node::start(flags.or(file).resolve()?).await?;
            eprintln!("tally node listening on http://{}", node.addr);
            tally_node::shutdown_signal().await;
            eprintln!("tally: shutting down (finishing in-flight batches, signing a final checkpoint)");
            node.shutdown().await;
        }
        Command::Demo { data, receipts, serve } => tally_node::demo::run(data, receipts, serve).await?,
        Command::Keygen { out: path } => {
            let key = tally_node::config::write_new_key(&path)?;
            let public = hex::encode(key.public_bytes());
            out.value(&json!({"file": path.display().to_string(), "public_key": public}), || format!("{public}\n"));
        }
        Command::SignRequest { key, url } => {
            for (name, value) in tally_node::auth::sign_get(&cli::key(&key)?, &url, 60)? {
                cli::emit(&format!("{name}: {value}\n"));
            }
        }
        Command::Genesis { key, origin, name, asset, scale } => {
            let k = cli::key(&key)?;
            cli::sign_and_submit(&client, out, &k, cli::genesis_body(&k, &origin, &name, &asset, scale, now_ms())?)
                .await?;
        }
        Command::Admit { key, id, role, name, participant_key, public } => {
            let public = cli::public_key(participant_key.as_deref(), public.as_deref())?;
            cli::sign_and_submit(&client, out, &cli::key(&key)?, cli::admit_body(id, &role, &name, public)?).await?;
        }
        Command::Register { key, exact, prefix, articles, words, tier, uniqueness_bps, partner } => {
            let body = cli::register_body(
                exact.as_deref(),
                prefix.as_deref(),
                articles,
                words,
                &tier,
                uniqueness_bps,
                &partner,
            )?;
            cli::sign_and_submit(&client, out, &cli::key(&key)?, body).await?;
        }
        Command::Contract { key, terms } => {
            let (id, body) = cli::contract_body(&terms, scale().await?)?;
            cli::sign_and_submit(&client, out, &cli::key(&key)?, body).await?;
            if !out.json {
                cli::emit(&format!("contract id {}\n", hex::encode(id)));
            }
        }
        Command::Accept { key, contract } => {
            let body =
                tally_core::entry::Body::Accept(tally_core::kinds::Accept { contract_id: cli::parse_hash(&contract)? });
            cli::sign_and_submit(&client, out, &cli::key(&key)?, body).await?;
        }
        Command::Deposit { key, to, amount, reference } => {
            let body = cli::deposit_body(to, &amount, &reference, scale().await?)?;
            cli::sign_and_submit(&client, out, &cli::key(&key)?, body).await?;
        }
        Command::Submit { key, lab, contract, usage, urls } => {
            if urls.is_empty() {
                return Err("give the URLs fetched".into());
            }
            let contract = cli::parse_hash(&contract)?;
            let crawler = tally_client::Crawler::new(client.clone(), cli::key(&key)?, lab, contract);
            cli::submit_receipts(out, crawler, &usage, &urls, now_ms()).await?;
        }
        Command::Quote { key, lab, contract, url, usage } => {
            let path = format!("/v1/quote?lab={lab}&contract={contract}&url={url}&usage={usage}");
            cli::signed_get(&client, out, &cli::key(&key)?, &path).await?;
        }
        Command::Statement { key, party, period } => {
            cli::signed_get(&client, out, &cli::key(&key)?, &format!("/v1/parties/{party}/statement?period={period}"))
                .await?;
        }
        Command::Verify { key, party, period, pin, origin, state } => {
            let pin = PublicKey::from_bytes(&cli::parse_hash(&pin)?)?;
            let state = state.unwrap_or_else(|| cli::default_state_dir(party));
            let verifier = tally_client::Verifier::new(client.clone(), &origin, pin, &state);
            cli::verify(out, &verifier, &cli::key(&key)?, party, period, &state).await?;
        }
        Command::ClosePeriod { key, period, cutoff, payout_min } => {
            let body = cli::close_body(period, cutoff.unwrap_or_else(now_ms), &payout_min, scale().await?)?;
            cli::sign_and_submit(&client, out, &cli::key(&key)?, body).await?;
        }
        Command::Payout { key, period, to, confirm, fail } => {
            let body = cli::payout_body(period, to, confirm.as_deref(), fail.as_deref())?;
            cli::sign_and_submit(&client, out, &cli::key(&key)?, body).await?;
        }
        Command::Export { key, out: dir } => {
            let (entries, checkpoints, tiles) = cli::export(&client, &cli::key(&key)?, &dir).await?;
            out.value(&json!({"dir": dir.display().to_string(), "entries": entries, "checkpoints": checkpoints, "tiles": tiles}), || {
                format!("exported {entries} entries, {checkpoints} checkpoints and {tiles} tiles to {}\n", dir.display())
            });
        }
        Command::Audit { dir, key, pin, origin, scratch } => {
            let pins = Pins { origin, key: PublicKey::from_bytes(&cli::parse_hash(&pin)?)? };
            let temp;
            let dir = match (dir, key) {
                (Some(d), None) => d,
                (None, Some(k)) => {
                    temp = tempfile::tempdir()?;
                    cli::export(&client, &cli::key(&k)?, temp.path()).await?;
                    temp.path().to_path_buf()
                }
                _ => return Err("give --dir DIR (an export) or --key FILE (to export from --node)".into()),
            };
            let report =
                tokio::task::spawn_blocking(move || cli::audit_dir(&dir, scratch.as_deref(), pins, true)).await??;
            let value = serde_json::to_value(&report)?;
            out.value(&value, || report.summary());
            if !report.ok {
                return Ok(ExitCode::from(2));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
