//! The Power Embedded HTTP client (placeholder: the portal work fills this in).

/// A failed portal operation.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    /// The portal answered with an error status.
    #[error("the portal answered {status} to {operation}: {message}")]
    Api {
        /// What was being done.
        operation: String,
        /// HTTP status.
        status: u16,
        /// `message` from the body, or the raw body.
        message: String,
    },
}

impl PortalError {
    /// Whether a write may have happened despite the error (timeout, 5xx).
    pub fn is_ambiguous(&self) -> bool {
        match self {
            PortalError::Api { status, .. } => *status >= 500,
        }
    }
}

/// The HTTP implementation of [`super::Portal`].
#[derive(Debug, Clone)]
pub struct PortalClient {}
