//! Offline replay of a Tally ledger: trust nothing but the pinned origin and collective key.
//!
//! [`Auditor`] takes the export records (leaf record and full entry, in order), the signed
//! checkpoints and, optionally, tiles and entry bundles served by the node. It checks:
//!
//! 1. every leaf record is in sequence and describes its entry (canonical bytes);
//! 2. every signature, under the same acceptance rule as the node (batch verification on
//!    every core, one item at a time where a batch fails);
//! 3. the Merkle tree rebuilt from the leaf records against every signed checkpoint, and
//!    every given tile and entry bundle against the rebuilt tree, each as soon as the
//!    replay completes it (read then from a [`TileSource`], so the audit does not hold
//!    them all);
//! 4. settlement re-executed from empty state: every logged entry applies, its postings sum
//!    to zero, money inside equals deposits less payouts after every entry, the full
//!    invariants at every checkpoint, and the state root equals the one signed there.
//!
//! The first failure stops the replay and is reported with its sequence number.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use serde::Serialize;
use tally_core::Hash;
use tally_core::checkpoint::open_checkpoint;
use tally_core::entry::{Entry, EntryError, LeafRecord, VerifiedEntry, verify_all_on};
use tally_core::merkle::Frontier;
use tally_core::sig::PublicKey;
use tally_core::tile::{TILE_HEIGHT, TILE_WIDTH, TilePath, parse_entry_bundle};
use tally_settlement::state::state_root_of;
use tally_settlement::terms::format_amount;
use tally_settlement::{ApplyWrites, Engine, MemoryStore, StateError};

/// Entries verified together (split across cores), then applied in order.
pub const CHUNK_ENTRIES: usize = 8192;

/// What the auditor trusts: the log's origin and the collective's key, from outside.
#[derive(Debug, Clone)]
pub struct Pins {
    pub origin: String,
    pub key: PublicKey,
}

/// The first thing that did not check out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Divergence {
    /// The first sequence number involved (for a checkpoint: its size; for a tile: its
    /// first leaf), if one applies.
    pub seq: Option<u64>,
    /// What differed.
    pub what: String,
}

/// The audit's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub entries: u64,
    pub checkpoints: usize,
    pub tiles: usize,
    pub bundles: usize,
    /// The tree root and settlement state root after the last entry replayed.
    pub root: String,
    pub state_root: String,
    /// Every non-zero account after the replay, as exact amounts.
    pub balances: BTreeMap<String, String>,
    pub divergence: Option<Divergence>,
}

impl Report {
    /// A few lines for people.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} entries replayed; {} signed checkpoints, {} tiles and {} entry bundles checked\n\
             tree root {}\nstate root {}\n{} accounts with a balance\n",
            self.entries,
            self.checkpoints,
            self.tiles,
            self.bundles,
            self.root,
            self.state_root,
            self.balances.len()
        );
        match &self.divergence {
            None => s.push_str("AUDIT PASSED: every signature, tree hash, checkpoint and state root checks out\n"),
            Some(d) => s.push_str(&format!(
                "AUDIT FAILED at {}: {}\n",
                d.seq.map_or("the log as a whole".to_string(), |q| format!("sequence number {q}")),
                d.what
            )),
        }
        s
    }
}

/// Where an auditor reads the tiles and entry bundles the node served, by path (like
/// `tile/0/x001/234.p/17`). They are read as the replay completes each one, so an audit
/// holds one tile per level and one bundle in memory, not the export's.
pub trait TileSource {
    fn read(&mut self, path: &str) -> Result<Vec<u8>, String>;
}

/// Tiles held in memory (tests, small exports).
impl TileSource for HashMap<String, Vec<u8>> {
    fn read(&mut self, path: &str) -> Result<Vec<u8>, String> {
        self.get(path).cloned().ok_or_else(|| "not served".to_string())
    }
}

/// Tiles in a directory, one file per path (`tally export`'s `tiles/`).
#[derive(Debug, Clone)]
pub struct TileDir(pub std::path::PathBuf);

impl TileSource for TileDir {
    fn read(&mut self, path: &str) -> Result<Vec<u8>, String> {
        std::fs::read(self.0.join(path)).map_err(|e| e.to_string())
    }
}

