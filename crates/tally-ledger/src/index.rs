//! Index records written late, in sorted runs.
//!
//! Three indexes have keys in hash or participant order: `dedup` (idempotency key to
//! sequence number), `leaf_index` (leaf hash prefix and sequence number) and `parties`
//! (participant and sequence number). Written with every group, each of their keys landed
//! at a random place in a large memtable, and RocksDB searched its skip list from the top
//! for each: a third of the sequencer's time at half load.
//!
//! So a group no longer writes them. It writes one **journal record** instead, keyed by
//! the group's first sequence number (so it is appended in order, cheaply), in the same
//! synced batch as its entries: its entry count and its `parties` records (idempotency
//! keys and leaf hashes are in the entries and leaf records themselves). The index records
//! go into an in-memory [`Window`], which every index lookup consults before the store. Once the
//! window holds [`INDEX_RUN_ENTRIES`] entries it is frozen, sorted on a helper thread into
//! a [`Run`], and written out a slice at a time with the following groups: keys sorted and
//! dense land next to each other in the memtable. The group that writes a run's last slice
//! also deletes the run's journal records and moves `meta/indexed` past it, atomically.
//!
//! On open, the window is rebuilt from the journal records from `meta/indexed` on, which
//! must cover the rest of the log group by group, and from the entries and leaf records. A clean shutdown writes the whole window
//! out. The layout is in `specs/storage.md`.

use std::collections::HashMap;

use tally_core::Hash;

use crate::error::LedgerError;
use crate::store::{PARTY_RECORD_SEQS, party_key, party_value};

/// Entries whose index records are collected in the window before they are frozen, sorted
/// and written out as one run. About 7 MiB of window; two runs at most are in memory.
pub const INDEX_RUN_ENTRIES: u64 = 32_768;

/// Most entries a part's maps are sized for up front.
const PART_CAPACITY_MAX: u64 = 1 << 20;

/// A run's records written with each group at least, and at most this many times the
/// group's share (so a run is written out before the next one fills).
const RUN_SLICE_MIN: usize = 256;
const RUN_SLICE_PACE: u64 = 2;

/// The index records of one group's appended entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Records {
    /// Sequence number of the first entry; the entries are `first..first + dedup.len()`.
    pub first: u64,
    /// Idempotency key of each entry.
    pub dedup: Vec<Hash>,
    /// First 8 bytes of each entry's leaf hash.
    pub leaves: Vec<[u8; 8]>,
    /// (participant, sequence number) for each participant an entry concerns.
    pub parties: Vec<(u64, u64)>,
}

impl Records {
    pub(crate) fn starting_at(first: u64) -> Self {
        Self { first, ..Self::default() }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.dedup.is_empty()
    }

    /// One past the last entry.
    pub(crate) fn end(&self) -> u64 {
        self.first + self.dedup.len() as u64
    }

    /// The group's journal record: entry count n (u32 BE), party count m (u32 BE), m
    /// (participant, sequence number) pairs (u64 BE each).
    pub(crate) fn journal_record(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.parties.len() * 16);
        out.extend_from_slice(&(self.dedup.len() as u32).to_be_bytes());
        out.extend_from_slice(&(self.parties.len() as u32).to_be_bytes());
        for (party, seq) in &self.parties {
            out.extend_from_slice(&party.to_be_bytes());
            out.extend_from_slice(&seq.to_be_bytes());
        }
        out
    }
}

/// A group's journal record, read back: its entries are `first..first + entries`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JournalRecord {
    pub first: u64,
    pub entries: u64,
    pub parties: Vec<(u64, u64)>,
}

impl JournalRecord {
    /// Decode the journal record of the group starting at `first`; every party record must
    /// name one of its entries.
    pub(crate) fn decode(first: u64, bytes: &[u8]) -> Result<Self, LedgerError> {
        let bad = |why: &str| LedgerError::Corrupted(format!("index journal record {first}: {why}"));
        let count = |at: usize| -> Result<u64, LedgerError> {
            let b = bytes.get(at..at + 4).ok_or_else(|| bad("truncated"))?;
            Ok(u64::from(u32::from_be_bytes(b.try_into().expect("4 bytes"))))
        };
        let (entries, parties) = (count(0)?, count(4)?);
        if entries == 0 {
            return Err(bad("no entries"));
        }
        if bytes.len() as u64 != 8 + parties * 16 {
            return Err(bad("its length does not match its party count"));
        }
        let u64_at = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
        let mut record = Self { first, entries, parties: Vec::with_capacity(parties as usize) };
        for pair in bytes[8..].chunks_exact(16) {
            let (party, seq) = (u64_at(&pair[..8]), u64_at(&pair[8..]));
            if !(first..record.end()).contains(&seq) {
                return Err(bad("a party record names an entry outside the group"));
            }
            record.parties.push((party, seq));
        }
        Ok(record)
    }

