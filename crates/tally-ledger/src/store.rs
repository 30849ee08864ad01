//! The RocksDB layout (specs/storage.md) and every read the ledger serves.
//!
//! All writes for a group of appends go into one `WriteBatch` written with `sync`, so after
//! a crash the store holds either the whole group or none of it.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, ColumnFamilyDescriptor, DB, DBCompressionType, DBRecoveryMode, Direction,
    IteratorMode, Options, WriteBatch,
};
use tally_core::Hash;
use tally_core::entry::{Entry, LeafRecord};
use tally_core::merkle::NodeReader;
use tally_core::tile::{TILE_HEIGHT, TILE_WIDTH, hash_up, node_base};
use tally_settlement::state::Pairs;
use tally_settlement::{Posting, StateError, StateStore};

use crate::error::LedgerError;

pub(crate) const CF_ENTRIES: &str = "entries";
pub(crate) const CF_LEAVES: &str = "leaves";
pub(crate) const CF_HASHES: &str = "hashes";
pub(crate) const CF_CHECKPOINTS: &str = "checkpoints";
pub(crate) const CF_DEDUP: &str = "dedup";
pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_STATE: &str = "state";
pub(crate) const CF_PARTIES: &str = "parties";
pub(crate) const CF_EFFECTS: &str = "effects";
pub(crate) const CF_LEAF_INDEX: &str = "leaf_index";
pub(crate) const CF_CHARGES: &str = "charges";
pub(crate) const CF_REGISTRY: &str = "registry";
pub(crate) const CF_INDEX_JOURNAL: &str = "index_journal";
const COLUMN_FAMILIES: [&str; 13] = [
    CF_ENTRIES,
    CF_LEAVES,
    CF_HASHES,
    CF_CHECKPOINTS,
    CF_DEDUP,
    CF_META,
    CF_STATE,
    CF_PARTIES,
    CF_EFFECTS,
    CF_LEAF_INDEX,
    CF_CHARGES,
    CF_INDEX_JOURNAL,
    CF_REGISTRY,
];

/// The column family holding a settlement state key: per-receipt charge records in
/// `charges`, URL patterns (the registry) in `registry`, everything else in `state`.
/// Charge records are one per receipt, written in sequence order and rarely read; in
/// `state` they made it the largest and busiest family, so every registry probe (several a
/// receipt, mostly misses) checked the filters of many files. `state` is still written by
/// most receipts (first-fetch markers, unclaimed amounts, balances), so its memtable and
/// level-0 files turn over all the time; the registry is written only by registry entries,
/// so in its own family a probe checks a nearly empty memtable and few files.
pub(crate) fn state_cf(key: &[u8]) -> &'static str {
    match key.first() {
        Some(&tally_settlement::engine::CHARGES_TABLE) => CF_CHARGES,
        Some(&tally_settlement::engine::PATTERNS_TABLE) => CF_REGISTRY,
        _ => CF_STATE,
    }
}

/// The block cache all column families share.
pub const BLOCK_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Memory all memtables together may use; past it RocksDB flushes whichever column family
/// holds the oldest memtable. Sized above the sum of the per-family sizes
/// ([`memtable_bytes`]), so in normal running each family flushes when its own memtable
/// is full and this is only a ceiling.
pub const MEMTABLES_BYTES_MAX: usize = 128 * 1024 * 1024;
/// Write-ahead log kept before the families still holding its oldest part (the small ones:
/// `meta`, `checkpoints`) are flushed; bounds disk use and replay time after a crash.
pub const WAL_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Memtable size of each column family, in proportion to what an appended receipt writes
/// to it (an entry is ~300 bytes, its leaf record ~80, its charge record ~100, its index
/// keys 16-40). With one shared size, the write buffer manager flushed the family with the
/// oldest memtable, which is a tiny one (`meta` is written by every group): every flush
/// then cascaded through all ten families, several times a second under load, leaving
/// piles of small level-0 files that every dedup lookup had to probe.
///
/// The families keyed by sequence number (`entries`, `leaves`, `charges`) have small
/// memtables for their share: a flush is a burst of CPU on top of ingest, and the slow
/// acknowledgements at half load came in clusters with the flushes of these, the largest
/// (at half load a 32 MiB `entries` memtable took 0.14-0.21 s to flush, a 16 MiB
/// `charges` one 0.07-0.15 s, by RocksDB's LOG). A quarter of the size
/// makes each burst a quarter as long for the same total work, and their files still do
/// not overlap, so the extra level-0 files cost compactions nothing. Smaller still (an
/// eighth) measured worse, more often. The hash-keyed families keep larger memtables:
/// each of their flushes spans the whole key range, and more of them means more
/// compaction and more files for every lookup to probe.
fn memtable_bytes(cf: &str) -> usize {
    const MIB: usize = 1024 * 1024;
    match cf {
        CF_ENTRIES => 8 * MIB,
        CF_DEDUP => 16 * MIB,
        CF_LEAVES | CF_CHARGES | CF_STATE => 4 * MIB,
        CF_LEAF_INDEX | CF_PARTIES => 8 * MIB,
        CF_HASHES | CF_EFFECTS => 2 * MIB,
        // About 90 bytes an entry, deleted a run at a time: most records are deleted
        // before their memtable is flushed.
        CF_INDEX_JOURNAL => 8 * MIB,
        _ => MIB,
    }
}

/// `meta` key holding the tree size (u64 big-endian), written in every append batch.
pub(crate) const META_SIZE: &[u8] = b"size";
/// `meta` key holding the first entry whose `dedup`, `leaf_index` and `parties` records may
/// not be written yet (u64 big-endian); from it on they are in `index_journal` (`index.rs`).
pub(crate) const META_INDEXED: &[u8] = b"indexed";

pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// `hashes` key: tree height (a multiple of 8) and index, big-endian so a tile is one range.
pub(crate) fn hash_key(level: u8, index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = level;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// `parties` key: participant id then sequence number, both big-endian.
pub(crate) fn party_key(party: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&party.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Most sequence numbers one `parties` record holds: its key's, and the rest in its value.
pub(crate) const PARTY_RECORD_SEQS: usize = 128;

/// `parties` value of a record whose key holds `first`: each of `rest` (ascending, all
/// above `first`) as the unsigned LEB128 of its difference from the one before. Empty for
/// a record of one entry, which is what every record was before records held several.
pub(crate) fn party_value(first: u64, rest: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rest.len() * 2);
    let mut prev = first;
    for &seq in rest {
        debug_assert!(seq > prev, "a party's entries are in order");
        let mut delta = seq - prev;
        loop {
            let byte = (delta & 0x7f) as u8;
            delta >>= 7;
            if delta == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        prev = seq;
    }
    out
}

/// The participant and sequence numbers of one `parties` record. A difference that is
/// zero, runs past the value or past `u64`, or is longer than needed, is corruption.
pub(crate) fn party_seqs(key: &[u8], value: &[u8]) -> Result<(u64, Vec<u64>), LedgerError> {
    if key.len() != 16 {
        return Err(LedgerError::Corrupted(format!("a parties key is {} bytes, not 16", key.len())));
    }
    let party = be_u64(&key[..8], "parties key")?;
    let mut seq = be_u64(&key[8..], "parties key")?;
    let mut seqs = vec![seq];
    let first = seq;
    let bad = |what: &str| LedgerError::Corrupted(format!("parties record of {party} at {first}: {what}"));
    let mut at = 0;
    while at < value.len() {
        let (mut delta, mut shift) = (0u64, 0u32);
        loop {
            let Some(&byte) = value.get(at) else { return Err(bad("a difference runs past the value")) };
            at += 1;
            if shift == 63 && byte > 1 {
                return Err(bad("a difference overflows 64 bits"));
            }
            delta |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                if byte == 0 && shift > 7 {
                    return Err(bad("a difference is encoded longer than needed"));
                }
                break;
            }
        }
        if delta == 0 {
            return Err(bad("a difference of zero"));
        }
        seq = seq.checked_add(delta).ok_or_else(|| bad("a sequence number overflows"))?;
        seqs.push(seq);
    }
    Ok((party, seqs))
}

/// `leaf_index` key: the first 8 bytes of a leaf hash, then the sequence number, so the
/// index costs 16 bytes a leaf; a lookup checks each candidate's full leaf hash.
pub(crate) fn leaf_index_key(leaf_hash: &Hash, seq: u64) -> [u8; 16] {
    leaf_index_key_from_prefix(&leaf_prefix(leaf_hash), seq)
}

pub(crate) fn leaf_prefix(leaf_hash: &Hash) -> [u8; 8] {
    leaf_hash[..8].try_into().expect("8 bytes")
}

pub(crate) fn leaf_index_key_from_prefix(prefix: &[u8; 8], seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(prefix);
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn be_u64(bytes: &[u8], what: &str) -> Result<u64, LedgerError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| LedgerError::Corrupted(format!("{what} is not 8 bytes")))?;
    Ok(u64::from_be_bytes(arr))
}

/// RocksDB's log format, used by the MANIFEST: 32 KiB blocks of records, each behind a
/// 7-byte header (masked CRC-32C: 4 bytes, payload length: 2 bytes little-endian, type: 1).
const LOG_BLOCK_BYTES: usize = 32 * 1024;
const LOG_HEADER_BYTES: usize = 7;
/// Record types of a recycled log file, which RocksDB never writes to a MANIFEST.
const LOG_RECYCLABLE_TYPES: std::ops::RangeInclusive<u8> = 5..=8;

/// Refuse a MANIFEST holding a record of a recyclable type: one flipped bit turns a full
/// record (type 1) into one (type 5), and RocksDB 10.4's `DB::Open` then loops forever
/// reading it (the corruption test found this; `tests/fixtures/manifest-record-type-flip`).
/// Only record headers are read; everything else, including checksums, RocksDB checks
/// itself. A directory without a `CURRENT` file is new and has nothing to check.
fn check_manifest(dir: &Path) -> Result<(), LedgerError> {
    let Ok(current) = std::fs::read_to_string(dir.join("CURRENT")) else { return Ok(()) };
    let name = current.trim_end_matches('\n');
    if !name.starts_with("MANIFEST-") || name.contains('/') {
        return Err(LedgerError::Corrupted(format!("CURRENT names {name:?}, not a MANIFEST")));
    }
    // A missing MANIFEST is RocksDB's to report.
    let Ok(bytes) = std::fs::read(dir.join(name)) else { return Ok(()) };
    let mut at = 0;
    while at + LOG_HEADER_BYTES <= bytes.len() {
        let left_in_block = LOG_BLOCK_BYTES - at % LOG_BLOCK_BYTES;
        if left_in_block < LOG_HEADER_BYTES {
            // The writer pads a block's last few bytes with zeros.
            at += left_in_block;
            continue;
        }
        let length = usize::from(u16::from_le_bytes([bytes[at + 4], bytes[at + 5]]));
        let kind = bytes[at + 6];
        if LOG_RECYCLABLE_TYPES.contains(&kind) {
            return Err(LedgerError::Corrupted(format!(
                "{name}: the record at byte {at} has type {kind}, which is never written to a MANIFEST"
            )));
        }
        if kind == 0 && length == 0 {
            // Zeros from preallocation: RocksDB skips them; nothing further is a record.
            break;
        }
        let end = at + LOG_HEADER_BYTES + length;
        if end > bytes.len() && at + left_in_block > bytes.len() {
            // Past the end of the file, in its last block: RocksDB takes this for a record
            // torn by a crash and ignores it and everything after it. That is right for a
            // torn write, but a flipped bit in the length makes a whole record look like one,
            // and the flushes and compactions recorded after it are silently forgotten (an
            // index lost entries that way). A torn record has no shorter length that its
            // checksum matches; a damaged length does.
            if let Some(actual) = checksummed_length(&bytes, at) {
                return Err(LedgerError::Corrupted(format!(
                    "{name}: the record at byte {at} claims {length} bytes, past the end of the file, but its \
                     checksum matches {actual}: its length is damaged, and every record after it would be lost"
                )));
            }
            break;
        }
        at = end;
    }
    Ok(())
}

