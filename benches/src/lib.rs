//! Helpers shared by Tally's benchmarks: pre-signed workloads and a description of the
//! machine, so every printed figure says what it was measured on.

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

/// The machine's ceiling for a ledger that verifies every receipt: batch verification of
/// `sample` split across every core, in receipts per second.
pub fn ceiling(sample: &[Entry]) -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        for chunk in sample.chunks(sample.len().div_ceil(threads)) {
            s.spawn(move || assert!(tally_core::entry::verify_entries(chunk).iter().all(Result::is_ok)));
        }
    });
    sample.len() as f64 / t.elapsed().as_secs_f64()
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
