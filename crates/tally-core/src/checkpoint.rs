//! C2SP `tlog-checkpoint` bodies signed as C2SP `signed-note`s with Ed25519.
//!
//! ```text
//! <origin>\n<size>\n<base64 root>\n
//! \n
//! — <key name> <base64(key id (4) || signature (64))>\n
//! ```
//! Key id = `SHA-256(key name || 0x0A || 0x01 || public key)[:4]`. The signature covers the
//! body including its final newline.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

use crate::entry::check_note_name;
use crate::merkle::Hash;
use crate::sig::{self, PublicKey, SigningKey};

/// Largest signed note we parse.
pub const NOTE_BYTES_MAX: usize = 16 * 1024;
/// Most signature lines we look through (the Go reference's limit).
pub const NOTE_SIGNATURES_MAX: usize = 100;
/// The signed-note signature type byte for Ed25519.
pub const SIGNATURE_TYPE_ED25519: u8 = 0x01;

/// Why a note or checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("note is over {NOTE_BYTES_MAX} bytes")]
    TooLarge,
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("malformed checkpoint body: {0}")]
    BadBody(&'static str),
    #[error("no signature by the expected key {0}")]
    NoSignature(String),
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
}

/// The signed-note key id of an Ed25519 key under a name.
pub fn note_key_id(name: &str, key: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0a, SIGNATURE_TYPE_ED25519]);
    h.update(key);
    let d: Hash = h.finalize().into();
    d[..4].try_into().expect("4 of 32 bytes")
}

/// A log's tree head at one size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// Optional extension lines, each non-empty, without newlines.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The note text: origin, size, root and extension lines, each ending in a newline.
    pub fn body(&self) -> String {
        let mut s = format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root));
        for ext in &self.extensions {
            s.push_str(ext);
            s.push('\n');
        }
        s
    }

    /// Parse a checkpoint body strictly (no leading zeros, exact base64, 32-byte root).
    pub fn parse_body(text: &str) -> Result<Self, NoteError> {
        let lines: Vec<&str> =
            text.strip_suffix('\n').ok_or(NoteError::BadBody("must end in a newline"))?.split('\n').collect();
        if lines.len() < 3 || lines.iter().any(|l| l.is_empty()) {
            return Err(NoteError::BadBody("needs three or more non-empty lines"));
        }
        let size_ok = lines[1].bytes().all(|b| b.is_ascii_digit()) && (lines[1] == "0" || !lines[1].starts_with('0'));
        if !size_ok {
            return Err(NoteError::BadBody("size must be decimal without leading zeros"));
        }
        let size = lines[1].parse::<u64>().map_err(|_| NoteError::BadBody("size out of range"))?;
        let root_bytes = B64.decode(lines[2]).map_err(|_| NoteError::BadBody("root is not base64"))?;
        let root: Hash = root_bytes.try_into().map_err(|_| NoteError::BadBody("root is not 32 bytes"))?;
        if B64.encode(root) != lines[2] {
            return Err(NoteError::BadBody("root base64 is not canonical"));
        }
        Ok(Self {
            origin: lines[0].to_string(),
            size,
            root,
            extensions: lines[3..].iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Sign as a note under `name` (normally the origin).
    pub fn sign(&self, name: &str, key: &SigningKey) -> String {
        let body = self.body();
        let mut sig_bytes = Vec::with_capacity(68);
        sig_bytes.extend_from_slice(&note_key_id(name, &key.public_bytes()));
        sig_bytes.extend_from_slice(&key.sign(&[body.as_bytes()]));
        format!("{body}\n\u{2014} {name} {}\n", B64.encode(sig_bytes))
    }
}

/// The parts of a signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note<'a> {
    pub text: &'a str,
    pub signatures: Vec<NoteSignature<'a>>,
}

/// One signature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature<'a> {
    pub name: &'a str,
    pub key_id: [u8; 4],
    pub signature: Vec<u8>,
}

