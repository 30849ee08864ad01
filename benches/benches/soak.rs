//! Soak: a node in a child process under half of its peak load for a long time, durable,
//! over HTTP on 127.0.0.1. Does it stay the same? It prints, each minute, the load offered
//! and acknowledged, acknowledgement latency p50/p99 and the node's resident memory with
//! how much of it is RocksDB's memtables and block cache; at the end it compares the last
//! window with the first (p99, and memory outside those bounded caches, each within 10%;
//! the caches fill up to their configured bounds over the first minutes).
//!
//! Run: `cargo bench -p tally-benches --bench soak` (30 minutes). `TALLY_SOAK_SECONDS`
//! sets the duration (default 1800); the comparison window is the first and last five
//! minutes, or a sixth of the run if that is shorter.
//!
//! The peak is measured first, closed loop with 16 connections of 256 receipts: the first
//! half of `TALLY_SOAK_PEAK_RECEIPTS` (default 1,500,000) warms the node up and the rate over
//! the second half is the peak, so that it includes the flushes and compactions a burst of
//! a few seconds never pays for; it is printed with its ratio to the machine's ceiling
//! (batch Ed25519 verification on every core, the median of five passes, measured before
//! and after the peak; the ratio is to their mean) and the node's CPU per
//! receipt over it by kind of thread, as in the `node` bench. The soak then offers half of it, open loop, in requests of
//! the same size
//! (`TALLY_SOAK_BATCH`, default 256). Half of that peak in much smaller requests is more
//! than half the node's capacity: per-request costs grow as requests shrink. A 503 (the
//! node shedding load) is counted and reported, not retried. Every receipt of the soak
//! is signed before it starts, on every core (signing costs as much as verifying and must
//! not share the node's CPU): for 30 minutes that is about 25M receipts, some 10 minutes of
//! signing and 7 GB of request bodies held by the load generator (not the node).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use tally_core::submission::binary_body;
use tally_tests::{random_receipt, setup};

const LABS: u8 = 8;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Minute {
    offered: usize,
    shed: usize,
    latencies: Vec<Duration>,
    rss: u64,
    /// Of `rss`, RocksDB's memtables and block cache: bounded by configuration, they fill
    /// up over the first minutes of a run.
    cached: u64,
}

