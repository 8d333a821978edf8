//! guestops' own state (design §8): `state.json` (ownership and per-user progress),
//! `audit.jsonl` (one line per remote write) and the instance lock, all under `state.dir`.
//!
//! (Placeholder: the apply work adds the store, the lock and the audit log.)

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Current `state.json` schema version.
pub const STATE_VERSION: u32 = 1;

/// What guestops knows about the users it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// Schema version ([`STATE_VERSION`]).
    pub version: u32,
    /// Revision of the last applied desired state (commit id, or content hash of a file).
    #[serde(default)]
    pub revision: Option<String>,
    /// Per-user records keyed by normalized email.
    #[serde(default)]
    pub users: BTreeMap<String, UserRecord>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            revision: None,
            users: BTreeMap::new(),
        }
    }
}

impl State {
    /// Whether guestops owns anything at all.
    pub fn owns_anything(&self) -> bool {
        self.users.values().any(|u| u.guest_owned || u.portal_owned)
    }
}

/// Progress and ownership of one user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRecord {
    /// The address as last written in `users.yaml`.
    pub email: String,
    /// Object id of the tenant guest.
    #[serde(default)]
    pub guest_id: Option<String>,
    /// Whether guestops invited or adopted the guest.
    #[serde(default)]
    pub guest_owned: bool,
    /// When guestops invited the guest (first invitation).
    #[serde(default)]
    pub invited_at: Option<DateTime<Utc>>,
    /// Invitations re-sent so far.
    #[serde(default)]
    pub resend_count: u32,
    /// When the last invitation (first or re-sent) was posted.
    #[serde(default)]
    pub last_invitation_at: Option<DateTime<Utc>>,
    /// Portal id.
    #[serde(default)]
    pub portal_id: Option<String>,
    /// Whether guestops registered or adopted the portal user.
    #[serde(default)]
    pub portal_owned: bool,
    /// Since when a removal is planned but not done (refused, failing, …).
    #[serde(default)]
    pub removal_pending_since: Option<DateTime<Utc>>,
    /// Time of the last change applied to this user.
    #[serde(default)]
    pub last_change: Option<DateTime<Utc>>,
}
