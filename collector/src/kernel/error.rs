//! The one error type of the admin API, the ingest listener and the console.
//! Its code is a closed enum: each code's wire string and HTTP status are
//! written once, in [`ErrorCode::as_str`] and [`ErrorCode::status`]. The wire
//! strings are contracts (`{"error":{"code":"...","message":"..."}}`); the
//! console shows the same error as an HTML page (`console::PageError`).

use super::caller::{Actor, Role};
use crate::store::StoreError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// Every error code the collector answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    ParseError,
    Invalid,
    InvalidDefinition,
    ReasonRequired,
    Unauthorized,
    UnknownAgent,
    AgentRevoked,
    InvalidEnrollToken,
    Forbidden,
    EnrollMismatch,
    ProtocolMismatch,
    NotFound,
    FlagNotFound,
    Conflict,
    Expired,
    IdentityChanged,
    PayloadTooLarge,
    DefinitionWarnings,
    TooManyRequests,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The code as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::Invalid => "INVALID",
            ErrorCode::InvalidDefinition => "INVALID_DEFINITION",
            ErrorCode::ReasonRequired => "REASON_REQUIRED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::UnknownAgent => "UNKNOWN_AGENT",
            ErrorCode::AgentRevoked => "AGENT_REVOKED",
            ErrorCode::InvalidEnrollToken => "INVALID_ENROLL_TOKEN",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::EnrollMismatch => "ENROLL_MISMATCH",
            ErrorCode::ProtocolMismatch => "PROTOCOL_MISMATCH",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::Expired => "EXPIRED",
            ErrorCode::IdentityChanged => "IDENTITY_CHANGED",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::DefinitionWarnings => "DEFINITION_WARNINGS",
            ErrorCode::TooManyRequests => "TOO_MANY_REQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// The HTTP status every answer with this code has.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest
            | ErrorCode::ParseError
            | ErrorCode::Invalid
            | ErrorCode::InvalidDefinition
            | ErrorCode::ReasonRequired
            | ErrorCode::ProtocolMismatch => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized
            | ErrorCode::UnknownAgent
            | ErrorCode::AgentRevoked
            | ErrorCode::InvalidEnrollToken => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::EnrollMismatch => StatusCode::FORBIDDEN,
            ErrorCode::NotFound | ErrorCode::FlagNotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict | ErrorCode::Expired | ErrorCode::IdentityChanged => {
                StatusCode::CONFLICT
            }
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::DefinitionWarnings => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Further members of the error object (`warnings` of
    /// `DEFINITION_WARNINGS`).
    pub details: Map<String, Value>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Map::new(),
        }
    }
    /// Adds a member to the error object.
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.details.insert(key.into(), value);
        self
    }
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error; see the collector log")
    }
    /// The refusal of a caller whose role is below `needed`.
    pub fn role_needed(needed: Role, actor: &Actor) -> Self {
        Self::forbidden(format!(
            "this needs the {} role; {} has {}",
            needed.as_str(),
            actor.name,
            actor.role.as_str()
        ))
    }
    /// The error as the JSON body `{"error": {"code", "message", ...}}`.
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), json!(self.code.as_str()));
        error.insert("message".into(), json!(self.message));
        error.extend(self.details.clone());
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        (
            self.status(),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::new(ErrorCode::NotFound, m),
            StoreError::Conflict(m) => ApiError::new(ErrorCode::Conflict, m),
            StoreError::Invalid(m) => ApiError::new(ErrorCode::Invalid, m),
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::internal()
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A reason is required for this change: `REASON_REQUIRED` when blank.
pub fn require_reason(reason: &str) -> ApiResult<()> {
    if reason.trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::ReasonRequired,
            "a reason is required for this change",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire codes and their statuses are contracts: written out here.
    #[test]
    fn codes_keep_their_wire_strings_and_statuses() {
        use ErrorCode::*;
        let all = [
            (BadRequest, "BAD_REQUEST", 400),
            (ParseError, "PARSE_ERROR", 400),
            (Invalid, "INVALID", 400),
            (InvalidDefinition, "INVALID_DEFINITION", 400),
            (ReasonRequired, "REASON_REQUIRED", 400),
            (Unauthorized, "UNAUTHORIZED", 401),
            (UnknownAgent, "UNKNOWN_AGENT", 401),
            (AgentRevoked, "AGENT_REVOKED", 401),
            (InvalidEnrollToken, "INVALID_ENROLL_TOKEN", 401),
            (Forbidden, "FORBIDDEN", 403),
            (EnrollMismatch, "ENROLL_MISMATCH", 403),
            (NotFound, "NOT_FOUND", 404),
            (FlagNotFound, "FLAG_NOT_FOUND", 404),
            (Conflict, "CONFLICT", 409),
            (Expired, "EXPIRED", 409),
            (IdentityChanged, "IDENTITY_CHANGED", 409),
            (PayloadTooLarge, "PAYLOAD_TOO_LARGE", 413),
            (DefinitionWarnings, "DEFINITION_WARNINGS", 422),
            (TooManyRequests, "TOO_MANY_REQUESTS", 429),
            (Unavailable, "UNAVAILABLE", 503),
            (Internal, "INTERNAL", 500),
        ];
        for (code, wire, status) in all {
            assert_eq!(code.as_str(), wire);
            assert_eq!(code.status().as_u16(), status, "{wire}");
        }
    }

    #[test]
    fn the_body_keeps_the_wire_shape() {
        let e = ApiError::new(ErrorCode::DefinitionWarnings, "m").with("warnings", json!(["w"]));
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            e.body(),
            json!({"error": {"code": "DEFINITION_WARNINGS", "message": "m", "warnings": ["w"]}})
        );
    }
}
