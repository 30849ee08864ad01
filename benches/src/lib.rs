//! Helpers shared by Tally's benchmarks: pre-signed workloads and a description of the
//! machine, so every printed figure says what it was measured on.

use rand::SeedableRng;
use tally_core::entry::Entry;
use tally_tests::random_receipt;

/// `count` receipts signed by labs `1..=labs` (see `tally_tests::setup`), made on all cores
/// before any timing.
pub fn presigned_receipts(count: usize, labs: u8) -> Vec<Entry> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = count.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
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