/// RocksDB's masked CRC-32C of a log record (type byte, then payload), as in its header.
fn log_record_crc(kind: u8, payload: &[u8]) -> u32 {
    masked(crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload))
}

/// RocksDB's CRC mask (stored CRCs are rotated and offset, so that a CRC of data holding
/// CRCs is not degenerate).
fn masked(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// The payload length, if any, at which the log record whose header is at `at` checks out
/// and is followed by the end of the file or by another record that checks out. Each byte
/// is hashed once: the CRC is extended through the rest of the file, tried at every length.
fn checksummed_length(bytes: &[u8], at: usize) -> Option<usize> {
    let valid_at = |at: usize| -> bool {
        let Some(header) = bytes.get(at..at + LOG_HEADER_BYTES) else { return false };
        let length = usize::from(u16::from_le_bytes([header[4], header[5]]));
        let stored = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let start = at + LOG_HEADER_BYTES;
        bytes.get(start..start + length).is_some_and(|payload| log_record_crc(header[6], payload) == stored)
    };
    let stored = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let start = at + LOG_HEADER_BYTES;
    let block_end = (at / LOG_BLOCK_BYTES + 1) * LOG_BLOCK_BYTES;
    let mut crc = crc32c::crc32c(&[bytes[at + 6]]);
    for length in 0..=(bytes.len().min(block_end) - start) {
        if length > 0 {
            crc = crc32c::crc32c_append(crc, &bytes[start + length - 1..start + length]);
        }
        let next = start + length;
        if masked(crc) == stored && (next == bytes.len() || valid_at(next)) {
            return Some(length);
        }
    }
    None
}

/// Bytes RocksDB holds in memory, by what holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreMemory {
    /// Active and immutable memtables of every column family, bounded by
    /// [`MEMTABLES_BYTES_MAX`].
    pub memtables: u64,
    /// The shared block cache, bounded by [`BLOCK_CACHE_BYTES`] (index and filter blocks
    /// are charged to it too).
    pub block_cache: u64,
    /// Table readers outside the block cache (pinned top-level indexes and filters).
    pub table_readers: u64,
}

/// How far RocksDB's background work is behind ([`Store::backlog`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Level-0 files of the family with the most (RocksDB slows writes down at 20).
    pub level0_files: u64,
    /// Memtables waiting to be flushed, in the family with the most (with two memtables a
    /// family, writes stop when its active one fills while one waits).
    pub immutable_memtables: u64,
    /// Bytes compactions would rewrite to bring every level within its target, in all.
    pub pending_compaction_bytes: u64,
    /// RocksDB is delaying or stopping writes until its background work catches up.
    pub writes_held_back: bool,
}

/// The RocksDB database and typed reads over it. Cheap to clone; safe to share.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.db.path()).finish()
    }
}

