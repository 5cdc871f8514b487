//! Shared HTTP plumbing for the collector's listeners: the error type that
//! maps to `{"error": {"code", "message"}}`, a JSON body extractor with a size
//! limit and positioned parse errors, and `/healthz`.

use crate::store::StoreError;
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use common::wire::ErrorBody;
use serde::de::DeserializeOwned;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error; see the collector log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&ErrorBody::new(self.code, self.message)).unwrap_or_default();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", m),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "CONFLICT", m),
            StoreError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "INVALID", m),
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::internal()
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Default body limit of JSON routes.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Larger limit for flag definition uploads.
pub const MAX_DEFINITION_BYTES: usize = 8 << 20;

/// JSON body with a size limit (413) and a parse error naming line and column (400).
pub struct Json<T>(pub T);

/// Reads a body up to `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> ApiResult<bytes::Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("request body larger than {limit} bytes"),
        )
    })
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "PARSE_ERROR",
            format!(
                "invalid JSON body at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    })
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(MAX_BODY_BYTES);
        let bytes = read_body(req.into_body(), limit).await?;
        parse_json(&bytes).map(Json)
    }
}

/// Per-route override of [`MAX_BODY_BYTES`], set as a request extension.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

pub async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"ok"}"#,
    )
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

pub fn json_response<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(_) => ApiError::internal().into_response(),
    }
}
