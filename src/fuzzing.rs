//! Entry points for the fuzz targets of `fuzz/` (`docs/fuzzing.md`): the parsers of untrusted
//! input that are private to their modules, reached without their I/O. Not an API: nothing
//! else may call these.

/// The GitHub webhook body parser (JSON, or `payload=` form-encoded when `form_encoded`).
pub fn webhook_push(body: &[u8], form_encoded: bool) {
    let _ = crate::service::server::webhook::parse_push(body, form_encoded);
}

/// The parser of one page of the portal's `GET /api/user`.
pub fn portal_page(body: &[u8]) {
    let _ = crate::remote::portal::client::parse_page(body, 1);
}