impl Store {
    /// Open (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, LedgerError> {
        check_manifest(dir)?;
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // Checksums on every read make a flipped byte an error rather than a wrong answer.
        db_opts.set_paranoid_checks(true);
        // A damaged record anywhere in the write-ahead log fails the open. RocksDB's default
        // (point-in-time recovery) would instead stop replaying at the damage and open
        // without every later group, silently losing acknowledged entries; the corruption
        // test found that. Only an incomplete last record, which a crash mid-write leaves
        // and which was never acknowledged, is tolerated.
        db_opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
        // One memtable budget for all column families (each would otherwise grow to 64 MiB
        // before flushing, ~640 MiB in all): memory stays flat as the ledger grows. Each
        // family has its own, smaller size within it (`memtable_bytes`).
        db_opts.set_db_write_buffer_size(MEMTABLES_BYTES_MAX);
        db_opts.set_max_total_wal_size(WAL_BYTES_MAX);
        // No rate limit on flushes and compactions: they run in the idle scheduling class
        // while they keep up (`background.rs`), so they already yield the CPU to ingest.
        // A 16 MiB/s limit, from before that, capped sustained ingest: after a 750k-receipt
        // warm-up the node took 26k-29k receipts/s with it and 32k-42k without.
        // One block cache for every column family (each would otherwise get its own).
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cfs = COLUMN_FAMILIES.iter().map(|name| {
            let mut cf = Options::default();
            cf.set_write_buffer_size(memtable_bytes(name));
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            // Index and filter blocks grow with the data (about 50 MiB per 10M receipts);
            // held outside the cache they made memory grow with the ledger. Partitioned, they
            // live in the bounded block cache, and only their small top levels stay pinned.
            table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
            table.set_partition_filters(true);
            table.set_cache_index_and_filter_blocks(true);
            table.set_pin_top_level_index_and_filter(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            if [CF_DEDUP, CF_STATE, CF_REGISTRY].contains(name) {
                // Dedup lookups and registry probes (one per URL prefix) are mostly misses:
                // a bloom filter answers them without I/O.
                table.set_bloom_filter(10.0, false);
                // The memtables too: without their own filter a miss still searches the
                // skip list (a fifth of the sequencer's time went to such searches).
                cf.set_memtable_whole_key_filtering(true);
                cf.set_memtable_prefix_bloom_ratio(0.05);
            }
            if [CF_DEDUP, CF_LEAF_INDEX, CF_PARTIES].contains(name) {
                // Keys in hash (or participant) order: every memtable flush spans the whole
                // key range. With the defaults (one 256 MiB base level, 64 MiB files) the base
                // level was the last one until it held 2.5 GiB, so each level-0 compaction
                // rewrote all of it: the cost of a write grew with the ledger, which the soak
                // showed as creeping latency. Small files and a small base level make
                // levels appear early and each compaction rewrite one narrow key range.
                cf.set_target_file_size_base(8 << 20);
                cf.set_max_bytes_for_level_base(64 << 20);
            }
            if *name == CF_ENTRIES || *name == CF_LEAVES {
                // Written once and read in ranges (export, bundles): 16 KiB blocks let zstd
                // find the structure entries share (contract ids, URL prefixes, lab keys),
                // and the last level gets a dictionary trained on them. Point-lookup
                // families keep small blocks so a lookup decompresses little.
                table.set_block_size(16 * 1024);
                cf.set_bottommost_compression_type(DBCompressionType::Zstd);
                cf.set_bottommost_compression_options(-14, 32767, 0, 16 * 1024, true);
                cf.set_bottommost_zstd_max_train_bytes(100 * 16 * 1024, true);
            }
            cf.set_block_based_table_factory(&table);
            // zstd everywhere (a file may be moved to the last level without being
            // rewritten, so it keeps the codec it was flushed with); flushes run beside
            // ingest, so above the last level zstd runs at its fastest level.
            cf.set_compression_type(DBCompressionType::Zstd);
            cf.set_compression_options(-14, 1, 0, 0);
            if *name == CF_HASHES || *name == CF_DEDUP {
                // Tree hashes and dedup ids are SHA-256 outputs: zstd saved 10-20% of their
                // bytes and was about a third of all flush and compaction CPU (perf), most
                // of it building Huffman tables for random literals.
                cf.set_compression_type(DBCompressionType::None);
            }
            if *name == CF_HASHES {
                // Keys are (level, index): level-0 hashes come in order, but every flush also
                // holds a few higher-level ones, so its key range reaches past the end of the
                // level-0 run, and a base-level file cut at the default 64 MiB that spans
                // that end was rewritten by every level-0 compaction (6x write amplification
                // in this family). Small files bound what each compaction rewrites.
                cf.set_target_file_size_base(4 << 20);
                cf.set_max_bytes_for_level_base(32 << 20);
            }
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db = DB::open_cf_descriptors(&db_opts, dir, cfs)?;
        let store = Self { db: Arc::new(db) };
        store.move_tables_out_of_state()?;
        Ok(store)
    }

    /// Ledgers written before the `charges` and `registry` families existed kept charge
    /// records and URL patterns in `state`. Move them, in synced batches that each put and
    /// delete the same keys, so that a crash part-way leaves every record in exactly one of
    /// the two and the next open carries on.
    fn move_tables_out_of_state(&self) -> Result<(), LedgerError> {
        const MOVE_BATCH: usize = 10_000;
        for table in [tally_settlement::engine::CHARGES_TABLE, tally_settlement::engine::PATTERNS_TABLE] {
            let prefix = [table];
            let to = state_cf(&prefix);
            loop {
                let mut batch = WriteBatch::default();
                let mut moved = 0;
                for item in self.db.iterator_cf(self.cf(CF_STATE), IteratorMode::From(&prefix, Direction::Forward)) {
                    let (k, v) = item?;
                    if k.first() != Some(&table) || moved == MOVE_BATCH {
                        break;
                    }
                    batch.put_cf(self.cf(to), &k, &v);
                    batch.delete_cf(self.cf(CF_STATE), &k);
                    moved += 1;
                }
                if moved == 0 {
                    break;
                }
                self.write_synced(batch)?;
            }
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column families are created on open")
    }

    pub(crate) fn batch_put(&self, batch: &mut WriteBatch, cf: &str, key: &[u8], value: &[u8]) {
        batch.put_cf(self.cf(cf), key, value);
    }

    pub(crate) fn batch_delete(&self, batch: &mut WriteBatch, cf: &str, key: &[u8]) {
        batch.delete_cf(self.cf(cf), key);
    }

    /// Delete the keys `[from, to)` of a sequence-keyed family.
    pub(crate) fn batch_delete_seqs(&self, batch: &mut WriteBatch, cf: &str, from: u64, to: u64) {
        batch.delete_range_cf(self.cf(cf), seq_key(from), seq_key(to));
    }

    /// `meta/indexed`, if it was ever written (ledgers from before the index journal have
    /// none, and every index record of theirs is written).
    pub(crate) fn indexed(&self) -> Result<Option<u64>, LedgerError> {
        match self.db.get_cf(self.cf(CF_META), META_INDEXED)? {
            None => Ok(None),
            Some(v) => Ok(Some(be_u64(&v, "meta indexed")?)),
        }
    }

    /// The index journal records from entry `from` on, in order.
    pub(crate) fn journal(&self, from: u64) -> Result<Vec<crate::index::JournalRecord>, LedgerError> {
        let iter =
            self.db.iterator_cf(self.cf(CF_INDEX_JOURNAL), IteratorMode::From(&seq_key(from), Direction::Forward));
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item?;
            out.push(crate::index::JournalRecord::decode(be_u64(&k, "index journal key")?, &v)?);
        }
        Ok(out)
    }

    /// Write a batch durably (fsync of the write-ahead log before returning).
    pub(crate) fn write_synced(&self, batch: WriteBatch) -> Result<(), LedgerError> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Write a batch to the write-ahead log and the memtables without waiting for the disk:
    /// it is readable at once and durable after the next [`Store::sync_wal`] (or synced
    /// write). The sequencer's groups go this way, so that the next group is applied while
    /// the sync thread waits for the disk (`ledger.rs`).
    pub(crate) fn write_unsynced(&self, batch: WriteBatch) -> Result<(), LedgerError> {
        self.db.write(batch)?;
        Ok(())
    }

    /// Make everything written so far durable: one fsync of the write-ahead log (RocksDB's
    /// `SyncWAL`), safe beside concurrent writes; a write that returned before this call
    /// is covered by it.
    pub(crate) fn sync_wal(&self) -> Result<(), LedgerError> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// The tree size recorded by the last committed batch.
    pub fn stored_size(&self) -> Result<u64, LedgerError> {
        match self.db.get_cf(self.cf(CF_META), META_SIZE)? {
            None => Ok(0),
            Some(v) => be_u64(&v, "meta size"),
        }
    }

    /// The last key of a sequence-keyed column family, if any.
    pub(crate) fn last_seq(&self, cf: &str) -> Result<Option<u64>, LedgerError> {
        match self.db.iterator_cf(self.cf(cf), IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => Ok(Some(be_u64(&item?.0, cf)?)),
        }
    }

    /// The full entry at `seq`.
    pub fn entry(&self, seq: u64) -> Result<Option<Entry>, LedgerError> {
        match self.db.get_cf(self.cf(CF_ENTRIES), seq_key(seq))? {
            None => Ok(None),
            Some(bytes) => Entry::decode(&bytes)
                .map(Some)
                .map_err(|e| LedgerError::Corrupted(format!("entry {seq} does not decode: {e}"))),
        }
    }

    /// The raw bytes of the entry at `seq`.
    pub fn entry_bytes(&self, seq: u64) -> Result<Option<Vec<u8>>, LedgerError> {
        Ok(self.db.get_cf(self.cf(CF_ENTRIES), seq_key(seq))?)
    }

    /// The public leaf record at `seq`.
    pub fn leaf(&self, seq: u64) -> Result<Option<LeafRecord>, LedgerError> {
        match self.db.get_cf(self.cf(CF_LEAVES), seq_key(seq))? {
            None => Ok(None),
            Some(bytes) => LeafRecord::decode(&bytes)
                .map(Some)
                .map_err(|e| LedgerError::Corrupted(format!("leaf {seq} does not decode: {e}"))),
        }
    }

    /// Leaf records `[start, end)`, encoded, in order.
    pub fn leaf_records(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, LedgerError> {
        if end <= start {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((end - start) as usize);
        let iter = self.db.iterator_cf(self.cf(CF_LEAVES), IteratorMode::From(&seq_key(start), Direction::Forward));
        for item in iter {
            let (k, v) = item?;
            let seq = be_u64(&k, "leaf key")?;
            if seq >= end {
                break;
            }
            if seq != start + out.len() as u64 {
                return Err(LedgerError::Corrupted(format!("leaf {} is missing", start + out.len() as u64)));
            }
            out.push(v.to_vec());
        }
        if out.len() as u64 != end - start {
            return Err(LedgerError::Corrupted(format!("leaves {start}..{end} are incomplete")));
        }
        Ok(out)
    }

    /// Stored hashes at tile height `level` (a multiple of 8), indices `[start, start + count)`.
    pub(crate) fn stored_hashes(&self, level: u8, start: u64, count: u64) -> Result<Vec<Hash>, LedgerError> {
        debug_assert_eq!(level % TILE_HEIGHT, 0);
        let mut out = Vec::with_capacity(count as usize);
        let from = hash_key(level, start);
        let iter = self.db.iterator_cf(self.cf(CF_HASHES), IteratorMode::From(&from, Direction::Forward));
        for item in iter.take(count as usize) {
            let (k, v) = item?;
            let want = hash_key(level, start + out.len() as u64);
            if *k != want {
                return Err(LedgerError::Corrupted(format!("hash {level}/{} is missing", start + out.len() as u64)));
            }
            out.push(v.as_ref().try_into().map_err(|_| LedgerError::Corrupted("hash is not 32 bytes".into()))?);
        }
        if out.len() as u64 != count {
            return Err(LedgerError::Corrupted(format!("hashes {level}/{start}+{count} are incomplete")));
        }
        Ok(out)
    }

    /// The bytes of tile `index` at tile level `level` with `width` hashes. The caller
    /// (`Ledger::tile`) has checked that the tile exists at the committed size.
    pub(crate) fn tile(&self, level: u8, index: u64, width: u16) -> Result<Vec<u8>, LedgerError> {
        let hashes = self.stored_hashes(level * TILE_HEIGHT, index * TILE_WIDTH, u64::from(width))?;
        Ok(hashes.concat())
    }

    /// An entry bundle: leaf records of tile `index`, each behind a big-endian u16 length.
    /// The caller (`Ledger::entry_bundle`) has checked that it exists at the committed size.
    pub(crate) fn entry_bundle(&self, index: u64, width: u16) -> Result<Vec<u8>, LedgerError> {
        let start = index * TILE_WIDTH;
        let records = self.leaf_records(start, start + u64::from(width))?;
        let mut out = Vec::with_capacity(records.iter().map(|r| r.len() + 2).sum());
        for r in records {
            let len = u16::try_from(r.len()).map_err(|_| LedgerError::Corrupted("leaf record too long".into()))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&r);
        }
        Ok(out)
    }

    /// [`Store::dedup`] for many keys at once (one batched read), in the order given.
    pub(crate) fn dedup_many(&self, ids: &[Hash]) -> Result<Vec<Option<u64>>, LedgerError> {
        self.db
            .batched_multi_get_cf(self.cf(CF_DEDUP), ids, false)
            .into_iter()
            .map(|r| r?.map(|v| be_u64(&v, "dedup value")).transpose())
            .collect()
    }

    /// Whether each `leaf_index` key is present (the index stores no value).
    pub(crate) fn leaf_index_present(&self, keys: &[[u8; 16]]) -> Result<Vec<bool>, LedgerError> {
        self.db
            .batched_multi_get_cf(self.cf(CF_LEAF_INDEX), keys, false)
            .into_iter()
            .map(|r| Ok(r?.is_some()))
            .collect()
    }

    /// The sequence number an entry with this idempotency key (`Entry::dedup_id`) was
    /// first appended at, if its record is written out (`Ledger::dedup` also sees the
    /// index window).
    pub(crate) fn dedup(&self, receipt_id: &Hash) -> Result<Option<u64>, LedgerError> {
        match self.db.get_cf(self.cf(CF_DEDUP), receipt_id)? {
            None => Ok(None),
            Some(v) => Ok(Some(be_u64(&v, "dedup value")?)),
        }
    }

    /// Sequence numbers of the entries that moved money of participant `party` or that it
    /// authored, from `from`, at most `limit`, among the records written out.
    pub(crate) fn party_entries(&self, party: u64, from: u64, limit: usize) -> Result<Vec<u64>, LedgerError> {
        let start = party_key(party, from);
        let ours = |k: &[u8]| k.len() == 16 && k[..8] == party.to_be_bytes();
        // A record holds up to `PARTY_RECORD_SEQS` entries from its key's on, so the one
        // holding `from` may start before it: the last record at or before `start`, if it
        // is this participant's; otherwise its first record after `start`.
        let mut iter = self.db.raw_iterator_cf(self.cf(CF_PARTIES));
        iter.seek_for_prev(start);
        if !iter.key().is_some_and(ours) {
            iter.seek(start);
        }
        let mut out = Vec::new();
        while out.len() < limit
            && let (Some(k), Some(v)) = (iter.key(), iter.value())
            && ours(k)
        {
            let (_, seqs) = party_seqs(k, v)?;
            out.extend(seqs.into_iter().filter(|seq| *seq >= from).take(limit - out.len()));
            iter.next();
        }
        iter.status()?;
        Ok(out)
    }

    /// The postings of the non-receipt entry at `seq`, if it moved money (a receipt's are in
    /// its settlement charge record).
    pub fn effects(&self, seq: u64) -> Result<Option<Vec<Posting>>, LedgerError> {
        match self.db.get_cf(self.cf(CF_EFFECTS), seq_key(seq))? {
            None => Ok(None),
            Some(v) => tally_core::codec::decode_exact(&v)
                .map(Some)
                .map_err(|e| LedgerError::Corrupted(format!("effects {seq}: {e}"))),
        }
    }

    /// The position of the leaf with this leaf hash, if its record is written out.
    pub(crate) fn seq_of_leaf(&self, leaf_hash: &Hash) -> Result<Option<u64>, LedgerError> {
        let prefix = &leaf_hash[..8];
        let iter = self.db.iterator_cf(self.cf(CF_LEAF_INDEX), IteratorMode::From(prefix, Direction::Forward));
        for item in iter {
            let (k, _) = item?;
            if k.len() != 16 || &k[..8] != prefix {
                break;
            }
            let seq = be_u64(&k[8..], "leaf index key")?;
            if self.leaf(seq)?.is_some_and(|l| l.leaf_hash() == *leaf_hash) {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    /// Up to `limit` (leaf record, entry bytes) pairs from `from`, below `end`, in order.
    pub fn export(&self, from: u64, end: u64, limit: usize) -> Result<Pairs, LedgerError> {
        let to = end.min(from.saturating_add(limit as u64));
        let leaves = self.leaf_records(from, to)?;
        let mut out = Vec::with_capacity(leaves.len());
        let iter = self.db.iterator_cf(self.cf(CF_ENTRIES), IteratorMode::From(&seq_key(from), Direction::Forward));
        for (leaf, item) in leaves.into_iter().zip(iter) {
            let (k, v) = item?;
            let seq = be_u64(&k, "entry key")?;
            if seq != from + out.len() as u64 {
                return Err(LedgerError::Corrupted(format!("entry {} is missing", from + out.len() as u64)));
            }
            out.push((leaf, v.to_vec()));
        }
        if out.len() as u64 != to - from {
            return Err(LedgerError::Corrupted(format!("entries {from}..{to} are incomplete")));
        }
        Ok(out)
    }

    /// The signed checkpoint note stored for exactly `size`.
    pub fn checkpoint_at(&self, size: u64) -> Result<Option<String>, LedgerError> {
        self.db
            .get_cf(self.cf(CF_CHECKPOINTS), seq_key(size))?
            .map(|v| {
                String::from_utf8(v).map_err(|_| LedgerError::Corrupted(format!("checkpoint {size} is not UTF-8")))
            })
            .transpose()
    }

    /// Signed checkpoints from size `from` on, at most `limit`, in size order.
    pub fn checkpoints(&self, from: u64, limit: usize) -> Result<Vec<(u64, String)>, LedgerError> {
        let iter = self.db.iterator_cf(self.cf(CF_CHECKPOINTS), IteratorMode::From(&seq_key(from), Direction::Forward));
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item?;
            let size = be_u64(&k, "checkpoint key")?;
            let note = String::from_utf8(v.to_vec())
                .map_err(|_| LedgerError::Corrupted(format!("checkpoint {size} is not UTF-8")))?;
            out.push((size, note));
        }
        Ok(out)
    }

    /// The newest signed checkpoint note and its size.
    pub fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, LedgerError> {
        match self.last_seq(CF_CHECKPOINTS)? {
            None => Ok(None),
            Some(size) => Ok(self.checkpoint_at(size)?.map(|note| (size, note))),
        }
    }

    /// What RocksDB holds in memory now; every part is bounded (see `specs/storage.md`).
    pub fn memory(&self) -> Result<StoreMemory, LedgerError> {
        let sum = |property: &str| -> Result<u64, LedgerError> {
            let mut total = 0;
            for name in COLUMN_FAMILIES {
                total += self.db.property_int_value_cf(self.cf(name), property)?.unwrap_or(0);
            }
            Ok(total)
        };
        Ok(StoreMemory {
            memtables: sum("rocksdb.cur-size-all-mem-tables")?,
            // One cache for every family of ours, so its usage is read from one of them
            // (the `default` family, which Tally does not use, has a cache of its own).
            block_cache: self.db.property_int_value_cf(self.cf(CF_ENTRIES), "rocksdb.block-cache-usage")?.unwrap_or(0),
            table_readers: sum("rocksdb.estimate-table-readers-mem")?,
        })
    }

    /// How far RocksDB's flushes and compactions are behind: the most level-0 files and
    /// immutable memtables of any family, the compaction bytes pending in all, and whether
    /// writes are being held back for them.
    pub fn backlog(&self) -> Result<Backlog, LedgerError> {
        let mut backlog = Backlog::default();
        for name in COLUMN_FAMILIES {
            let cf = self.cf(name);
            let property =
                |p: &str| -> Result<u64, LedgerError> { Ok(self.db.property_int_value_cf(cf, p)?.unwrap_or(0)) };
            backlog.level0_files = backlog.level0_files.max(property("rocksdb.num-files-at-level0")?);
            backlog.immutable_memtables = backlog.immutable_memtables.max(property("rocksdb.num-immutable-mem-table")?);
            backlog.pending_compaction_bytes += property("rocksdb.estimate-pending-compaction-bytes")?;
        }
        let db_property = |p: &str| -> Result<u64, LedgerError> { Ok(self.db.property_int_value(p)?.unwrap_or(0)) };
        backlog.writes_held_back =
            db_property("rocksdb.is-write-stopped")? != 0 || db_property("rocksdb.actual-delayed-write-rate")? != 0;
        Ok(backlog)
    }

    /// Write every column family's memtables to table files.
    pub fn flush(&self) -> Result<(), LedgerError> {
        for name in COLUMN_FAMILIES {
            self.db.flush_cf(self.cf(name))?;
        }
        Ok(())
    }

    /// Flush memtables and compact everything; used before measuring size on disk.
    pub fn compact(&self) -> Result<(), LedgerError> {
        self.flush()?;
        for name in COLUMN_FAMILIES {
            self.db.compact_range_cf(self.cf(name), None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }
}

impl StateStore for Store {
    const BATCHED_READS: bool = true;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.db.get_cf(self.cf(state_cf(key)), key).map_err(state_storage)
    }

    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let mut out = vec![None; keys.len()];
        for cf in [CF_STATE, CF_CHARGES, CF_REGISTRY] {
            let (at, these): (Vec<usize>, Vec<&[u8]>) =
                keys.iter().enumerate().filter(|(_, k)| state_cf(k) == cf).map(|(i, k)| (i, *k)).unzip();
            if these.is_empty() {
                continue;
            }
            for (i, r) in at.into_iter().zip(self.db.batched_multi_get_cf(self.cf(cf), these, false)) {
                out[i] = r.map_err(state_storage)?.map(|v| v.to_vec());
            }
        }
        Ok(out)
    }

    fn scan(&self, prefix: u8) -> Result<Pairs, StateError> {
        prefix_pairs(
            self.db.iterator_cf(self.cf(state_cf(&[prefix])), IteratorMode::From(&[prefix], Direction::Forward)),
            prefix,
        )
    }
}

/// A RocksDB failure under the settlement engine.
pub(crate) fn state_storage(e: rocksdb::Error) -> StateError {
    StateError::Storage(e.to_string())
}

/// The pairs an iterator started at `[prefix]` yields while their keys start with `prefix`.
pub(crate) fn prefix_pairs(
    iter: impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
    prefix: u8,
) -> Result<Pairs, StateError> {
    let mut out = Vec::new();
    for item in iter {
        let (k, v) = item.map_err(state_storage)?;
        if k.first() != Some(&prefix) {
            break;
        }
        out.push((k.to_vec(), v.to_vec()));
    }
    Ok(out)
}

impl NodeReader for Store {
    type Error = LedgerError;
    fn node(&self, level: u8, index: u64) -> Result<Hash, LedgerError> {
        let (base, first, count) = node_base(level, index);
        Ok(hash_up(self.stored_hashes(base, first, count)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_settlement::engine::{CHARGES_TABLE, PATTERNS_TABLE};

    #[test]
    fn party_records_hold_several_entries_and_old_single_ones_still_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open");
        let cf = store.cf(CF_PARTIES);
        // Party 5: two old one-entry records, then records of several, one with a
        // difference of 300 (two LEB128 bytes). Parties 4 and 6 around it.
        store.db.put_cf(cf, party_key(5, 3), []).expect("put");
        store.db.put_cf(cf, party_key(5, 9), []).expect("put");
        store.db.put_cf(cf, party_key(5, 10), party_value(10, &[11, 12, 312])).expect("put");
        store.db.put_cf(cf, party_key(5, 400), party_value(400, &[401])).expect("put");
        store.db.put_cf(cf, party_key(4, 1), party_value(1, &[2, 500])).expect("put");
        store.db.put_cf(cf, party_key(6, 0), []).expect("put");
        let all = [3, 9, 10, 11, 12, 312, 400, 401];
        assert_eq!(store.party_entries(5, 0, usize::MAX).unwrap(), all);
        // From inside a record, past its last entry, and between records.
        assert_eq!(store.party_entries(5, 11, usize::MAX).unwrap(), &all[3..]);
        assert_eq!(store.party_entries(5, 13, 2).unwrap(), vec![312, 400]);
        assert_eq!(store.party_entries(5, 4, 1).unwrap(), vec![9]);
        assert_eq!(store.party_entries(5, 402, usize::MAX).unwrap(), Vec::<u64>::new());
        assert_eq!(store.party_entries(4, 3, usize::MAX).unwrap(), vec![500]);
        assert_eq!(store.party_entries(6, 0, usize::MAX).unwrap(), vec![0]);
        assert_eq!(store.party_entries(7, 0, usize::MAX).unwrap(), Vec::<u64>::new());
        assert_eq!(party_value(10, &[11, 12, 312]), vec![1, 1, 0xac, 0x02]);
        // A damaged value is an error, never other entries.
        let key = party_key(5, 10);
        for bad in [
            &[0x80][..],
            &[0][..],
            &[0x80, 0][..],
            &[0xff; 10][..],
            &[0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02][..],
        ] {
            assert!(party_seqs(&key, bad).is_err(), "{bad:?}");
        }
        assert!(party_seqs(&party_key(5, u64::MAX), &[1]).is_err(), "past u64");
        store.db.put_cf(cf, party_key(5, 9), [0x80]).expect("put");
        assert!(store.party_entries(5, 0, usize::MAX).is_err());
    }

    #[test]
    fn charges_and_patterns_live_in_their_own_families_and_old_ones_move_there_on_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let charge = [CHARGES_TABLE, 0, 0, 0, 0, 0, 0, 0, 7];
        let other = [PATTERNS_TABLE, 1, 2];
        {
            // As a ledger from before the split left it: charge records in `state`.
            let store = Store::open(dir.path()).expect("open");
            let state = store.cf(CF_STATE);
            store.db.put_cf(state, charge, b"charge").expect("put");
            store.db.put_cf(state, other, b"pattern").expect("put");
            store.db.put_cf(state, [CHARGES_TABLE + 1, 9], b"marker").expect("put");
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.db.get_cf(store.cf(CF_STATE), charge).expect("get"), None, "moved out of state");
        assert_eq!(store.db.get_cf(store.cf(CF_CHARGES), charge).expect("get").as_deref(), Some(&b"charge"[..]));
        assert_eq!(store.db.get_cf(store.cf(CF_STATE), other).expect("get"), None, "moved out of state");
        assert_eq!(store.db.get_cf(store.cf(CF_REGISTRY), other).expect("get").as_deref(), Some(&b"pattern"[..]));
        let marker = [CHARGES_TABLE + 1, 9];
        assert_eq!(store.db.get_cf(store.cf(CF_STATE), marker).expect("get").as_deref(), Some(&b"marker"[..]));
        // Reads route by table: one at a time, together, and by prefix.
        assert_eq!(store.get(&charge).expect("get").as_deref(), Some(&b"charge"[..]));
        let many = store.get_many(&[&other, &charge, &[CHARGES_TABLE, 1], &[CHARGES_TABLE + 1, 9]]).expect("get");
        assert_eq!(many, vec![Some(b"pattern".to_vec()), Some(b"charge".to_vec()), None, Some(b"marker".to_vec())]);
        assert_eq!(store.scan(CHARGES_TABLE).expect("scan"), vec![(charge.to_vec(), b"charge".to_vec())]);
        assert_eq!(store.scan(PATTERNS_TABLE).expect("scan"), vec![(other.to_vec(), b"pattern".to_vec())]);
    }

    /// A log-format record as RocksDB writes it: masked CRC, length, type, payload.
    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut r = log_record_crc(kind, payload).to_le_bytes().to_vec();
        r.extend((payload.len() as u16).to_le_bytes());
        r.push(kind);
        r.extend(payload);
        r
    }

    fn manifest_dir(bytes: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("CURRENT"), "MANIFEST-000005\n").expect("write");
        std::fs::write(dir.path().join("MANIFEST-000005"), bytes).expect("write");
        dir
    }

    #[test]
    fn the_record_checksum_is_rocksdbs() {
        // CRC-32C itself, against RFC 3720's test vector (32 bytes of zeros).
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
        // Every record of a MANIFEST that RocksDB wrote checks out with ours.
        let dir = tempfile::tempdir().expect("temp dir");
        drop(Store::open(dir.path()).expect("open"));
        let current = std::fs::read_to_string(dir.path().join("CURRENT")).expect("CURRENT");
        let bytes = std::fs::read(dir.path().join(current.trim_end())).expect("MANIFEST");
        let (mut at, mut records) = (0, 0);
        while at + LOG_HEADER_BYTES <= bytes.len() {
            let length = usize::from(u16::from_le_bytes([bytes[at + 4], bytes[at + 5]]));
            let stored = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
            let payload = &bytes[at + LOG_HEADER_BYTES..at + LOG_HEADER_BYTES + length];
            assert_eq!(log_record_crc(bytes[at + 6], payload), stored, "record at {at}");
            at += LOG_HEADER_BYTES + length;
            records += 1;
        }
        assert!(records >= 11, "a record per column family at least: {records}");
    }

    #[test]
    fn a_torn_last_manifest_record_is_tolerated_but_a_damaged_length_is_refused() {
        let mut bytes = Vec::new();
        for n in 0..5u8 {
            bytes.extend(record(1, &vec![n; 40 + usize::from(n) * 7]));
        }
        let last = record(1, &[9; 120]);
        let last_at = bytes.len();
        bytes.extend(&last);
        assert!(check_manifest(manifest_dir(&bytes).path()).is_ok(), "intact");
        // A crash mid-write leaves any prefix of the last record: RocksDB ignores it.
        for cut in [last_at + 3, last_at + 7, last_at + 8, last_at + 60, bytes.len() - 1] {
            assert!(check_manifest(manifest_dir(&bytes[..cut]).path()).is_ok(), "torn at {cut}");
        }
        // A flipped bit in a length's high byte: the record now runs past the end of the
        // file, which RocksDB would take for a torn write, dropping everything after it.
        for at in [0, last_at] {
            let length_high = at + 5;
            for bit in 2..8 {
                let mut damaged = bytes.clone();
                damaged[length_high] ^= 1 << bit;
                match check_manifest(manifest_dir(&damaged).path()) {
                    Err(LedgerError::Corrupted(why)) => {
                        assert!(
                            why.contains(&format!("record at byte {at}")) && why.contains("length is damaged"),
                            "{why}"
                        )
                    }
                    other => panic!("bit {bit} of the length at {at}: {other:?}"),
                }
            }
        }
    }
}
