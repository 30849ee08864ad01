//! C2SP `tlog-tiles`: tile coordinates, paths, and computing any tree node from tiles.
//!
//! A tile at level `L` holds up to 256 consecutive node hashes at tree height `8L`. Any node
//! at a height between two tile levels is recomputed by hashing up from the level below,
//! which is all [`TileNodes`] needs to answer a [`NodeReader`], so a client holding tiles
//! can rebuild roots and proofs without trusting the server.

use std::collections::HashMap;

use crate::merkle::{Hash, NodeReader, node_hash};

/// Hashes in a full tile.
pub const TILE_WIDTH: u64 = 256;
/// Tree height covered by one tile level.
pub const TILE_HEIGHT: u8 = 8;
/// Bytes of a full tile.
pub const TILE_BYTES: usize = 256 * 32;

/// What a tlog-tiles path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TilePath {
    /// `tile/<L>/<N>[.p/<W>]`
    Hashes { level: u8, index: u64, width: u16 },
    /// `tile/entries/<N>[.p/<W>]`
    Entries { index: u64, width: u16 },
}

/// `x001/x234/067` for 1234067.
pub fn encode_index(mut n: u64) -> String {
    let mut parts = vec![format!("{:03}", n % 1000)];
    n /= 1000;
    while n > 0 {
        parts.push(format!("x{:03}", n % 1000));
        n /= 1000;
    }
    parts.reverse();
    parts.join("/")
}

fn width_suffix(width: u16) -> String {
    if u64::from(width) == TILE_WIDTH { String::new() } else { format!(".p/{width}") }
}

impl TilePath {
    /// The path under the log prefix, without a leading slash.
    pub fn render(&self) -> String {
        match *self {
            TilePath::Hashes { level, index, width } => {
                format!("tile/{level}/{}{}", encode_index(index), width_suffix(width))
            }
            TilePath::Entries { index, width } => {
                format!("tile/entries/{}{}", encode_index(index), width_suffix(width))
            }
        }
    }

    /// Parse a path such as `tile/0/x001/234.p/17` strictly (no leading zeros, no other
    /// spellings), so each resource has exactly one name.
    pub fn parse(path: &str) -> Option<Self> {
        let rest = path.strip_prefix("tile/")?;
        let (head, rest) = rest.split_once('/')?;
        let (rest, width) = match rest.split_once(".p/") {
            Some((n, w)) => {
                let width: u16 = parse_decimal(w)?.try_into().ok()?;
                if width == 0 || u64::from(width) >= TILE_WIDTH {
                    return None;
                }
                (n, width)
            }
            None => (rest, TILE_WIDTH as u16),
        };
        let index = parse_index(rest)?;
        if head == "entries" {
            return Some(TilePath::Entries { index, width });
        }
        let level: u8 = parse_decimal(head)?.try_into().ok()?;
        if level > 63 {
            return None;
        }
        Some(TilePath::Hashes { level, index, width })
    }
}

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

fn parse_index(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split('/').collect();
    let (last, init) = parts.split_last()?;
    let mut n: u64 = 0;
    for (i, part) in init.iter().enumerate() {
        let digits = part.strip_prefix('x')?;
        if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) || (i == 0 && digits == "000") {
            return None;
        }
        n = n.checked_mul(1000)?.checked_add(digits.parse().ok()?)?;
    }
    if last.len() != 3 || !last.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.checked_mul(1000)?.checked_add(last.parse().ok()?)
}

/// Width of tile `index` at `level` in a tree of `size` leaves: 256 when full, 1..=255 when
/// partial, 0 when the tile does not exist at that size.
pub fn tile_width(level: u8, index: u64, size: u64) -> u16 {
    let shift = u32::from(level) * u32::from(TILE_HEIGHT);
    let hashes = if shift >= 64 { 0 } else { size >> shift };
    let start = index.saturating_mul(TILE_WIDTH);
    if hashes <= start { 0 } else { (hashes - start).min(TILE_WIDTH) as u16 }
}

/// Hash a power-of-two run of sibling hashes up to their common root.
pub fn hash_up(mut hashes: Vec<Hash>) -> Hash {
    assert!(hashes.len().is_power_of_two(), "hash_up needs a power-of-two run");
    while hashes.len() > 1 {
        hashes = hashes.chunks_exact(2).map(|p| node_hash(&p[0], &p[1])).collect();
    }
    hashes[0]
}

/// For a node at `(level, index)`: the tile-level height below it, the first index at
/// that height, and how many hashes there to hash up.
pub fn node_base(level: u8, index: u64) -> (u8, u64, u64) {
    let base = level - level % TILE_HEIGHT;
    let span = 1u64 << (level - base);
    (base, index * span, span)
}

/// Split an entry bundle into its records (each behind a big-endian u16 length). Bundles
/// come from a server a client does not trust, so a truncated one is an error, not a panic.
pub fn parse_entry_bundle(bundle: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    let mut records = Vec::new();
    let mut rest = bundle;
    while !rest.is_empty() {
        let [hi, lo, tail @ ..] = rest else { return Err("entry bundle ends inside a length prefix") };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        if tail.len() < len {
            return Err("entry bundle ends inside a record");
        }
        let (record, next) = tail.split_at(len);
        records.push(record);
        rest = next;
    }
    Ok(records)
}

