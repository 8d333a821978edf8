//! The plan: the pure function of design §7 and its renderings.
//!
//! `plan(desired, observed, state, policy, now) -> Plan` takes data and returns data: no I/O,
//! no clock (`now` is passed in), no randomness. Every safety rule lives here, not in the
//! executor: fail closed (an incomplete read never reaches this function), adoption instead of
//! re-invitation, members are not invited, ownership, `prune`, `maxDeletions`, the
//! empty-desired guard, `allowedDomains`, expiry.
//!
//! Dependencies, on purpose: the desired state ([`crate::desired::spec`]), address matching
//! ([`crate::remote::identity`]) and the records the two clients read, as plain data
//! ([`crate::remote::graph::DirectoryUser`], [`crate::remote::portal::PortalUser`]; no trait,
//! no client, so the plan can be handed a million observed guests without a conversion). The
//! owned set it reads is its own type ([`owned`]), which the state store persists; it imports
//! no client, store or daemon module.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::desired::spec::Role;
use crate::remote::graph::DirectoryUser;
use crate::remote::portal::PortalUser;

mod compute;
pub mod expiry;
pub mod owned;
mod render;

pub use owned::{State, UserRecord};

pub use compute::{GuestIndex, plan};
pub use expiry::{ExpiringAccess, expiring_access};
pub use render::{
    GITHUB_COMMENT_LIMIT, MARKDOWN_BUDGET, PLAN_JSON_VERSION, PlanFormat, PlanRevision,
    RenderOptions, Summary, render, render_with,
};
pub(crate) use render::{JsonPlan, json_document};

/// The default of `tenant.replicationGrace` ([`Policy::replication_grace`]): how long a guest
/// that guestops invited, or may have invited (a write-ahead intent without an outcome, an
/// ambiguous failure), may stay invisible to reads (Entra replication delay) before it is
/// considered gone and invited again.
///
/// Evidence: Microsoft publishes no bound for users; the only window it states for a newly
/// created directory object is 15 minutes ("If the group was created less than 15 minutes ago,
/// it's possible for the Create team call to fail with a 404 error code due to replication
/// delays", Microsoft Graph, *Create team from group*, `team-put-teams`). The Entra blog
/// *Designing for Eventual Consistency for Microsoft Entra* (2026-03-24) states no figure
/// (`docs/specs/microsoft-graph.md` §2, `docs/config.md`).
pub const DEFAULT_REPLICATION_GRACE: Duration = Duration::from_secs(15 * 60);

/// The default of `policy.expiryNoticeBefore` ([`Policy::expiry_notice_before`]): a week.
pub const DEFAULT_EXPIRY_NOTICE_BEFORE: Duration = Duration::from_secs(7 * 86_400);

/// The default grace, under its former name.
pub const REPLICATION_GRACE: Duration = DEFAULT_REPLICATION_GRACE;

/// At most this many invitation re-sends per guest.
pub const MAX_RESENDS: u32 = 3;

/// What happens to the tenant guest of a removed administrator (`policy.guestOnRemoval`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GuestOnRemoval {
    /// Leave the guest as it is (guestops stops owning it).
    #[default]
    Keep,
    /// `accountEnabled = false` (needs `User.EnableDisableAccount.All`).
    Disable,
    /// Delete (soft, restorable for 30 days; needs `User.DeleteRestore.All`).
    Delete,
}

