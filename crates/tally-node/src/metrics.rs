//! Prometheus metrics in the text exposition format (version 0.0.4): counters with one
//! label, and fixed-bucket histograms. Small enough to keep here rather than pull in a
//! metrics stack.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if value <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {}", c.load(Ordering::Relaxed));
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Counters keyed by one label value.
#[derive(Debug, Default)]
pub struct LabeledCounter(Mutex<BTreeMap<String, u64>>);

impl LabeledCounter {
    pub fn add(&self, label: &str, n: u64) {
        *self.0.lock().expect("metrics lock").entry(label.to_string()).or_insert(0) += n;
    }

    fn render(&self, name: &str, label: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (value, n) in self.0.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
        }
    }
}

/// Latency buckets, finer around the 10 ms acknowledgement target: with 5, 10 and 20 ms
/// alone a p99 of 6 ms and one of 9.9 ms read the same.
const SECONDS: &[f64] =
    &[0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
const SIZES: &[f64] = &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0];
const GROUP_SIZES: &[f64] = &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0];

/// Everything the node counts.
#[derive(Debug)]
pub struct Metrics {
    /// Entries appended, by kind.
    pub appended: LabeledCounter,
    /// Entries answered as duplicates.
    pub duplicates: AtomicU64,
    /// Entries refused by settlement, by code.
    pub rejected: LabeledCounter,
    /// Entries refused before the sequencer (decoding or signatures), by code.
    pub invalid: LabeledCounter,
    /// Responses by status code.
    pub responses: LabeledCounter,
    /// Entries per submission.
    pub batch_entries: Histogram,
    /// Time from handing a batch to the ledger until it is durable.
    pub commit_seconds: Histogram,
    /// Time to decode and verify a batch.
    pub verify_seconds: Histogram,
    /// Connections closed on accept because `connections_max` were open.
    pub connections_refused: AtomicU64,
    /// Per sequencer group: entries, apply time, write time (before the sync).
    pub group_entries: Histogram,
    pub group_apply_seconds: Histogram,
    pub group_write_seconds: Histogram,
    /// Per sync of the write-ahead log: groups it made durable, fsync time.
    pub sync_groups: Histogram,
    pub sync_seconds: Histogram,
}

impl Metrics {
    /// Record one group the sequencer wrote.
    pub fn observe_group(&self, group: &tally_ledger::GroupStats) {
        self.group_entries.observe(group.entries as f64);
        self.group_apply_seconds.observe(group.apply.as_secs_f64());
        self.group_write_seconds.observe(group.write.as_secs_f64());
    }

    /// Record one sync of the write-ahead log.
    pub fn observe_sync(&self, sync: &tally_ledger::SyncStats) {
        self.sync_groups.observe(sync.groups as f64);
        self.sync_seconds.observe(sync.sync.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            appended: LabeledCounter::default(),
            duplicates: AtomicU64::new(0),
            rejected: LabeledCounter::default(),
            invalid: LabeledCounter::default(),
            responses: LabeledCounter::default(),
            batch_entries: Histogram::new(SIZES),
            commit_seconds: Histogram::new(SECONDS),
            verify_seconds: Histogram::new(SECONDS),
            connections_refused: AtomicU64::new(0),
            group_entries: Histogram::new(GROUP_SIZES),
            group_apply_seconds: Histogram::new(SECONDS),
            group_write_seconds: Histogram::new(SECONDS),
            sync_groups: Histogram::new(GROUP_SIZES),
            sync_seconds: Histogram::new(SECONDS),
        }
    }
}

impl Metrics {
    /// The exposition text; `size` is the ledger's committed size and `memory` what
    /// RocksDB holds in memory (absent if it could not be read).
    pub fn render(&self, size: u64, memory: Option<&tally_ledger::StoreMemory>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP tally_ledger_entries Entries committed to the log.\n# TYPE tally_ledger_entries gauge"
        );
        let _ = writeln!(out, "tally_ledger_entries {size}");
        if let Some(m) = memory {
            let _ = writeln!(
                out,
                "# HELP tally_store_memory_bytes Bytes RocksDB holds in memory, by part.\n# TYPE tally_store_memory_bytes gauge"
            );
            for (part, bytes) in
                [("memtables", m.memtables), ("block_cache", m.block_cache), ("table_readers", m.table_readers)]
            {
                let _ = writeln!(out, "tally_store_memory_bytes{{part=\"{part}\"}} {bytes}");
            }
        }
        self.appended.render("tally_entries_appended_total", "kind", "Entries appended, by kind.", &mut out);
        let _ = writeln!(
            out,
            "# HELP tally_entries_duplicate_total Entries answered with an earlier position.\n# TYPE tally_entries_duplicate_total counter\ntally_entries_duplicate_total {}",
            self.duplicates.load(Ordering::Relaxed)
        );
        self.rejected.render(
            "tally_entries_rejected_total",
            "code",
            "Entries refused by settlement, by code.",
            &mut out,
        );
        self.invalid.render(
            "tally_entries_invalid_total",
            "code",
            "Entries refused before sequencing (decoding, signature verification), by code.",
            &mut out,
        );
        let _ = writeln!(
            out,
            "# HELP tally_connections_refused_total Connections closed on accept: connections_max were open.\n# TYPE tally_connections_refused_total counter\ntally_connections_refused_total {}",
            self.connections_refused.load(Ordering::Relaxed)
        );
        self.responses.render("tally_http_responses_total", "status", "HTTP responses, by status code.", &mut out);
        self.batch_entries.render("tally_submit_batch_entries", "Entries per submission.", &mut out);
        self.commit_seconds.render(
            "tally_commit_seconds",
            "Time from handing a batch to the sequencer until it is durable.",
            &mut out,
        );
        self.verify_seconds.render("tally_verify_seconds", "Time to decode and verify a submission.", &mut out);
        self.group_entries.render("tally_group_entries", "Entries per group the sequencer wrote.", &mut out);
        self.group_apply_seconds.render(
            "tally_group_apply_seconds",
            "Sequencer time per group for dedup lookups, settlement and building the write batch.",
            &mut out,
        );
        self.group_write_seconds.render(
            "tally_group_write_seconds",
            "Sequencer time per group in the RocksDB write (write-ahead log, memtables; the fsync is tally_sync_seconds).",
            &mut out,
        );
        self.sync_groups.render(
            "tally_sync_groups",
            "Groups made durable by one sync of the write-ahead log.",
            &mut out,
        );
        self.sync_seconds.render(
            "tally_sync_seconds",
            "Time per fsync of the write-ahead log, by the syncer or the sequencer (acknowledgements wait for it).",
            &mut out,
        );
        out
    }
}