/// A tile or bundle position: `None` for the entry bundles, else the tile level.
type TileKey = (Option<u8>, u64);

/// The served tiles and bundles not yet checked, and what has been.
struct Served {
    source: Box<dyn TileSource + Send>,
    /// By position, the widths served (a full tile and partial ones may all be).
    pending: BTreeMap<TileKey, Vec<u16>>,
    /// Served paths that name no tile.
    unparsed: Vec<String>,
    tiles: usize,
    bundles: usize,
    /// The widest served level-0 tile over the leaves being fed, to check each leaf
    /// against as it is replayed, so a difference is named at its own position.
    level0: Option<(u64, Vec<u8>)>,
}

/// A replay in progress: feed records in order, then finish. The replayed settlement state
/// is kept in `S`: in memory by default, or on disk for a large export (`ScratchState` in
/// `tally-ledger`), since it grows with the ledger.
pub struct Auditor<S = MemoryStore> {
    pins: Pins,
    /// Signed checkpoints not yet reached, by size: (note, verified root).
    checkpoints: BTreeMap<u64, (String, Hash)>,
    checked: usize,
    frontier: Frontier,
    /// Per tile level, the node hashes of the tile being filled (the replayed tree's hashes
    /// at heights 0, 8, 16, ...): checked against the served tile once it is full.
    filling: Vec<Vec<Hash>>,
    /// The leaf records of the entry bundle being filled.
    bundle: Vec<Vec<u8>>,
    served: Served,
    pending: Vec<(LeafRecord, Vec<u8>, Entry)>,
    /// The chunk before `pending`, its signatures being verified on other threads while
    /// the one before it is applied.
    in_flight: Option<InFlight>,
    engine: Engine<S>,
    divergence: Option<Divergence>,
}

/// A chunk of records whose entries are being verified on other threads.
struct InFlight {
    records: Vec<(LeafRecord, Vec<u8>)>,
    verdicts: std::thread::JoinHandle<Vec<Result<VerifiedEntry, EntryError>>>,
}

impl InFlight {
    /// Start verifying `pending` on every core (at most eight threads), in the background.
    fn start(pending: Vec<(LeafRecord, Vec<u8>, Entry)>) -> Self {
        let (records, entries): (Vec<(LeafRecord, Vec<u8>)>, Vec<Entry>) =
            pending.into_iter().map(|(r, l, e)| ((r, l), e)).unzip();
        let verdicts = std::thread::spawn(move || {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
            verify_all_on(threads, entries)
        });
        Self { records, verdicts }
    }
}

impl<S> std::fmt::Debug for Auditor<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor").field("entries", &self.frontier.size()).field("divergence", &self.divergence).finish()
    }
}

fn fail(seq: Option<u64>, what: impl Into<String>) -> Divergence {
    Divergence { seq, what: what.into() }
}

impl Auditor<MemoryStore> {
    /// Start an audit with the signed checkpoints and the tiles and entry bundles the node
    /// serves (`(path, bytes)`, path like `tile/0/x001/234.p/17`; may be empty), with the
    /// replayed state in memory. Every checkpoint's signature is checked here, under the
    /// pins.
    pub fn new(pins: Pins, checkpoint_notes: Vec<String>, served: Vec<(String, Vec<u8>)>) -> Self {
        let paths = served.iter().map(|(p, _)| p.clone()).collect();
        let map: HashMap<String, Vec<u8>> = served.into_iter().collect();
        Self::with_tiles(pins, checkpoint_notes, paths, Box::new(map), MemoryStore::default())
            .expect("empty memory state opens")
    }
}

