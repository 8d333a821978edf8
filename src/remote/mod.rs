//! The two remote systems: Microsoft Graph ([`graph`]) and the Power Embedded API ([`portal`]),
//! both behind one HTTP edge ([`http`]) that paces each system's writes ([`pace`]), with their
//! in-memory fakes for unit tests ([`fake`] holds what the fakes share), and the one
//! definition of which account holds which address ([`identity`]). Clients report what they
//! read and do what they are told: deciding what to change is the plan's business.
//!
//! Clients take their own settings ([`graph::GraphSettings`], [`portal::PortalSettings`]) and
//! a [`Credential`]; nothing here imports `crate::config` (the configuration builds the
//! settings, not the other way round).

use std::fmt;

use secrecy::SecretString;

pub mod fake;
pub mod graph;
pub mod http;
pub mod identity;
pub mod pace;
pub mod portal;

/// Reports the progress of a complete read (a listing, a delta round) page by page, for a
/// person at a terminal: called after each page with what is read, how many pages and items so
/// far, and whether that page was the last.
#[derive(Clone)]
pub struct ReadProgress(std::sync::Arc<dyn Fn(ReadPage<'_>) + Send + Sync>);

/// One call of [`ReadProgress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPage<'a> {
    /// What is read, e.g. `the tenant's guests`.
    pub what: &'a str,
    /// Pages read so far.
    pub pages: usize,
    /// Items read so far.
    pub items: usize,
    /// Whether this page ended the read.
    pub done: bool,
}

impl ReadProgress {
    /// A progress report calling `report`.
    pub fn new(report: impl Fn(ReadPage<'_>) + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(report))
    }

    /// Reports one page.
    pub fn page(&self, page: ReadPage<'_>) {
        (self.0)(page);
    }
}

impl std::fmt::Debug for ReadProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadProgress")
    }
}

/// A secret sent to a remote system (a client secret, an API key), with a description of
/// where it was read from, so that a hint about a refused secret names the place to fix it.
/// `Debug` never shows the value.
#[derive(Clone)]
pub struct Credential {
    secret: SecretString,
    origin: String,
}

impl Credential {
    /// `secret`, read from `origin` (e.g. `the environment variable
    /// GUESTOPS_TENANT_CLIENT_SECRET` or `the file /etc/guestops/graph (tenant.credential.secretFile)`).
    pub fn new(secret: SecretString, origin: impl Into<String>) -> Self {
        Credential {
            secret,
            origin: origin.into(),
        }
    }

    /// The secret.
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// Where it was read from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("secret", &"[redacted]")
            .field("origin", &self.origin)
            .finish()
    }
}
