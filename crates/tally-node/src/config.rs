//! Node configuration: defaults, then a TOML file, then environment variables, then flags
//! (later wins). Every limit the node enforces is here, with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tally_core::sig::SigningKey;

/// Default address: loopback only; expose deliberately.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8700";
/// Largest request body, in bytes (a full batch of 4,096 receipts is about 1.5 MiB).
pub const BODY_BYTES_MAX_DEFAULT: usize = 8 * 1024 * 1024;
/// Most entries in one submission.
pub const ENTRIES_PER_REQUEST_MAX_DEFAULT: usize = tally_ledger::ENTRIES_PER_APPEND_MAX;
/// Requests served at once; past this, new requests get 503 at once rather than queueing.
pub const CONCURRENT_REQUESTS_MAX_DEFAULT: usize = 512;
/// A request that takes longer gets 503 `timeout`.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Longest validity (`expires − created`) of a signed read request, and how old its
/// `created` may be.
pub const SIGNATURE_WINDOW_S_DEFAULT: u64 = 300;
/// Open connections at most (each costs a file descriptor and a task).
pub const CONNECTIONS_MAX_DEFAULT: usize = 4096;
/// How long a connection may take to send a request head, or sit idle between requests.
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Entries per page of history and per chunk of the export stream.
pub const PAGE_ENTRIES_MAX: usize = 1000;

/// What the node needs to run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data: PathBuf,
    pub listen: SocketAddr,
    /// File holding the collective's key seed (64 hex characters).
    pub key_file: PathBuf,
    pub checkpoint_interval_ms: u64,
    /// Free space to keep on the data directory's filesystem; below it submissions get 507.
    pub min_free_bytes: u64,
    pub body_bytes_max: usize,
    pub entries_per_request_max: usize,
    pub concurrent_requests_max: usize,
    pub request_timeout_ms: u64,
    pub signature_window_s: u64,
    /// Open connections at most; a connection over the limit is closed as it is accepted.
    pub connections_max: usize,
    /// A connection must send a complete request head within this long, both when it
    /// opens and after each response (so idle keep-alive connections are closed too).
    pub header_read_timeout_ms: u64,
}

/// The TOML file: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub key_file: Option<PathBuf>,
    pub checkpoint_interval_ms: Option<u64>,
    pub min_free_bytes: Option<u64>,
    pub body_bytes_max: Option<usize>,
    pub entries_per_request_max: Option<usize>,
    pub concurrent_requests_max: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub signature_window_s: Option<u64>,
    pub connections_max: Option<usize>,
    pub header_read_timeout_ms: Option<u64>,
}