impl<S: ApplyWrites> Auditor<S> {
    /// [`Auditor::new`] with the served tiles and bundles named by `paths` and read from
    /// `source` only when the replay reaches them, and the replayed state kept in `state`
    /// (empty). `Err` if the state store cannot be read.
    pub fn with_tiles(
        pins: Pins,
        checkpoint_notes: Vec<String>,
        paths: Vec<String>,
        source: Box<dyn TileSource + Send>,
        state: S,
    ) -> Result<Self, StateError> {
        let mut checkpoints = BTreeMap::new();
        let mut divergence = None;
        for note in checkpoint_notes {
            match open_checkpoint(&note, &pins.origin, &pins.key) {
                Ok(cp) => {
                    checkpoints.insert(cp.size, (note, cp.root));
                }
                Err(e) => {
                    let size = note.lines().nth(1).and_then(|l| l.parse().ok());
                    divergence
                        .get_or_insert(fail(size, format!("checkpoint does not verify under the pinned key: {e}")));
                }
            }
        }
        let mut served =
            Served { source, pending: BTreeMap::new(), unparsed: Vec::new(), tiles: 0, bundles: 0, level0: None };
        for path in paths {
            match TilePath::parse(&path) {
                Some(TilePath::Hashes { level, index, width }) => {
                    served.pending.entry((Some(level), index)).or_default().push(width)
                }
                Some(TilePath::Entries { index, width }) => {
                    served.pending.entry((None, index)).or_default().push(width)
                }
                None => served.unparsed.push(path),
            }
        }
        for widths in served.pending.values_mut() {
            widths.sort_unstable();
            widths.dedup();
        }
        Ok(Self {
            pins,
            checkpoints,
            served,
            checked: 0,
            frontier: Frontier::new(),
            filling: Vec::new(),
            bundle: Vec::new(),
            pending: Vec::with_capacity(CHUNK_ENTRIES),
            in_flight: None,
            engine: Engine::open(state)?,
            divergence,
        })
    }

    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// Entries replayed so far.
    pub fn replayed(&self) -> u64 {
        self.frontier.size()
    }

    pub fn failed(&self) -> bool {
        self.divergence.is_some()
    }

    /// Feed the next export record (leaf record bytes, entry bytes). Returns `false` once
    /// the audit has failed (later records are ignored).
    pub fn push(&mut self, leaf: &[u8], entry: &[u8]) -> bool {
        if self.divergence.is_some() {
            return false;
        }
        let verifying = self.in_flight.as_ref().map_or(0, |f| f.records.len());
        let seq = self.frontier.size() + (verifying + self.pending.len()) as u64;
        let record = match LeafRecord::decode(leaf) {
            Ok(r) => r,
            Err(e) => {
                self.divergence = Some(fail(Some(seq), format!("leaf record does not decode: {e}")));
                return false;
            }
        };
        if record.seq != seq {
            self.divergence = Some(fail(
                Some(seq),
                format!("expected the record of entry {seq}, got entry {} (missing or reordered)", record.seq),
            ));
            return false;
        }
        let entry = match Entry::decode(entry) {
            Ok(e) => e,
            Err(e) => {
                self.divergence = Some(fail(Some(seq), format!("entry is not canonical: {} ({})", e, e.code())));
                return false;
            }
        };
        match self.served.level0_hash(seq) {
            Err(d) => {
                self.divergence = Some(d);
                return false;
            }
            Ok(Some(h)) if h != record.leaf_hash() => {
                self.divergence = Some(fail(Some(seq), "the leaf record's hash differs from the node's level-0 tile"));
                return false;
            }
            Ok(_) => {}
        }
        if !record.matches(&entry) {
            self.divergence = Some(fail(
                Some(seq),
                "the leaf record does not describe the entry (commitment, kind, author or version)",
            ));
            return false;
        }
        self.pending.push((record, leaf.to_vec(), entry));
        if self.pending.len() >= CHUNK_ENTRIES {
            self.flush();
        }
        self.divergence.is_none()
    }

