//! Who is calling: RFC 9421 HTTP Message Signatures by a participant's registered key.
//!
//! Policy (`specs/api.md`, "Authentication"): exactly one signature; it covers `@method`,
//! `@authority`, `@path` and `@query`; parameters `created`, `expires`, `nonce`, `keyid`
//! (the key, 64 hex characters) and `alg="ed25519"`; valid from `created` (5 s of clock
//! skew allowed) until `expires`, at most the configured window long; each
//! `(keyid, nonce)` accepted once while the signature is valid. The key must be a
//! participant's current key and the participant not suspended.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use tally_core::httpsig::{self, Message};
use tally_core::kinds::{COLLECTIVE_ID, Role};
use tally_core::sig::PublicKey;

use crate::AppState;
use crate::problem::Problem;

/// Clock skew allowed on `created`.
pub const CLOCK_SKEW_S: i64 = 5;
/// Most remembered nonces; past this (after dropping expired ones) signed reads get 503.
pub const NONCES_MAX: usize = 1_000_000;
pub use tally_core::httpsig::REQUIRED_COMPONENTS;

/// An authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub participant: u64,
    pub role: Role,
}

impl Caller {
    /// The collective and auditors may read everything.
    pub fn sees_all(&self) -> bool {
        matches!(self.role, Role::Collective | Role::Auditor)
    }

    /// May this caller read participant `party`'s private data?
    pub fn may_read(&self, party: u64) -> Result<(), Problem> {
        if self.sees_all() || self.participant == party {
            Ok(())
        } else {
            Err(Problem::forbidden(format!("participant {} may not read participant {party}'s data", self.participant)))
        }
    }
}

/// Nonces seen, with when their signature expires.
#[derive(Debug, Default)]
pub struct ReplayCache(Mutex<HashMap<(String, String), i64>>);

impl ReplayCache {
    /// Record a nonce; `Err` if it was seen before (a replay) or the cache is full.
    fn check_and_insert(&self, keyid: &str, nonce: &str, expires: i64, now: i64) -> Result<(), Problem> {
        let mut map = self.0.lock().expect("replay cache lock");
        if map.len() >= NONCES_MAX {
            map.retain(|_, e| *e >= now);
            if map.len() >= NONCES_MAX {
                return Err(Problem::unavailable("replay-cache-full", "too many signed requests in flight; retry"));
            }
        }
        match map.insert((keyid.to_string(), nonce.to_string()), expires) {
            Some(_) => Err(Problem::unauthorized(
                "signature-replayed",
                "this signature's nonce was already used; sign each request afresh",
            )),
            None => Ok(()),
        }
    }
}

struct PartsMessage<'a>(&'a Parts);

impl Message for PartsMessage<'_> {
    fn method(&self) -> &str {
        self.0.method.as_str()
    }
    fn authority(&self) -> &str {
        self.0
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| self.0.uri.authority().map(|a| a.as_str()))
            .unwrap_or("")
    }
    fn path(&self) -> &str {
        self.0.uri.path()
    }
    fn query(&self) -> Option<&str> {
        self.0.uri.query()
    }
    fn header(&self, name: &str) -> Vec<String> {
        self.0.headers.get_all(name).iter().filter_map(|v| v.to_str().ok().map(str::to_string)).collect()
    }
}

fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn sig_error(e: httpsig::HttpSigError) -> Problem {
    Problem::unauthorized(e.code(), e.to_string())
}

/// Authenticate a request against the committed participant keys.
pub fn authenticate(state: &AppState, parts: &Parts) -> Result<Caller, Problem> {
    let field = |name: &str| parts.headers.get(name).map(|v| v.to_str().map(str::to_string));
    let (Some(input), Some(signature)) = (field("signature-input"), field("signature")) else {
        return Err(sig_error(httpsig::HttpSigError::Missing));
    };
    let malformed = |h| sig_error(httpsig::HttpSigError::Malformed { header: h, reason: "not visible ASCII" });
    let input = httpsig::parse_signature_input(&input.map_err(|_| malformed("Signature-Input"))?).map_err(sig_error)?;
    let signature =
        httpsig::parse_signature(&signature.map_err(|_| malformed("Signature"))?, &input.label).map_err(sig_error)?;
    for required in REQUIRED_COMPONENTS {
        if !input.components.iter().any(|c| c == required) {
            return Err(Problem::unauthorized(
                "signature-components",
                format!("the signature must cover {}", REQUIRED_COMPONENTS.join(", ")),
            ));
        }
    }
    let param_error = |what: &str| Problem::unauthorized("signature-malformed", format!("signature parameter {what}"));
    if input.string("alg") != Some("ed25519") {
        return Err(param_error("alg must be \"ed25519\""));
    }
    let keyid = input.string("keyid").ok_or_else(|| param_error("keyid (the key as hex) is required"))?;
    let key_bytes: [u8; 32] = hex::decode(keyid)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| param_error("keyid must be the 32-byte key as 64 hex characters"))?;
    let nonce = input.string("nonce").ok_or_else(|| param_error("nonce is required"))?;
    if !(16..=128).contains(&nonce.len()) {
        return Err(param_error("nonce must be 16 to 128 characters"));
    }
    let created = input.integer("created").ok_or_else(|| param_error("created is required"))?;
    let expires = input.integer("expires").ok_or_else(|| param_error("expires is required"))?;
    let now = now_s();
    let window = state.config.signature_window_s as i64;
    if expires <= created || expires - created > window {
        return Err(Problem::unauthorized(
            "signature-expired",
            format!("expires must be after created and at most {window} s later"),
        ));
    }
    if now + CLOCK_SKEW_S < created || now >= expires {
        return Err(Problem::unauthorized("signature-expired", "the signature is not valid now; sign afresh"));
    }
    let (participant, role) = {
        let engine = state.ledger.settlement()?;
        let participant = engine
            .participant_by_key(&key_bytes)
            .ok_or_else(|| Problem::unauthorized("unknown-key", "the key is not a participant's current key"))?;
        if participant == COLLECTIVE_ID {
            (participant, Role::Collective)
        } else {
            let p = engine.participant(participant).expect("keys index admitted participants");
            if p.suspended {
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "participant-suspended",
                    "the participant is suspended",
                ));
            }
            (participant, p.role)
        }
    };
    let key = PublicKey::from_bytes(&key_bytes).map_err(|_| param_error("keyid is not a valid key"))?;
    httpsig::verify(&PartsMessage(parts), &input, &signature, &key).map_err(sig_error)?;
    state.nonces.check_and_insert(keyid, nonce, expires, now)?;
    Ok(Caller { participant, role })
}

impl FromRequestParts<std::sync::Arc<AppState>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &std::sync::Arc<AppState>) -> Result<Self, Self::Rejection> {
        authenticate(state, parts)
    }
}

/// The signature parameters this node requires, for `key`, valid `valid_s` seconds from
/// now, with a random nonce.
pub fn signature_input(key: &tally_core::sig::SigningKey, valid_s: i64) -> httpsig::SignatureInput {
    httpsig::tally_input(key, now_s(), valid_s, hex::encode(rand::random::<[u8; 16]>()))
}

/// Sign a GET of `url` the way this node checks it: the `Signature-Input` and `Signature`
/// header fields.
pub fn sign_get(
    key: &tally_core::sig::SigningKey,
    url: &str,
    valid_s: i64,
) -> Result<[(&'static str, String); 2], httpsig::HttpSigError> {
    let (input, signature) = httpsig::sign(&httpsig::get_parts(url)?, &signature_input(key, valid_s), key)?;
    Ok([("Signature-Input", input), ("Signature", signature)])
}
