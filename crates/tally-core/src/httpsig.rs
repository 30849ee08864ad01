//! RFC 9421 HTTP Message Signatures with Ed25519: the subset Tally uses to authenticate
//! reads of private data (`specs/api.md`, "Authentication").
//!
//! A client signs the **signature base** (RFC 9421 §2.5): one line per covered component,
//! `"<name>": <value>`, then `"@signature-params": <the signature's inner list with
//! parameters>`, lines joined by `\n` with no final newline. It sends
//!
//! ```text
//! Signature-Input: tally=("@method" "@authority" "@path" "@query");created=1767225600;expires=1767225660;nonce="…";keyid="<hex key>";alg="ed25519"
//! Signature: tally=:<base64 of the 64-byte Ed25519 signature>:
//! ```
//!
//! Verification uses Tally's one signature rule ([`crate::sig::verify`]). Policy (which
//! components must be covered, the time window, replay protection) is the server's; this
//! module parses, builds bases, signs and checks signatures.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::sig::{self, PublicKey, SigningKey};

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpSigError {
    #[error("the request is not signed (Signature-Input and Signature headers are required)")]
    Missing,
    #[error("malformed {header}: {reason}")]
    Malformed { header: &'static str, reason: &'static str },
    #[error("component {0} is not supported")]
    UnsupportedComponent(String),
    #[error("covered header field {0} is not in the request")]
    MissingComponent(String),
    #[error("the signature does not verify")]
    BadSignature,
}

impl HttpSigError {
    pub fn code(&self) -> &'static str {
        match self {
            HttpSigError::Missing => "signature-missing",
            HttpSigError::Malformed { .. } => "signature-malformed",
            HttpSigError::UnsupportedComponent(_) | HttpSigError::MissingComponent(_) => "signature-components",
            HttpSigError::BadSignature => "signature-invalid",
        }
    }
}

/// A parameter value: an integer or a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamValue {
    Integer(i64),
    String(String),
}

/// One signature's covered components and parameters, as sent in `Signature-Input`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureInput {
    pub label: String,
    pub components: Vec<String>,
    /// Parameters in the order sent (the order is part of what is signed).
    pub params: Vec<(String, ParamValue)>,
}

impl SignatureInput {
    pub fn integer(&self, name: &str) -> Option<i64> {
        self.params.iter().find_map(|(n, v)| match v {
            ParamValue::Integer(i) if n == name => Some(*i),
            _ => None,
        })
    }