    /// Start verifying the pending chunk in the background, then apply the chunk verified
    /// before it, in order: settlement of one chunk overlaps verification of the next, so
    /// replay runs at the speed of the slower of the two rather than of both added up. A
    /// bad signature is therefore reported one chunk after it was fed, and always by
    /// [`Auditor::finish`].
    fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        if self.divergence.is_some() {
            return;
        }
        let next = (!pending.is_empty()).then(|| InFlight::start(pending));
        if let Some(done) = std::mem::replace(&mut self.in_flight, next) {
            self.apply_chunk(done);
        }
    }

    /// Apply every record of a verified chunk in order, stopping at the first divergence.
    fn apply_chunk(&mut self, chunk: InFlight) {
        let Ok(verdicts) = chunk.verdicts.join() else {
            let seq = chunk.records.first().map(|(r, _)| r.seq);
            self.divergence = Some(fail(seq, "signature verification stopped (a verifier thread panicked)"));
            return;
        };
        // What the chunk's receipts read from indexed state, in a few batched reads.
        if let Err(e) = self.engine.prefetch(verdicts.iter().filter_map(|v| v.as_ref().ok())) {
            let seq = self.frontier.size().checked_sub(1);
            self.divergence = Some(fail(seq, format!("the auditor's state store failed: {e}")));
            return;
        }
        for ((record, leaf), verdict) in chunk.records.into_iter().zip(verdicts) {
            let seq = record.seq;
            let verified = match verdict {
                Ok(v) => v,
                Err(e) => {
                    self.divergence = Some(fail(Some(seq), format!("signature does not verify: {e} ({})", e.code())));
                    return;
                }
            };
            if !self.apply(seq, &record, &leaf, &verified) {
                return;
            }
        }
        // The chunk's writes go to the replayed store together: until then every read goes
        // through the engine's overlay of pending writes, and neither the checks nor the
        // state root read the store, so applying them per entry only re-encoded the same
        // balances again and again.
        let writes = self.engine.take_writes();
        if let Err(e) = self.engine.store_mut().apply_writes(writes) {
            let seq = self.frontier.size().checked_sub(1);
            self.divergence = Some(fail(seq, format!("the auditor's state store failed: {e}")));
        }
    }

    fn apply(&mut self, seq: u64, record: &LeafRecord, leaf: &[u8], entry: &VerifiedEntry) -> bool {
        let filling = &mut self.filling;
        let mut full = Vec::new();
        self.frontier.append(record.leaf_hash(), |height, index, hash| {
            if height % TILE_HEIGHT == 0 {
                let level = height / TILE_HEIGHT;
                if filling.len() <= usize::from(level) {
                    filling.push(Vec::with_capacity(TILE_WIDTH as usize));
                }
                let tile = &mut filling[usize::from(level)];
                debug_assert_eq!(tile.len() as u64, index % TILE_WIDTH);
                tile.push(*hash);
                if tile.len() as u64 == TILE_WIDTH {
                    full.push((level, index / TILE_WIDTH));
                }
            }
        });
        for (level, index) in full {
            let hashes = std::mem::take(&mut self.filling[usize::from(level)]);
            if let Err(d) = self.served.check_tile(level, index, &hashes) {
                self.divergence = Some(d);
                return false;
            }
        }
        self.bundle.push(leaf.to_vec());
        if self.bundle.len() as u64 == TILE_WIDTH {
            let leaves = std::mem::take(&mut self.bundle);
            if let Err(d) = self.served.check_bundle(seq / TILE_WIDTH, &leaves) {
                self.divergence = Some(d);
                return false;
            }
        }
        match self.engine.apply(entry, seq, record.time_ms) {
            Err(e) => {
                self.divergence = Some(fail(Some(seq), format!("settlement state failed: {e}")));
                return false;
            }
            Ok(Err(r)) => {
                self.divergence =
                    Some(fail(Some(seq), format!("settlement refuses a logged entry: {} ({r})", r.code())));
                return false;
            }
            Ok(Ok(effect)) => {
                let sum: i128 = effect.postings.iter().map(|p| p.amount).sum();
                if sum != 0 {
                    self.divergence = Some(fail(Some(seq), format!("postings sum to {sum}, not zero")));
                    return false;
                }
            }
        }
        if let Err(e) = self.engine.check_money() {
            self.divergence = Some(fail(Some(seq), e));
            return false;
        }
        let size = seq + 1;
        if let Some((note, root)) = self.checkpoints.remove(&size) {
            self.checked += 1;
            if self.frontier.root() != root {
                self.divergence =
                    Some(fail(Some(size), format!("the tree root at {size} differs from the signed checkpoint")));
                return false;
            }
            if let Err(e) = self.engine.check_invariants() {
                self.divergence = Some(fail(Some(size), format!("invariant broken at checkpoint {size}: {e}")));
                return false;
            }
            match state_root_of(&note) {
                Some(signed) if signed == self.engine.state_root() => {}
                Some(_) => {
                    self.divergence = Some(fail(
                        Some(size),
                        format!(
                            "the settlement state root signed at {size} differs from the replayed one (the node's state diverged)"
                        ),
                    ));
                    return false;
                }
                None => {
                    self.divergence = Some(fail(Some(size), format!("checkpoint {size} carries no state root")));
                    return false;
                }
            }
        }
        true
    }

    /// Finish: apply what is pending, check the served tiles and bundles against the
    /// rebuilt tree, and report.
    pub fn finish(mut self) -> Report {
        self.flush();
        if let Some(last) = self.in_flight.take()
            && self.divergence.is_none()
        {
            self.apply_chunk(last);
        }
        let size = self.frontier.size();
        if self.divergence.is_none()
            && let Some((&cp, _)) = self.checkpoints.iter().next()
        {
            self.divergence =
                Some(fail(Some(cp), format!("a checkpoint signs size {cp} but the export ends at {size}")));
        }
        if self.divergence.is_none() {
            // The last, partial tile of each level and the last bundle; then anything served
            // that the replay never reached.
            let last = |hashes: u64| hashes / TILE_WIDTH;
            let mut result = Ok(());
            for (level, hashes) in std::mem::take(&mut self.filling).iter().enumerate() {
                let level = level as u8;
                let count = size >> (u32::from(level) * u32::from(TILE_HEIGHT));
                result = result.and_then(|()| self.served.check_tile(level, last(count), hashes));
            }
            let bundle = std::mem::take(&mut self.bundle);
            result = result.and_then(|()| self.served.check_bundle(last(size), &bundle));
            if let Err(d) = result.and_then(|()| self.served.left_over(size)) {
                self.divergence = Some(d);
            }
        }
        let scale = self.engine.meta().map_or(0, |m| m.asset_scale);
        Report {
            ok: self.divergence.is_none(),
            entries: size,
            checkpoints: self.checked,
            tiles: self.served.tiles,
            bundles: self.served.bundles,
            root: hex::encode(self.frontier.root()),
            state_root: hex::encode(self.engine.state_root()),
            balances: self.engine.balances().map(|(a, b)| (a.label(), format_amount(*b, scale))).collect(),
            divergence: self.divergence,
        }
    }
}

