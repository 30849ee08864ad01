//! Settlement state on disk for a replay that must not hold it all in memory: the
//! auditor's. A replay keeps one charge record per receipt and one marker per article it
//! has seen (a reversal, or a second fetch of the article, reads them later), which in
//! memory grows with the ledger. Here they go to a RocksDB of their own, made for the
//! replay and thrown away after it: nothing is synced and there is no write-ahead log, since
//! a replay that stops is started again from the export.

use std::path::Path;

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, ColumnFamilyDescriptor, DB, DBCompressionType, Direction, IteratorMode,
    Options, WriteBatch, WriteOptions,
};
use tally_settlement::state::Pairs;
use tally_settlement::{ApplyWrites, StateError, StateStore, Writes};

use crate::LedgerError;
use crate::store::{prefix_pairs, state_storage};

/// Each of the (at most two) memtables.
pub const SCRATCH_MEMTABLE_BYTES: usize = 16 << 20;
/// The block cache, index and filter blocks included.
pub const SCRATCH_CACHE_BYTES: usize = 32 << 20;

/// Replayed settlement state in a throw-away RocksDB.
pub struct ScratchState {
    db: DB,
}

impl std::fmt::Debug for ScratchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScratchState").field("path", &self.db.path()).finish()
    }
}

impl ScratchState {
    /// Create the state in `dir`, which must not hold a database already (the caller owns
    /// the directory and removes it after the replay).
    pub fn create(dir: &Path) -> Result<Self, LedgerError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_error_if_exists(true);
        // Memory is what this is for: small memtables, and a bounded cache that holds the
        // index and filter blocks too (outside it they grow with the data). Partitioned, as
        // in the ledger's store: a whole file's filter in the cache was evicted and read
        // again over and over (a 1M-entry replay took five times as long).
        opts.set_write_buffer_size(SCRATCH_MEMTABLE_BYTES);
        opts.set_max_write_buffer_number(2);
        // Lookups are mostly misses (a marker for an article not seen before): a bloom
        // filter answers those without reading a block.
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&rocksdb::Cache::new_lru_cache(SCRATCH_CACHE_BYTES));
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_top_level_index_and_filter(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        opts.set_block_based_table_factory(&table);
        opts.set_memtable_whole_key_filtering(true);
        opts.set_memtable_prefix_bloom_ratio(0.05);
        // Short-lived and local: the replay's CPU is better spent verifying signatures.
        opts.set_compression_type(DBCompressionType::None);
        // Opened by name, so that the family has a handle for batched multi-gets.
        let family = ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, opts.clone());
        Ok(Self { db: DB::open_cf_descriptors(&opts, dir, [family])? })
    }
}

impl StateStore for ScratchState {
    const BATCHED_READS: bool = true;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.db.get(key).map_err(state_storage)
    }

    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let cf = self.db.cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME).expect("the default family");
        self.db
            .batched_multi_get_cf(&cf, keys, false)
            .into_iter()
            .map(|r| r.map(|v| v.map(|v| v.to_vec())).map_err(state_storage))
            .collect()
    }

    fn scan(&self, prefix: u8) -> Result<Pairs, StateError> {
        prefix_pairs(self.db.iterator(IteratorMode::From(&[prefix], Direction::Forward)), prefix)
    }
}

impl ApplyWrites for ScratchState {
    fn apply_writes(&mut self, writes: Writes) -> Result<(), StateError> {
        let mut batch = WriteBatch::default();
        for (key, value) in writes {
            match value {
                Some(v) => batch.put(key, v),
                None => batch.delete(key),
            }
        }
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        self.db.write_opt(batch, &opts).map_err(state_storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_settlement::MemoryStore;

    /// The same writes leave the same answers as in memory: gets, multi-gets over present
    /// and absent keys, deletes, and prefix scans that stop at the next table.
    #[test]
    fn answers_as_memory_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut disk = ScratchState::create(&dir.path().join("state")).expect("create");
        let mut memory = MemoryStore::default();
        let rounds: [Writes; 2] = [
            vec![
                (vec![1, 1], Some(vec![10])),
                (vec![1, 2], Some(vec![11])),
                (vec![2, 0, 7], Some(vec![12; 300])),
                (vec![3], Some(Vec::new())),
                (vec![0x11, 0, 0, 0, 0, 0, 0, 0, 5], Some(vec![13])),
            ],
            vec![(vec![1, 2], None), (vec![1, 3], Some(vec![14])), (vec![2, 0, 7], Some(vec![15]))],
        ];
        for writes in rounds {
            disk.apply_writes(writes.clone()).expect("disk");
            memory.apply_writes(writes).expect("memory");
            let keys: Vec<&[u8]> =
                vec![&[1, 1], &[1, 2], &[1, 3], &[2, 0, 7], &[3], &[4], &[0x11, 0, 0, 0, 0, 0, 0, 0, 5]];
            assert_eq!(disk.get_many(&keys).unwrap(), memory.get_many(&keys).unwrap());
            for k in &keys {
                assert_eq!(disk.get(k).unwrap(), memory.get(k).unwrap());
            }
            for prefix in [0, 1, 2, 3, 0x11, 0xff] {
                assert_eq!(disk.scan(prefix).unwrap(), memory.scan(prefix).unwrap(), "prefix {prefix}");
            }
        }
        assert!(ScratchState::create(&dir.path().join("state")).is_err(), "an existing database is refused");
    }
}
