//! The `tally` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tally_node::{FileConfig, Node};

#[derive(Parser)]
#[command(name = "tally", version, about = "Tally: a verifiable ledger for collective licensing of content to AI labs")]
struct Cli {
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
    /// Make a new Ed25519 key file (mode 0600) and print its public key.
    Keygen {
        /// Where to write the key; refuses to overwrite.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print RFC 9421 signature headers for a GET of URL, signed with a key file, for
    /// `curl -H @file` (valid 60 s, single use).
    SignRequest {
        /// The participant's key file.
        #[arg(long)]
        key: PathBuf,
        /// The full URL, e.g. http://127.0.0.1:8700/v1/me
        url: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG").unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Keygen { out } => {
            let key = tally_node::config::write_new_key(&out)?;
            println!("{}", hex::encode(key.public_bytes()));
            Ok(())
        }
        Command::SignRequest { key, url } => {
            let key = tally_node::config::read_key(&key)?;
            for (name, value) in tally_node::auth::sign_get(&key, &url, 60)? {
                println!("{name}: {value}");
            }
            Ok(())
        }
        Command::Node { data, config, listen, key_file } => {
            let flags = FileConfig { data, listen, key_file, ..FileConfig::default() };
            let file = match &config {
                Some(path) => FileConfig::load(path)?,
                None => FileConfig::default(),
            };
            let config = flags.or(file).resolve()?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async move {
                let node = Node::start(config).await?;
                eprintln!("tally node listening on http://{}", node.addr);
                shutdown_signal().await;
                eprintln!("tally: shutting down (finishing in-flight batches, signing a final checkpoint)");
                node.shutdown().await;
                Ok(())
            })
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
