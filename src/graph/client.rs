//! The Microsoft Graph HTTP client (placeholder: the graph work fills this in).

/// A failed Graph operation. Keeps Graph's `code`, `message` and `request-id`.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Graph answered with an error body.
    #[error("Graph answered {status} {code} to {operation}: {message}")]
    Api {
        /// What was being done, e.g. `list guests`.
        operation: String,
        /// HTTP status.
        status: u16,
        /// `error.code`.
        code: String,
        /// `error.message`.
        message: String,
        /// `innerError.request-id` or the `request-id` header.
        request_id: Option<String>,
    },
}

impl GraphError {
    /// The Graph `request-id`, for the audit log.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            GraphError::Api { request_id, .. } => request_id.as_deref(),
        }
    }

    /// Whether a write may have happened despite the error (timeout, 5xx): the caller must
    /// look the user up before repeating the write.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            GraphError::Api { status, .. } => *status >= 500,
        }
    }
}

/// The HTTP implementation of [`super::Tenant`].
#[derive(Debug, Clone)]
pub struct GraphClient {}
