//! The ledger: recovery on open, the single sequencer thread with group commit, and
//! checkpoint signing.
//!
//! Appends from any number of callers queue on a bounded channel. One thread, the
//! sequencer, takes everything queued (up to [`GROUP_ENTRIES_MAX`]), assigns sequence
//! numbers, applies settlement and writes the group as one RocksDB write batch, not yet
//! synced. Then, if nothing more is queued, it syncs the write-ahead log itself, publishes
//! the new size and answers the group's callers. If more is queued, it hands the group to
//! a second thread, the syncer, and goes on to the next group: the syncer makes every group
//! written by then durable with one fsync, then publishes and answers them, so the disk
//! syncs one group while the next is applied. (At low load the hand-off would only add a
//! thread wake-up to every answer.) The group grows with load on its own: when idle a group
//! is one request, under load it is whatever arrived while the previous one was applied.
//!
//! Nothing is answered or served before it is durable: a sync covers every write that
//! returned before it; reads are bounded by the published size; [`Ledger::settlement`]
//! waits, holding the sequencer off, until the engine's state is durable.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rocksdb::WriteBatch;
use tally_core::Hash;
use tally_core::checkpoint::{Checkpoint, open_checkpoint};
use tally_core::entry::{Body, Entry, LeafRecord, VerifiedEntry};
use tally_core::merkle::{self, Frontier, NodeReader, ProofError};
use tally_core::sig::{PublicKey, SigningKey};
use tally_core::tile::{TILE_HEIGHT, tile_width};
use tally_settlement::state::{STATE_ROOT_EXTENSION, state_root_of};
use tally_settlement::{Effect, Engine, Rejection};
use tokio::sync::oneshot;

use crate::error::LedgerError;
use crate::index::{INDEX_RUN_ENTRIES, IndexFamily, Part, Records, Run, Window};
use crate::store::*;

/// Most entries one append call may carry.
pub const ENTRIES_PER_APPEND_MAX: usize = 4096;
/// Most entries the sequencer puts in one synced write batch.
pub const GROUP_ENTRIES_MAX: usize = 16384;
/// Most append calls waiting for the sequencer; past this, appends fail with `Busy`.
pub const QUEUE_REQUESTS_MAX: usize = 1024;
/// Most written groups waiting for the syncer; past this the sequencer waits for the disk.
const SYNC_QUEUE_GROUPS: usize = 64;
/// What an appended entry adds to its group's write batch beyond its own bytes (leaf
/// record, tree nodes, indexes, settlement writes), with headroom: sizes the batch up front.
const BATCH_BYTES_PER_ENTRY: usize = 512;
const _: () = assert!(ENTRIES_PER_APPEND_MAX <= GROUP_ENTRIES_MAX);
/// Entries at the end of the log whose index records (`dedup`, `leaf_index`) are checked
/// against the entries themselves on open.
pub const INDEX_CHECK_ENTRIES: u64 = 65_536;
/// Tile levels that can exist: level 7 holds hashes at height 56; a tree of at most 2^63
/// leaves has no level 8.
const TILE_LEVELS: u8 = 8;

/// A clock returning unix milliseconds.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// What the sequencer did for one committed group: the node's metrics record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStats {
    /// Append calls and entries in the group.
    pub requests: usize,
    pub entries: usize,
    /// Dedup lookups, settlement and building the write batch.
    pub apply: std::time::Duration,
    /// The RocksDB write (write-ahead log, memtables; the fsync is the syncer's, see
    /// [`SyncStats`]); zero when nothing was appended.
    pub write: std::time::Duration,
}

/// Called by the sequencer thread after each group it wrote; must be quick.
pub type GroupObserver = Arc<dyn Fn(&GroupStats) + Send + Sync>;

/// One sync of the write-ahead log, by the syncer or by the sequencer itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    /// Groups the sync made durable.
    pub groups: usize,
    /// The fsync.
    pub sync: std::time::Duration,
}

/// Called by the syncer or the sequencer thread after each sync; must be quick.
pub type SyncObserver = Arc<dyn Fn(&SyncStats) + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// How to open a ledger.
pub struct LedgerConfig {
    /// The collective's key, which signs checkpoints. Without it the ledger is read-only.
    pub signing_key: Option<SigningKey>,
    /// Sign a checkpoint after a commit once this long has passed since the last one.
    pub checkpoint_interval_ms: u64,
    /// Free space the data directory's filesystem must keep: below it appends are refused
    /// with [`LedgerError::StorageFull`] before anything is applied or written, so the
    /// ledger never reaches a failed write (and RocksDB keeps room to flush and compact).
    pub min_free_bytes: u64,
    pub clock: Clock,
    /// Told about every group written (timings for metrics).
    pub on_group: Option<GroupObserver>,
    /// Told about every sync of the write-ahead log.
    pub on_sync: Option<SyncObserver>,
    /// Entries whose index records are collected before they are written out as one sorted
    /// run (`index.rs`); [`INDEX_RUN_ENTRIES`] unless a test wants runs to turn over often.
    pub index_run_entries: u64,
}

/// Default for [`LedgerConfig::min_free_bytes`].
pub const MIN_FREE_BYTES_DEFAULT: u64 = 256 << 20;

impl std::fmt::Debug for LedgerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerConfig")
            .field("signing_key", &self.signing_key)
            .field("checkpoint_interval_ms", &self.checkpoint_interval_ms)
            .field("min_free_bytes", &self.min_free_bytes)
            .field("on_group", &self.on_group.is_some())
            .field("on_sync", &self.on_sync.is_some())
            .field("index_run_entries", &self.index_run_entries)
            .finish()
    }
}

impl LedgerConfig {
    pub fn new(signing_key: Option<SigningKey>) -> Self {
        Self {
            signing_key,
            checkpoint_interval_ms: 1000,
            min_free_bytes: MIN_FREE_BYTES_DEFAULT,
            clock: system_clock(),
            on_group: None,
            on_sync: None,
            index_run_entries: INDEX_RUN_ENTRIES,
        }
    }
}

/// Where an entry landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub seq: u64,
    pub time_ms: u64,
    pub leaf_hash: Hash,
}

/// The answer for one entry of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Appended now, at this position, with what settlement did; durable before this was
    /// returned.
    Appended(Position, Effect),
    /// An entry with the same idempotency key (`Entry::dedup_id`) is already in the log;
    /// this is where the original is. Nothing was changed.
    Duplicate(Position),
    /// Refused by settlement; nothing was changed and nothing logged.
    Rejected(Rejection),
}

/// Facts from the genesis entry that the ledger itself needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenesisInfo {
    pub origin: String,
    pub collective_key: PublicKey,
    pub asset_code: String,
    pub asset_scale: u8,
}

