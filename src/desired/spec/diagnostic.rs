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

impl Diagnostic {
    /// An error at `line`:`column` (1-based), labelling `len` characters with `label`.
    pub fn error(
        code: &'static str,
        message: impl Into<String>,
        line: u32,
        column: u32,
        len: u32,
        label: impl Into<String>,
    ) -> Self {
        Self::new(Severity::Error, code, message, line, column, len, label)
    }

    /// A warning at `line`:`column` (1-based), labelling `len` characters with `label`.
    pub fn warning(
        code: &'static str,
        message: impl Into<String>,
        line: u32,
        column: u32,
        len: u32,
        label: impl Into<String>,
    ) -> Self {
        Self::new(Severity::Warning, code, message, line, column, len, label)
    }

    fn new(
        severity: Severity,
        code: &'static str,
        message: impl Into<String>,
        line: u32,
        column: u32,
        len: u32,
        label: impl Into<String>,
    ) -> Self {
        let line = line.max(1);
        let column = column.max(1);
        Self {
            code,
            severity,
            message: message.into(),
            line,
            column,
            labels: vec![Label {
                line,
                column,
                len: len.max(1),
                message: label.into(),
            }],
            help: None,
        }
    }

    /// Adds a secondary labelled position (for example the first of two duplicates).
    #[must_use]
    pub fn with_label(
        mut self,
        line: u32,
        column: u32,
        len: u32,
        message: impl Into<String>,
    ) -> Self {
        self.labels.push(Label {
            line: line.max(1),
            column: column.max(1),
            len: len.max(1),
            message: message.into(),
        });
        self
    }

    /// Sets what to do about it.
    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Whether this diagnostic makes the file invalid.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The stable diagnostic codes, documented with an example each in `docs/diagnostics.md`.
///
/// `GO00xx` are about the file and its YAML, `GO01xx` about the document's structure,
/// `GO02xx` about one user's fields, `GO03xx` about host policy. A code never changes meaning.
pub mod codes {
    /// The file is larger than [`crate::desired::spec::MAX_FILE_SIZE`].
    pub const FILE_TOO_LARGE: &str = "GO0001";
    /// The file is not valid UTF-8.
    pub const NOT_UTF8: &str = "GO0002";
    /// The YAML is malformed.
    pub const YAML_SYNTAX: &str = "GO0003";
    /// A tab is used for indentation.
    pub const TAB_INDENTATION: &str = "GO0004";
    /// A safety limit (aliases, nesting) was exceeded.
    pub const YAML_LIMIT: &str = "GO0005";
    /// The file holds more than one YAML document.
    pub const MULTIPLE_DOCUMENTS: &str = "GO0006";
    /// A mapping has the same key twice.
    pub const DUPLICATE_KEY: &str = "GO0007";
    /// The file is empty (or holds only comments).
    pub const EMPTY_FILE: &str = "GO0008";
    /// A value has the wrong type (a list where a mapping is expected, a number for a text…).
    pub const WRONG_TYPE: &str = "GO0101";
    /// A key that the format does not know.
    pub const UNKNOWN_KEY: &str = "GO0102";
    /// A required key is missing.
    pub const MISSING_KEY: &str = "GO0103";
    /// `apiVersion` is not `guestops/v1`.
    pub const UNKNOWN_API_VERSION: &str = "GO0104";
    /// `email` is not a syntactically valid address.
    pub const INVALID_EMAIL: &str = "GO0201";
    /// `email` holds a character or form that Entra ID rejects in invitations.
    pub const EMAIL_REJECTED_BY_ENTRA: &str = "GO0202";
    /// The same email (case-insensitive, trimmed) is listed twice.
    pub const DUPLICATE_EMAIL: &str = "GO0203";
    /// `name` is blank, too long or not a single line.
    pub const INVALID_NAME: &str = "GO0204";
    /// `role` (or `defaults.role`) is not one of the four roles.
    pub const UNKNOWN_ROLE: &str = "GO0205";
    /// `expires` is not a real `YYYY-MM-DD` date.
    pub const INVALID_DATE: &str = "GO0206";
    /// `defaults.invitation.message` looks like HTML (a warning: Entra sends plain text).
    pub const HTML_MESSAGE: &str = "GO0207";
    /// `expires` is before today (a warning: the user is not granted access, and removed when
    /// owned and `policy.prune` is on). Only commands that know the date report it
    /// (`guestops validate`).
    pub const EXPIRED: &str = "GO0208";
    /// An email's domain is not in the host's `policy.allowedDomains`.
    pub const DOMAIN_NOT_ALLOWED: &str = "GO0301";
}