/// Split a signed note into its text and signature lines, checking the syntax.
pub fn parse_note(note: &str) -> Result<Note<'_>, NoteError> {
    if note.len() > NOTE_BYTES_MAX {
        return Err(NoteError::TooLarge);
    }
    if note.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::Malformed("control characters other than newline"));
    }
    let split = note.rfind("\n\n").ok_or(NoteError::Malformed("no blank line before signatures"))?;
    let text = &note[..split + 1];
    let sig_block = &note[split + 2..];
    let sig_block = sig_block.strip_suffix('\n').ok_or(NoteError::Malformed("must end in a newline"))?;
    let mut signatures = Vec::new();
    for line in sig_block.split('\n') {
        if signatures.len() == NOTE_SIGNATURES_MAX {
            return Err(NoteError::Malformed("too many signatures"));
        }
        let rest =
            line.strip_prefix("\u{2014} ").ok_or(NoteError::Malformed("signature line must start with an em dash"))?;
        let (name, b64) =
            rest.split_once(' ').ok_or(NoteError::Malformed("signature line needs a name and a signature"))?;
        if check_note_name(name).is_err() {
            return Err(NoteError::Malformed("bad key name"));
        }
        let raw = B64.decode(b64).map_err(|_| NoteError::Malformed("signature is not base64"))?;
        if raw.len() < 5 {
            return Err(NoteError::Malformed("signature too short"));
        }
        signatures.push(NoteSignature {
            name,
            key_id: raw[..4].try_into().expect("checked length"),
            signature: raw[4..].to_vec(),
        });
    }
    Ok(Note { text, signatures })
}

/// Verify a note's signature by one pinned key and return the text. Signatures by other
/// keys are ignored (they may be witnesses' cosignatures).
pub fn open_note<'a>(note: &'a str, name: &str, key: &PublicKey) -> Result<&'a str, NoteError> {
    let parsed = parse_note(note)?;
    let id = note_key_id(name, key.as_bytes());
    let sig = parsed
        .signatures
        .iter()
        .find(|s| s.name == name && s.key_id == id)
        .ok_or_else(|| NoteError::NoSignature(name.to_string()))?;
    let sig_bytes: [u8; 64] =
        sig.signature.as_slice().try_into().map_err(|_| NoteError::BadSignature(name.to_string()))?;
    sig::verify(key, &[parsed.text.as_bytes()], &sig_bytes).map_err(|_| NoteError::BadSignature(name.to_string()))?;
    Ok(parsed.text)
}

/// Verify a signed checkpoint under the pinned log key and check its origin.
pub fn open_checkpoint(note: &str, origin: &str, key: &PublicKey) -> Result<Checkpoint, NoteError> {
    let text = open_note(note, origin, key)?;
    let cp = Checkpoint::parse_body(text)?;
    if cp.origin != origin {
        return Err(NoteError::BadBody("origin does not match the log"));
    }
    Ok(cp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp() -> Checkpoint {
        Checkpoint { origin: "tally.example/log".into(), size: 20852163, root: [7; 32], extensions: vec![] }
    }

    /// A signed checkpoint opens under its key and name, and under no other.
    #[test]
    fn sign_and_open() {
        let key = SigningKey::from_seed(&[5; 32]);
        let note = cp().sign("tally.example/log", &key);
        assert!(note.starts_with("tally.example/log\n20852163\nBwcH"));
        assert!(note.contains("\n\n\u{2014} tally.example/log "));
        assert_eq!(open_checkpoint(&note, "tally.example/log", &key.public_key()).unwrap(), cp());
        let other = SigningKey::from_seed(&[6; 32]).public_key();
        assert!(matches!(open_checkpoint(&note, "tally.example/log", &other), Err(NoteError::NoSignature(_))));
        let tampered = note.replace("20852163", "20852164");
        assert!(matches!(
            open_checkpoint(&tampered, "tally.example/log", &key.public_key()),
            Err(NoteError::BadSignature(_))
        ));
    }

    /// Unknown signatures (a witness's) are ignored; the log's own still decides.
    #[test]
    fn other_signatures_are_ignored() {
        let key = SigningKey::from_seed(&[5; 32]);
        let witness = SigningKey::from_seed(&[9; 32]);
        let note = cp().sign("tally.example/log", &key);
        let extra = cp().sign("witness.example", &witness);
        let witness_line = extra.rsplit_once("\n\n").unwrap().1;
        let both = format!("{note}{witness_line}");
        assert_eq!(open_checkpoint(&both, "tally.example/log", &key.public_key()).unwrap(), cp());
    }

    /// Bodies with leading zeros, short roots or missing lines are refused.
    #[test]
    fn strict_bodies() {
        assert!(Checkpoint::parse_body("o\n01\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n").is_err());
        assert!(Checkpoint::parse_body("o\n1\nBwcH\n").is_err());
        assert!(Checkpoint::parse_body("o\n1\n").is_err());
        assert!(Checkpoint::parse_body("o\n1\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=").is_err());
        let ok = Checkpoint::parse_body("o\n0\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\next\n").unwrap();
        assert_eq!(ok.extensions, vec!["ext".to_string()]);
    }
}
