//! Helpers shared by Tally's benchmarks: pre-signed workloads and a description of the
//! machine, so every printed figure says what it was measured on.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::SeedableRng;
use tally_core::entry::Entry;
use tally_tests::random_receipt;

/// `count` receipts signed by labs `1..=labs` (see `tally_tests::setup`), made on all cores
/// before any timing.
pub fn presigned_receipts(count: usize, labs: u8) -> Vec<Entry> {
    presigned_receipts_seeded(count, labs, 0)
}

/// [`presigned_receipts`] from a different random stream for each `seed`.
pub fn presigned_receipts_seeded(count: usize, labs: u8, seed: u64) -> Vec<Entry> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = count.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 1024 + t as u64);
                    (0..per_thread)
                        .map(|i| random_receipt((i % usize::from(labs)) as u8 + 1, &mut rng))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("signing thread")).take(count).collect()
    })
}

/// One line naming the CPU and core count.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {cores} cores")
}

/// Passes over the sample in [`ceiling`]; the median is the figure.
const CEILING_PASSES: usize = 5;

/// The machine's ceiling for a ledger that verifies every receipt: batch verification of
/// `sample` split across every core, in receipts per second; the median of
/// [`CEILING_PASSES`] passes. One pass over 40k receipts takes about 0.2 s, and single
/// passes in one run differed by up to a fifth, which moved every ratio to the ceiling
/// by as much.
pub fn ceiling(sample: &[Entry]) -> f64 {
    Ceiling::measure(sample).median
}

/// [`ceiling`] with the spread of its passes; prints as
/// `<median> receipts/s  (median of 5 passes, <slowest>-<fastest>)`.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    pub median: f64,
    pub slowest: f64,
    pub fastest: f64,
}

impl Ceiling {
    pub fn measure(sample: &[Entry]) -> Self {
        let passes = ceiling_passes(sample);
        Self { median: passes[passes.len() / 2], slowest: passes[0], fastest: passes[passes.len() - 1] }
    }
}

impl std::fmt::Display for Ceiling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>10.0} receipts/s  (median of {CEILING_PASSES} passes, {:.0}-{:.0})",
            self.median, self.slowest, self.fastest
        )
    }
}

/// Every pass of [`ceiling`], slowest first.
fn ceiling_passes(sample: &[Entry]) -> Vec<f64> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut passes: Vec<f64> = (0..CEILING_PASSES)
        .map(|_| {
            let t = std::time::Instant::now();
            std::thread::scope(|s| {
                for chunk in sample.chunks(sample.len().div_ceil(threads)) {
                    s.spawn(move || assert!(tally_core::entry::verify_entries(chunk).iter().all(Result::is_ok)));
                }
            });
            sample.len() as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    passes.sort_by(f64::total_cmp);
    passes
}

/// Peak resident set size of a process, from `/proc/<pid>/status` (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Resident memory of process `pid` now, in bytes (Linux: VmRSS).
pub fn rss(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (nanoseconds on a core, from `/proc/<pid>/task/*/schedstat`) each kind of
/// thread of process `pid` has used so far: the verification pool, the sequencer, the HTTP
/// runtime, RocksDB's background jobs, and everything else. Two readings around a phase
/// say where its CPU went.
pub fn thread_cpu(pid: u32) -> std::collections::BTreeMap<&'static str, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let kind = match comm.trim_end() {
            "tally-verify" => "verification",
            "tally-sequencer" => "sequencer",
            c if c.starts_with("tokio") => "http",
            c if c.starts_with("rocksdb") => "rocksdb",
            _ => "other",
        };
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
            .unwrap_or(0);
        *out.entry(kind).or_insert(0) += ns;
    }
    out
}

/// CPU each kind of thread used between two [`thread_cpu`] readings, in
/// microseconds per receipt of the phase, with the total.
pub fn cpu_per_receipt(
    before: &std::collections::BTreeMap<&'static str, u64>,
    after: &std::collections::BTreeMap<&'static str, u64>,
    receipts: usize,
) -> String {
    let per = |ns: u64| ns as f64 / 1e3 / receipts as f64;
    let used: Vec<(&str, u64)> =
        after.iter().map(|(kind, ns)| (*kind, ns.saturating_sub(before.get(kind).copied().unwrap_or(0)))).collect();
    let total: u64 = used.iter().map(|(_, ns)| ns).sum();
    let parts: Vec<String> = used.iter().map(|(kind, ns)| format!("{kind} {:.1}", per(*ns))).collect();
    format!("{}; total {:.1}", parts.join(", "), per(total))
}

/// Bytes of every file under `dir`.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                total += dir_bytes(&path);
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}

/// A Tally node in a child process (this same bench binary, re-executed with
/// `TALLY_BENCH_NODE_CHILD` set), so that its CPU time and memory are its own. The node's
/// data is in `<dir>/ledger`; it runs until [`ChildNode::stop`].
#[derive(Debug)]
pub struct ChildNode {
    pub process: Child,
    pub addr: String,
}

impl ChildNode {
    pub fn spawn(dir: &std::path::Path) -> ChildNode {
        let mut process = Command::new(std::env::current_exe().expect("this binary"))
            .env("TALLY_BENCH_NODE_CHILD", dir)
            .env("TALLY_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the node");
        let mut line = String::new();
        BufReader::new(process.stdout.take().expect("piped")).read_line(&mut line).expect("node address");
        let addr = line.trim().strip_prefix("listening ").expect("the node prints its address").to_string();
        ChildNode { process, addr }
    }

