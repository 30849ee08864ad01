//! Where the engine keeps its state, and the state root.
//!
//! State is key-value pairs with a one-byte table prefix (`specs/settlement.md`, "State").
//! Two kinds of table:
//! * **resident** tables hold what is bounded by the number of participants and contracts
//!   (participants, contracts, balances, open payouts and disputes, period tallies). They
//!   are loaded whole when the engine opens, changed in memory, and written back as the
//!   changed records at each commit.
//! * **indexed** tables hold what grows with content and receipts (registry, per-receipt
//!   charges, once-per-article markers, unclaimed money, settled payouts). They are read
//!   on demand from the [`StateStore`] through an overlay of uncommitted writes.
//!
//! The node keeps state in RocksDB (in the same write batch as the log entries it came
//! from); tests and the auditor use [`MemoryStore`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bincode::{Decode, Encode};
use sha2::{Digest, Sha256};
use tally_core::Hash;
use tally_core::codec::{self, CodecError};

/// A failure of the storage under the engine: fatal, never a rejection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("state storage: {0}")]
    Storage(String),
    #[error("state record {key} does not decode: {error}")]
    Corrupted { key: String, error: CodecError },
}

/// Key-value pairs, in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads the engine needs from committed state.
pub trait StateStore {
    /// The committed value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;
    /// The committed values of several keys, in the order given. A store that can look keys
    /// up together (RocksDB's batched multi-get) overrides this.
    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    /// Whether one [`StateStore::get_many`] of many keys costs much less than as many
    /// single reads, so that [`crate::Engine::prefetch`] is worth doing. It is for RocksDB
    /// (a batched multi-get shares the per-call work); for a map in memory, reading ahead
    /// only copies values that were a lookup away.
    const BATCHED_READS: bool = false;
    /// Every committed pair whose key starts with `prefix`, in key order.
    fn scan(&self, prefix: u8) -> Result<Pairs, StateError>;
}

/// Writes to make durable: `None` deletes the key.
pub type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A store that takes the engine's writes directly (a replay, which has no log to write
/// them with): the auditor's.
pub trait ApplyWrites: StateStore {
    fn apply_writes(&mut self, writes: Writes) -> Result<(), StateError>;
}

impl ApplyWrites for MemoryStore {
    fn apply_writes(&mut self, writes: Writes) -> Result<(), StateError> {
        self.apply(writes);
        Ok(())
    }
}

/// State kept in memory (tests, the auditor).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemoryStore {
    pub fn apply(&mut self, writes: Writes) {
        for (k, v) in writes {
            match v {
                Some(v) => self.map.insert(k, v),
                None => self.map.remove(&k),
            };
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every pair, in key order (for tests that compare stores).
    pub fn pairs(&self) -> impl Iterator<Item = (&Vec<u8>, &Vec<u8>)> {
        self.map.iter()
    }

    /// Overwrite one raw value (tests that tamper with state).
    pub fn put_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.map.insert(key, value);
    }
}

