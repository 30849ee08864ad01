//! The node end to end over real HTTP on 127.0.0.1, with durability on.
//!
//! The node runs in a child process (this same binary, re-executed), so its CPU time and
//! memory are its own; the load generator pre-signs every receipt before anything is timed
//! (signing costs as much as verifying). In one run it prints:
//!
//! * the machine's ceiling: batch Ed25519 verification on every core, the median of five
//!   passes (measured again after the latency phase and before the audit, since the
//!   machine's speed drifts; each ratio is to the ceiling measured just before);
//! * sustained ingest over HTTP (receipts/s) and its ratio to the ceiling;
//! * acknowledgement latency p50/p99/p999 at 50% of that peak, offered at a fixed rate:
//!   for one second straight after the burst (how fast the node recovers while it still
//!   flushes and compacts what the burst wrote), then, once the node has gone quiet, in
//!   steady state for the rest of the receipts (the headline figure), with where that went
//!   (the node's histograms) and the node's CPU per receipt by kind of thread
//!   (verification, sequencer, HTTP, RocksDB);
//! * the node's peak RSS;
//! * bytes on disk per receipt, after a full compaction;
//! * audit replay speed (tally-audit over the node's own export) and its ratio to the
//!   ceiling, with the replayed state in memory and on disk (as `tally audit` keeps it).
//!
//! Run: `cargo bench -p tally-benches --bench node`. `TALLY_BENCH_RECEIPTS` sets the
//! workload (default 300,000: a third for the peak, the rest for latency), `TALLY_BENCH_CONNECTIONS` (default 16) and
//! `TALLY_BENCH_BATCH` (receipts per request, default 256) the peak load's shape, and
//! `TALLY_BENCH_LATENCY_BATCH` (default 32) the request size of the latency run and
//! `TALLY_BENCH_LATENCY_LOAD` (percent of the peak, default 50) its rate.
//!
//! The load generator asks for minimal answers (`Prefer: return=minimal`: each receipt's
//! position, without its charge and postings), as a crawler submitting at this rate would;
//! `TALLY_BENCH_ANSWER=full` asks for full ones (also in the `soak` bench).
//!
//! `TALLY_BENCH_LATENCY_LOG=<file>` writes the steady phase's requests to `<file>`, one line
//! each: when it was due (Unix seconds) and its acknowledgement latency in milliseconds
//! (`shed` if answered 503); and the node's RocksDB `LOG` to `<file>.rocksdb-LOG`. The slow
//! acknowledgements come in clusters; lining them up with RocksDB's events (memtable
//! switches, flushes, compactions, which its LOG times to the microsecond) shows what
//! they coincide with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_core::submission::binary_body as body;
use tally_tests::{collective_key, setup};

