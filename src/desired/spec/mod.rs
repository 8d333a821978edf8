//! `users.yaml`: the desired state, as people edit it through pull requests.
//!
//! Owns the file format (design §4), parsing with spans, validation in two stages
//! (raw spanned document → [`DesiredState`] + [`Diagnostic`]s) and the renderings of
//! diagnostics. Never does I/O beyond the bytes it is given.
//!
//! The YAML parser (`serde-saphyr`) is an implementation detail behind [`parse`].

use std::collections::BTreeMap;
use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

mod diagnostic;
mod parse;
mod render;
mod validate;
mod yaml;

pub use diagnostic::{Diagnostic, Label, Severity, codes};
pub use parse::{MAX_FILE_SIZE, human_size, parse, parse_with};
pub use render::{OutputFormat, render, render_failure};

/// An email address as written in `users.yaml`, with its normalized form.
///
/// Identity is the normalized form (trimmed, lower-case); display keeps the original
/// spelling. Ordering and equality use the normalized form only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub struct Email {
    original: String,
    normalized: String,
}

impl Email {
    /// Wraps an address; the caller has validated its syntax.
    pub fn new(address: &str) -> Self {
        let original = address.trim().to_owned();
        let normalized = normalize_email(&original);
        Self {
            original,
            normalized,
        }
    }

    /// The spelling from the file (trimmed).
    pub fn as_str(&self) -> &str {
        &self.original
    }

    /// The identity key: trimmed and lower-cased.
    pub fn normalized(&self) -> &str {
        &self.normalized
    }

    /// The domain part, lower-cased.
    pub fn domain(&self) -> &str {
        self.normalized
            .rsplit_once('@')
            .map(|(_, d)| d)
            .unwrap_or("")
    }
}

/// The identity key of an address: trimmed and lower-cased (one definition, in
/// [`crate::remote::identity`]; the desired side and the remote side must agree).
pub use crate::remote::identity::normalize_email;

impl PartialEq for Email {
    fn eq(&self, other: &Self) -> bool {
        self.normalized == other.normalized
    }
}
impl Eq for Email {}
impl PartialOrd for Email {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Email {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.normalized.cmp(&other.normalized)
    }
}
impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}
impl From<String> for Email {
    fn from(value: String) -> Self {
        Email::new(&value)
    }
}
impl From<Email> for String {
    fn from(value: Email) -> Self {
        value.original
    }
}

/// A Power Embedded role, by its name in `users.yaml`.
///
/// The numeric codes of the portal are the portal client's business
/// (see `portal::RoleCodes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, including organization settings.
    Administrator,
    /// Users, groups, reports; no organization settings.
    Contributor,
    /// Reports and groups inside granted workspaces.
    WorkspaceContributor,
    /// Views reports only; no Administration Portal access.
    Viewer,
}

impl Role {
    /// Every role, in the order of the portal's codes.
    pub const ALL: [Role; 4] = [
        Role::Administrator,
        Role::Contributor,
        Role::Viewer,
        Role::WorkspaceContributor,
    ];

    /// The name used in `users.yaml` and in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Administrator => "administrator",
            Role::Contributor => "contributor",
            Role::WorkspaceContributor => "workspace-contributor",
            Role::Viewer => "viewer",
        }
    }

    /// Parses the `users.yaml` name of a role.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Defaults for the B2B invitation (`defaults.invitation` in `users.yaml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvitationDefaults {
    /// Whether Entra sends the invitation email (`sendInvitationMessage`). Default `true`.
    pub send_email: bool,
    /// Plain-text `customizedMessageBody`, if any.
    pub message: Option<String>,
}

impl Default for InvitationDefaults {
    fn default() -> Self {
        Self {
            send_email: true,
            message: None,
        }
    }
}

/// One desired external administrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredUser {
    /// The address; identity is its normalized form.
    pub email: Email,
    /// Display name, 1–256 characters.
    pub name: String,
    /// Effective role (user's own, else `defaults.role`, else administrator).
    pub role: Role,
    /// Access ends at the end of this day (UTC).
    pub expires: Option<NaiveDate>,
    /// Free text shown in plans and the audit log.
    pub reason: Option<String>,
    /// 1-based line of the entry in `users.yaml` (0 when unknown).
    pub line: u32,
}

/// The parsed, validated `users.yaml` at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredState {
    /// Desired users keyed by normalized email.
    pub users: BTreeMap<String, DesiredUser>,
    /// Invitation defaults.
    pub invitation: InvitationDefaults,
}

/// Policy from the host configuration that validation also enforces, so that a pull request
/// is told about it (design §7 "domain policy").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecPolicy {
    /// Lower-case domains an email may belong to; empty means any domain.
    pub allowed_domains: Vec<String>,
}

/// What a command knows beyond the bytes and the policy, for [`parse_with`]: the date and the
/// host's pruning (for the warning about a past `expires`) and the real size of a file read
/// only in part. The pure [`parse`] knows none of them (no clock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// Today (UTC): an `expires` before it is warned about (GO0208). `None`: no warning.
    pub today: Option<NaiveDate>,
    /// The host's `policy.prune`, when known (`validate --config`): says what becomes of the
    /// accounts of an expired user.
    pub prune: Option<bool>,
    /// The size of the whole file in bytes, when the bytes given are only its first part (a
    /// bounded read of a larger file).
    pub size: Option<u64>,
}

/// The result of [`parse`]: the desired state when the file is valid, and every diagnostic.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// `Some` when no diagnostic is an error.
    pub desired: Option<DesiredState>,
    /// All findings, errors and warnings, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Parsed {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}
