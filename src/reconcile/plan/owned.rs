//! What guestops owns and remembers per user: the data the plan reads (`plan(…, owned, …)`)
//! and [`crate::reconcile::state`] persists as `state.json`. Plain data: no I/O here; the plan
//! module defines it so that the plan depends on no store.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Observed;

/// Current `state.json` schema version. 2 (issue 9): `registrationUnconfirmedAt` and the
/// write-ahead journal `journal.jsonl` beside it (a version-1 guestops would ignore the
/// journal of a crashed run). 3 (issue 10): `suspended`, and how and when each ownership was
/// taken (`guestAcquired`, `portalAcquired`): a version-2 guestops would ignore a suspension
/// and reconcile, so it must refuse the file. Version-1 and -2 files load as they are.
pub const STATE_VERSION: u32 = 3;

/// What guestops knows about the users it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// Schema version ([`STATE_VERSION`]).
    pub version: u32,
    /// Revision of the last applied desired state (commit id, or content hash of a file).
    #[serde(default)]
    pub revision: Option<String>,
    /// The commit behind `revision` (author, time, subject), when it came from git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_info: Option<AppliedRevision>,
    /// Per-user records keyed by normalized email.
    #[serde(default)]
    pub users: BTreeMap<String, UserRecord>,
    /// Set by `guestops suspend`: the daemon does not reconcile until `guestops resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<Suspension>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            revision: None,
            revision_info: None,
            users: BTreeMap::new(),
            suspended: None,
        }
    }
}

/// A suspension of reconciles (`guestops suspend`), kept in `state.json` so that it outlives
/// a restart of the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Suspension {
    /// When it was suspended.
    pub since: DateTime<Utc>,
    /// Why (`--reason`), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who: the user name the command ran as, and the uid the daemon saw on its socket.
    pub by: String,
}

/// How guestops came to own a guest or a portal user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Acquisition {
    /// guestops invited the guest (`POST /invitations`), including an invitation whose
    /// outcome was resolved by observation.
    Invited,
    /// guestops registered the portal user (`POST /api/user`), including a registration
    /// resolved by the next listing or answered "already exists".
    Registered,
    /// It existed already and matched: guestops adopted it.
    Adopted,
    /// A soft-deleted guest held the address: guestops restored it.
    Restored,
    /// A guest guestops had disabled at a removal, enabled again when granted again.
    Enabled,
}

impl Acquisition {
    /// The stable name (`invited`, `registered`, `adopted`, `restored`, `enabled`).
    pub fn name(self) -> &'static str {
        match self {
            Acquisition::Invited => "invited",
            Acquisition::Registered => "registered",
            Acquisition::Adopted => "adopted",
            Acquisition::Restored => "restored",
            Acquisition::Enabled => "enabled",
        }
    }
}

/// When and how one ownership (the guest, or the portal user) was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Acquired {
    /// How.
    pub how: Acquisition,
    /// When the change that took it was recorded.
    pub at: DateTime<Utc>,
    /// The desired-state revision being applied then (commit id or file hash), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

impl State {
    /// Whether guestops owns anything at all.
    pub fn owns_anything(&self) -> bool {
        self.users.values().any(|u| u.guest_owned || u.portal_owned)
    }
}