impl StateStore for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.map.get(key).cloned())
    }

    fn scan(&self, prefix: u8) -> Result<Pairs, StateError> {
        Ok(self
            .map
            .range(vec![prefix]..)
            .take_while(|(k, _)| k[0] == prefix)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

pub(crate) fn decode_record<T: Decode<()>>(key: &[u8], bytes: &[u8]) -> Result<T, StateError> {
    codec::decode_exact(bytes).map_err(|error| StateError::Corrupted { key: hex_key(key), error })
}

pub(crate) fn hex_key(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// A resident table: every record in memory, changed records remembered until the next
/// commit writes them.
#[derive(Debug)]
pub(crate) struct Table<K, V> {
    prefix: u8,
    map: BTreeMap<K, V>,
    dirty: BTreeSet<K>,
}

impl<K: Ord + Clone + Encode + Decode<()>, V: Encode + Decode<()>> Table<K, V> {
    pub(crate) fn load(prefix: u8, store: &impl StateStore) -> Result<Self, StateError> {
        let mut map = BTreeMap::new();
        for (k, v) in store.scan(prefix)? {
            let key: K = decode_record(&k, &k[1..])?;
            map.insert(key, decode_record(&k, &v)?);
        }
        Ok(Self { prefix, map, dirty: BTreeSet::new() })
    }

    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    pub(crate) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let v = self.map.get_mut(k)?;
        self.dirty.insert(k.clone());
        Some(v)
    }

    pub(crate) fn insert(&mut self, k: K, v: V) {
        self.dirty.insert(k.clone());
        self.map.insert(k, v);
    }

    pub(crate) fn remove(&mut self, k: &K) -> Option<V> {
        let v = self.map.remove(k)?;
        self.dirty.insert(k.clone());
        Some(v)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }

    pub(crate) fn key_bytes(&self, k: &K) -> Vec<u8> {
        let mut out = vec![self.prefix];
        codec::encode_into(k, &mut out);
        out
    }
}

/// What the engine does with every resident table alike.
pub(crate) trait Resident {
    /// Append the changed records (or their deletion) and forget the changes.
    fn flush(&mut self, writes: &mut Writes);
    /// Append every record, encoded, for the state root.
    fn records(&self, out: &mut Pairs);
}

impl<K: Ord + Clone + Encode + Decode<()>, V: Encode + Decode<()>> Resident for Table<K, V> {
    fn flush(&mut self, writes: &mut Writes) {
        for k in std::mem::take(&mut self.dirty) {
            let key = self.key_bytes(&k);
            writes.push((key, self.map.get(&k).map(codec::encode)));
        }
    }

    fn records(&self, out: &mut Pairs) {
        for (k, v) in &self.map {
            out.push((self.key_bytes(k), codec::encode(v)));
        }
    }
}

/// Domain of the state root.
pub const STATE_ROOT_DOMAIN: &[u8] = b"tally/state-root/v1\0";
/// Domain of the indexed-table write digest.
pub const INDEX_DIGEST_DOMAIN: &[u8] = b"tally/index-writes/v1\0";

/// `SHA-256(domain || for each resident record in key-byte order: u32 key length || key ||
/// u32 value length || value)`, lengths little-endian.
pub(crate) fn root_of(mut records: Pairs) -> Hash {
    records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    h.update(STATE_ROOT_DOMAIN);
    for (k, v) in &records {
        h.update((k.len() as u32).to_le_bytes());
        h.update(k);
        h.update((v.len() as u32).to_le_bytes());
        h.update(v);
    }
    h.finalize().into()
}

/// The running digest over every write to an indexed table, in the order made:
/// `d' = SHA-256(domain || d || u32 key length || key || tag || [u32 value length || value])`
/// with tag 1 for a put and 0 for a delete.
pub(crate) fn chain_write(digest: &Hash, key: &[u8], value: Option<&[u8]>) -> Hash {
    let mut h = Sha256::new();
    h.update(INDEX_DIGEST_DOMAIN);
    h.update(digest);
    h.update((key.len() as u32).to_le_bytes());
    h.update(key);
    match value {
        Some(v) => {
            h.update([1]);
            h.update((v.len() as u32).to_le_bytes());
            h.update(v);
        }
        None => h.update([0]),
    }
    h.finalize().into()
}

/// Indexed-table reads through the overlay of writes not yet committed, and of committed
/// values read ahead for the group being applied.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Committed values read by [`Overlay::prefetch`]. The store changes only when the
    /// pending writes are committed, so these are dropped with them ([`Overlay::drain`])
    /// and whenever the store is handed out mutably ([`Overlay::forget_reads`]).
    fetched: HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Overlay {
    /// The value of `key` if it is at hand: a pending write or a value read ahead.
    fn at_hand(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.pending.get(key).or_else(|| self.fetched.get(key))
    }

    /// The value of `key`: pending write, value read ahead, or the store's. A value at hand
    /// is decoded where it is, not copied first.
    pub(crate) fn get<S: StateStore, V: Decode<()>>(&self, store: &S, key: &[u8]) -> Result<Option<V>, StateError> {
        match self.at_hand(key) {
            Some(value) => value.as_deref().map(|bytes| decode_record(key, bytes)).transpose(),
            None => store.get(key)?.map(|bytes| decode_record(key, &bytes)).transpose(),
        }
    }

    /// [`Overlay::get`] for several keys, with one store lookup for those not at hand.
    pub(crate) fn get_many<S: StateStore, V: Decode<()>>(
        &self,
        store: &S,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<V>>, StateError> {
        let missing: Vec<&[u8]> = keys.iter().map(Vec::as_slice).filter(|k| self.at_hand(k).is_none()).collect();
        let mut stored = if missing.is_empty() { Vec::new() } else { store.get_many(&missing)? }.into_iter();
        keys.iter()
            .map(|key| match self.at_hand(key) {
                Some(value) => value.as_deref().map(|bytes| decode_record(key, bytes)).transpose(),
                None => stored.next().flatten().map(|bytes| decode_record(key, &bytes)).transpose(),
            })
            .collect()
    }

    /// Read the committed values of `keys` (those not pending or read already) in one
    /// batched store lookup, for the reads that follow until the next commit.
    pub(crate) fn prefetch<S: StateStore>(&mut self, store: &S, mut keys: Vec<Vec<u8>>) -> Result<(), StateError> {
        // Most of a chunk's keys are its receipts' shared URL prefixes: dropping the repeats
        // first leaves fewer keys to look for at hand.
        keys.sort_unstable();
        keys.dedup();
        keys.retain(|k| self.at_hand(k).is_none());
        if keys.is_empty() {
            return Ok(());
        }
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let values = store.get_many(&refs)?;
        self.fetched.extend(keys.into_iter().zip(values));
        Ok(())
    }

    pub(crate) fn put<V: Encode>(&mut self, digest: &mut Hash, key: Vec<u8>, value: Option<&V>) {
        let bytes = value.map(codec::encode);
        *digest = chain_write(digest, &key, bytes.as_deref());
        self.pending.insert(key, bytes);
    }

    /// Take the pending writes for commit; what was read ahead is stale once they are.
    pub(crate) fn drain(&mut self, writes: &mut Writes) {
        writes.extend(std::mem::take(&mut self.pending));
        self.forget_reads();
    }

    /// Drop what was read ahead (the store is about to change under it).
    pub(crate) fn forget_reads(&mut self) {
        self.fetched.clear();
    }
}

/// The prefix of the checkpoint extension line that carries the settlement state root:
/// `state <base64 of the 32-byte root>` (`specs/settlement.md`).
pub const STATE_ROOT_EXTENSION: &str = "state ";

/// The settlement state root a checkpoint note carries, if any. Only meaningful for a note
/// whose signature was checked.
pub fn state_root_of(note: &str) -> Option<Hash> {
    use base64::Engine as _;
    let body = note.split("\n\n").next()?;
    let line = body.lines().skip(3).find_map(|l| l.strip_prefix(STATE_ROOT_EXTENSION))?;
    base64::engine::general_purpose::STANDARD.decode(line).ok()?.try_into().ok()
}