impl GenesisInfo {
    fn from_entry(entry: &Entry) -> Result<Self, LedgerError> {
        match entry.body() {
            Body::Genesis(g) => Ok(Self {
                origin: g.origin.as_str().to_string(),
                collective_key: PublicKey::from_bytes(&g.collective_key)
                    .map_err(|e| LedgerError::Corrupted(format!("genesis key: {e}")))?,
                asset_code: g.asset_code.as_str().to_string(),
                asset_scale: g.asset_scale,
            }),
            _ => Err(LedgerError::Corrupted("entry 0 is not a genesis entry".into())),
        }
    }
}

/// Where a queued append's answer goes.
pub type AppendReply = oneshot::Sender<Result<Vec<Outcome>, LedgerError>>;
type CheckpointReply = oneshot::Sender<Result<Option<(u64, String)>, LedgerError>>;

enum Command {
    Append(Vec<VerifiedEntry>, AppendReply),
    Checkpoint(CheckpointReply),
}

/// State readers share with the sequencer and the syncer: only what is durable.
#[derive(Debug)]
struct Published {
    /// Entries durable in the store; the syncer and the sequencer move it.
    size: AtomicU64,
    /// Held to signal `durable`, which wakes whoever waits for `size` to move or for
    /// `failed` to be set ([`Published::wait_durable`]).
    durable_lock: std::sync::Mutex<()>,
    durable: std::sync::Condvar,
    genesis: RwLock<Option<GenesisInfo>>,
    checkpoint: RwLock<Option<(u64, String)>>,
    /// The settlement engine. The sequencer holds the write lock while it applies and
    /// writes a group; the group is durable only later, so readers wait for that too
    /// ([`Ledger::settlement`]) and only ever see durable state.
    engine: RwLock<Engine<Store>>,
    /// Set when a write or a sync failed: the engine in memory may then be ahead of the
    /// disk, so it is no longer served, and the sequencer stops.
    failed: std::sync::atomic::AtomicBool,
    /// Index records of the latest entries, not yet (known to be) in the store. The
    /// sequencer adds a group's when it writes the group, and drops a run's once the run is
    /// written to the store; lookups read it before the store, and answer only for entries
    /// below the published size.
    window: RwLock<Window>,
}

impl Published {
    /// Wait until the first `size` entries are durable; `Closed` once a write or sync has
    /// failed (they never will be).
    fn wait_durable(&self, size: u64) -> Result<(), LedgerError> {
        // The common case, without the lock: every reader of the engine comes through here.
        if self.size.load(Ordering::Acquire) >= size && !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut guard = self.durable_lock.lock().expect("lock");
        loop {
            if self.failed.load(Ordering::Acquire) {
                return Err(LedgerError::Closed);
            }
            if self.size.load(Ordering::Acquire) >= size {
                return Ok(());
            }
            guard = self.durable.wait(guard).expect("lock");
        }
    }

    /// The first `size` entries are durable. Both the syncer and the sequencer (when it
    /// syncs a group itself) publish; the size never moves back.
    fn set_durable(&self, size: u64) {
        self.size.fetch_max(size, Ordering::AcqRel);
        let _guard = self.durable_lock.lock().expect("lock");
        self.durable.notify_all();
    }

    /// A write or sync failed: stop serving the engine and wake every waiter.
    fn set_failed(&self) {
        self.failed.store(true, Ordering::Release);
        let _guard = self.durable_lock.lock().expect("lock");
        self.durable.notify_all();
    }
}

/// An open ledger. Reads go straight to the store; appends go through the sequencer.
pub struct Ledger {
    store: Store,
    published: Arc<Published>,
    tx: Option<SyncSender<Command>>,
    thread: Option<JoinHandle<()>>,
    /// Keeps RocksDB's background threads in the idle scheduling class while they keep up
    /// (`background.rs`); only a ledger that appends has one.
    background: Option<crate::background::Watcher>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("store", &self.store).field("size", &self.size()).finish()
    }
}