/// The policy the plan enforces (from `policy.*` of the host config, plus `--force`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Lower-case domains an address may belong to; empty = any.
    pub allowed_domains: Vec<String>,
    /// Act on owned users removed from `users.yaml` or expired.
    pub prune: bool,
    /// What to do with the guest of a removed admin.
    pub guest_on_removal: GuestOnRemoval,
    /// More removals than this in one plan are refused unless `force`.
    pub max_deletions: usize,
    /// Re-send a pending invitation after this long; `None` = never.
    pub resend_after: Option<Duration>,
    /// Access ending within this long gets the notice `expiring` (`policy.expiryNoticeBefore`);
    /// `None` = never.
    pub expiry_notice_before: Option<Duration>,
    /// Overrides the `maxDeletions` and empty-desired guards (never the domain policy).
    pub force: bool,
    /// How long an invitation whose outcome is unknown waits for the guest to become visible
    /// before it is sent once more (`tenant.replicationGrace`).
    pub replication_grace: Duration,
    /// The portal's fields an update cannot send back (`portal.writeOnlyFlags`, the probe's
    /// facts): what the `write-only-flags` note says.
    pub hidden_fields: HiddenFields,
    /// `--only`: the normalized addresses whose changes the plan keeps; `None` = every user.
    /// The guards (`maxDeletions`, empty-desired) still count every user, so a plan refused
    /// as a whole stays refused; per-user refusals, refused changes and notices of the other
    /// users are left out, and `in_sync` counts the targeted users only.
    pub only: Option<BTreeSet<String>>,
}

/// What the plan knows of the portal's write-only flags (design §7): which ones the operator
/// did not state (never sent, so an update's `PUT` may reset them) and what `guestops probe
/// portal` observed of a `PUT` that leaves fields out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HiddenFields {
    /// The write-only flags `portal.writeOnlyFlags` does not state, by portal field name.
    pub unstated_flags: Vec<String>,
    /// What the portal probe observed, when its facts exist for this portal.
    pub probed_put: Option<ProbedPut>,
}

impl Default for HiddenFields {
    /// Nothing stated (the host configuration's default), no probe facts.
    fn default() -> Self {
        Self {
            unstated_flags: crate::remote::portal::WRITE_ONLY_FLAGS
                .iter()
                .map(|f| (*f).to_owned())
                .collect(),
            probed_put: None,
        }
    }
}

/// What `guestops probe portal` observed of a `PUT /api/user` sent with only `id`, `email`,
/// `name` and `role` (`state.dir/portal-facts.json`, `put.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbedPut {
    /// When the probe ran.
    pub time: DateTime<Utc>,
    /// `put.keepsFlags`: whether a visible flag it was not sent survived (`None`: not observed).
    pub keeps_flags: Option<bool>,
    /// `put.keepsGroups`: whether a linked group survived.
    pub keeps_groups: Option<bool>,
    /// `put.keepsNullableFields`: whether `department` survived.
    pub keeps_nullable_fields: Option<bool>,
}

impl Policy {
    /// Whether the plan keeps the changes of the user with normalized address `key`.
    pub fn targets(&self, key: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(key))
    }
}

/// The addresses of `--only` (normalized) that name nobody guestops could act on: neither in
/// `users.yaml` nor owned (a guest or a portal user recorded in `state`). A typo must not
/// silently plan nothing.
pub fn unknown_targets<'o>(
    only: &'o BTreeSet<String>,
    desired: &crate::desired::spec::DesiredState,
    state: &State,
) -> Vec<&'o str> {
    only.iter()
        .filter(|key| {
            !desired.users.contains_key(key.as_str())
                && !state
                    .users
                    .get(key.as_str())
                    .is_some_and(|r| r.guest_owned || r.portal_owned)
        })
        .map(String::as_str)
        .collect()
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allowed_domains: Vec::new(),
            prune: false,
            guest_on_removal: GuestOnRemoval::Keep,
            max_deletions: 5,
            resend_after: Some(Duration::from_secs(7 * 24 * 3600)),
            expiry_notice_before: Some(DEFAULT_EXPIRY_NOTICE_BEFORE),
            force: false,
            replication_grace: DEFAULT_REPLICATION_GRACE,
            hidden_fields: HiddenFields::default(),
            only: None,
        }
    }
}

/// What the tenant and the portal hold now, read completely.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Every guest of the tenant.
    pub guests: Vec<DirectoryUser>,
    /// Users found by targeted lookups: members, and guests missing from the listing
    /// (replication) found by address or by the id recorded in state.
    pub lookups: Vec<DirectoryUser>,
    /// Soft-deleted users (deleted items) holding a desired address that no live user holds:
    /// looked up only for those addresses (the ones that would otherwise be invited).
    pub deleted: Vec<DirectoryUser>,
    /// Every portal user.
    pub portal_users: Vec<PortalUser>,
}