    pub fn string(&self, name: &str) -> Option<&str> {
        self.params.iter().find_map(|(n, v)| match v {
            ParamValue::String(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }

    /// The serialized inner list with parameters: the value of `@signature-params`.
    pub fn serialize(&self) -> String {
        let mut out = String::from("(");
        for (i, c) in self.components.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push('"');
            out.push_str(c);
            out.push('"');
        }
        out.push(')');
        for (name, value) in &self.params {
            out.push(';');
            out.push_str(name);
            out.push('=');
            match value {
                ParamValue::Integer(i) => out.push_str(&i.to_string()),
                ParamValue::String(s) => {
                    out.push('"');
                    out.push_str(s);
                    out.push('"');
                }
            }
        }
        out
    }
}

/// The parts of a request that derived components come from, and its header fields.
pub trait Message {
    fn method(&self) -> &str;
    /// The authority (host and port) the request was sent to, lower case.
    fn authority(&self) -> &str;
    fn path(&self) -> &str;
    /// The query without its `?`, if the request has one.
    fn query(&self) -> Option<&str>;
    /// Every value of a header field (by lower-case name), in order.
    fn header(&self, name: &str) -> Vec<String>;
}

fn malformed(header: &'static str, reason: &'static str) -> HttpSigError {
    HttpSigError::Malformed { header, reason }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.' | '*')
}

fn parse_string(s: &str) -> Option<(String, &str)> {
    let rest = s.strip_prefix('"')?;
    let end = rest.find('"')?;
    let value = &rest[..end];
    if value.contains('\\') || !value.chars().all(|c| (' '..='~').contains(&c)) {
        return None;
    }
    Some((value.to_string(), &rest[end + 1..]))
}

/// Parse a `Signature-Input` field that holds exactly one signature. Tally sends and
/// accepts one signature per request; strings with escapes are refused.
pub fn parse_signature_input(field: &str) -> Result<SignatureInput, HttpSigError> {
    let bad = |r| malformed("Signature-Input", r);
    let field = field.trim();
    let (label, mut rest) = field.split_once('=').ok_or(bad("expected label=(...)"))?;
    if label.is_empty() || !label.chars().all(is_token_char) {
        return Err(bad("bad label"));
    }
    rest = rest.strip_prefix('(').ok_or(bad("expected an inner list"))?;
    let mut components = Vec::new();
    loop {
        rest = rest.trim_start_matches(' ');
        if let Some(r) = rest.strip_prefix(')') {
            rest = r;
            break;
        }
        let (c, r) = parse_string(rest).ok_or(bad("components are quoted strings"))?;
        if c.is_empty() || c.chars().any(|ch| ch.is_ascii_uppercase()) {
            return Err(bad("component names are lower case"));
        }
        components.push(c);
        rest = r;
    }
    let mut params = Vec::new();
    while let Some(r) = rest.strip_prefix(';') {
        let end = r.find('=').ok_or(bad("parameters have values"))?;
        let name = &r[..end];
        if name.is_empty() || !name.chars().all(is_token_char) || params.iter().any(|(n, _)| n == name) {
            return Err(bad("bad or repeated parameter name"));
        }
        let r = &r[end + 1..];
        let (value, r) = if r.starts_with('"') {
            let (s, r) = parse_string(r).ok_or(bad("bad string parameter"))?;
            (ParamValue::String(s), r)
        } else {
            let digits = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            let n: i64 = r[..digits].parse().map_err(|_| bad("bad integer parameter"))?;
            (ParamValue::Integer(n), &r[digits..])
        };
        params.push((name.to_string(), value));
        rest = r;
    }
    if !rest.is_empty() {
        return Err(bad("one signature per request, nothing after its parameters"));
    }
    Ok(SignatureInput { label: label.to_string(), components, params })
}

/// Parse a `Signature` field holding the signature for `label`.
pub fn parse_signature(field: &str, label: &str) -> Result<[u8; 64], HttpSigError> {
    let bad = |r| malformed("Signature", r);
    let (l, value) = field.trim().split_once('=').ok_or(bad("expected label=:base64:"))?;
    if l != label {
        return Err(bad("the label differs from Signature-Input's"));
    }
    let b64 = value.strip_prefix(':').and_then(|v| v.strip_suffix(':')).ok_or(bad("expected :base64:"))?;
    let bytes = B64.decode(b64).map_err(|_| bad("bad base64"))?;
    bytes.try_into().map_err(|_| bad("an Ed25519 signature is 64 bytes"))
}

/// The value of one covered component.
fn component_value(msg: &impl Message, name: &str) -> Result<String, HttpSigError> {
    Ok(match name {
        "@method" => msg.method().to_string(),
        "@authority" => msg.authority().to_ascii_lowercase(),
        "@path" => msg.path().to_string(),
        "@query" => format!("?{}", msg.query().unwrap_or("")),
        n if n.starts_with('@') => return Err(HttpSigError::UnsupportedComponent(n.to_string())),
        n => {
            let values = msg.header(n);
            if values.is_empty() {
                return Err(HttpSigError::MissingComponent(n.to_string()));
            }
            values.iter().map(|v| v.trim()).collect::<Vec<_>>().join(", ")
        }
    })
}

/// The signature base (RFC 9421 §2.5) for `input` over `msg`.
pub fn signature_base(msg: &impl Message, input: &SignatureInput) -> Result<String, HttpSigError> {
    let mut base = String::new();
    for c in &input.components {
        base.push('"');
        base.push_str(c);
        base.push_str("\": ");
        base.push_str(&component_value(msg, c)?);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(&input.serialize());
    Ok(base)
}

/// Check the signature over `msg` with `key`.
pub fn verify(
    msg: &impl Message,
    input: &SignatureInput,
    signature: &[u8; 64],
    key: &PublicKey,
) -> Result<(), HttpSigError> {
    let base = signature_base(msg, input)?;
    sig::verify(key, &[base.as_bytes()], signature).map_err(|_| HttpSigError::BadSignature)
}

/// Sign `msg`: returns the `Signature-Input` and `Signature` field values.
pub fn sign(msg: &impl Message, input: &SignatureInput, key: &SigningKey) -> Result<(String, String), HttpSigError> {
    let base = signature_base(msg, input)?;
    let signature = key.sign(&[base.as_bytes()]);
    Ok((format!("{}={}", input.label, input.serialize()), format!("{}=:{}:", input.label, B64.encode(signature))))
}

/// Components every Tally signature covers.
pub const REQUIRED_COMPONENTS: [&str; 4] = ["@method", "@authority", "@path", "@query"];

/// The parts of a GET of `url` (`http(s)://authority/path[?query]`) that a signature covers.
pub fn get_parts(url: &str) -> Result<RequestParts, HttpSigError> {
    let bad = || HttpSigError::Malformed { header: "URL", reason: "expected http(s)://authority/path[?query]" };
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).ok_or_else(bad)?;
    let (authority, path_and_query) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (path_and_query, None),
    };
    Ok(RequestParts {
        method: "GET".into(),
        authority: authority.into(),
        path: path.into(),
        query,
        headers: Vec::new(),
    })
}

/// The signature parameters a Tally node requires (`specs/api.md`): the four components,
/// `created`, `expires = created + valid_s`, `nonce`, `keyid` (the key as hex) and
/// `alg="ed25519"`. The caller supplies the time and a fresh random nonce.
pub fn tally_input(key: &SigningKey, created: i64, valid_s: i64, nonce: String) -> SignatureInput {
    SignatureInput {
        label: "tally".into(),
        components: REQUIRED_COMPONENTS.iter().map(|c| c.to_string()).collect(),
        params: vec![
            ("created".into(), ParamValue::Integer(created)),
            ("expires".into(), ParamValue::Integer(created + valid_s)),
            ("nonce".into(), ParamValue::String(nonce)),
            ("keyid".into(), ParamValue::String(hex::encode(key.public_bytes()))),
            ("alg".into(), ParamValue::String("ed25519".into())),
        ],
    }
}

/// A request described by its parts, for signing on the client side and for tests.
#[derive(Debug, Clone)]
pub struct RequestParts {
    pub method: String,
    pub authority: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl Message for RequestParts {
    fn method(&self) -> &str {
        &self.method
    }
    fn authority(&self) -> &str {
        &self.authority
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
    fn header(&self, name: &str) -> Vec<String> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9421 Appendix B.2.6: the published Ed25519 signature over the test request,
    /// reproduced byte for byte with the RFC's test key (B.1.4), and verified.
    #[test]
    fn rfc9421_b26_ed25519() {
        let pkcs8 = B64.decode("MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF").unwrap();
        let seed: [u8; 32] = pkcs8[16..].try_into().unwrap();
        let key = SigningKey::from_seed(&seed);
        let spki = B64.decode("MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=").unwrap();
        assert_eq!(key.public_bytes()[..], spki[12..]);
        let msg = RequestParts {
            method: "POST".into(),
            authority: "example.com".into(),
            path: "/foo".into(),
            query: Some("param=Value&Pet=dog".into()),
            headers: vec![
                ("Date".into(), "Tue, 20 Apr 2021 02:07:55 GMT".into()),
                ("Content-Type".into(), "application/json".into()),
                ("Content-Length".into(), "18".into()),
            ],
        };
        let input = parse_signature_input(
            r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#,
        )
        .unwrap();
        let base = signature_base(&msg, &input).unwrap();
        assert_eq!(
            base,
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@authority\": example.com\n\
             \"content-type\": application/json\n\"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \
             \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\""
        );
        let (_, signature) = sign(&msg, &input, &key).unwrap();
        assert_eq!(
            signature,
            "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:"
        );
        let sig = parse_signature(&signature, "sig-b26").unwrap();
        verify(&msg, &input, &sig, &key.public_key()).unwrap();
        let mut other = msg.clone();
        other.path = "/bar".into();
        assert_eq!(verify(&other, &input, &sig, &key.public_key()), Err(HttpSigError::BadSignature));
    }

    /// Malformed fields are refused with a reason, never a panic.
    #[test]
    fn malformed_inputs_are_refused() {
        for bad in [
            "",
            "sig",
            "sig=",
            "sig=(\"@method\"",
            "sig=(@method)",
            "sig=(\"@Method\")",
            "sig=(\"@method\");created",
            "sig=(\"@method\");created=x",
            "sig=(\"@method\");a=1;a=2",
            "sig=(\"@method\");keyid=\"a\\\"b\"",
            "a=(\"@method\"), b=(\"@path\")",
        ] {
            assert!(parse_signature_input(bad).is_err(), "{bad}");
        }
        assert!(parse_signature("sig=:AAAA:", "sig").is_err());
        assert!(parse_signature("other=:AAAA:", "sig").is_err());
    }
}
