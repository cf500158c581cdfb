//! The web console at `GET /`: one static page, built into the binary (no node toolchain at
//! build time), that polls the JSON API (`/v1/topics`, `/v1/groups`) and `/metrics` every two
//! seconds and draws topics with their in-rate, consumer groups with their lag (each with a
//! minute of history as a sparkline) and the collector's health (ack latency, refusals, drops).
//! It reads with the bearer token a user types into it (kept in the browser's local storage), so
//! it sees what that token may see.

use axum::http::header;
use axum::response::IntoResponse;

/// The page (collector/src/console.html).
pub const PAGE: &str = include_str!("console.html");

/// `GET /` and `GET /console`.
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}
