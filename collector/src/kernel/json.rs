//! JSON in and out: the body extractor with the route's body limit (413)
//! and positioned parse errors (400), and the small answers every listener
//! shares (`/healthz`, the JSON 404).

use super::error::{ApiError, ApiResult, ErrorCode};
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// Default body limit of JSON routes.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Larger limit for flag definition uploads.
pub const MAX_DEFINITION_BYTES: usize = 8 << 20;

/// The body limit of the route serving a request, set as a request
/// extension by the route's layer from its declaration.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// JSON body with a size limit (413) and a parse error naming line and column (400).
pub struct Json<T>(pub T);

/// Reads a body up to `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> ApiResult<bytes::Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body larger than {limit} bytes"),
        )
    })
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::ParseError,
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

/// 200 with `v` as JSON.
pub fn ok<T: serde::Serialize>(v: &T) -> Response {
    json_response(StatusCode::OK, v)
}

/// A body (or form) that only carries a reason.
#[derive(serde::Deserialize)]
pub struct ReasonReq {
    #[serde(default)]
    pub reason: String,
}

/// The console's form of [`ReasonReq`].
pub type ReasonForm = ReasonReq;

/// `?environment=E`.
#[derive(serde::Deserialize)]
pub struct EnvQuery {
    pub environment: String,
}
