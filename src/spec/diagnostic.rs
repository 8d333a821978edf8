//! Diagnostics: a finding in `users.yaml` with a stable code, a position and a hint.

use serde::Serialize;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file is invalid; nothing is applied.
    Error,
    /// Worth a look; the file is still valid.
    Warning,
}

/// A labelled position in the file (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Label {
    /// 1-based line.
    pub line: u32,
    /// 1-based column (in characters).
    pub column: u32,
    /// Length of the labelled text in characters (at least 1).
    pub len: u32,
    /// What this position is (for example "first defined here").
    pub message: String,
}

/// One finding in `users.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Stable code, e.g. `GO0101`; documented in `docs/diagnostics.md`.
    pub code: &'static str,
    /// Error or warning.
    pub severity: Severity,
    /// One-line description of the problem.
    pub message: String,
    /// The primary position (line/column of `labels[0]`).
    pub line: u32,
    /// The primary column.
    pub column: u32,
    /// All labelled positions; the first is the primary one (a duplicate labels both).
    pub labels: Vec<Label>,
    /// What to do about it.
    pub help: Option<String>,
}
