//! Tally's node: the HTTP API over one ledger (`specs/api.md`, `specs/openapi.json`).
//!
//! [`Node::start`] opens the ledger in the data directory with the collective's key and
//! serves: submission (`POST /v1/entries`), authenticated reads (RFC 9421 signatures by a
//! participant's key), the public C2SP tlog-tiles read API with proofs, the auditor's
//! export stream, and `/healthz`, `/readyz`, `/metrics`, `/openapi.json`.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod problem;
pub mod verify;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use tally_ledger::{Ledger, LedgerConfig};
use tokio::sync::oneshot;
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

pub use config::{FileConfig, NodeConfig};
use problem::Problem;

/// The OpenAPI 3.1 description the node serves at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../specs/openapi.json");

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub ledger: Ledger,
    pub config: NodeConfig,
    pub metrics: Arc<metrics::Metrics>,
    pub nonces: auth::ReplayCache,
    /// Where submissions' signatures are checked.
    pub verifier: verify::VerifyPool,
}

impl AppState {
    pub fn asset_scale(&self) -> u8 {
        self.ledger.asset_scale().unwrap_or(0)
    }

    pub fn asset_code(&self) -> String {
        self.ledger.genesis().map(|g| g.asset_code).unwrap_or_default()
    }
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("ledger: {0}")]
    Ledger(#[from] tally_ledger::LedgerError),
    #[error("cannot listen on {addr}: {error}")]
    Listen { addr: SocketAddr, error: std::io::Error },
    #[error("cannot start the verification threads: {0}")]
    Threads(std::io::Error),
}

async fn count_responses(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    state.metrics.responses.add(response.status().as_str(), 1);
    response
}

async fn overloaded(error: tower::BoxError) -> Problem {
    if error.is::<tower::timeout::error::Elapsed>() {
        Problem::unavailable("timeout", "the request took too long")
    } else if error.is::<tower::load_shed::error::Overloaded>() {
        Problem::unavailable("overloaded", "too many requests in progress; retry shortly")
    } else {
        tracing::error!(%error, "middleware failure");
        Problem::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }
}

/// The router over a shared state.
pub fn router(state: Arc<AppState>) -> Router {
    // `Router::layer` wraps every route separately, so the limit must share one semaphore
    // across them (a per-route limit would let each route have its own N requests).
    let limits = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(overloaded))
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(state.config.concurrent_requests_max))
        .timeout(Duration::from_millis(state.config.request_timeout_ms));
    Router::new()
        .route("/v1/entries", post(api::submit))
        .route("/v1/me", get(api::me))
        .route("/v1/balances", get(api::all_balances))
        .route("/v1/parties/{party}/balances", get(api::balances))
        .route("/v1/parties/{party}/history", get(api::history))
        .route("/v1/parties/{party}/statement", get(api::statement))
        .route("/v1/parties/{party}/payouts", get(api::payouts))
        .route("/v1/labs/{lab}/spend", get(api::spend))
        .route("/v1/quote", get(api::quote))
        .route("/v1/access", get(api::access))
        .route("/v1/export", get(api::export))
        .route("/v1/info", get(api::info))
        .route("/checkpoint", get(api::checkpoint))
        .route("/v1/checkpoints", get(api::checkpoints))
        .route("/tile/{*path}", get(api::tile))
        .route("/v1/proof/inclusion", get(api::inclusion))
        .route("/v1/proof/consistency", get(api::consistency))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/openapi.json", get(api::openapi))
        .fallback(api::not_found)
        // The submission handler enforces the configured body limit itself (with a
        // problem document); no other route reads a body.
        .layer(DefaultBodyLimit::disable())
        .layer(limits)
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_responses))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    pub addr: SocketAddr,
    state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Accept connections until `stopped`, then close idle ones and wait for in-flight