    pub(crate) fn end(&self) -> u64 {
        self.first + self.entries
    }
}

/// Sequence numbers of a part of the window, in order.
#[derive(Debug, Default)]
pub(crate) struct Part {
    from: u64,
    to: u64,
    dedup: HashMap<Hash, u64>,
    /// Leaf hash prefix to the first entry with it; further entries with the same prefix
    /// (a 1 in 2^64 chance per pair) in `leaf_collisions`.
    leaves: HashMap<[u8; 8], u64>,
    leaf_collisions: Vec<([u8; 8], u64)>,
    /// Each participant's entries, in order (groups are added in order).
    parties: HashMap<u64, Vec<u64>>,
    party_records: usize,
}

impl Part {
    pub(crate) fn starting_at(from: u64) -> Self {
        Self { from, to: from, ..Self::default() }
    }

    /// An empty part with room for `entries` entries: the maps are not rebuilt as they
    /// grow, under the sequencer's write lock.
    pub(crate) fn with_capacity(from: u64, entries: u64) -> Self {
        let n = usize::try_from(entries.min(PART_CAPACITY_MAX)).expect("small");
        Self { dedup: HashMap::with_capacity(n), leaves: HashMap::with_capacity(n), ..Self::starting_at(from) }
    }

    pub(crate) fn entries(&self) -> u64 {
        self.to - self.from
    }

    /// Add the next group's records (which must start where this part ends).
    pub(crate) fn add(&mut self, records: &Records) {
        debug_assert_eq!(records.first, self.to, "groups are added in order");
        for (seq, (id, prefix)) in (records.first..).zip(records.dedup.iter().zip(&records.leaves)) {
            self.dedup.insert(*id, seq);
            if let Some(first) = self.leaves.insert(*prefix, seq) {
                self.leaves.insert(*prefix, first);
                self.leaf_collisions.push((*prefix, seq));
            }
        }
        for (party, seq) in &records.parties {
            self.parties.entry(*party).or_default().push(*seq);
        }
        self.party_records += records.parties.len();
        self.to = records.end();
    }

    fn dedup(&self, id: &Hash) -> Option<u64> {
        self.dedup.get(id).copied()
    }

    fn leaf_candidates(&self, prefix: &[u8; 8], out: &mut Vec<u64>) {
        out.extend(self.leaves.get(prefix));
        out.extend(self.leaf_collisions.iter().filter(|(p, _)| p == prefix).map(|(_, seq)| *seq));
    }

    fn party_entries(&self, party: u64, from: u64, limit: usize, out: &mut Vec<u64>) {
        if let Some(seqs) = self.parties.get(&party) {
            let start = seqs.partition_point(|s| *s < from);
            out.extend(seqs[start..].iter().take(limit));
        }
    }
}

/// Index records not yet (known to be) in the store: those of entries `from()..` on.
#[derive(Debug)]
pub(crate) struct Window {
    /// Being sorted or written out.
    pub frozen: Option<std::sync::Arc<Part>>,
    pub filling: Part,
}

impl Window {
    pub(crate) fn starting_at(from: u64) -> Self {
        Self { frozen: None, filling: Part::starting_at(from) }
    }

    /// One past the last entry the window holds.
    pub(crate) fn filling_end(&self) -> u64 {
        self.filling.to
    }

    /// The first entry whose index records may not be in the store (`meta/indexed`).
    pub(crate) fn from(&self) -> u64 {
        self.frozen.as_ref().map_or(self.filling.from, |f| f.from)
    }

    pub(crate) fn dedup(&self, id: &Hash) -> Option<u64> {
        self.filling.dedup(id).or_else(|| self.frozen.as_ref().and_then(|f| f.dedup(id)))
    }

    /// Entries whose leaf hash starts with `prefix`.
    pub(crate) fn leaf_candidates(&self, prefix: &[u8; 8]) -> Vec<u64> {
        let mut out = Vec::new();
        if let Some(f) = &self.frozen {
            f.leaf_candidates(prefix, &mut out);
        }
        self.filling.leaf_candidates(prefix, &mut out);
        out
    }

