//! Microsoft Graph: the tenant half of an external administrator.
//!
//! Owns the token flow, reading guests (and looking up members), and invitations
//! (`docs/specs/microsoft-graph.md`). Decides nothing: the plan does.
//!
//! [`Tenant`] is the seam: [`client::GraphClient`] talks HTTP, [`fake::FakeTenant`] is an
//! in-memory stand-in for unit tests. Errors live in [`error`], imported by both the client
//! and the token flow ([`token`]); the token flow never imports the client. The client takes
//! [`GraphSettings`], never `crate::config`.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub mod client;
pub mod credential;
pub mod error;
pub mod fake;
pub mod token;
pub(crate) mod wire;

pub use client::GraphClient;
pub use credential::CredentialSettings;
pub use error::{GraphError, TokenFailure, TokenProblem};

/// What the Graph client needs to know about the tenant (built from `tenant.*` by the
/// configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphSettings {
    /// Tenant GUID or primary domain.
    pub tenant_id: String,
    /// Application (client) id of the app registration.
    pub client_id: String,
    /// Token authority, e.g. `https://login.microsoftonline.com`.
    pub authority_host: url::Url,
    /// Where Graph requests go, e.g. `https://graph.microsoft.com` (a proxy or a test double
    /// may stand in).
    pub graph_endpoint: url::Url,
    /// Graph's resource identifier in the tenant's cloud: the token scope is
    /// `{resource}/.default`, whatever `graph_endpoint` says.
    pub resource: url::Url,
    /// Where an invited guest lands after redeeming.
    pub invite_redirect_url: String,
    /// Graph requests in flight at most.
    pub concurrency: usize,
    /// How fast writes (invitations, `PATCH`, `DELETE`) may go: [`WriteRate::GRAPH`], from
    /// Graph's documented write quota.
    ///
    /// [`WriteRate::GRAPH`]: crate::remote::pace::WriteRate::GRAPH
    pub write_rate: crate::remote::pace::WriteRate,
}

/// The most requests Graph takes in one `POST /$batch` (`docs/specs/microsoft-graph.md` §4).
pub const MAX_BATCH_REQUESTS: usize = 20;

/// The `$select` list used for every user read.
pub const USER_SELECT: &str = "id,displayName,mail,otherMails,userPrincipalName,userType,externalUserState,externalUserStateChangeDateTime,creationType,identities,accountEnabled,createdDateTime";

/// A sign-in identity of a user (`objectIdentity`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectIdentity {
    /// e.g. `federated`, `emailAddress`, `userPrincipalName`.
    #[serde(default)]
    pub sign_in_type: Option<String>,
    /// The identity provider.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The identifier at that provider (often the email).
    #[serde(default)]
    pub issuer_assigned_id: Option<String>,
}

/// A user of the tenant, as read with [`USER_SELECT`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryUser {
    /// Object id.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// SMTP address.
    #[serde(default)]
    pub mail: Option<String>,
    /// Extra addresses.
    #[serde(default)]
    pub other_mails: Vec<String>,
    /// UPN; guests have `local_domain#EXT#@tenant.onmicrosoft.com`.
    #[serde(default)]
    pub user_principal_name: Option<String>,
    /// `Guest` or `Member`.
    #[serde(default)]
    pub user_type: Option<String>,
    /// `PendingAcceptance`, `Accepted` or null.
    #[serde(default)]
    pub external_user_state: Option<String>,
    /// When `external_user_state` last changed.
    #[serde(default)]
    pub external_user_state_change_date_time: Option<DateTime<Utc>>,
    /// `Invitation` for B2B guests.
    #[serde(default)]
    pub creation_type: Option<String>,
    /// Sign-in identities.
    #[serde(default)]
    pub identities: Vec<ObjectIdentity>,
    /// Whether the account can sign in.
    #[serde(default)]
    pub account_enabled: Option<bool>,
    /// Creation time.
    #[serde(default)]
    pub created_date_time: Option<DateTime<Utc>>,
}

impl DirectoryUser {
    /// Whether this is a B2B guest (`userType eq 'Guest'`).
    pub fn is_guest(&self) -> bool {
        self.user_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("Guest"))
    }

    /// Whether the guest has not redeemed its invitation yet.
    pub fn is_pending(&self) -> bool {
        self.external_user_state
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("PendingAcceptance"))
    }
}

/// Why a delta round reports a user as `@removed` (`docs/specs/microsoft-graph.md` §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RemovedReason {
    /// `changed`: soft-deleted (restorable from deleted items for 30 days).
    Changed,
    /// `deleted`: permanently gone.
    Deleted,
}

/// One entry of a delta round, in the order Graph sent it.
// Almost every entry of a round is an `Upsert`: boxing it would cost an allocation per user
// to save space on the rare removals.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaChange {
    /// The user as it is now (created, changed, restored, or a replay): every selected
    /// property, replacing what was known.
    Upsert(DirectoryUser),
    /// The user left the directory (`@removed`).
    Removed {
        /// Object id.
        id: String,
        /// Soft or permanent deletion.
        reason: RemovedReason,
    },
}

impl DeltaChange {
    /// The object id the entry is about.
    pub fn id(&self) -> &str {
        match self {
            DeltaChange::Upsert(user) => &user.id,
            DeltaChange::Removed { id, .. } => id,
        }
    }
}