/// The commit of the last desired state that was fully applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedRevision {
    /// Full commit id.
    pub id: String,
    /// `Name <email>` of the commit author.
    pub author: String,
    /// Commit time.
    pub time: DateTime<Utc>,
    /// First line of the commit message.
    pub subject: String,
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
    /// When an invitation was posted whose outcome is unknown (an ambiguous error, and no
    /// guest visible afterwards): the guest may exist but still be replicating, so the plan
    /// does not invite again within `tenant.replicationGrace`
    /// ([`crate::reconcile::plan::Policy::replication_grace`]). Also set *before* the request,
    /// as the write-ahead intent of an invitation (journaled), and cleared by its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitation_unconfirmed_at: Option<DateTime<Utc>>,
    /// Whether the guest `guest_id` has been visible to reads since it was recorded. A guest
    /// that was seen and is missing now is gone (deleted behind guestops' back), not
    /// replicating: it is invited again without waiting for the replication grace.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guest_seen: bool,
    /// When a portal registration (`POST /api/user`) was about to be sent or ended in an
    /// ambiguous error, and no outcome is recorded yet: the write-ahead intent of a
    /// registration, resolved by the next portal listing (adopt if the user is listed,
    /// register again otherwise: a `POST` answered "already exists" is then adopted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_unconfirmed_at: Option<DateTime<Utc>>,
    /// guestops disabled the guest `guest_id` at a removal (`guestOnRemoval: disable`) and
    /// no longer owns it: granted again, that guest is enabled (`enable-guest`), whereas a
    /// guest disabled by someone else is left disabled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guest_disabled: bool,
    /// When a re-sent invitation (`resend-invitation`) was about to be posted, or ended in
    /// an ambiguous error, and no outcome is recorded: its write-ahead intent. A reminder is
    /// sent at most once: the plan counts it as sent at that time (nothing observable tells
    /// whether Graph sent it), so a crash or a timeout never mails the guest twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resend_unconfirmed_at: Option<DateTime<Utc>>,
    /// How and when guestops took ownership of the guest (records older than state version 3
    /// lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_acquired: Option<Acquired>,
    /// How and when guestops took ownership of the portal user (records older than state
    /// version 3 lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portal_acquired: Option<Acquired>,
}

impl State {
    /// Notes which recorded guests `observed` shows (see [`UserRecord::guest_seen`]).
    /// Returns whether anything changed (the caller saves).
    pub fn note_seen_guests(&mut self, observed: &Observed) -> bool {
        let visible: std::collections::HashSet<&str> = observed
            .guests
            .iter()
            .chain(observed.lookups.iter())
            .map(|u| u.id.as_str())
            .collect();
        let mut changed = false;
        for record in self.users.values_mut() {
            if !record.guest_seen
                && record
                    .guest_id
                    .as_deref()
                    .is_some_and(|id| visible.contains(id))
            {
                record.guest_seen = true;
                changed = true;
            }
        }
        changed
    }

    /// Records the portal id of owned portal users whose id is not known yet (a registration
    /// learns it at the next listing: the portal's `POST` returns none). An address held by
    /// several portal users stays unknown. Returns whether anything changed (the caller saves).
    pub fn learn_portal_ids(&mut self, observed: &Observed) -> bool {
        let mut missing: std::collections::HashMap<String, Option<&str>> = self
            .users
            .iter()
            .filter(|(_, r)| r.portal_owned && r.portal_id.is_none())
            .map(|(key, _)| (key.clone(), None))
            .collect();
        if missing.is_empty() {
            return false;
        }
        let mut ambiguous = std::collections::HashSet::new();
        for user in &observed.portal_users {
            let key = crate::remote::identity::normalize_email(&user.email);
            if let Some(slot) = missing.get_mut(&key) {
                if slot.is_some() {
                    ambiguous.insert(key);
                } else {
                    *slot = Some(user.id.as_str());
                }
            }
        }
        let mut changed = false;
        for (key, id) in missing {
            if let (Some(id), false) = (id, ambiguous.contains(&key))
                && let Some(record) = self.users.get_mut(&key)
            {
                record.portal_id = Some(id.to_owned());
                changed = true;
            }
        }
        changed
    }
}

impl UserRecord {
    /// A record with nothing owned and nothing pending carries no information worth keeping:
    /// [`crate::reconcile::apply`] removes such records from the state.
    pub fn is_vacant(&self) -> bool {
        !self.guest_owned
            && !self.portal_owned
            && self.removal_pending_since.is_none()
            && self.invitation_unconfirmed_at.is_none()
            && self.registration_unconfirmed_at.is_none()
            && !self.guest_disabled
            && self.resend_unconfirmed_at.is_none()
    }

    /// The newest open write-ahead intent (or ambiguous invitation, or invited guest not
    /// visible yet) of this record: what the next reconcile resolves by observation.
    pub fn open_intent_since(&self) -> Option<DateTime<Utc>> {
        let unseen_invitation = match self.guest_id {
            Some(_) if self.guest_owned && !self.guest_seen => {
                self.last_invitation_at.max(self.invited_at)
            }
            _ => None,
        };
        unseen_invitation
            .max(self.invitation_unconfirmed_at)
            .max(self.registration_unconfirmed_at)
    }
}
