//! Power Embedded: the portal half of an external administrator.
//!
//! Owns the portal API client (users list/create/update/delete, `docs/specs/power-embedded.md`)
//! and the mapping between role names and the portal's numeric codes. Decides nothing.
//!
//! [`Portal`] is the seam: [`client::PortalClient`] talks HTTP, [`fake::FakePortal`] is an
//! in-memory stand-in for unit tests. The client takes [`PortalSettings`], never
//! `crate::config`.

use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::desired::spec::Role;

pub mod client;
pub mod fake;

pub use client::{PortalClient, PortalError, RawAnswer};

/// What the portal client needs to know (built from `portal.*` by the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalSettings {
    /// API root, e.g. `https://api.powerembedded.com.br`.
    pub base_url: url::Url,
    /// Portal requests in flight at most.
    pub concurrency: usize,
    /// How fast writes (`POST`, `PUT`, `DELETE /api/user`) may go (`portal.maxWritesPerSecond`,
    /// one at a time).
    pub write_rate: crate::remote::pace::WriteRate,
    /// Role names ↔ portal codes.
    pub role_codes: RoleCodes,
    /// The values of the write-only flags the operator stated (`portal.writeOnlyFlags`), sent
    /// on every create and update; an unstated flag is never sent.
    pub write_only_flags: WriteOnlyFlags,
}

/// The portal's write-only flags (`docs/specs/power-embedded.md` §1.5): accepted on `POST` and
/// `PUT /api/user`, never returned by `GET`, so a read-modify-write cannot send them back and
/// a `PUT` may reset them (§4).
pub const WRITE_ONLY_FLAGS: [&str; 2] = ["bypassFirewall", "canExportReportOtherPages"];

/// What the operator states about the write-only flags (`portal.writeOnlyFlags.*`): `None` is
/// "not stated" (never sent), not a default of `false`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOnlyFlags {
    /// `bypassFirewall`: the user is exempt from the portal's IP firewall.
    pub bypass_firewall: Option<bool>,
    /// `canExportReportOtherPages`: the user may choose pages when exporting.
    pub can_export_report_other_pages: Option<bool>,
}

impl WriteOnlyFlags {
    /// Every flag by its portal field name, in [`WRITE_ONLY_FLAGS`] order, with its stated
    /// value.
    pub fn all(&self) -> [(&'static str, Option<bool>); 2] {
        [
            (WRITE_ONLY_FLAGS[0], self.bypass_firewall),
            (WRITE_ONLY_FLAGS[1], self.can_export_report_other_pages),
        ]
    }

    /// The stated flags and their values: what every create and update sends.
    pub fn stated(&self) -> Vec<(&'static str, bool)> {
        self.all()
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v)))
            .collect()
    }

    /// The flags not stated: never sent, so a `PUT` may reset them.
    pub fn unstated(&self) -> Vec<&'static str> {
        self.all()
            .into_iter()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name)
            .collect()
    }
}

/// A field a `PUT /api/user` changed although guestops sent it back unchanged (found by the
/// read after the update).
#[derive(Debug, Clone, PartialEq)]
pub struct LostField {
    /// The field's name, e.g. `groups`.
    pub field: String,
    /// Its value before the update.
    pub before: serde_json::Value,
    /// Its value after the update; `None` when the field is gone.
    pub after: Option<serde_json::Value>,
}

/// Role names ↔ the portal's numeric `role` codes, in one place.
///
/// The documented mapping is 1 Administrator, 2 Contributor, 3 Viewer, 4 Workspace Contributor;
/// an old blog post disagrees, so the operator can override it (`portal.roleCodes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RoleCodes {
    /// Code of `administrator`.
    pub administrator: i64,
    /// Code of `contributor`.
    pub contributor: i64,
    /// Code of `viewer`.
    pub viewer: i64,
    /// Code of `workspace-contributor`.
    pub workspace_contributor: i64,
}

impl Default for RoleCodes {
    fn default() -> Self {
        Self {
            administrator: 1,
            contributor: 2,
            viewer: 3,
            workspace_contributor: 4,
        }
    }
}

impl RoleCodes {
    /// The portal code of `role`.
    pub fn code(&self, role: Role) -> i64 {
        match role {
            Role::Administrator => self.administrator,
            Role::Contributor => self.contributor,
            Role::Viewer => self.viewer,
            Role::WorkspaceContributor => self.workspace_contributor,
        }
    }

    /// The role of a portal code; `None` for a code guestops does not know.
    pub fn role(&self, code: i64) -> Option<Role> {
        Role::ALL.into_iter().find(|r| self.code(*r) == code)
    }

    /// Whether the four codes are distinct (a mapping that merges two roles is refused).
    pub fn is_consistent(&self) -> bool {
        let mut codes = Role::ALL.map(|r| self.code(r));
        codes.sort_unstable();
        codes.windows(2).all(|w| w[0] != w[1])
    }
}

/// A portal user as listed by `GET /api/user`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortalUser {
    /// Portal id (GUID).
    pub id: String,
    /// Login address, as stored by the portal.
    pub email: String,
    /// Display name.
    pub name: String,
    /// The `role` code as returned.
    pub role_code: Option<i64>,
    /// The role of that code, if guestops knows it.
    pub role: Option<Role>,
}

/// A new registration (`POST /api/user`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewPortalUser {
    /// Login address, as written in `users.yaml`.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
}

/// The portal operations guestops needs. Implemented over HTTP by [`PortalClient`].
pub trait Portal: Send + Sync {
    /// Every portal user, all pages, de-duplicated by id; read completely or not at all.
    fn list_users(&self) -> impl Future<Output = Result<Vec<PortalUser>, PortalError>> + Send;

    /// The user whose email equals `email` exactly, case-insensitively (the server's filter is
    /// a contains match, so the client filters again).
    fn find_user(
        &self,
        email: &str,
    ) -> impl Future<Output = Result<Option<PortalUser>, PortalError>> + Send;

    /// `POST /api/user`.
    fn create_user(
        &self,
        user: &NewPortalUser,
    ) -> impl Future<Output = Result<(), PortalError>> + Send;

    /// Read-modify-write: GET the user, change only `name` and `role`, and `PUT /api/user`
    /// every field the GET returned (unknown fields included) plus the stated write-only
    /// flags; then GET it once more and fail with [`PortalError::FieldsLost`] when any other
    /// field changed.
    fn update_user(
        &self,
        email: &str,
        name: &str,
        role: Role,
    ) -> impl Future<Output = Result<(), PortalError>> + Send;

    /// `DELETE /api/user/{email}`. `Ok(false)` when it was already gone (404).
    fn delete_user(&self, email: &str) -> impl Future<Output = Result<bool, PortalError>> + Send;
}
