//! The emulated tenant: token endpoint, `/v1.0/users`, `/v1.0/invitations`
//! (placeholder: the graph work fills this in).

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::Sim;

/// The emulated directory.
#[derive(Debug, Default)]
pub struct Directory {}

/// Routes of the token endpoint and Graph.
pub fn routes() -> Router<Sim> {
    Router::new()
}

/// A Graph error body (`{"error":{"code","message","innerError":{…}}}`) with `status`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}