impl Served {
    /// The widths served at `key` no wider than `available`, taken from the pending set
    /// (wider ones stay, to be reported as beyond the replay).
    fn take_widths(&mut self, key: TileKey, available: usize) -> Vec<u16> {
        let Some(widths) = self.pending.get_mut(&key) else { return Vec::new() };
        let split = widths.partition_point(|w| usize::from(*w) <= available);
        let taken: Vec<u16> = widths.drain(..split).collect();
        if widths.is_empty() {
            self.pending.remove(&key);
        }
        taken
    }

    fn read(&mut self, path: &str, first_leaf: u64) -> Result<Vec<u8>, Divergence> {
        self.source.read(path).map_err(|e| fail(Some(first_leaf), format!("{path} could not be read: {e}")))
    }

    /// The served level-0 hash of leaf `seq`, if a level-0 tile covering it was served.
    fn level0_hash(&mut self, seq: u64) -> Result<Option<Hash>, Divergence> {
        let index = seq / TILE_WIDTH;
        if self.level0.as_ref().is_none_or(|(i, _)| *i != index) {
            self.level0 = None;
            if let Some(&width) = self.pending.get(&(Some(0), index)).and_then(|w| w.last()) {
                let path = TilePath::Hashes { level: 0, index, width }.render();
                self.level0 = Some((index, self.read(&path, index * TILE_WIDTH)?));
            }
        }
        let at = (seq % TILE_WIDTH) as usize * 32;
        Ok(self.level0.as_ref().and_then(|(_, b)| b.get(at..at + 32)).map(|h| h.try_into().expect("32 bytes")))
    }