impl Ledger {
    /// Open the ledger in `dir`, recovering and checking its state, and start the sequencer
    /// if a signing key was given.
    pub fn open(dir: &Path, config: LedgerConfig) -> Result<Self, LedgerError> {
        let store = Store::open(dir)?;
        let recovered = recover(&store)?;
        let size = recovered.frontier.size();
        let stored_indexed = store.indexed()?;
        let indexed = match stored_indexed {
            Some(indexed) if indexed <= size => indexed,
            Some(indexed) => {
                return Err(corrupted(format!("index records are written to {indexed}, past the log's {size}")));
            }
            // A ledger from before the index journal wrote every index record with its group.
            None => size,
        };
        check_indexes(&store, indexed)?;
        let window = rebuild_window(&store, indexed, size)?;
        let engine = Engine::open(store.clone()).map_err(|e| corrupted(format!("settlement state: {e}")))?;
        if engine.applied() != recovered.frontier.size() {
            return Err(corrupted(format!(
                "settlement state is at {} entries but the log has {}",
                engine.applied(),
                recovered.frontier.size()
            )));
        }
        if let Some((cp_size, note, _)) = &recovered.checkpoint
            && *cp_size == recovered.frontier.size()
            && state_root_of(note) != Some(engine.state_root())
        {
            return Err(corrupted(format!("settlement state differs from the state root signed at {cp_size}")));
        }
        if let (Some(key), Some(genesis)) = (&config.signing_key, &recovered.genesis)
            && key.public_key() != genesis.collective_key
        {
            return Err(LedgerError::WrongSigningKey);
        }
        let published = Arc::new(Published {
            size: AtomicU64::new(recovered.frontier.size()),
            durable_lock: Default::default(),
            durable: Default::default(),
            genesis: RwLock::new(recovered.genesis.clone()),
            checkpoint: RwLock::new(recovered.checkpoint.as_ref().map(|(s, n, _)| (*s, n.clone()))),
            engine: RwLock::new(engine),
            failed: Default::default(),
            window: RwLock::new(window),
        });
        let Some(signing_key) = config.signing_key else {
            return Ok(Self { store, published, tx: None, thread: None, background: None });
        };
        if stored_indexed.is_none() {
            // From here on index records may be journaled; recovery must know where from.
            let mut batch = WriteBatch::default();
            store.batch_put(&mut batch, CF_META, META_INDEXED, &size.to_be_bytes());
            store.write_synced(batch)?;
        }
        let (sync_tx, sync_rx) = sync_channel(SYNC_QUEUE_GROUPS);
        let on_sync = config.on_sync;
        let syncer = Syncer { store: store.clone(), published: published.clone(), on_sync: on_sync.clone() };
        let sync_thread = std::thread::Builder::new()
            .name("tally-syncer".into())
            .spawn(move || syncer.run(sync_rx))
            .map_err(|e| LedgerError::Corrupted(format!("cannot start the syncer thread: {e}")))?;
        let mut sequencer = Sequencer {
            store: store.clone(),
            published: published.clone(),
            frontier: recovered.frontier,
            last_time_ms: recovered.last_time_ms,
            genesis: recovered.genesis,
            last_checkpoint: recovered.checkpoint.map(|(s, _, r)| (s, r)),
            last_checkpoint_at_ms: 0,
            signing_key,
            checkpoint_interval_ms: config.checkpoint_interval_ms,
            dir: dir.to_path_buf(),
            min_free_bytes: config.min_free_bytes,
            clock: config.clock,
            on_group: config.on_group,
            run_entries: config.index_run_entries.max(1),
            sorting: None,
            writing: None,
            syncer: Some((sync_tx, sync_thread)),
            peeked: None,
            on_sync: on_sync.clone(),
        };
        // Entries committed after the last checkpoint (a crash between the two writes) get
        // a checkpoint now, checked for consistency with the last one like any other.
        sequencer.maybe_checkpoint(true)?;
        let (tx, rx) = sync_channel(QUEUE_REQUESTS_MAX);
        let thread = std::thread::Builder::new()
            .name("tally-sequencer".into())
            .spawn(move || sequencer.run(rx))
            .map_err(|e| LedgerError::Corrupted(format!("cannot start the sequencer thread: {e}")))?;
        let background = crate::background::Watcher::start(store.clone())
            .map_err(|e| LedgerError::Corrupted(format!("cannot start the background watcher thread: {e}")))?;
        Ok(Self { store, published, tx: Some(tx), thread: Some(thread), background: Some(background) })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Entries committed so far.
    pub fn size(&self) -> u64 {
        self.published.size.load(Ordering::Acquire)
    }

    pub fn genesis(&self) -> Option<GenesisInfo> {
        self.published.genesis.read().expect("lock").clone()
    }

    /// The asset's decimal places, once there is a genesis. Without copying the genesis
    /// facts: every amount in every answer is formatted with it.
    pub fn asset_scale(&self) -> Option<u8> {
        self.published.genesis.read().expect("lock").as_ref().map(|g| g.asset_scale)
    }

    /// Read the settlement engine at the durable state (balances, quotes, access checks,
    /// charge records). The sequencer may have applied a group that is not durable yet:
    /// this then waits for the syncer (a sync, about a millisecond), holding the sequencer
    /// off meanwhile. Fails with `Closed` if a write or sync failed.
    pub fn settlement(&self) -> Result<RwLockReadGuard<'_, Engine<Store>>, LedgerError> {
        if self.published.failed.load(Ordering::Acquire) {
            return Err(LedgerError::Closed);
        }
        let engine = self.published.engine.read().expect("lock");
        self.published.wait_durable(engine.applied())?;
        Ok(engine)
    }

    /// The sequence number an entry with this idempotency key (`Entry::dedup_id`) was
    /// first appended at, if that entry is durable.
    pub fn dedup(&self, id: &Hash) -> Result<Option<u64>, LedgerError> {
        let size = self.size();
        if let Some(seq) = self.published.window.read().expect("lock").dedup(id) {
            return Ok(Some(seq).filter(|&seq| seq < size));
        }
        // A run leaves the window only once it is in the store.
        Ok(self.store.dedup(id)?.filter(|&seq| seq < size))
    }

    /// The position of the leaf with this leaf hash, if that entry is durable.
    pub fn seq_of_leaf(&self, leaf_hash: &Hash) -> Result<Option<u64>, LedgerError> {
        let size = self.size();
        let candidates = self.published.window.read().expect("lock").leaf_candidates(&leaf_prefix(leaf_hash));
        for seq in candidates.into_iter().filter(|&seq| seq < size) {
            if self.store.leaf(seq)?.is_some_and(|l| l.leaf_hash() == *leaf_hash) {
                return Ok(Some(seq));
            }
        }
        Ok(self.store.seq_of_leaf(leaf_hash)?.filter(|&seq| seq < size))
    }

    /// Sequence numbers of the durable entries that moved money of participant `party` or
    /// that it authored, from `from`, at most `limit`, in order.
    pub fn party_entries(&self, party: u64, from: u64, limit: usize) -> Result<Vec<u64>, LedgerError> {
        let size = self.size();
        let mut seqs = self.published.window.read().expect("lock").party_entries(party, from, limit);
        // A run being written out may be in both; everything below the window is in the store.
        seqs.extend(self.store.party_entries(party, from, limit)?);
        seqs.retain(|&seq| seq < size);
        seqs.sort_unstable();
        seqs.dedup();
        seqs.truncate(limit);
        Ok(seqs)
    }

    /// The newest signed checkpoint: its size and note text.
    pub fn latest_checkpoint(&self) -> Option<(u64, String)> {
        self.published.checkpoint.read().expect("lock").clone()
    }