    /// Close the child's stdin: it shuts down gracefully (final checkpoint) and exits.
    pub fn stop(mut self) {
        drop(self.process.stdin.take());
        self.process.wait().expect("node exit");
    }
}

/// In a bench's `main`, first: if this process is a [`ChildNode`], run the node until
/// stdin closes and return true.
pub fn node_child() -> bool {
    let Ok(dir) = std::env::var("TALLY_BENCH_NODE_CHILD") else { return false };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let dir = std::path::Path::new(&dir);
        let key_file = dir.join("collective.key");
        std::fs::write(&key_file, hex::encode(tally_tests::collective_key().seed())).expect("key file");
        let config = tally_node::FileConfig {
            data: Some(dir.join("ledger")),
            listen: Some("127.0.0.1:0".parse().expect("address")),
            key_file: Some(key_file),
            checkpoint_interval_ms: std::env::var("TALLY_BENCH_CHECKPOINT_MS").ok().and_then(|v| v.parse().ok()),
            ..Default::default()
        }
        .resolve()
        .expect("config");
        let node = tally_node::Node::start(config).await.expect("start");
        println!("listening {}", node.addr);
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
        node.shutdown().await;
    });
    true
}

/// Whether the load generator asks for minimal answers (`Prefer: return=minimal`, each
/// receipt's position without its charge and postings), as a crawler submitting at a high
/// rate would: yes unless `TALLY_BENCH_ANSWER=full`.
pub fn minimal_answers() -> bool {
    static MINIMAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MINIMAL.get_or_init(|| match std::env::var("TALLY_BENCH_ANSWER").as_deref() {
        Ok("full") => false,
        Ok("minimal") | Err(_) => true,
        Ok(other) => panic!("TALLY_BENCH_ANSWER is minimal or full, not {other:?}"),
    })
}

/// How the load generator's answers are asked for, for a bench's header.
pub fn answers() -> &'static str {
    if minimal_answers() {
        "minimal answers (Prefer: return=minimal; TALLY_BENCH_ANSWER=full for full ones)"
    } else {
        "full answers (charge and postings per receipt)"
    }
}

/// Submit one binary body of entries.
pub async fn post(http: &reqwest::Client, url: &str, body: Vec<u8>) -> reqwest::Response {
    let request = http.post(url).header("content-type", tally_core::submission::ENTRIES_MEDIA_TYPE).body(body);
    let request = if minimal_answers() { request.header("prefer", "return=minimal") } else { request };
    let r = request.send().await.expect("send");
    if r.status().is_success() {
        assert_eq!(
            r.headers().contains_key("preference-applied"),
            minimal_answers(),
            "the node answers in the shape asked for"
        );
    }
    r
}

/// The `q` quantile of sorted durations, in milliseconds.
pub fn percentile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3
}

/// Send every body (binary submissions) over `connections` connections, each sending its
/// next as soon as the last is acknowledged (503 back-pressure is retried); return how long
/// it took.
pub async fn closed_loop(
    http: &reqwest::Client,
    url: &str,
    bodies: std::sync::Arc<Vec<Vec<u8>>>,
    connections: usize,
) -> Duration {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = std::sync::Arc::new(AtomicUsize::new(0));
    let t = std::time::Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (http, url, bodies, next) = (http.clone(), url.to_string(), bodies.clone(), next.clone());
            tokio::spawn(async move {
                while let Some(body) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) {
                    loop {
                        let r = post(&http, &url, body.clone()).await;
                        if r.status().is_success() {
                            let _ = r.bytes().await;
                            break;
                        }
                        assert_eq!(r.status().as_u16(), 503, "only back-pressure is expected");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("load task");
    }
    t.elapsed()
}

/// The node's `/metrics` as `series → value` (the series name with its labels, as printed).
pub async fn scrape(http: &reqwest::Client, base: &str) -> std::collections::HashMap<String, f64> {
    let text = http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("metrics text");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// What a node histogram recorded between two scrapes: how many, their mean in
/// milliseconds, the upper bound (ms) of the bucket holding the `q` quantile, and that of
/// the bucket holding the slowest.
pub fn histogram_between(
    before: &std::collections::HashMap<String, f64>,
    after: &std::collections::HashMap<String, f64>,
    name: &str,
    q: f64,
) -> (u64, f64, f64, f64) {
    let delta = |series: &str| after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0);
    let count = delta(&format!("{name}_count"));
    let mean = if count > 0.0 { delta(&format!("{name}_sum")) / count * 1e3 } else { 0.0 };
    let mut buckets: Vec<(f64, f64)> = after
        .keys()
        .filter_map(|k| k.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|rest| rest.strip_suffix("\"}"))
        .filter_map(|le| Some((le.parse::<f64>().ok()?, delta(&format!("{name}_bucket{{le=\"{le}\"}}")))))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let bound = |q: f64| buckets.iter().find(|(_, n)| *n >= q * count).map_or(f64::INFINITY, |(le, _)| le * 1e3);
    (count as u64, mean, bound(q), bound(1.0))
}