/// requests. At most `connections_max` connections are open at once (one more is closed as
/// it is accepted), and each must send a complete request head within the header timeout,
/// when it opens and again after every response, so neither slow senders nor idle
/// keep-alive connections can hold descriptors for long.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    (connections_max, header_timeout): (usize, Duration),
    state: Arc<AppState>,
    stopped: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    // HTTP/1.1 only: the automatic HTTP/2 detection reads the first bytes with no timeout,
    // which an idle connection would hold open forever.
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Connections not yet handed to hyper (waiting for their first byte) hold a watcher of
    // `graceful`, and the router with the ledger in it; this tells them to give up when the
    // server stops. A silent connection used to hold up shutdown for its whole header
    // timeout.
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(connections_max));
    tokio::pin!(stopped);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            state.metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            continue; // dropping the stream closes it
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let mut closing = closing_rx.clone();
        tokio::spawn(async move {
            // hyper's header timeout starts with the first byte; a connection that sends
            // nothing gets the same time to start, or until the server stops.
            let mut first = [0u8; 1];
            let started = tokio::select! {
                peeked = tokio::time::timeout(header_timeout, stream.peek(&mut first)) => matches!(peeked, Ok(Ok(1))),
                _ = closing.wait_for(|closing| *closing) => false,
            };
            if !started {
                drop(slot);
                return;
            }
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            // A connection's errors (a client gone, a header timeout) concern that client.
            let _ = watcher.watch(connection.into_owned()).await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    graceful.shutdown().await;
    Ok(())
}

impl Node {
    /// Open the ledger and start serving on `config.listen` (port 0 picks a free port).
    pub async fn start(config: NodeConfig) -> Result<Node, StartError> {
        Self::start_with_clock(config, None).await
    }

    /// [`Node::start`] with the sequencer's clock given (tests replaying dated scenarios).
    pub async fn start_with_clock(config: NodeConfig, clock: Option<tally_ledger::Clock>) -> Result<Node, StartError> {
        let key = config::read_key(&config.key_file)?;
        let mut ledger_config = LedgerConfig::new(Some(key));
        if let Some(clock) = clock {
            ledger_config.clock = clock;
        }
        ledger_config.checkpoint_interval_ms = config.checkpoint_interval_ms;
        ledger_config.min_free_bytes = config.min_free_bytes;
        let metrics = Arc::new(metrics::Metrics::default());
        let observer = metrics.clone();
        ledger_config.on_group = Some(Arc::new(move |group| observer.observe_group(group)));
        let observer = metrics.clone();
        ledger_config.on_sync = Some(Arc::new(move |sync| observer.observe_sync(sync)));
        std::fs::create_dir_all(&config.data).map_err(|e| config::ConfigError::Invalid {
            field: "data",
            reason: format!("{}: {e}", config.data.display()),
        })?;
        let ledger = Ledger::open(&config.data, ledger_config)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|error| StartError::Listen { addr: config.listen, error })?;
        let addr = listener.local_addr().map_err(|error| StartError::Listen { addr: config.listen, error })?;
        let state = Arc::new(AppState {
            ledger,
            config,
            metrics,
            nonces: auth::ReplayCache::default(),
            verifier: verify::VerifyPool::per_core().map_err(StartError::Threads)?,
        });
        let app = router(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let limits = (state.config.connections_max, Duration::from_millis(state.config.header_read_timeout_ms));
        let server = tokio::spawn(serve(listener, app, limits, state.clone(), stopped));
        tracing::info!(%addr, size = state.ledger.size(), "tally node listening");
        Ok(Node { addr, state, stop: Some(stop), server })
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Stop accepting connections, let in-flight requests finish (their batches are synced
    /// before they are answered), then stop the sequencer, which signs a final checkpoint.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.server).await {
            tracing::error!(error = %e, "server task failed");
        }
        // Streams still holding the state (an export in progress) finish on their own; wait
        // briefly for the last reference, then close the ledger.
        let mut state = self.state;
        for _ in 0..100 {
            match Arc::try_unwrap(state) {
                Ok(inner) => {
                    tokio::task::spawn_blocking(move || inner.ledger.shutdown()).await.ok();
                    tracing::info!("tally node stopped; final checkpoint signed");
                    return;
                }
                Err(shared) => {
                    state = shared;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tracing::warn!("state still shared at shutdown; the ledger closes when the last reference drops");
    }
}

/// Wait for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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