    fn send(&self, cmd: Command) -> Result<(), LedgerError> {
        let tx = self.tx.as_ref().ok_or(LedgerError::Closed)?;
        tx.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(_) => LedgerError::Busy,
            TrySendError::Disconnected(_) => LedgerError::Closed,
        })
    }

    fn enqueue(
        &self,
        entries: Vec<VerifiedEntry>,
    ) -> Result<oneshot::Receiver<Result<Vec<Outcome>, LedgerError>>, LedgerError> {
        let (reply, rx) = oneshot::channel();
        self.append_to(entries, reply)?;
        Ok(rx)
    }

    /// Queue verified entries for appending now, from whatever thread calls this; the
    /// answer (as from [`Ledger::append`]) is sent on `reply` once they are durable. On an
    /// error nothing was queued and `reply` is dropped unanswered.
    ///
    /// The node's verification threads queue a submission this way as soon as its
    /// signatures check out, rather than handing it back to the request's task first.
    pub fn append_to(&self, entries: Vec<VerifiedEntry>, reply: AppendReply) -> Result<(), LedgerError> {
        if entries.len() > ENTRIES_PER_APPEND_MAX {
            return Err(LedgerError::TooManyEntries { len: entries.len(), max: ENTRIES_PER_APPEND_MAX });
        }
        self.send(Command::Append(entries, reply))
    }

    /// Append verified entries; the answer (one outcome per entry, in order) comes once
    /// they are durable.
    pub async fn append(&self, entries: Vec<VerifiedEntry>) -> Result<Vec<Outcome>, LedgerError> {
        self.enqueue(entries)?.await.map_err(|_| LedgerError::Closed)?
    }

    /// [`Ledger::append`] for callers outside an async runtime.
    pub fn append_blocking(&self, entries: Vec<VerifiedEntry>) -> Result<Vec<Outcome>, LedgerError> {
        self.enqueue(entries)?.blocking_recv().map_err(|_| LedgerError::Closed)?
    }

    /// Ask the sequencer to sign a checkpoint at the current size now (if it grew).
    pub fn checkpoint_blocking(&self) -> Result<Option<(u64, String)>, LedgerError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Checkpoint(reply))?;
        rx.blocking_recv().map_err(|_| LedgerError::Closed)?
    }

    /// Inclusion proof of leaf `index` in the tree of `size` (at most the committed size).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, LedgerError> {
        let committed = self.size();
        if index >= size || size > committed {
            return Err(LedgerError::OutOfRange { first: index, second: size, committed });
        }
        merkle::inclusion_proof(&self.store, index, size)
    }

    /// Consistency proof between two committed sizes, `0 < size1 <= size2`.
    pub fn consistency_proof(&self, size1: u64, size2: u64) -> Result<Vec<Hash>, LedgerError> {
        let committed = self.size();
        if size1 == 0 || size1 > size2 || size2 > committed {
            return Err(LedgerError::OutOfRange { first: size1, second: size2, committed });
        }
        merkle::consistency_proof(&self.store, size1, size2)
    }

    /// Tile `index` at tile level `level` with `width` hashes, if the committed tree has it
    /// (a full tile, or a partial one no wider than the tree allows).
    pub fn tile(&self, level: u8, index: u64, width: u16) -> Result<Vec<u8>, LedgerError> {
        self.check_tile(level, index, width)?;
        self.store.tile(level, index, width)
    }

    /// Entry bundle `index` (leaf records) with `width` entries, if the committed tree has it.
    pub fn entry_bundle(&self, index: u64, width: u16) -> Result<Vec<u8>, LedgerError> {
        self.check_tile(0, index, width)?;
        self.store.entry_bundle(index, width)
    }

    fn check_tile(&self, level: u8, index: u64, width: u16) -> Result<(), LedgerError> {
        let committed = self.size();
        let available = if level < TILE_LEVELS { tile_width(level, index, committed) } else { 0 };
        if width == 0 || width > available {
            return Err(LedgerError::NoSuchTile { level, index, width, committed });
        }
        Ok(())
    }

    /// Stop accepting appends, let the sequencer finish what is queued, sign a final
    /// checkpoint and wait for it to exit; then write the memtables to table files, so
    /// that the next open need not replay the write-ahead log (up to the whole memtable
    /// budget: seconds). Everything was already durable in the log; a failed flush is
    /// reported and changes nothing.
    pub fn shutdown(mut self) {
        self.stop();
        if let Err(e) = self.store.flush() {
            eprintln!("tally-ledger: flushing memtables at shutdown failed (the log holds everything): {e}");
        }
    }

    fn stop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // Background threads back in the normal class: the final flush need not wait.
        if let Some(mut background) = self.background.take() {
            background.stop();
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Recovered {
    frontier: Frontier,
    last_time_ms: u64,
    genesis: Option<GenesisInfo>,
    checkpoint: Option<(u64, String, Hash)>,
}

fn corrupted(msg: String) -> LedgerError {
    LedgerError::Corrupted(msg)
}

/// Check what the store says about itself and rebuild the in-memory state derived from it.
fn recover(store: &Store) -> Result<Recovered, LedgerError> {
    let size = store.stored_size()?;
    let last = size.checked_sub(1);
    for cf in [CF_ENTRIES, CF_LEAVES] {
        let stored = store.last_seq(cf)?;
        if stored != last {
            return Err(corrupted(format!("{cf} ends at {stored:?} but the tree size is {size}")));
        }
    }
    let frontier = Frontier::from_reader(size, store)?;
    let mut last_time_ms = 0;
    let mut genesis = None;
    if let Some(last) = last {
        let leaf = store.leaf(last)?.ok_or_else(|| corrupted(format!("leaf {last} missing")))?;
        if leaf.seq != last || store.node(0, last)? != leaf.leaf_hash() {
            return Err(corrupted(format!("leaf {last} does not match its tree hash")));
        }
        let entry = store.entry(last)?.ok_or_else(|| corrupted(format!("entry {last} missing")))?;
        if !leaf.matches(&entry) {
            return Err(corrupted(format!("entry {last} does not match its leaf record")));
        }
        last_time_ms = leaf.time_ms;
        let first = store.entry(0)?.ok_or_else(|| corrupted("entry 0 missing".into()))?;
        genesis = Some(GenesisInfo::from_entry(&first)?);
    }
    let mut checkpoint = None;
    if let Some((cp_size, note)) = store.latest_checkpoint()? {
        let g = genesis.as_ref().ok_or_else(|| corrupted("a checkpoint exists without a genesis".into()))?;
        let cp = open_checkpoint(&note, &g.origin, &g.collective_key)
            .map_err(|e| corrupted(format!("stored checkpoint {cp_size}: {e}")))?;
        if cp.size != cp_size || cp.size > size || merkle::root_at(store, cp.size)? != cp.root {
            return Err(corrupted(format!("stored checkpoint {cp_size} does not match the stored tree")));
        }
        checkpoint = Some((cp_size, note, cp.root));
    }
    Ok(Recovered { frontier, last_time_ms, genesis, checkpoint })
}

/// Check the `dedup` and `leaf_index` records of the last [`INDEX_CHECK_ENTRIES`] entries
/// before `indexed` (those after it are in the index journal: [`rebuild_window`])
/// against the entries and leaf records themselves. Nothing else on open reads these
/// indexes, and a damaged MANIFEST once made RocksDB silently forget a flush of an index
/// (see `check_manifest`); a lost `dedup` record would let a receipt be appended, and
/// charged, twice. Recent flushes are the ones at the end of the MANIFEST, so the end of
/// the log is where such a loss shows. `parties` is not checked: who an entry concerned
/// depends on the participants' keys at the time, which may since have been rotated.
fn check_indexes(store: &Store, indexed: u64) -> Result<(), LedgerError> {
    const CHUNK: u64 = 4096;
    let mut from = indexed.saturating_sub(INDEX_CHECK_ENTRIES);
    while from < indexed {
        let end = (from + CHUNK).min(indexed);
        let (ids, leaf_hashes): (Vec<Hash>, Vec<Hash>) = logged_keys(store, from, end)?.into_iter().unzip();
        let leaf_keys: Vec<[u8; 16]> = (from..).zip(&leaf_hashes).map(|(seq, h)| leaf_index_key(h, seq)).collect();
        for ((seq, found), id) in (from..).zip(store.dedup_many(&ids)?).zip(&ids) {
            // An entry's idempotency key points at it: a second one with the same key is
            // answered as a duplicate, never appended.
            if found != Some(seq) {
                return Err(corrupted(format!(
                    "the dedup index has {found:?} for entry {seq} (id {}): the index has lost records",
                    hex_prefix(id)
                )));
            }
        }
        if let Some(missing) = store.leaf_index_present(&leaf_keys)?.iter().position(|present| !present) {
            return Err(corrupted(format!(
                "the leaf index has no record for entry {}: the index has lost records",
                from + missing as u64
            )));
        }
        from = end;
    }
    Ok(())
}

/// Rebuild the index window from the index journal records from `indexed` on, which must
/// cover `indexed..size` exactly, group after group, and from the entries and leaf records
/// they cover (idempotency keys and leaf hashes). A lost or damaged journal record would
/// otherwise lose index records (and let a receipt be charged twice) as surely as a lost
/// `dedup` record.
fn rebuild_window(store: &Store, indexed: u64, size: u64) -> Result<Window, LedgerError> {
    const CHUNK: u64 = 4096;
    let journal = store.journal(indexed)?;
    let mut at = indexed;
    for record in &journal {
        if record.first != at || record.end() > size {
            return Err(corrupted(format!(
                "the index journal has a record for entries {}..{} where one from {at} (below {size}) was due",
                record.first,
                record.end()
            )));
        }
        at = record.end();
    }
    if at != size {
        return Err(corrupted(format!(
            "the index journal ends at entry {at} but the log at {size}: index records are lost"
        )));
    }
    // Each group's idempotency keys and leaf hash prefixes, from its entries and leaves.
    let mut window = Window::starting_at(indexed);
    let mut groups = journal.into_iter();
    let mut group: Option<(Records, u64)> = None;
    let mut from = indexed;
    while from < size {
        let end = (from + CHUNK).min(size);
        for (id, leaf_hash) in logged_keys(store, from, end)? {
            let (records, entries) = group.get_or_insert_with(|| {
                let j = groups.next().expect("the journal covers the log");
                (Records { first: j.first, parties: j.parties, ..Records::default() }, j.entries)
            });
            records.dedup.push(id);
            records.leaves.push(leaf_prefix(&leaf_hash));
            if records.dedup.len() as u64 == *entries {
                window.filling.add(records);
                group = None;
            }
        }
        from = end;
    }
    Ok(window)
}

/// Each entry's idempotency key and leaf hash, from the stored entries and leaf records
/// `from..end`: what its `dedup` and `leaf_index` records hold.
fn logged_keys(store: &Store, from: u64, end: u64) -> Result<Vec<(Hash, Hash)>, LedgerError> {
    (from..)
        .zip(store.export(from, end, usize::MAX)?)
        .map(|(seq, (leaf, entry))| {
            let entry = Entry::decode(&entry).map_err(|e| corrupted(format!("entry {seq}: {e}")))?;
            let leaf = LeafRecord::decode(&leaf).map_err(|e| corrupted(format!("leaf {seq}: {e}")))?;
            Ok((entry.dedup_id(), leaf.leaf_hash()))
        })
        .collect()
}

fn index_cf(index: IndexFamily) -> &'static str {
    match index {
        IndexFamily::Dedup => CF_DEDUP,
        IndexFamily::LeafIndex => CF_LEAF_INDEX,
        IndexFamily::Parties => CF_PARTIES,
    }
}