const LABS: u8 = 8;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if tally_benches::node_child() {
        return;
    }
    let count = env("TALLY_BENCH_RECEIPTS", 300_000);
    let connections = env("TALLY_BENCH_CONNECTIONS", 16);
    let batch = env("TALLY_BENCH_BATCH", 256);
    let latency_batch = env("TALLY_BENCH_LATENCY_BATCH", 32);
    let load_percent = env("TALLY_BENCH_LATENCY_LOAD", 50);
    println!("tally node bench on {}", tally_benches::machine());
    println!(
        "workload: {count} pre-signed receipts from {LABS} labs; peak: {connections} connections x {batch} receipts/request; latency: {latency_batch}/request"
    );
    println!("{}", tally_benches::answers());
    let receipts = tally_benches::presigned_receipts(count, LABS);
    let measured = tally_benches::Ceiling::measure(&receipts[..count.min(40_000)]);
    let ceiling = measured.median;
    println!("ceiling: batch Ed25519 verification on every core      {measured}");

    let dir = tempfile::tempdir().expect("temp dir");
    let node = tally_benches::ChildNode::spawn(dir.path());
    let url = format!("http://{}/v1/entries", node.addr);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let http = reqwest::Client::builder().pool_max_idle_per_host(connections).build().expect("client");
    runtime.block_on(async {
        let r = http
            .post(&url)
            .header("content-type", "application/vnd.tally.entries")
            .body(body(&setup(LABS)))
            .send()
            .await
            .expect("set-up");
        assert!(r.status().is_success());
    });
    // The first third of the receipts measures peak ingest in `batch`-sized requests; the
    // rest, in `latency_batch`-sized requests, latency at half that rate.
    let (peak_part, latency_part) = receipts.split_at(receipts.len() / 3);
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(peak_part.chunks(batch).map(body).collect());
    let small: Arc<Vec<Vec<u8>>> = Arc::new(latency_part.chunks(latency_batch).map(body).collect());

    // Peak: every connection sends its next batch as soon as the last is acknowledged.
    let peak_cpu_before = tally_benches::thread_cpu(node.process.id());
    let peak_own_before = own_cpu_ns();
    let took = runtime.block_on(tally_benches::closed_loop(&http, &url, bodies, connections));
    let peak = peak_part.len() as f64 / took.as_secs_f64();
    println!(
        "sustained durable ingest over HTTP                     {peak:>10.0} receipts/s  = {:.0}% of the ceiling",
        peak / ceiling * 100.0
    );
    println!(
        "  node CPU per receipt (us): {}",
        tally_benches::cpu_per_receipt(
            &peak_cpu_before,
            &tally_benches::thread_cpu(node.process.id()),
            peak_part.len()
        )
    );
    let load_cpu = |before: u64, receipts: usize| (own_cpu_ns() - before) as f64 / 1e3 / receipts as f64;
    println!("  load generator CPU per receipt (us): {:.1}", load_cpu(peak_own_before, peak_part.len()));

    // Latency at 50% of peak (or TALLY_BENCH_LATENCY_LOAD): batches offered at a fixed
    // rate, open loop. First for one second straight after the burst, while the node still
    // flushes and compacts what the burst wrote: how fast it recovers. Then, once the node
    // has gone quiet, the rest: latency at that load in steady state, the headline figure.
    let rate = peak * load_percent as f64 / 100.0 / latency_batch as f64;
    let after_burst = (rate.ceil() as usize).min(small.len() / 4);
    let recovery = runtime.block_on(open_loop(&http, &url, &small[..after_burst], rate));
    report_latency(
        &format!("ack latency at {load_percent}% of peak, in the first second after the burst:"),
        &recovery,
        latency_batch,
    );
    let settled = settle(node.process.id());
    println!("  node quiet again after another {:.1} s (CPU under a tenth of a core)", settled.as_secs_f64());
    let base = format!("http://{}", node.addr);
    let before = runtime.block_on(tally_benches::scrape(&http, &base));
    let cpu_before = tally_benches::thread_cpu(node.process.id());
    let own_before = own_cpu_ns();
    let steady_from = std::time::SystemTime::now();
    let steady = runtime.block_on(open_loop(&http, &url, &small[after_burst..], rate));
    let steady_receipts: usize = latency_part.len() - after_burst * latency_batch;
    report_latency(
        &format!(
            "ack latency at {load_percent}% of peak ({:.0} receipts/s offered), steady state:",
            peak * load_percent as f64 / 100.0
        ),
        &steady,
        latency_batch,
    );
    // Where that latency went, from the node's own histograms over the same requests.
    let cpu_after = tally_benches::thread_cpu(node.process.id());
    let after = runtime.block_on(tally_benches::scrape(&http, &base));
    for (what, name) in [
        ("verification (queue + verify)", "tally_verify_seconds"),
        ("commit (sequencer queue + group + fsync)", "tally_commit_seconds"),
        ("sequencer: apply per group", "tally_group_apply_seconds"),
        ("sequencer: write per group", "tally_group_write_seconds"),
        ("syncer: fsync of the write-ahead log", "tally_sync_seconds"),
    ] {
        let (n, mean, p99, max) = tally_benches::histogram_between(&before, &after, name, 0.99);
        println!("  {what:<50} mean {mean:>6.2} ms  p99 <= {p99} ms  max <= {max} ms  ({n})");
    }
    // And the node's CPU in that phase, by kind of thread, per receipt: beside the peak's,
    // what smaller requests at a lower rate cost.
    println!(
        "  node CPU per receipt (us): {}",
        tally_benches::cpu_per_receipt(&cpu_before, &cpu_after, steady_receipts)
    );
    println!("  load generator CPU per receipt (us): {:.1}", load_cpu(own_before, steady_receipts));
    // The machine's speed drifts (other tenants): the ceiling again, now that the latency
    // phase is over, says whether it ran on the machine the peak was measured on.
    let ceiling_after = tally_benches::ceiling(&receipts[..count.min(40_000)]);
    println!(
        "ceiling again, after the latency phase                 {ceiling_after:>10.0} receipts/s  ({:+.0}%)",
        (ceiling_after / ceiling - 1.0) * 100.0
    );
    let latency_log = std::env::var_os("TALLY_BENCH_LATENCY_LOG").map(std::path::PathBuf::from);
    if let Some(path) = &latency_log {
        write_latency_log(path, steady_from, 1.0 / rate, &steady);
    }
    let rss = tally_benches::peak_rss(node.process.id()).unwrap_or(0);
    println!("node peak RSS                                          {:>10.1} MiB", rss as f64 / (1 << 20) as f64);
    let t = Instant::now();
    node.stop();
    println!("node shutdown (final checkpoint, memtables to tables)  {:>10.0} ms", t.elapsed().as_secs_f64() * 1e3);

    // Bytes on disk per receipt, after compaction.
    let ledger_dir = dir.path().join("ledger");
    if let Some(path) = &latency_log {
        let mut to = path.clone().into_os_string();
        to.push(".rocksdb-LOG");
        std::fs::copy(ledger_dir.join("LOG"), &to).expect("copy the node's RocksDB LOG");
        println!("steady-phase latencies in {}, the node's RocksDB LOG in {}", path.display(), to.to_string_lossy());
    }
    let t = Instant::now();
    let ledger = tally_ledger::Ledger::open(&ledger_dir, tally_ledger::LedgerConfig::new(None)).expect("reopen");
    println!("reopen (recovery, index and state checks)              {:>10.0} ms", t.elapsed().as_secs_f64() * 1e3);
    let size = ledger.size();
    let logged_receipts = size - setup(LABS).len() as u64;
    ledger.store().compact().expect("compact");
    let disk = tally_benches::dir_bytes(&ledger_dir);
    println!(
        "on disk after compaction                               {:>10.0} bytes/receipt  ({} entries, {:.1} MiB)",
        disk as f64 / logged_receipts as f64,
        size,
        disk as f64 / (1 << 20) as f64
    );

    // Audit replay of the node's own export, timed from reading the export out of the store
    // to the auditor's report: with the replayed state in memory, then on disk as
    // `tally audit` keeps it. Stated against the ceiling measured just before: within one
    // run the machine's speed moved by up to a fifth between the start and here.
    let measured = tally_benches::Ceiling::measure(&receipts[..count.min(40_000)]);
    let ceiling = measured.median;
    println!("ceiling before the audit                               {measured}");
    let t = Instant::now();
    let report = tally_tests::audit_ledger(&ledger, collective_key().public_key());
    let replay = size as f64 / t.elapsed().as_secs_f64();
    assert!(report.ok, "{}", report.summary());
    println!(
        "audit replay (signatures, tree, settlement, checkpoints) {replay:>8.0} entries/s  = {:.0}% of the ceiling",
        replay / ceiling * 100.0
    );
    let scratch = tempfile::tempdir().expect("temp dir");
    let t = Instant::now();
    let state = tally_ledger::ScratchState::create(&scratch.path().join("state")).expect("scratch state");
    let report = tally_tests::audit_ledger_with(&ledger, collective_key().public_key(), state);
    let replay = size as f64 / t.elapsed().as_secs_f64();
    assert!(report.ok, "{}", report.summary());
    println!(
        "  the same, state on disk (as `tally audit`)             {replay:>8.0} entries/s  = {:.0}% of the ceiling",
        replay / ceiling * 100.0
    );
}