fn main() {
    if tally_benches::node_child() {
        return;
    }
    let seconds = env("TALLY_SOAK_SECONDS", 1800);
    let batch = env("TALLY_SOAK_BATCH", 256) as usize;
    let window = (seconds / 6).clamp(1, 300);
    println!("tally soak on {}: {seconds} s at half of peak, windows of {window} s", tally_benches::machine());
    println!("{}", tally_benches::answers());
    let dir = tempfile::tempdir().expect("temp dir");
    let node = tally_benches::ChildNode::spawn(dir.path());
    let url = format!("http://{}/v1/entries", node.addr);
    let base = format!("http://{}", node.addr);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");
    runtime.block_on(async {
        let r = tally_benches::post(&http, &url, binary_body(&setup(LABS))).await;
        assert!(r.status().is_success());
    });

    // The peak the soak takes half of is a sustained one: a burst of a few seconds never
    // pays for the flushes and compactions its writes cause. The first half of the peak
    // receipts warms the node up; the rate over the second half is the peak.
    let peak_receipts = env("TALLY_SOAK_PEAK_RECEIPTS", 1_500_000) as usize;
    let warmup = tally_benches::presigned_receipts(peak_receipts, LABS);
    // The machine's speed drifts (other tenants), by up to a fifth within one run: the
    // ceiling is measured before the peak and again after it (about 15 s later), and the
    // peak is stated against their mean.
    let sample = warmup[..warmup.len().min(40_000)].to_vec();
    let before = tally_benches::Ceiling::measure(&sample);
    println!("ceiling: batch Ed25519 verification on every core {before}");
    let (first, second) = warmup.split_at(warmup.len() / 2);
    let bodies = |part: &[tally_core::entry::Entry]| Arc::new(part.chunks(256).map(binary_body).collect::<Vec<_>>());
    let (first, second) = (bodies(first), bodies(second));
    drop(warmup);
    let burst = runtime.block_on(tally_benches::closed_loop(&http, &url, first.clone(), 16));
    let cpu_before = tally_benches::thread_cpu(node.process.id());
    let took = runtime.block_on(tally_benches::closed_loop(&http, &url, second.clone(), 16));
    let cpu_after = tally_benches::thread_cpu(node.process.id());
    let count = |b: &Arc<Vec<Vec<u8>>>| (b.len() * 256) as f64;
    let after = tally_benches::Ceiling::measure(&sample);
    let ceiling = (before.median + after.median) / 2.0;
    println!("ceiling again, after the peak {after}; the peak is stated against the mean, {ceiling:.0}");
    println!(
        "warm-up {:.0} receipts/s over {:.0} s; sustained peak {:.0} receipts/s over the next {:.0} s = {:.0}% of the ceiling",
        count(&first) / burst.as_secs_f64(),
        burst.as_secs_f64(),
        count(&second) / took.as_secs_f64(),
        took.as_secs_f64(),
        count(&second) / took.as_secs_f64() / ceiling * 100.0
    );
    println!(
        "  node CPU per receipt over it (us): {}",
        tally_benches::cpu_per_receipt(&cpu_before, &cpu_after, second.len() * 256)
    );
    let peak = count(&second) / took.as_secs_f64();
    drop((first, second));
    // `TALLY_SOAK_RATE` (receipts/s) fixes the offered load instead, to compare two builds.
    let rate = std::env::var("TALLY_SOAK_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(peak / 2.0);
    println!("peak {peak:.0} receipts/s; soaking at {rate:.0} receipts/s in requests of {batch}");

    let requests = (rate * seconds as f64 / batch as f64).ceil() as usize;
    println!("signing {} receipts for the soak...", requests * batch);
    let soak: Vec<Vec<u8>> = {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || {
                        let mut rng = rand::rngs::StdRng::seed_from_u64(0x50a4_0000 + t as u64);
                        (0..requests.div_ceil(threads))
                            .map(|n| {
                                let lab = |i: usize| ((n + i) % usize::from(LABS)) as u8 + 1;
                                binary_body(&(0..batch).map(|i| random_receipt(lab(i), &mut rng)).collect::<Vec<_>>())
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("signing thread")).take(requests).collect()
        })
    };
    let mut soak = soak.into_iter();
    let interval = Duration::from_secs_f64(batch as f64 / rate);
    let minutes = seconds.div_ceil(60) as usize;
    let pid = node.process.id();
    let mut report: Vec<Minute> = Vec::new();
    runtime.block_on(async {
        let start = tokio::time::Instant::now();
        let mut sent = 0u32;
        for minute in 0..minutes {
            let end = start + Duration::from_secs(((minute as u64 + 1) * 60).min(seconds));
            let mut tasks = Vec::new();
            loop {
                let at = start + interval * sent;
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at).await;
                sent += 1;
                let Some(body) = soak.next() else { break };
                let (http, url) = (http.clone(), url.clone());
                tasks.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let r = tally_benches::post(&http, &url, body).await;
                    let status = r.status().as_u16();
                    assert!(status == 200 || status == 503, "only 200 or load shedding: {status}");
                    let _ = r.bytes().await;
                    (status == 200, t.elapsed())
                }));
            }
            let offered = tasks.len() * batch;
            let mut latencies = Vec::with_capacity(tasks.len());
            let mut shed = 0;
            for t in tasks {
                match t.await.expect("request") {
                    (true, latency) => latencies.push(latency),
                    (false, _) => shed += 1,
                }
            }
            latencies.sort();
            let rss = tally_benches::rss(pid).unwrap_or(0);
            // What of the RSS is RocksDB's bounded caches (memtables, block cache), from
            // the node's own gauges.
            let metrics = tally_benches::scrape(&http, &base).await;
            let store = |part: &str| {
                metrics.get(&format!("tally_store_memory_bytes{{part=\"{part}\"}}")).copied().unwrap_or(0.0)
                    / (1 << 20) as f64
            };
            let span = (end - (start + Duration::from_secs(minute as u64 * 60))).as_secs_f64();
            println!(
                "minute {:>3}: {:>6.0} receipts/s acknowledged ({shed} requests shed)   p50 {:>6.2} ms   p99 {:>6.2} ms   node RSS {:>6.1} MiB (memtables {:.1}, block cache {:.1}, table readers {:.1})",
                minute + 1,
                latencies.len() as f64 * batch as f64 / span,
                tally_benches::percentile(&latencies, 0.5),
                tally_benches::percentile(&latencies, 0.99),
                rss as f64 / (1 << 20) as f64,
                store("memtables"),
                store("block_cache"),
                store("table_readers"),
            );
            let cached = ((store("memtables") + store("block_cache")) * (1 << 20) as f64) as u64;
            report.push(Minute { offered, shed, latencies, rss, cached });
        }
    });
    node.stop();

    // First and last windows (whole minutes, at least one each).
    let per = (window.div_ceil(60) as usize).clamp(1, report.len());
    let summary = |minutes: &[Minute]| {
        let mut all: Vec<Duration> = minutes.iter().flat_map(|m| m.latencies.iter().copied()).collect();
        all.sort();
        let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
        let rss = minutes.iter().map(|m| m.rss).max().unwrap_or(0);
        let outside = minutes.iter().map(|m| m.rss.saturating_sub(m.cached)).max().unwrap_or(0);
        (tally_benches::percentile(&all, 0.99), mib(rss), mib(outside))
    };
    let (p99_first, rss_first, outside_first) = summary(&report[..per]);
    let (p99_last, rss_last, outside_last) = summary(&report[report.len() - per..]);
    let total: usize = report.iter().map(|m| m.offered).sum();
    let shed: usize = report.iter().map(|m| m.shed).sum();
    let change = |a: f64, b: f64| (b - a) / a * 100.0;
    println!("receipts offered: {total}; requests shed with 503: {shed}");
    println!(
        "first {per} min: p99 {p99_first:.2} ms, RSS {rss_first:.1} MiB ({outside_first:.1} outside RocksDB's memtables and block cache)"
    );
    println!(
        "last {per} min:  p99 {p99_last:.2} ms ({:+.1}%), RSS {rss_last:.1} MiB ({:+.1}%; {outside_last:.1} outside the caches, {:+.1}%)",
        change(p99_first, p99_last),
        change(rss_first, rss_last),
        change(outside_first, outside_last)
    );
    // The caches are bounded by configuration (128 MiB of memtables, a 64 MiB block cache)
    // and fill up over the first minutes; growth anywhere else is what would not stop.
    let steady = change(p99_first, p99_last) <= 10.0 && change(outside_first, outside_last) <= 10.0 && shed == 0;
    println!(
        "{}",
        if steady {
            "steady: p99 and memory outside the caches within 10%, nothing shed"
        } else {
            "NOT steady: a figure grew by more than 10%, or load was shed"
        }
    );
}