fn join_sorting(handle: JoinHandle<Run>) -> Run {
    handle.join().expect("the index sorting thread does not panic")
}

fn hex_prefix(hash: &Hash) -> String {
    hash[..8].iter().map(|b| format!("{b:02x}")).collect()
}

struct Sequencer {
    store: Store,
    published: Arc<Published>,
    frontier: Frontier,
    last_time_ms: u64,
    genesis: Option<GenesisInfo>,
    last_checkpoint: Option<(u64, Hash)>,
    last_checkpoint_at_ms: u64,
    signing_key: SigningKey,
    checkpoint_interval_ms: u64,
    dir: std::path::PathBuf,
    min_free_bytes: u64,
    clock: Clock,
    on_group: Option<GroupObserver>,
    /// Entries a frozen part of the index window holds (`LedgerConfig::index_run_entries`).
    run_entries: u64,
    /// The frozen part being sorted into a run, on a helper thread.
    sorting: Option<JoinHandle<Run>>,
    /// The run being written out a slice per group.
    writing: Option<Run>,
    /// Where written groups go to be synced and answered, and the syncer's thread.
    syncer: Option<(SyncSender<Written>, JoinHandle<()>)>,
    /// A command taken from the queue to see whether more is waiting: the next group's first.
    peeked: Option<Command>,
    on_sync: Option<SyncObserver>,
}

/// A group the sequencer has written, for the syncer to make durable and answer.
struct Written {
    /// The log's size with this group.
    end: u64,
    /// Whether the group wrote anything (one of only duplicates and rejections does not, but
    /// is still answered in order: a duplicate may point at an entry not yet durable).
    wrote: bool,
    answers: Vec<(AppendReply, Vec<Outcome>)>,
}

/// The syncer: makes written groups durable, publishes the size and answers callers, in
/// the order the groups were written.
struct Syncer {
    store: Store,
    published: Arc<Published>,
    on_sync: Option<SyncObserver>,
}