    /// Up to `limit` entries of `party` from `from` on, in order.
    pub(crate) fn party_entries(&self, party: u64, from: u64, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        if let Some(f) = &self.frozen {
            f.party_entries(party, from, limit, &mut out);
        }
        self.filling.party_entries(party, from, limit - out.len().min(limit), &mut out);
        out
    }
}

/// A frozen part's records, sorted by key within each index, being written out.
#[derive(Debug)]
pub(crate) struct Run {
    pub from: u64,
    pub to: u64,
    dedup: Vec<(Hash, u64)>,
    leaves: Vec<[u8; 16]>,
    /// `parties` records: up to [`PARTY_RECORD_SEQS`] of a participant's entries each.
    parties: Vec<([u8; 16], Vec<u8>)>,
    /// Records written so far, counting through `dedup`, then `leaves`, then `parties`.
    written: usize,
}

/// Where a run's record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexFamily {
    Dedup,
    LeafIndex,
    Parties,
}

impl Run {
    /// Sort a frozen part's records (on a helper thread: tens of milliseconds for a run).
    pub(crate) fn of(part: &Part) -> Self {
        let mut dedup: Vec<(Hash, u64)> = part.dedup.iter().map(|(id, seq)| (*id, *seq)).collect();
        dedup.sort_unstable();
        let mut leaves: Vec<[u8; 16]> = part
            .leaves
            .iter()
            .chain(part.leaf_collisions.iter().map(|(p, s)| (p, s)))
            .map(|(prefix, seq)| crate::store::leaf_index_key_from_prefix(prefix, *seq))
            .collect();
        leaves.sort_unstable();
        // Participants in order; each one's entries are already in order.
        let mut by_party: Vec<(&u64, &Vec<u64>)> = part.parties.iter().collect();
        by_party.sort_unstable_by_key(|(party, _)| **party);
        let mut parties = Vec::with_capacity(part.party_records.div_ceil(PARTY_RECORD_SEQS) + by_party.len());
        for (party, seqs) in by_party {
            parties.extend(
                seqs.chunks(PARTY_RECORD_SEQS).map(|run| (party_key(*party, run[0]), party_value(run[0], &run[1..]))),
            );
        }
        Self { from: part.from, to: part.to, dedup, leaves, parties, written: 0 }
    }

    fn len(&self) -> usize {
        self.dedup.len() + self.leaves.len() + self.parties.len()
    }

    pub(crate) fn is_written(&self) -> bool {
        self.written == self.len()
    }

    /// How many records to write with a group that appended `appended` entries: the run's
    /// records per entry, [`RUN_SLICE_PACE`] times over, so it is out before the next run
    /// fills; all of them if `all`.
    pub(crate) fn slice_len(&self, appended: u64, all: bool) -> usize {
        if all {
            return self.len();
        }
        let entries = (self.to - self.from).max(1);
        let share = (self.len() as u64 * appended * RUN_SLICE_PACE).div_ceil(entries);
        usize::try_from(share).unwrap_or(usize::MAX).max(RUN_SLICE_MIN)
    }