/// Tiles held in memory (fetched by a client), answering node queries for verification.
#[derive(Debug, Clone, Default)]
pub struct TileNodes {
    tiles: HashMap<(u8, u64), Vec<Hash>>,
}

/// A node the client has not fetched the tile for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tile {level}/{index} with at least {needed} hashes is needed")]
pub struct MissingTile {
    pub level: u8,
    pub index: u64,
    pub needed: u64,
}

impl TileNodes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a tile's bytes (a multiple of 32 bytes, at most 256 hashes).
    pub fn insert(&mut self, level: u8, index: u64, bytes: &[u8]) -> Result<(), &'static str> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(32) || bytes.len() > TILE_BYTES {
            return Err("a tile is 1 to 256 hashes of 32 bytes");
        }
        let hashes = bytes.chunks_exact(32).map(|c| c.try_into().expect("32-byte chunk")).collect();
        self.tiles.insert((level, index), hashes);
        Ok(())
    }
}

impl NodeReader for TileNodes {
    type Error = MissingTile;
    fn node(&self, level: u8, index: u64) -> Result<Hash, MissingTile> {
        let (base, first, count) = node_base(level, index);
        let tile_level = base / TILE_HEIGHT;
        let tile_index = first / TILE_WIDTH;
        let offset = (first % TILE_WIDTH) as usize;
        let missing = MissingTile { level: tile_level, index: tile_index, needed: first % TILE_WIDTH + count };
        let tile = self.tiles.get(&(tile_level, tile_index)).ok_or(missing)?;
        let run = tile.get(offset..offset + count as usize).ok_or(missing)?;
        Ok(hash_up(run.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{MemoryTree, leaf_hash, root_at};

    /// Paths render as the spec's examples and parse back; other spellings are refused.
    #[test]
    fn paths() {
        assert_eq!(encode_index(1234067), "x001/x234/067");
        assert_eq!(encode_index(5), "005");
        assert_eq!(encode_index(1000), "x001/000");
        let p = TilePath::Hashes { level: 1, index: 1234067, width: 17 };
        assert_eq!(p.render(), "tile/1/x001/x234/067.p/17");
        assert_eq!(TilePath::parse(&p.render()), Some(p));
        let e = TilePath::Entries { index: 3, width: 256 };
        assert_eq!(e.render(), "tile/entries/003");
        assert_eq!(TilePath::parse("tile/entries/003"), Some(e));
        for bad in [
            "tile/01/000",
            "tile/0/5",
            "tile/0/x000/005",
            "tile/0/000.p/0",
            "tile/0/000.p/256",
            "tile/0/000.p/07",
            "tile/64/000",
            "tile/0/x1/000",
        ] {
            assert_eq!(TilePath::parse(bad), None, "{bad}");
        }
    }

    /// Bundles split into their records; a bundle cut inside a prefix or a record is refused.
    #[test]
    fn entry_bundles() {
        let bundle = [0u8, 2, b'a', b'b', 0, 0, 0, 1, b'c'];
        assert_eq!(parse_entry_bundle(&bundle).unwrap(), vec![&b"ab"[..], &b""[..], &b"c"[..]]);
        assert_eq!(parse_entry_bundle(&[]).unwrap(), Vec::<&[u8]>::new());
        assert!(parse_entry_bundle(&bundle[..1]).is_err());
        assert!(parse_entry_bundle(&bundle[..3]).is_err());
        assert!(parse_entry_bundle(&bundle[..8]).is_err());
    }

    /// The spec's example: a tree of 70,000 has 273 full level-0 tiles and a partial of 112,
    /// one full level-1 tile and a partial of 17, and a level-2 partial of 1.
    #[test]
    fn widths_match_the_spec_example() {
        assert_eq!(tile_width(0, 272, 70_000), 256);
        assert_eq!(tile_width(0, 273, 70_000), 112);
        assert_eq!(tile_width(0, 274, 70_000), 0);
        assert_eq!(tile_width(1, 0, 70_000), 256);
        assert_eq!(tile_width(1, 1, 70_000), 17);
        assert_eq!(tile_width(2, 0, 70_000), 1);
        assert_eq!(tile_width(3, 0, 70_000), 0);
        assert_eq!(tile_width(1, 0, 256), 1);
    }

    /// Roots rebuilt from tiles alone equal the tree's roots.
    #[test]
    fn roots_from_tiles() {
        let mut t = MemoryTree::new();
        for i in 0..70_000u64 {
            t.push(leaf_hash(&i.to_be_bytes()));
        }
        let mut nodes = TileNodes::new();
        for level in 0..3u8 {
            for index in 0.. {
                let width = tile_width(level, index, 70_000);
                if width == 0 {
                    break;
                }
                let bytes: Vec<u8> =
                    (0..u64::from(width)).flat_map(|i| t.node(level * 8, index * 256 + i).unwrap()).collect();
                nodes.insert(level, index, &bytes).unwrap();
            }
        }
        assert_eq!(root_at(&nodes, 70_000).unwrap(), t.root());
        assert_eq!(root_at(&nodes, 65_536).unwrap(), root_at(&t, 65_536).unwrap());
    }
}
