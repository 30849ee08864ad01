//! The two body formats of `POST /v1/entries` (`specs/api.md`, "Submission"), parsed and
//! built without I/O: `application/json` (`{"entries": [base64, ...]}`) and
//! `application/vnd.tally.entries` (each entry's canonical bytes after its length as u32
//! little-endian).
//!
//! Parsing bounds the entry count before anything is allocated per entry and never
//! decodes an entry: each element is returned as bytes (or why it is not even bytes), for
//! the caller to decode and verify one by one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::entry::{ENTRY_BYTES_MAX, Entry};

/// The binary submission media type.
pub const ENTRIES_MEDIA_TYPE: &str = "application/vnd.tally.entries";

/// Each element of a body: the entry's bytes, or why the element is not bytes at all.
pub type RawEntries = Vec<Result<Vec<u8>, &'static str>>;

/// Why a whole body is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("expected {{\"entries\": [base64, ...]}}: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    MalformedBody(String),
    #[error("at most {0} entries per request")]
    TooManyEntries(usize),
    #[error("a submission carries at least one entry")]
    Empty,
}

impl BodyError {
    /// The stable problem code.
    pub fn code(&self) -> &'static str {
        match self {
            BodyError::MalformedJson(_) => "malformed-json",
            BodyError::MalformedBody(_) => "malformed-body",
            BodyError::TooManyEntries(_) => "too-many-entries",
            BodyError::Empty => "empty-batch",
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSubmission {
    entries: Vec<String>,
}

/// Parse a JSON body of at most `max` entries.
pub fn parse_json(bytes: &[u8], max: usize) -> Result<RawEntries, BodyError> {
    let doc: JsonSubmission = serde_json::from_slice(bytes).map_err(|e| BodyError::MalformedJson(e.to_string()))?;
    if doc.entries.len() > max {
        return Err(BodyError::TooManyEntries(max));
    }
    non_empty(doc.entries.iter().map(|s| B64.decode(s).map_err(|_| "not standard base64")).collect())
}

/// Split a binary body of at most `max` entries.
pub fn parse_binary(bytes: &[u8], max: usize) -> Result<RawEntries, BodyError> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        if out.len() == max {
            return Err(BodyError::TooManyEntries(max));
        }
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(BodyError::MalformedBody("the body ends inside a length prefix".into()));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > ENTRY_BYTES_MAX {
            return Err(BodyError::MalformedBody(format!("an entry of {len} bytes is over the limit")));
        }
        if tail.len() < len {
            return Err(BodyError::MalformedBody("the body ends inside an entry".into()));
        }
        out.push(Ok(tail[..len].to_vec()));
        rest = &tail[len..];
    }
    non_empty(out)
}

fn non_empty(raw: RawEntries) -> Result<RawEntries, BodyError> {
    if raw.is_empty() { Err(BodyError::Empty) } else { Ok(raw) }
}

/// Build a binary body.
pub fn binary_body(entries: &[Entry]) -> Vec<u8> {
    let mut body = Vec::with_capacity(entries.iter().map(|e| e.as_bytes().len() + 4).sum());
    for e in entries {
        body.extend_from_slice(&(e.as_bytes().len() as u32).to_le_bytes());
        body.extend_from_slice(e.as_bytes());
    }
    body
}

/// Build a JSON body.
pub fn json_body(entries: &[Entry]) -> String {
    let entries: Vec<String> = entries.iter().map(|e| B64.encode(e.as_bytes())).collect();
    serde_json::json!({ "entries": entries }).to_string()
}
