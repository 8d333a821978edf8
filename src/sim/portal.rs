//! The emulated Power Embedded API (placeholder: the portal work fills this in).

use axum::Router;

use super::Sim;

/// The `X-API-Key` the emulated portal accepts unless changed.
pub const SIM_API_KEY: &str = "sim-portal-api-key";

/// The emulated portal organization.
#[derive(Debug, Default)]
pub struct PortalDb {}

/// Routes of the portal API.
pub fn routes() -> Router<Sim> {
    Router::new()
}