    /// Check every tile served at `level`/`index` no wider than `hashes` (the replayed
    /// tree's hashes of that tile, from its first).
    fn check_tile(&mut self, level: u8, index: u64, hashes: &[Hash]) -> Result<(), Divergence> {
        let first = index * TILE_WIDTH;
        let shift = u32::from(level) * u32::from(TILE_HEIGHT);
        for width in self.take_widths((Some(level), index), hashes.len()) {
            let path = TilePath::Hashes { level, index, width }.render();
            let bytes = self.read(&path, first << shift)?;
            let expected = &hashes[..usize::from(width)];
            if bytes.len() != expected.len() * 32 {
                return Err(fail(
                    Some(first << shift),
                    format!("tile {path} has {} bytes, not {}", bytes.len(), expected.len() * 32),
                ));
            }
            if let Some(i) = expected.iter().zip(bytes.chunks_exact(32)).position(|(e, b)| &e[..] != b) {
                let leaf = (first + i as u64) << shift;
                return Err(fail(Some(leaf), format!("tile {path} differs from the replayed tree at hash {i}")));
            }
            self.tiles += 1;
        }
        Ok(())
    }

    /// Check every entry bundle served at `index` no wider than `leaves` (the replayed leaf
    /// records of that bundle, from its first).
    fn check_bundle(&mut self, index: u64, leaves: &[Vec<u8>]) -> Result<(), Divergence> {
        let first = index * TILE_WIDTH;
        for width in self.take_widths((None, index), leaves.len()) {
            let path = TilePath::Entries { index, width }.render();
            let bytes = self.read(&path, first)?;
            // The bundle these leaf records make; a difference is named by the record
            // holding its first differing byte.
            let mut expected = Vec::new();
            let mut starts = Vec::new();
            for leaf in &leaves[..usize::from(width)] {
                starts.push(expected.len());
                expected.extend_from_slice(&(leaf.len() as u16).to_be_bytes());
                expected.extend_from_slice(leaf);
            }
            if expected != bytes {
                let at =
                    expected.iter().zip(&bytes).position(|(a, b)| a != b).unwrap_or(expected.len().min(bytes.len()));
                let record = starts.partition_point(|s| *s <= at).saturating_sub(1);
                let detail = match parse_entry_bundle(&bytes) {
                    Err(e) => format!("bundle {path} is malformed ({e})"),
                    Ok(_) => format!("bundle {path} differs from the exported leaf records"),
                };
                return Err(fail(Some(first + record as u64), detail));
            }
            self.bundles += 1;
        }
        Ok(())
    }

    /// Whatever was served and not checked: paths that name no tile, and tiles or bundles
    /// beyond the replayed tree of `size`.
    fn left_over(&self, size: u64) -> Result<(), Divergence> {
        if let Some(path) = self.unparsed.first() {
            return Err(fail(None, format!("{path} is not a tile path")));
        }
        let Some((&(level, index), widths)) = self.pending.iter().next() else { return Ok(()) };
        let width = widths[0];
        let first = index * TILE_WIDTH;
        Err(match level {
            Some(level) => fail(
                Some(first << (u32::from(level) * u32::from(TILE_HEIGHT))),
                format!(
                    "tile {} goes beyond the replayed tree of {size}",
                    TilePath::Hashes { level, index, width }.render()
                ),
            ),
            None => fail(
                Some(first),
                format!(
                    "bundle {} goes beyond the replayed log of {size}",
                    TilePath::Entries { index, width }.render()
                ),
            ),
        })
    }
}

/// The records of an export stream (`u32le len || leaf || u32le len || entry`, repeated),
/// read one at a time, so an auditor need not hold the export in memory. An `Err` item
/// names the byte offset where the stream is cut (or the read that failed) and ends it.
#[derive(Debug)]
pub struct ExportRecords<R> {
    reader: R,
    offset: u64,
    done: bool,
}

impl<R: std::io::Read> ExportRecords<R> {
    pub fn new(reader: R) -> Self {
        Self { reader, offset: 0, done: false }
    }

