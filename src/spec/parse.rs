//! Parsing and validation of `users.yaml` (placeholder: the spec work replaces this).

use super::{Parsed, SpecPolicy};

/// Largest accepted `users.yaml`, in bytes.
pub const MAX_FILE_SIZE: usize = 1024 * 1024;

/// Parses and validates `users.yaml`, reporting every problem at once. Never panics.
pub fn parse(bytes: &[u8], policy: &SpecPolicy) -> Parsed {
    let _ = (bytes, policy);
    Parsed::default()
}