/// Why the configuration or the key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {error}")]
    File { path: PathBuf, error: String },
    #[error("{0} is required (flag, environment variable or config file)")]
    Missing(&'static str),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// `error` names the file.
    #[error("key file {error}")]
    Key { path: PathBuf, error: String },
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::File { path: path.to_path_buf(), error: e.to_string() })?;
        toml::from_str(&text).map_err(|e| ConfigError::File { path: path.to_path_buf(), error: e.to_string() })
    }

    /// Fill every unset field from `other` (flags and environment over the file).
    pub fn or(self, other: FileConfig) -> FileConfig {
        FileConfig {
            data: self.data.or(other.data),
            listen: self.listen.or(other.listen),
            key_file: self.key_file.or(other.key_file),
            checkpoint_interval_ms: self.checkpoint_interval_ms.or(other.checkpoint_interval_ms),
            min_free_bytes: self.min_free_bytes.or(other.min_free_bytes),
            body_bytes_max: self.body_bytes_max.or(other.body_bytes_max),
            entries_per_request_max: self.entries_per_request_max.or(other.entries_per_request_max),
            concurrent_requests_max: self.concurrent_requests_max.or(other.concurrent_requests_max),
            request_timeout_ms: self.request_timeout_ms.or(other.request_timeout_ms),
            signature_window_s: self.signature_window_s.or(other.signature_window_s),
            connections_max: self.connections_max.or(other.connections_max),
            header_read_timeout_ms: self.header_read_timeout_ms.or(other.header_read_timeout_ms),
        }
    }

    /// Apply defaults and check ranges.
    pub fn resolve(self) -> Result<NodeConfig, ConfigError> {
        let data = self.data.ok_or(ConfigError::Missing("data"))?;
        let key_file = self.key_file.unwrap_or_else(|| data.join("collective.key"));
        let c = NodeConfig {
            data,
            listen: self.listen.unwrap_or_else(|| LISTEN_DEFAULT.parse().expect("valid default")),
            key_file,
            checkpoint_interval_ms: self.checkpoint_interval_ms.unwrap_or(1000),
            min_free_bytes: self.min_free_bytes.unwrap_or(tally_ledger::MIN_FREE_BYTES_DEFAULT),
            body_bytes_max: self.body_bytes_max.unwrap_or(BODY_BYTES_MAX_DEFAULT),
            entries_per_request_max: self.entries_per_request_max.unwrap_or(ENTRIES_PER_REQUEST_MAX_DEFAULT),
            concurrent_requests_max: self.concurrent_requests_max.unwrap_or(CONCURRENT_REQUESTS_MAX_DEFAULT),
            request_timeout_ms: self.request_timeout_ms.unwrap_or(REQUEST_TIMEOUT_MS_DEFAULT),
            signature_window_s: self.signature_window_s.unwrap_or(SIGNATURE_WINDOW_S_DEFAULT),
            connections_max: self.connections_max.unwrap_or(CONNECTIONS_MAX_DEFAULT),
            header_read_timeout_ms: self.header_read_timeout_ms.unwrap_or(HEADER_READ_TIMEOUT_MS_DEFAULT),
        };
        let invalid = |field, reason: &str| Err(ConfigError::Invalid { field, reason: reason.to_string() });
        if c.entries_per_request_max == 0 || c.entries_per_request_max > tally_ledger::ENTRIES_PER_APPEND_MAX {
            return invalid("entries_per_request_max", "must be 1 to 4096");
        }
        if c.body_bytes_max < 1024 {
            return invalid("body_bytes_max", "must be at least 1024");
        }
        if c.concurrent_requests_max == 0 {
            return invalid("concurrent_requests_max", "must be at least 1");
        }
        if c.connections_max == 0 {
            return invalid("connections_max", "must be at least 1");
        }
        if c.header_read_timeout_ms == 0 {
            return invalid("header_read_timeout_ms", "must be at least 1");
        }
        if c.signature_window_s == 0 || c.signature_window_s > 3600 {
            return invalid("signature_window_s", "must be 1 to 3600");
        }
        Ok(c)
    }
}

/// Read a key file: the 32-byte seed as 64 hex characters (surrounding whitespace ignored).
pub fn read_key(path: &Path) -> Result<SigningKey, ConfigError> {
    tally_client::read_key(path).map_err(|error| ConfigError::Key { path: path.to_path_buf(), error })
}

/// Write a new key file (mode 0600 on Unix) and return the key. Refuses to overwrite.
pub fn write_new_key(path: &Path) -> Result<SigningKey, ConfigError> {
    let err =
        |error: String| ConfigError::Key { path: path.to_path_buf(), error: format!("{}: {error}", path.display()) };
    let key = SigningKey::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| err(e.to_string()))?;
    use std::io::Write;
    writeln!(file, "{}", hex::encode(key.seed())).map_err(|e| err(e.to_string()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags and environment win over the file; the file over defaults; bad values are named.
    #[test]
    fn layers_and_checks() {
        let file: FileConfig =
            toml::from_str("data = \"/srv/tally\"\nlisten = \"0.0.0.0:9000\"\nrequest_timeout_ms = 5\n").unwrap();
        let flags = FileConfig { listen: Some("127.0.0.1:1".parse().unwrap()), ..FileConfig::default() };
        let c = flags.or(file).resolve().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:1");
        assert_eq!(c.data, PathBuf::from("/srv/tally"));
        assert_eq!(c.request_timeout_ms, 5);
        assert_eq!(c.key_file, PathBuf::from("/srv/tally/collective.key"));
        assert_eq!(c.entries_per_request_max, 4096);
        assert!(matches!(FileConfig::default().resolve(), Err(ConfigError::Missing("data"))));
        let bad = FileConfig { data: Some("/d".into()), entries_per_request_max: Some(5000), ..FileConfig::default() };
        assert!(matches!(bad.resolve(), Err(ConfigError::Invalid { field: "entries_per_request_max", .. })));
        assert!(toml::from_str::<FileConfig>("dta = 1").is_err(), "unknown keys are refused");
    }

    /// A key file round-trips, is private, and is never overwritten.
    #[test]
    fn key_files() {
        let dir = std::env::temp_dir().join(format!("tally-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k");
        let _ = std::fs::remove_file(&path);
        let key = write_new_key(&path).unwrap();
        assert_eq!(read_key(&path).unwrap().public_bytes(), key.public_bytes());
        assert!(write_new_key(&path).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&path, "zz").unwrap();
        assert!(matches!(read_key(&path), Err(ConfigError::Key { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