    /// Bytes of the stream consumed by the records read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next length-prefixed field; `None` only at a clean end before a record's first.
    fn field(&mut self, first: bool) -> Result<Option<Vec<u8>>, String> {
        let at = self.offset;
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < len.len() {
            match self.reader.read(&mut len[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading the export at byte {at}: {e}")),
            }
        }
        if got == 0 && first {
            return Ok(None);
        }
        if got < len.len() {
            return Err(format!("export cut inside a length at byte {at}"));
        }
        let len = u32::from_le_bytes(len) as usize;
        // Grown as bytes arrive, not allocated from the claimed length: a damaged length
        // cannot ask for gigabytes.
        let mut field = Vec::new();
        let read = std::io::Read::take(&mut self.reader, len as u64)
            .read_to_end(&mut field)
            .map_err(|e| format!("reading the export at byte {at}: {e}"))?;
        if read < len {
            return Err(format!("export cut inside a record at byte {at}"));
        }
        self.offset += 4 + len as u64;
        Ok(Some(field))
    }
}

impl<R: std::io::Read> Iterator for ExportRecords<R> {
    type Item = Result<(Vec<u8>, Vec<u8>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let record = match self.field(true) {
            Ok(None) => None,
            Ok(Some(leaf)) => match self.field(false) {
                Ok(entry) => Some(Ok((leaf, entry.expect("a record's second field is never the end")))),
                Err(e) => Some(Err(e)),
            },
            Err(e) => Some(Err(e)),
        };
        self.done = !matches!(record, Some(Ok(_)));
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(records: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (leaf, entry) in records {
            for field in [leaf, entry] {
                out.extend_from_slice(&(field.len() as u32).to_le_bytes());
                out.extend_from_slice(field);
            }
        }
        out
    }

    type Records = Vec<(Vec<u8>, Vec<u8>)>;

    fn parse(bytes: &[u8]) -> Result<Records, String> {
        ExportRecords::new(bytes).collect()
    }

    /// A reader that hands out at most `step` bytes a call, as a pipe or socket may.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    #[test]
    fn records_stream_one_at_a_time_with_their_offsets() {
        let bytes = export(&[(b"leaf-0", b"entry-0"), (b"", b"e1"), (b"leaf-2", b"")]);
        let mut records = ExportRecords::new(Trickle { bytes: &bytes, step: 3 });
        assert_eq!(records.next(), Some(Ok((b"leaf-0".to_vec(), b"entry-0".to_vec()))));
        assert_eq!(records.offset(), 4 + 6 + 4 + 7);
        assert_eq!(records.next(), Some(Ok((Vec::new(), b"e1".to_vec()))));
        assert_eq!(records.next(), Some(Ok((b"leaf-2".to_vec(), Vec::new()))));
        assert_eq!(records.next(), None);
        assert_eq!(records.offset(), bytes.len() as u64);
        assert_eq!(parse(&bytes).unwrap().len(), 3);
        assert_eq!(parse(&[]).unwrap(), Records::new());
    }

    #[test]
    fn a_cut_export_is_an_error_at_the_cut_and_ends_the_stream() {
        let bytes = export(&[(b"leaf-0", b"entry-0"), (b"leaf-1", b"entry-1")]);
        let second = 4 + 6 + 4 + 7;
        for (cut, want) in [
            (second + 2, format!("export cut inside a length at byte {second}")),
            (second + 4 + 3, format!("export cut inside a record at byte {second}")),
            (second + 4 + 6 + 1, format!("export cut inside a length at byte {}", second + 4 + 6)),
            (bytes.len() - 1, format!("export cut inside a record at byte {}", second + 4 + 6)),
        ] {
            let mut records = ExportRecords::new(&bytes[..cut]);
            assert!(records.next().unwrap().is_ok());
            assert_eq!(records.next(), Some(Err(want.clone())), "cut at {cut}");
            assert_eq!(records.next(), None);
            assert_eq!(parse(&bytes[..cut]), Err(want));
        }
        // A damaged length claiming 4 GiB is a cut record, read as far as the bytes go.
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"short");
        assert_eq!(parse(&huge), Err("export cut inside a record at byte 0".to_string()));
    }
}