/// A complete delta round: every page read, up to the `@odata.deltaLink`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaRound {
    /// The entries of every page, in order. Members are included: delta cannot filter by
    /// `userType`.
    pub changes: Vec<DeltaChange>,
    /// Where the next round starts (the whole URL, as Graph sent it).
    pub delta_link: String,
    /// Pages read.
    pub pages: usize,
}

/// What `POST /invitations` is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invitation {
    /// `invitedUserEmailAddress`, as written in `users.yaml`.
    pub email: String,
    /// `invitedUserDisplayName`.
    pub display_name: String,
    /// `sendInvitationMessage`.
    pub send_email: bool,
    /// `invitedUserMessageInfo.customizedMessageBody`.
    pub message: Option<String>,
}

/// What `POST /invitations` answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invited {
    /// `invitedUser.id`: the guest's object id; use it for every later call.
    pub user_id: String,
    /// `invitedUser.userPrincipalName`, when returned.
    pub user_principal_name: Option<String>,
    /// `status`, e.g. `PendingAcceptance`.
    pub status: Option<String>,
    /// `request-id` response header, for the audit log.
    pub request_id: Option<String>,
}

/// What `POST /directory/deletedItems/{id}/restore` answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// The restored user's object id (the same as before the deletion).
    pub user_id: String,
    /// `request-id` response header, for the audit log.
    pub request_id: Option<String>,
}

/// The tenant operations guestops needs. Implemented over HTTP by [`GraphClient`].
pub trait Tenant: Send + Sync {
    /// Every guest of the tenant (`userType eq 'Guest'`), read completely or not at all.
    fn list_guests(&self) -> impl Future<Output = Result<Vec<DirectoryUser>, GraphError>> + Send;

    /// Every user, guest or member, whose `mail`, `otherMails` or UPN matches `email`
    /// (the guest UPN form included). Used for members and for re-observation before an invite.
    fn find_by_email(
        &self,
        email: &str,
    ) -> impl Future<Output = Result<Vec<DirectoryUser>, GraphError>> + Send;

    /// One user by object id; `None` on 404 (which can also mean "not replicated yet").
    fn get_user(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<DirectoryUser>, GraphError>> + Send;

    /// [`Tenant::find_by_email`] for every address of `emails`, all of them or none: the users
    /// holding any of them (a user holding two is returned twice). [`GraphClient`] sends the
    /// lookups [`MAX_BATCH_REQUESTS`] to a `$batch`; the default looks them up one by one.
    fn find_by_emails(
        &self,
        emails: &[String],
    ) -> impl Future<Output = Result<Vec<DirectoryUser>, GraphError>> + Send {
        async move {
            let mut users = Vec::new();
            for email in emails {
                users.extend(self.find_by_email(email).await?);
            }
            Ok(users)
        }
    }

    /// [`Tenant::get_user`] for every id of `ids`, all of them or none: one answer per id, in
    /// the order of `ids` (`None`: 404). [`GraphClient`] sends the reads
    /// [`MAX_BATCH_REQUESTS`] to a `$batch`; the default reads them one by one.
    fn get_users(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Option<DirectoryUser>>, GraphError>> + Send {
        async move {
            let mut users = Vec::with_capacity(ids.len());
            for id in ids {
                users.push(self.get_user(id).await?);
            }
            Ok(users)
        }
    }

    /// One complete round of `GET /users/delta` (`docs/specs/microsoft-graph.md` §3): from the
    /// start with [`USER_SELECT`] (every user, members included) when `from` is `None`, else
    /// from that `@odata.deltaLink` (only what changed since). All pages or an error: a failed
    /// page fails the round. An expired or unknown link fails with an error for which
    /// [`GraphError::is_resync_required`] holds: start again from `None`.
    fn delta(
        &self,
        from: Option<&str>,
    ) -> impl Future<Output = Result<DeltaRound, GraphError>> + Send;

    /// The soft-deleted users (deleted items, kept 30 days) holding any of `emails` by `mail`
    /// or `otherMails`, all of them or none. An address such a user holds cannot be invited
    /// (`docs/specs/microsoft-graph.md` §1, §6). [`GraphClient`] sends the lookups
    /// [`MAX_BATCH_REQUESTS`] to a `$batch` of
    /// `GET /directory/deletedItems/microsoft.graph.user?$filter=…`.
    fn find_deleted_by_emails(
        &self,
        emails: &[String],
    ) -> impl Future<Output = Result<Vec<DirectoryUser>, GraphError>> + Send;

    /// `POST /directory/deletedItems/{id}/restore`: the user comes back with its id. Needs
    /// `User.DeleteRestore.All` (or `User.ReadWrite.All`); without it Graph answers `403`.
    /// Not retried blindly.
    fn restore_user(&self, id: &str) -> impl Future<Output = Result<Restored, GraphError>> + Send;

    /// `POST /invitations`. Not retried blindly: after an ambiguous failure the caller looks
    /// the address up first.
    fn invite(
        &self,
        invitation: &Invitation,
    ) -> impl Future<Output = Result<Invited, GraphError>> + Send;

    /// `PATCH /users/{id}` with `accountEnabled`.
    fn set_account_enabled(
        &self,
        id: &str,
        enabled: bool,
    ) -> impl Future<Output = Result<(), GraphError>> + Send;

    /// `DELETE /users/{id}` (soft delete). `Ok(false)` when it was already gone.
    fn delete_user(&self, id: &str) -> impl Future<Output = Result<bool, GraphError>> + Send;
}