/// The system a change acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// Entra ID through Microsoft Graph.
    Tenant,
    /// The Power Embedded portal.
    Portal,
    /// guestops' own state only (ownership); no remote write.
    State,
}

/// One step towards the desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    /// An existing guest matches: record ownership, never re-invite.
    AdoptGuest {
        /// Object id of the guest.
        guest_id: String,
    },
    /// A soft-deleted guest (deleted items) holds the address, so it cannot be invited:
    /// `POST /directory/deletedItems/{id}/restore`, then guestops owns it (as after an
    /// invitation, without a second email).
    RestoreGuest {
        /// Object id of the deleted guest (kept by the restore).
        guest_id: String,
    },
    /// `PATCH /users/{id}` `accountEnabled=true`: the guest guestops disabled at a removal
    /// (`guestOnRemoval: disable`) is granted again; guestops owns it again. A guest disabled
    /// by someone else is never enabled (a notice says so).
    EnableGuest {
        /// Object id.
        guest_id: String,
    },
    /// `POST /invitations`.
    Invite {
        /// `invitedUserDisplayName`.
        display_name: String,
        /// `sendInvitationMessage`.
        send_email: bool,
        /// Custom message body.
        message: Option<String>,
    },
    /// Re-send a pending invitation (`POST /invitations` for the same address).
    ResendInvitation {
        /// Object id of the pending guest.
        guest_id: String,
        /// `invitedUserDisplayName`.
        display_name: String,
        /// Custom message body.
        message: Option<String>,
        /// Since when the invitation is pending.
        pending_since: Option<DateTime<Utc>>,
    },
    /// An existing portal user matches: record ownership.
    AdoptPortal {
        /// Portal id.
        portal_id: String,
    },
    /// `POST /api/user`.
    Register {
        /// Display name.
        name: String,
        /// Role.
        role: Role,
    },
    /// Read-modify-write `PUT /api/user` changing name and/or role.
    UpdatePortal {
        /// Portal id.
        portal_id: String,
        /// Name now.
        from_name: String,
        /// Name wanted.
        to_name: String,
        /// Role now (`None`: a code guestops does not know).
        from_role: Option<Role>,
        /// Role wanted.
        to_role: Role,
    },
    /// `DELETE /api/user/{email}` (a removal).
    Unregister {
        /// Portal id.
        portal_id: String,
    },
    /// `PATCH /users/{id}` `accountEnabled=false` (a removal, `guestOnRemoval: disable`).
    DisableGuest {
        /// Object id.
        guest_id: String,
    },
    /// `DELETE /users/{id}` (a removal, `guestOnRemoval: delete`).
    DeleteGuest {
        /// Object id.
        guest_id: String,
    },
    /// Stop owning a guest that is kept (`guestOnRemoval: keep`); no remote write.
    ReleaseGuest {
        /// Object id.
        guest_id: String,
    },
}

impl Action {
    /// The system this action writes to.
    pub fn system(&self) -> System {
        match self {
            Action::Invite { .. }
            | Action::RestoreGuest { .. }
            | Action::EnableGuest { .. }
            | Action::ResendInvitation { .. }
            | Action::DisableGuest { .. }
            | Action::DeleteGuest { .. } => System::Tenant,
            Action::Register { .. } | Action::UpdatePortal { .. } | Action::Unregister { .. } => {
                System::Portal
            }
            Action::AdoptGuest { .. }
            | Action::AdoptPortal { .. }
            | Action::ReleaseGuest { .. } => System::State,
        }
    }

    /// Whether this action removes access (counted against `maxDeletions`).
    pub fn is_removal(&self) -> bool {
        matches!(
            self,
            Action::Unregister { .. } | Action::DisableGuest { .. } | Action::DeleteGuest { .. }
        )
    }