/// Offer `bodies` at `rate` requests a second, open loop (each is sent on time whether or
/// not the earlier ones are answered); each one's acknowledgement latency, or `None` if
/// the node shed it with 503.
async fn open_loop(http: &reqwest::Client, url: &str, bodies: &[Vec<u8>], rate: f64) -> Vec<Option<Duration>> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(bodies.len());
    for (n, body) in bodies.iter().enumerate() {
        tokio::time::sleep_until(start + interval * n as u32).await;
        let (http, url, body) = (http.clone(), url.to_string(), body.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = tally_benches::post(&http, &url, body).await;
            // Shed (the node fell behind a fixed offered rate): counted and reported, so
            // the rest of the run's figures still come out.
            if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                return None;
            }
            assert!(r.status().is_success(), "{}", r.status());
            let _ = r.bytes().await;
            Some(t.elapsed())
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("request"));
    }
    out
}

/// One line per request of an open-loop run that started at `from` with `interval` seconds
/// between requests: when it was due (Unix seconds) and its latency in ms, or `shed`.
fn write_latency_log(
    path: &std::path::Path,
    from: std::time::SystemTime,
    interval: f64,
    latencies: &[Option<Duration>],
) {
    use std::fmt::Write as _;
    let from = from.duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs_f64();
    let mut out = String::with_capacity(latencies.len() * 24);
    for (n, latency) in latencies.iter().enumerate() {
        let due = from + interval * n as f64;
        match latency {
            Some(l) => writeln!(out, "{due:.6} {:.3}", l.as_secs_f64() * 1e3),
            None => writeln!(out, "{due:.6} shed"),
        }
        .expect("writing to a String");
    }
    std::fs::write(path, out).expect("write the latency log");
}

