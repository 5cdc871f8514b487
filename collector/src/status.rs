//! The public status listener. Read-only and separate from the admin plane;
//! for now it answers health and an overall state (components and incidents
//! come with the status-page capability).

use crate::kernel::json::{healthz, not_found};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

pub fn router() -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/status", get(status_json))
        .route("/", get(page))
        .fallback(not_found)
}

async fn status_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"operational","components":[]}"#,
    )
}

async fn page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><html><head><meta charset=utf-8><meta name=viewport content='width=device-width'><title>Status</title></head>\
         <body style='font-family:sans-serif;max-width:40rem;margin:3rem auto'><h1>Status</h1><p>All systems operational.</p></body></html>",
    )
}