    /// Short stable name, e.g. `invite` (the serde tag).
    pub fn name(&self) -> &'static str {
        match self {
            Action::AdoptGuest { .. } => "adopt-guest",
            Action::RestoreGuest { .. } => "restore-guest",
            Action::EnableGuest { .. } => "enable-guest",
            Action::Invite { .. } => "invite",
            Action::ResendInvitation { .. } => "resend-invitation",
            Action::AdoptPortal { .. } => "adopt-portal",
            Action::Register { .. } => "register",
            Action::UpdatePortal { .. } => "update-portal",
            Action::Unregister { .. } => "unregister",
            Action::DisableGuest { .. } => "disable-guest",
            Action::DeleteGuest { .. } => "delete-guest",
            Action::ReleaseGuest { .. } => "release-guest",
        }
    }
}

/// One change for one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Normalized email (identity).
    pub key: String,
    /// Email as written in `users.yaml` (or as observed, for removals).
    pub email: String,
    /// What to do.
    pub action: Action,
    /// Why (the `reason` of `users.yaml`, or e.g. "expired on 2027-03-31").
    pub reason: Option<String>,
}

/// What a refusal stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefusalScope {
    /// The whole plan: nothing is written (the mass-removal guards).
    #[default]
    Plan,
    /// One user: that user's changes are not made ([`Plan::refused_changes`]); the other
    /// users proceed (`allowedDomains`).
    User,
}

/// A policy refusal (exit 3). A plan-wide one stops every change; a per-user one only that
/// user's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Stable code: `max-deletions`, `empty-desired` or `domain-not-allowed`.
    pub code: String,
    /// What the refusal stops.
    #[serde(default)]
    pub scope: RefusalScope,
    /// The user concerned, if one.
    pub email: Option<String>,
    /// What is refused and why.
    pub message: String,
    /// What to do about it.
    pub help: String,
}

/// Something worth telling that is not a change (e.g. a removal skipped because `prune` is off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Normalized email, if about one user.
    pub key: Option<String>,
    /// Stable code, e.g. `prune-disabled`, `not-owned`, `member`, `awaiting-replication`,
    /// `expiring`.
    pub code: String,
    /// Human text.
    pub message: String,
}

/// The plan: every change that would make observed equal desired, plus refusals and notices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The `now` the plan was computed for.
    pub generated_at: DateTime<Utc>,
    /// Desired users in the file.
    pub desired_users: usize,
    /// Desired users that need no change.
    pub in_sync: usize,
    /// Changes, grouped by user (sorted by key), tenant before portal within a user.
    pub changes: Vec<Change>,
    /// Changes of users refused by policy one by one (per-user [`Refusal`]s): shown for review,
    /// never made. Same order as `changes`.
    #[serde(default)]
    pub refused_changes: Vec<Change>,
    /// Policy refusals: plan-wide ones first (then nothing is applied), then per-user ones.
    pub refusals: Vec<Refusal>,
    /// Informational notices.
    pub notices: Vec<Notice>,
}

impl Plan {
    /// No change at all (state-only adoptions count as changes).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Whether policy refuses the whole plan (nothing is applied).
    pub fn is_refused(&self) -> bool {
        self.refusals.iter().any(|r| r.scope == RefusalScope::Plan)
    }

    /// Whether policy refuses anything: the whole plan or some users (exit 3).
    pub fn has_refusals(&self) -> bool {
        !self.refusals.is_empty()
    }

    /// Number of removals.
    pub fn removals(&self) -> usize {
        self.changes
            .iter()
            .filter(|c| c.action.is_removal())
            .count()
    }

    /// Number of users with at least one removal (what `maxDeletions` limits).
    pub fn removed_users(&self) -> usize {
        let mut keys: Vec<&str> = self
            .changes
            .iter()
            .filter(|c| c.action.is_removal())
            .map(|c| c.key.as_str())
            .collect();
        keys.dedup();
        keys.len()
    }
}