impl Syncer {
    fn run(self, rx: Receiver<Written>) {
        let mut failure: Option<LedgerError> = None;
        while let Ok(first) = rx.recv() {
            // Everything written by now: one sync covers it all.
            let mut groups = vec![first];
            groups.extend(rx.try_iter());
            if failure.is_none() && groups.iter().any(|g| g.wrote) {
                let started = std::time::Instant::now();
                match self.store.sync_wal() {
                    Ok(()) => {
                        if let Some(observe) = &self.on_sync {
                            observe(&SyncStats { groups: groups.len(), sync: started.elapsed() });
                        }
                    }
                    Err(e) => {
                        // Fail-stop, as for a failed write: what reached the disk is unknown.
                        // The sequencer sees `failed` and stops; nothing more is answered Ok.
                        eprintln!("tally-ledger: syncing the write-ahead log failed; stopping: {e}");
                        self.published.set_failed();
                        failure = Some(e);
                    }
                }
            }
            match &failure {
                None => {
                    let end = groups.last().expect("at least one").end;
                    self.published.set_durable(end);
                    for (reply, outcomes) in groups.into_iter().flat_map(|g| g.answers) {
                        let _ = reply.send(Ok(outcomes));
                    }
                }
                Some(e) => {
                    for (reply, _) in groups.into_iter().flat_map(|g| g.answers) {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// What one group will write, built before anything is committed.
struct Group {
    batch: WriteBatch,
    frontier: Frontier,
    time_ms: u64,
    genesis: Option<GenesisInfo>,
    /// Idempotency keys appended earlier in this same group.
    appended: HashMap<Hash, Position>,
    /// The appended entries' index records: the group's journal record, and then part of
    /// the index window.
    records: Records,
}

impl Sequencer {
    fn run(mut self, rx: Receiver<Command>) {
        if self.serve(rx) {
            // The channel closed: every queued append has been written. Once the syncer
            // has made it durable, write the index window out, so the next open has nothing
            // to rebuild, and sign the final state.
            if self.published.wait_durable(self.frontier.size()).is_ok() {
                if let Err(e) = self.write_out_index() {
                    eprintln!("tally-ledger: writing the index window out failed (its journal holds it): {e}");
                }
                if let Err(e) = self.maybe_checkpoint(true) {
                    eprintln!("tally-ledger: final checkpoint failed: {e}");
                }
            }
        }
        // The syncer answers what it holds and exits once its channel closes.
        if let Some((tx, thread)) = self.syncer.take() {
            drop(tx);
            let _ = thread.join();
        }
    }

    /// Take commands until the channel closes (true) or a write or sync fails (false).
    fn serve(&mut self, rx: Receiver<Command>) -> bool {
        // An idle log still gets a checkpoint over its last entries once the interval has
        // passed, so clients are never left without one covering acknowledged entries.
        let idle = std::time::Duration::from_millis(self.checkpoint_interval_ms.clamp(1, 60_000));
        loop {
            if self.published.failed.load(Ordering::Acquire) {
                // The syncer failed: stop taking appends. Queued ones are dropped with the
                // channel, so their callers get `Closed`.
                return false;
            }
            let received = match self.peeked.take() {
                Some(cmd) => Ok(cmd),
                None => rx.recv_timeout(idle),
            };
            let first = match received {
                Ok(cmd) => cmd,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    // As after a commit: a failed checkpoint is reported and tried again later;
                    // nothing is signed that does not check out.
                    if let Err(e) = self.maybe_checkpoint(false) {
                        eprintln!("tally-ledger: checkpoint failed: {e}");
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return true,
            };
            let mut appends = Vec::new();
            let mut checkpoint_replies = Vec::new();
            let mut entries = 0usize;
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Append(batch, reply) => {
                        entries += batch.len();
                        appends.push((batch, reply));
                    }
                    Command::Checkpoint(reply) => checkpoint_replies.push(reply),
                }
                if entries < GROUP_ENTRIES_MAX {
                    // Empty or disconnected: the group is what has arrived so far.
                    next = rx.try_recv().ok();
                }
            }
            if let Err(e) = self.commit_group(appends, &rx) {
                // Fail-stop: after a failed write the state on disk is unknown (a failed
                // fsync may still have persisted the batch), so continuing from memory could
                // reuse sequence numbers. Stop; every later append gets `Closed`, and
                // reopening the ledger recovers from what is actually on disk.
                eprintln!("tally-ledger: sequencer stopped after a failed write: {e}");
                for reply in checkpoint_replies {
                    let _ = reply.send(Err(e.clone()));
                }
                return false;
            }
            let forced = !checkpoint_replies.is_empty();
            let result = self.maybe_checkpoint(forced);
            for reply in checkpoint_replies {
                let answer = match &result {
                    Ok(()) => Ok(self.published.checkpoint.read().expect("lock").clone()),
                    Err(e) => Err(e.clone()),
                };
                let _ = reply.send(answer);
            }
        }
    }

    /// Apply and write one group and hand it to the syncer, which answers its callers once
    /// it is durable. An error means nothing of the group was acknowledged and the
    /// sequencer must stop.
    fn commit_group(
        &mut self,
        appends: Vec<(Vec<VerifiedEntry>, AppendReply)>,
        rx: &Receiver<Command>,
    ) -> Result<(), LedgerError> {
        if appends.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.check_free_space() {
            // Refused before anything was applied: the state in memory and on disk is the
            // last committed group's, and the next group is tried afresh.
            for (_, reply) in appends {
                let _ = reply.send(Err(e.clone()));
            }
            return Ok(());
        }
        let started = std::time::Instant::now();
        let entries: usize = appends.iter().map(|(batch, _)| batch.len()).sum();
        let bytes: usize = appends.iter().flat_map(|(batch, _)| batch).map(|e| e.as_bytes().len()).sum();
        let mut group = Group {
            // Entry bytes plus roughly what each entry adds (leaf, indexes, state): one
            // allocation instead of a doubling series of copies of a multi-megabyte batch.
            batch: WriteBatch::with_capacity_bytes(bytes + entries * BATCH_BYTES_PER_ENTRY),
            frontier: self.frontier.clone(),
            time_ms: (self.clock)().max(self.last_time_ms),
            genesis: self.genesis.clone(),
            appended: HashMap::with_capacity(entries),
            records: Records::starting_at(self.frontier.size()),
        };
        let published = self.published.clone();
        let mut engine = published.engine.write().expect("lock");
        let mut answers = Vec::with_capacity(appends.len());
        let mut failed = None;
        // Every idempotency key of the group, looked up in the index window and then, for
        // those not there, in one batched read of the store.
        let ids: Vec<Hash> = appends.iter().flat_map(|(batch, _)| batch).map(|e| e.dedup_id()).collect();
        let mut stored: Vec<Option<u64>> = {
            let window = published.window.read().expect("lock");
            ids.iter().map(|id| window.dedup(id)).collect()
        };
        let unseen: Vec<Hash> = ids.iter().zip(&stored).filter(|(_, s)| s.is_none()).map(|(id, _)| *id).collect();
        match self.store.dedup_many(&unseen) {
            Ok(found) => {
                let mut found = found.into_iter();
                for s in stored.iter_mut().filter(|s| s.is_none()) {
                    *s = found.next().expect("one answer per key");
                }
            }
            Err(e) => failed = Some(e),
        }
        // The settlement state the new entries will read, in as few batched reads as well.
        if failed.is_none() {
            let new = appends.iter().flat_map(|(batch, _)| batch).zip(&stored).filter(|(_, s)| s.is_none());
            if let Err(e) = engine.prefetch(new.map(|(entry, _)| entry)) {
                failed = Some(corrupted(format!("settlement state read: {e}")));
            }
        }
        let mut stored = ids.into_iter().zip(stored);
        'requests: for (entries, _) in appends.iter().take_while(|_| failed.is_none()) {
            let mut outcomes = Vec::with_capacity(entries.len());
            for entry in entries {
                let (id, original) = stored.next().expect("one key per entry");
                match self.place(&mut group, &mut engine, entry, id, original) {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(e) => {
                        failed = Some(e);
                        break 'requests;
                    }
                }
            }
            answers.push(outcomes);
        }
        let size = group.frontier.size();
        // The group's index records go into one journal record, appended in order; with it
        // goes the next slice of the run being written out, if any.
        let mut run_written = None;
        if !group.records.is_empty() {
            let records = &group.records;
            self.store.batch_put(
                &mut group.batch,
                CF_INDEX_JOURNAL,
                &seq_key(records.first),
                &records.journal_record(),
            );
            run_written = self.write_run_slice(&mut group.batch, records.dedup.len() as u64);
        }
        self.store.batch_put(&mut group.batch, CF_META, META_SIZE, &size.to_be_bytes());
        for (key, value) in engine.take_writes() {
            match value {
                Some(v) => self.store.batch_put(&mut group.batch, state_cf(&key), &key, &v),
                None => self.store.batch_delete(&mut group.batch, state_cf(&key), &key),
            }
        }
        let applied = std::time::Instant::now();
        let wrote = size != self.frontier.size();
        let result = match failed {
            Some(e) => Err(e),
            // Only duplicates and rejections: nothing to write.
            None if !wrote => Ok(()),
            None => self.store.write_unsynced(group.batch),
        };
        // Readers may take the engine now: they wait for the syncer before reading it.
        drop(engine);
        if let Err(e) = result {
            // Nothing of the group is acknowledged; every caller learns it failed. The
            // engine has applied the group in memory, so it is withdrawn from readers.
            self.published.set_failed();
            for (_, reply) in appends {
                let _ = reply.send(Err(e.clone()));
            }
            return Err(e);
        }
        let written = std::time::Instant::now();
        self.frontier = group.frontier;
        self.last_time_ms = group.time_ms;
        let new_genesis = self.genesis.is_none() && group.genesis.is_some();
        self.genesis = group.genesis;
        // The next group's dedup lookups must see this one's keys before it is durable.
        self.add_to_window(&group.records, run_written);
        if let Some(observe) = &self.on_group {
            observe(&GroupStats {
                requests: appends.len(),
                entries,
                apply: applied - started,
                write: written - applied,
            });
        }
        let answers: Vec<(AppendReply, Vec<Outcome>)> =
            appends.into_iter().zip(answers).map(|((_, reply), outcomes)| (reply, outcomes)).collect();
        if self.peeked.is_none() {
            self.peeked = rx.try_recv().ok();
        }
        if self.peeked.is_some() {
            // More is waiting: the syncer syncs this group while the next one is applied.
            let (tx, _) = self.syncer.as_ref().ok_or(LedgerError::Closed)?;
            if tx.send(Written { end: size, wrote, answers }).is_err() {
                // The syncer is gone (it never exits first unless it panicked): stop.
                self.published.set_failed();
                return Err(LedgerError::Closed);
            }
        } else {
            // Nothing waiting: sync here and answer at once, since handing the group over
            // would only add a thread wake-up to its latency. The sync also covers any
            // group still with the syncer (a duplicate may point into one).
            if wrote || self.published.size.load(Ordering::Acquire) < size {
                let started = std::time::Instant::now();
                if let Err(e) = self.store.sync_wal() {
                    self.published.set_failed();
                    for (reply, _) in answers {
                        let _ = reply.send(Err(e.clone()));
                    }
                    return Err(e);
                }
                if let Some(observe) = &self.on_sync {
                    observe(&SyncStats { groups: 1, sync: started.elapsed() });
                }
            }
            self.published.set_durable(size);
            for (reply, outcomes) in answers {
                let _ = reply.send(Ok(outcomes));
            }
        }
        if new_genesis {
            // Once, for the first group: the genesis facts are served only once durable.
            self.published.wait_durable(size)?;
            *self.published.genesis.write().expect("lock") = self.genesis.clone();
        }
        Ok(())
    }

    /// Add the next slice of the run being written out to `batch` (a group that appended
    /// `appended` entries); with its last slice, delete the run's journal records and move
    /// `meta/indexed` past it. Returns the run's end if this batch finishes it.
    fn write_run_slice(&mut self, batch: &mut WriteBatch, appended: u64) -> Option<u64> {
        if self.writing.is_none() && self.sorting.as_ref().is_some_and(JoinHandle::is_finished) {
            self.writing = self.sorting.take().map(join_sorting);
        }
        // Two runs' worth in the window: the run in hand is written whole now, so the window
        // stays bounded even if its slices fell behind.
        let behind = self.published.window.read().expect("lock").filling.entries() >= 2 * self.run_entries;
        if behind && self.writing.is_none() {
            self.writing = self.sorting.take().map(join_sorting);
        }
        let run = self.writing.as_mut()?;
        let store = &self.store;
        run.write_slice(run.slice_len(appended, behind), |index, key, value| {
            store.batch_put(batch, index_cf(index), key, value);
        });
        if !run.is_written() {
            return None;
        }
        store.batch_delete_seqs(batch, CF_INDEX_JOURNAL, run.from, run.to);
        store.batch_put(batch, CF_META, META_INDEXED, &run.to.to_be_bytes());
        Some(run.to)
    }

    /// After a group is durable: add its index records to the window, drop the run it
    /// finished writing out, and freeze the window's filling part once it holds a run.
    fn add_to_window(&mut self, records: &Records, run_written: Option<u64>) {
        let mut window = self.published.window.write().expect("lock");
        if !records.is_empty() {
            window.filling.add(records);
        }
        if let Some(end) = run_written {
            debug_assert_eq!(window.frozen.as_ref().map(|f| f.entries() + window.from()), Some(end));
            window.frozen = None;
            self.writing = None;
        }
        if window.frozen.is_none() && self.sorting.is_none() && window.filling.entries() >= self.run_entries {
            let end = window.filling_end();
            let part = Arc::new(std::mem::replace(&mut window.filling, Part::with_capacity(end, self.run_entries)));
            window.frozen = Some(part.clone());
            let sorted = part.clone();
            match std::thread::Builder::new().name("tally-index".into()).spawn(move || Run::of(&sorted)) {
                Ok(handle) => self.sorting = Some(handle),
                // No thread to spare: sort here, once.
                Err(_) => self.writing = Some(Run::of(&part)),
            }
        }
    }

    /// Write every index record in the window to the store, delete the journal records
    /// and move `meta/indexed` to the log's size: after a clean shutdown the next open has
    /// nothing to rebuild.
    fn write_out_index(&mut self) -> Result<(), LedgerError> {
        let size = self.frontier.size();
        let mut window = self.published.window.write().expect("lock");
        let from = window.from();
        if from == size {
            return Ok(());
        }
        if let Some(handle) = self.sorting.take() {
            self.writing = Some(join_sorting(handle));
        }
        let mut batch = WriteBatch::default();
        let store = &self.store;
        for mut run in self.writing.take().into_iter().chain(std::iter::once(Run::of(&window.filling))) {
            run.write_slice(run.slice_len(0, true), |index, key, value| {
                store.batch_put(&mut batch, index_cf(index), key, value);
            });
        }
        store.batch_delete_seqs(&mut batch, CF_INDEX_JOURNAL, from, size);
        store.batch_put(&mut batch, CF_META, META_INDEXED, &size.to_be_bytes());
        store.write_synced(batch)?;
        *window = Window::starting_at(size);
        Ok(())
    }

    /// Refuse with `StorageFull` when the filesystem has less free space than the reserve.
    /// One `statvfs` a group; a filesystem that cannot say is not refused.
    fn check_free_space(&self) -> Result<(), LedgerError> {
        if self.min_free_bytes == 0 {
            return Ok(());
        }
        let Ok(fs) = rustix::fs::statvfs(&self.dir) else { return Ok(()) };
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        if free < self.min_free_bytes {
            return Err(LedgerError::StorageFull { free, reserve: self.min_free_bytes });
        }
        Ok(())
    }

    /// Decide the outcome of one entry and, if it is appended, add its writes to the group.
    fn place(
        &self,
        group: &mut Group,
        engine: &mut Engine<Store>,
        entry: &VerifiedEntry,
        id: Hash,
        original: Option<u64>,
    ) -> Result<Outcome, LedgerError> {
        let seq = group.frontier.size();
        if let Some(pos) = group.appended.get(&id) {
            return Ok(Outcome::Duplicate(*pos));
        }
        if let Some(original) = original {
            return Ok(Outcome::Duplicate(self.position(original)?));
        }
        let effect = match engine.apply(entry, seq, group.time_ms) {
            Ok(Ok(effect)) => effect,
            Ok(Err(rejection)) => return Ok(Outcome::Rejected(rejection)),
            Err(e) => return Err(corrupted(format!("settlement at {seq}: {e}"))),
        };
        if let Body::Genesis(_) = entry.body() {
            group.genesis = Some(GenesisInfo::from_entry(entry)?);
        }
        let leaf = LeafRecord::for_entry(entry, seq, group.time_ms);
        let leaf_hash = leaf.leaf_hash();
        let store = &self.store;
        let batch = &mut group.batch;
        store.batch_put(batch, CF_ENTRIES, &seq_key(seq), entry.as_bytes());
        store.batch_put(batch, CF_LEAVES, &seq_key(seq), &leaf.encode());
        group.frontier.append(leaf_hash, |level, index, hash| {
            if level % TILE_HEIGHT == 0 {
                store.batch_put(batch, CF_HASHES, &hash_key(level, index), hash);
            }
        });
        // Indexes for the node: who an entry concerns, what a non-receipt moved, and where a
        // leaf is.
        let mut parties: Vec<u64> = effect.postings.iter().filter_map(|p| p.account.party()).collect();
        if let Some(author) = engine.participant_by_key(entry.author()) {
            parties.push(author);
        }
        if let Body::Receipt(r) = entry.body()
            && let Some(publisher) = r.delivery.as_ref().and_then(|d| engine.participant_by_key(&d.publisher_key))
        {
            parties.push(publisher);
        }
        parties.sort_unstable();
        parties.dedup();
        group.records.parties.extend(parties.into_iter().map(|party| (party, seq)));
        if effect.charge.is_none() && !effect.postings.is_empty() {
            store.batch_put(batch, CF_EFFECTS, &seq_key(seq), &tally_core::codec::encode(&effect.postings));
        }
        group.records.leaves.push(leaf_prefix(&leaf_hash));
        let position = Position { seq, time_ms: group.time_ms, leaf_hash };
        group.records.dedup.push(id);
        group.appended.insert(id, position);
        Ok(Outcome::Appended(position, effect))
    }

    fn position(&self, seq: u64) -> Result<Position, LedgerError> {
        let leaf = self.store.leaf(seq)?.ok_or_else(|| corrupted(format!("dedup points at missing leaf {seq}")))?;
        Ok(Position { seq, time_ms: leaf.time_ms, leaf_hash: leaf.leaf_hash() })
    }

    /// Sign a checkpoint at the current size if the tree grew and it is time (or `force`).
    /// Refuses, as corruption, to sign anything inconsistent with the previous checkpoint.
    fn maybe_checkpoint(&mut self, force: bool) -> Result<(), LedgerError> {
        let Some(genesis) = &self.genesis else { return Ok(()) };
        let size = self.frontier.size();
        let prev_size = self.last_checkpoint.map_or(0, |(s, _)| s);
        let now = (self.clock)();
        let due = now.saturating_sub(self.last_checkpoint_at_ms) >= self.checkpoint_interval_ms;
        if size == prev_size || !(force || due) {
            return Ok(());
        }
        // Sign only what is durable and published: the groups written so far first.
        self.published.wait_durable(size)?;
        let root = self.frontier.root();
        // Pair assertion: the root from the stored tiles equals the in-memory frontier's.
        if merkle::root_at(&self.store, size)? != root {
            return Err(corrupted(format!("stored tree root at {size} differs from the sequencer's")));
        }
        if let Some((prev_size, prev_root)) = self.last_checkpoint {
            let proof = merkle::consistency_proof(&self.store, prev_size, size)?;
            merkle::verify_consistency(prev_size, size, &prev_root, &root, &proof).map_err(|e: ProofError| {
                corrupted(format!("refusing to sign {size}: inconsistent with checkpoint {prev_size}: {e}"))
            })?;
        }
        let state_root = {
            let engine = self.published.engine.read().expect("lock");
            if engine.applied() != size {
                return Err(corrupted(format!("settlement is at {} entries, the tree at {size}", engine.applied())));
            }
            engine.state_root()
        };
        let extensions = vec![format!("{STATE_ROOT_EXTENSION}{}", B64.encode(state_root))];
        let cp = Checkpoint { origin: genesis.origin.clone(), size, root, extensions };
        let note = cp.sign(&genesis.origin, &self.signing_key);
        let mut batch = WriteBatch::default();
        self.store.batch_put(&mut batch, CF_CHECKPOINTS, &seq_key(size), note.as_bytes());
        self.store.write_synced(batch)?;
        self.last_checkpoint = Some((size, root));
        self.last_checkpoint_at_ms = now;
        *self.published.checkpoint.write().expect("lock") = Some((size, note));
        Ok(())
    }
}