/// Print p50/p99/p999 of an open-loop run's latencies, and how many requests were shed.
fn report_latency(what: &str, latencies: &[Option<Duration>], batch: usize) {
    let shed = latencies.iter().filter(|l| l.is_none()).count();
    let mut sorted: Vec<Duration> = latencies.iter().flatten().copied().collect();
    sorted.sort();
    let pct = |q| if sorted.is_empty() { f64::NAN } else { tally_benches::percentile(&sorted, q) };
    println!(
        "{what}  p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  ({} requests of {batch})",
        pct(0.5),
        pct(0.99),
        pct(0.999),
        sorted.len()
    );
    if shed > 0 {
        println!(
            "  SHED: {shed} more requests answered 503 (the node fell behind the offered rate); not in the percentiles, but in the CPU per receipt"
        );
    }
}

/// Wait until the node's threads together use under a tenth of a core over 200 ms (the
/// burst's flushes and compactions are done), at most 30 s; how long that took.
fn settle(pid: u32) -> Duration {
    let t = Instant::now();
    let busy = || tally_benches::thread_cpu(pid).values().sum::<u64>();
    let mut last = busy();
    while t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        let now = busy();
        // A thread that exits takes its time out of the sum: count that as quiet, not busy.
        if now.saturating_sub(last) < 20_000_000 {
            break;
        }
        last = now;
    }
    t.elapsed()
}

/// CPU this process (the load generator) has used so far, in nanoseconds.
fn own_cpu_ns() -> u64 {
    tally_benches::thread_cpu(std::process::id()).values().sum()
}
