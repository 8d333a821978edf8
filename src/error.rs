//! Errors that read once. Each error type's message says its own part only and returns its
//! cause from `source()`; whoever prints an error prints the chain once, `: `-joined, with
//! [`chain`] (or anyhow's `{:#}` at the top level, which does the same).

use std::error::Error;
use std::fmt::Write as _;

/// `err`'s message followed by each of its causes, `: `-joined.
///
/// ```
/// let io = std::io::Error::other("disk full");
/// let err = anyhow::Error::new(io).context("cannot save state.json");
/// assert_eq!(guestops::error::chain(err.as_ref()), "cannot save state.json: disk full");
/// ```
///
/// A cause whose text the message already contains is not repeated:
///
/// ```
/// #[derive(Debug, thiserror::Error)]
/// #[error("cannot read state.json: {source}; check its permissions")]
/// struct Read { source: std::io::Error }
/// let err = Read { source: std::io::Error::other("permission denied") };
/// assert_eq!(
///     guestops::error::chain(&err),
///     "cannot read state.json: permission denied; check its permissions"
/// );
/// ```
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        let text = next.to_string();
        // A message that already shows its cause's text (as one that puts a hint after the
        // cause does) is not followed by it again.
        if !text.is_empty() && !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        cause = next.source();
    }
    out
}