    /// Hand the next `n` records, in key order within each index, to `put`.
    pub(crate) fn write_slice(&mut self, n: usize, mut put: impl FnMut(IndexFamily, &[u8], &[u8])) {
        let end = (self.written + n).min(self.len());
        let (d, l) = (self.dedup.len(), self.leaves.len());
        for i in self.written..end {
            if i < d {
                let (id, seq) = &self.dedup[i];
                put(IndexFamily::Dedup, id, &seq.to_be_bytes());
            } else if i < d + l {
                put(IndexFamily::LeafIndex, &self.leaves[i - d], &[]);
            } else {
                let (key, value) = &self.parties[i - d - l];
                put(IndexFamily::Parties, key, value);
            }
        }
        self.written = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(first: u64, n: u64) -> Records {
        let mut r = Records::starting_at(first);
        for seq in first..first + n {
            r.dedup.push(tally_core::merkle::leaf_hash(&seq.to_be_bytes()));
            let mut prefix = [0u8; 8];
            prefix.copy_from_slice(&tally_core::merkle::leaf_hash(&[&seq.to_be_bytes()[..], b"leaf"].concat())[..8]);
            r.leaves.push(prefix);
            r.parties.push((seq % 3, seq));
            r.parties.push((7, seq));
        }
        r
    }

    #[test]
    fn journal_records_round_trip_and_refuse_damage() {
        let r = records(40, 5);
        let bytes = r.journal_record();
        assert_eq!(bytes.len(), 8 + 10 * 16);
        let back = JournalRecord::decode(40, &bytes).unwrap();
        assert_eq!(back, JournalRecord { first: 40, entries: 5, parties: r.parties.clone() });
        assert!(JournalRecord::decode(40, &bytes[..bytes.len() - 1]).is_err(), "truncated");
        assert!(JournalRecord::decode(40, &[bytes.as_slice(), &[0]].concat()).is_err(), "trailing byte");
        // Read as another group's record, its party records name entries outside it.
        assert!(JournalRecord::decode(41, &bytes).is_err());
        assert!(JournalRecord::decode(40, &Records::starting_at(40).journal_record()).is_err(), "empty record");
    }

    #[test]
    fn the_window_answers_from_both_parts_and_the_run_is_sorted_and_complete() {
        let mut window = Window::starting_at(10);
        window.filling.add(&records(10, 4));
        window.filling.add(&records(14, 3));
        let frozen = std::mem::replace(&mut window.filling, Part::starting_at(17));
        let run = Run::of(&frozen);
        window.frozen = Some(std::sync::Arc::new(frozen));
        window.filling.add(&records(17, 2));
        assert_eq!(window.from(), 10);
        for seq in 10..19 {
            assert_eq!(window.dedup(&records(seq, 1).dedup[0]), Some(seq));
            assert_eq!(window.leaf_candidates(&records(seq, 1).leaves[0]), vec![seq]);
        }
        assert_eq!(window.dedup(&records(19, 1).dedup[0]), None);
        assert_eq!(window.party_entries(7, 0, usize::MAX), (10..19).collect::<Vec<_>>());
        assert_eq!(window.party_entries(7, 15, 3), vec![15, 16, 17]);
        assert_eq!(window.party_entries(1, 0, usize::MAX), vec![10, 13, 16]);

        // Written in slices, the run hands over every record of the frozen part once, each
        // index in key order.
        let mut run = run;
        assert_eq!((run.from, run.to), (10, 17));
        let mut got: Vec<(IndexFamily, Vec<u8>, Vec<u8>)> = Vec::new();
        while !run.is_written() {
            run.write_slice(3, |index, k, v| got.push((index, k.to_vec(), v.to_vec())));
        }
        let dedup: Vec<_> = got.iter().filter(|(i, ..)| *i == IndexFamily::Dedup).collect();
        assert_eq!(dedup.len(), 7);
        assert!(dedup.windows(2).all(|w| w[0].1 < w[1].1));
        for (_, id, seq) in &dedup {
            let seq = u64::from_be_bytes(seq.as_slice().try_into().unwrap());
            assert_eq!(window.dedup(id.as_slice().try_into().unwrap()), Some(seq));
        }
        let leaves: Vec<_> =
            got.iter().filter(|(i, ..)| *i == IndexFamily::LeafIndex).map(|(_, k, _)| k.clone()).collect();
        assert_eq!(leaves.len(), 7);
        assert!(leaves.windows(2).all(|w| w[0] < w[1]));
        // One record for each participant, holding its entries in order.
        let parties: Vec<(u64, Vec<u64>)> = got
            .iter()
            .filter(|(i, ..)| *i == IndexFamily::Parties)
            .map(|(_, k, v)| crate::store::party_seqs(k, v).unwrap())
            .collect();
        assert_eq!(parties, vec![(0, vec![12, 15]), (1, vec![10, 13, 16]), (2, vec![11, 14]), (7, (10..17).collect())]);
    }

    #[test]
    fn a_slice_keeps_pace_with_the_run() {
        let mut part = Part::starting_at(0);
        part.add(&records(0, 1000));
        let run = Run::of(&part);
        // 2 index records an entry, and party records of up to 128 entries (participants 0,
        // 1, 2: 3 records each; 7: 8): 2017 records, a group of 100 entries writes 404.
        assert_eq!(run.slice_len(100, false), 404);
        assert_eq!(run.slice_len(1, false), RUN_SLICE_MIN);
        assert_eq!(run.slice_len(1, true), 2017);
        // More entries of a participant than one record holds: split in order.
        let mut got = Vec::new();
        let mut run = run;
        run.write_slice(usize::MAX, |index, k, v| {
            if index == IndexFamily::Parties {
                got.push(crate::store::party_seqs(k, v).unwrap());
            }
        });
        let sevens: Vec<u64> = got.iter().filter(|(p, _)| *p == 7).flat_map(|(_, s)| s.clone()).collect();
        assert_eq!(sevens, (0..1000).collect::<Vec<_>>());
        assert!(got.iter().all(|(_, s)| s.len() <= PARTY_RECORD_SEQS));
    }
}
