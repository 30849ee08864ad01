//! RFC 9457 problem details: every error the API returns is `application/problem+json` with
//! a stable machine-readable `code` (also in `type` as `urn:tally:problem:<code>`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tally_ledger::LedgerError;

/// An API error: status, stable code, human detail.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Seconds a client should wait before retrying (503/429).
    pub retry_after_s: Option<u32>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self { status, code, detail: detail.into(), retry_after_s: None }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        Self { retry_after_s: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail) }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = Body {
            kind: format!("urn:tally:problem:{}", self.code),
            title,
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
        };
        let bytes = serde_json::to_vec(&body).expect("a problem serializes");
        let mut response = (self.status, bytes).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(s) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

impl From<LedgerError> for Problem {
    fn from(e: LedgerError) -> Self {
        match &e {
            LedgerError::Busy => Problem::unavailable("busy", "the append queue is full; retry shortly"),
            LedgerError::Closed => Problem::unavailable("closed", "the ledger is not accepting appends"),
            LedgerError::OutOfRange { .. } => Problem::bad_request(e.code(), e.to_string()),
            LedgerError::NoSuchTile { .. } => Problem::not_found(e.code(), e.to_string()),
            LedgerError::TooManyEntries { .. } => Problem::new(StatusCode::PAYLOAD_TOO_LARGE, e.code(), e.to_string()),
            LedgerError::StorageFull { .. } => {
                tracing::warn!(error = %e, "refusing appends until disk space is freed");
                Problem {
                    retry_after_s: Some(10),
                    ..Problem::new(StatusCode::INSUFFICIENT_STORAGE, e.code(), e.to_string())
                }
            }
            LedgerError::WrongSigningKey | LedgerError::Storage(_) | LedgerError::Corrupted(_) => {
                tracing::error!(error = %e, "ledger failure");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.code(), "the ledger failed; see the node's log")
            }
        }
    }
}

impl From<tally_settlement::StateError> for Problem {
    fn from(e: tally_settlement::StateError) -> Self {
        tracing::error!(error = %e, "settlement state failure");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "state-error", "settlement state failed; see the node's log")
    }
}
