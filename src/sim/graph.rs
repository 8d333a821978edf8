//! The emulated tenant: the token endpoint (`POST /{tenant}/oauth2/v2.0/token`), Graph
//! `/v1.0/users`, `/v1.0/users/{id}`, `/v1.0/users/delta` ([`delta`]), `/v1.0/invitations` and
//! deleted items (`/v1.0/directory/deletedItems/microsoft.graph.user`, `…/{id}/restore`).
//!
//! Follows `docs/specs/microsoft-graph.md` including its quirks: the default property set
//! without `$select`, opaque `$skiptoken` paging with absolute `@odata.nextLink`s, `#EXT#` guest
//! UPNs, `400 Request_UnsupportedQuery` for anything that needs advanced queries, AADSTS error
//! bodies, re-invitation pointing at the existing guest, and replication delay. Where the real
//! behaviour is unknown it is strict (unknown query options, properties and body fields are
//! refused).

// Handlers answer refusals as early `Err(Response)`s, axum's usual shape.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::entra::assertion::{self, Refusal};
use super::entra::{SimCertificate, SimFederatedCredential, SimManagedIdentity};
use super::{Sim, WriteKind};

pub mod batch;
pub mod delta;
pub mod filter;

use filter::{CollectionProp, Filter, FilterError, Prop, Subject};

/// The tenant GUID the simulator answers to.
pub const SIM_TENANT_ID: &str = "c0ffee00-5151-4e55-9a1e-000000000001";
/// The tenant domain the simulator answers to.
pub const SIM_TENANT_DOMAIN: &str = "sim.onmicrosoft.com";
/// The only application (client) id the simulator knows.
pub const SIM_CLIENT_ID: &str = "00000000-0000-0000-0000-00000000c11e";
/// The application id of Microsoft Graph (a `scope` may name the resource by it).
pub const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

/// The client secret the token endpoint accepts unless changed.
pub const SIM_CLIENT_SECRET: &str = "sim-client-secret";

/// The application permissions granted by default: what guestops needs with every removal
/// mode, each the least privileged one for its call (`docs/specs/microsoft-graph.md`):
/// `User.Invite.All` for `POST /invitations` (§1), `User.Read.All` for `GET /users`, delta and
/// single reads (§2), `User.EnableDisableAccount.All` (with `User.Read.All`) for
/// `PATCH accountEnabled` and `User.DeleteRestore.All` for `DELETE /users/{id}` (§6).
pub const DEFAULT_PERMISSIONS: [&str; 4] = [
    "User.Invite.All",
    "User.Read.All",
    "User.EnableDisableAccount.All",
    "User.DeleteRestore.All",
];

/// Properties returned without `$select` (`docs/specs/microsoft-graph.md` §2).
pub const DEFAULT_PROPERTIES: [&str; 11] = [
    "businessPhones",
    "displayName",
    "givenName",
    "id",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
];

/// Properties `$select` may name.
const SELECTABLE: [&str; 22] = [
    "id",
    "accountEnabled",
    "businessPhones",
    "companyName",
    "createdDateTime",
    "creationType",
    "displayName",
    "externalUserState",
    "externalUserStateChangeDateTime",
    "givenName",
    "identities",
    "jobTitle",
    "mail",
    "mailNickname",
    "mobilePhone",
    "officeLocation",
    "otherMails",
    "preferredLanguage",
    "proxyAddresses",
    "surname",
    "userPrincipalName",
    "userType",
];

/// Characters `invitedUserEmailAddress` may not contain (§1).
const REJECTED_EMAIL_CHARS: &str = "~!#$%^&*()+=[]{}\\/|;:\"<>?,";

/// Default page size of `GET /users`.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest `$top` of `GET /users`.
pub const MAX_PAGE_SIZE: usize = 999;

/// What the token endpoint accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct SimCredentials {
    /// Tenant GUID.
    pub tenant_id: String,
    /// Tenant primary domain (also the domain of guest UPNs).
    pub tenant_domain: String,
    /// The application (client) id.
    pub client_id: String,
    /// The client secret value; empty: the application has no secret (a secret sent is
    /// refused like a wrong one).
    pub client_secret: String,
    /// Certificates registered on the application, for client assertions.
    pub certificates: Vec<SimCertificate>,
    /// Federated identity credentials of the application.
    pub federated: Vec<SimFederatedCredential>,
    /// The managed identities of the emulated Azure host (`None`: the managed-identity
    /// endpoints know no identity).
    pub managed_identity: Option<SimManagedIdentity>,
    /// Answer `AADSTS7000222` (expired secret) even for the right secret.
    pub secret_expired: bool,
    /// Answer `AADSTS7000112` (application disabled).
    pub app_disabled: bool,
    /// `expires_in` of issued tokens.
    pub token_lifetime: Duration,
    /// The cloud the emulated tenant lives in: tokens are issued only for its Graph resource.
    pub cloud: SimCloud,
    /// The Graph application permissions granted to the application (admin-consented app
    /// roles); every token issued carries them in `roles`, and Graph requires them.
    pub roles: Vec<String>,
}

/// A Microsoft cloud (`docs/specs/microsoft-graph.md` §8), as the simulator stands for one.
/// The simulator's own table, written from the spec (it must not share the configuration's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SimCloud {
    /// The global cloud (and M365 GCC).
    #[default]
    Global,
    /// US Government L4 (GCC High).
    UsGov,
    /// US Government L5 (DoD).
    UsGovDod,
    /// China, operated by 21Vianet.
    China,
}

impl SimCloud {
    /// Graph's resource identifier in this cloud (the scope is it + `/.default`).
    pub fn graph_resource(self) -> &'static str {
        match self {
            SimCloud::Global => "https://graph.microsoft.com",
            SimCloud::UsGov => "https://graph.microsoft.us",
            SimCloud::UsGovDod => "https://dod-graph.microsoft.us",
            SimCloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }
}

impl std::fmt::Debug for SimCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCredentials")
            .field("tenant_id", &self.tenant_id)
            .field("tenant_domain", &self.tenant_domain)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("certificates", &self.certificates)
            .field("federated", &self.federated)
            .field("managed_identity", &self.managed_identity)
            .field("secret_expired", &self.secret_expired)
            .field("app_disabled", &self.app_disabled)
            .field("token_lifetime", &self.token_lifetime)
            .field("cloud", &self.cloud)
            .field("roles", &self.roles)
            .finish()
    }
}

impl Default for SimCredentials {
    fn default() -> Self {
        Self {
            tenant_id: SIM_TENANT_ID.into(),
            tenant_domain: SIM_TENANT_DOMAIN.into(),
            client_id: SIM_CLIENT_ID.into(),
            client_secret: SIM_CLIENT_SECRET.into(),
            certificates: Vec::new(),
            federated: Vec::new(),
            managed_identity: None,
            secret_expired: false,
            app_disabled: false,
            token_lifetime: Duration::from_secs(3599),
            cloud: SimCloud::Global,
            roles: DEFAULT_PERMISSIONS
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
        }
    }
}

/// A sign-in identity of an emulated user (`objectIdentity` in the Graph CSDL). The
/// simulator's own type: it is written from the spec and must not share the client's types or
/// matching (a shared mistake would go unnoticed).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectIdentity {
    /// `signInType`, e.g. `federated`, `emailAddress`, `userPrincipalName`.
    pub sign_in_type: Option<String>,
    /// `issuer`.
    pub issuer: Option<String>,
    /// `issuerAssignedId`.
    pub issuer_assigned_id: Option<String>,
}

/// A user of the emulated tenant (guest or member).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimUser {
    /// Object id (a GUID).
    pub id: String,
    /// `displayName`.
    pub display_name: Option<String>,
    /// `givenName`.
    pub given_name: Option<String>,
    /// `surname`.
    pub surname: Option<String>,
    /// `jobTitle`.
    pub job_title: Option<String>,
    /// `mail`.
    pub mail: Option<String>,
    /// `otherMails`.
    pub other_mails: Vec<String>,
    /// `proxyAddresses`.
    pub proxy_addresses: Vec<String>,
    /// `userPrincipalName`.
    pub user_principal_name: String,
    /// `Guest` or `Member`.
    pub user_type: String,
    /// `PendingAcceptance`, `Accepted` or `None`.
    pub external_user_state: Option<String>,
    /// When `external_user_state` last changed.
    pub external_user_state_change_date_time: Option<DateTime<Utc>>,
    /// `Invitation` for invited guests, `None` for work accounts.
    pub creation_type: Option<String>,
    /// `identities`.
    pub identities: Vec<ObjectIdentity>,
    /// `accountEnabled`.
    pub account_enabled: bool,
    /// `createdDateTime`.
    pub created_date_time: DateTime<Utc>,
    /// Invisible to reads until then (replication delay); `None` = visible.
    pub visible_at: Option<Instant>,
}

/// The guest UPN of `email` in `tenant_domain`: `local_domain#EXT#@tenant_domain`.
pub fn guest_upn(email: &str, tenant_domain: &str) -> String {
    format!("{}#EXT#@{tenant_domain}", email.replace('@', "_"))
}

impl SimUser {
    /// A guest invited with `email`, pending acceptance, visible at once.
    pub fn guest(email: &str, display_name: &str, tenant_domain: &str) -> Self {
        let upn = guest_upn(email, tenant_domain);
        let now = Utc::now();
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            display_name: Some(display_name.to_owned()),
            given_name: None,
            surname: None,
            job_title: None,
            mail: Some(email.to_owned()),
            other_mails: vec![email.to_owned()],
            proxy_addresses: vec![format!("SMTP:{email}")],
            identities: vec![ObjectIdentity {
                sign_in_type: Some("userPrincipalName".into()),
                issuer: Some(tenant_domain.to_owned()),
                issuer_assigned_id: Some(upn.clone()),
            }],
            user_principal_name: upn,
            user_type: "Guest".into(),
            external_user_state: Some("PendingAcceptance".into()),
            external_user_state_change_date_time: Some(now),
            creation_type: Some("Invitation".into()),
            account_enabled: true,
            created_date_time: now,
            visible_at: None,
        }
    }

    /// A member (work account) with `upn` and optionally `mail`.
    pub fn member(upn: &str, mail: Option<&str>, display_name: &str) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            display_name: Some(display_name.to_owned()),
            given_name: None,
            surname: None,
            job_title: None,
            mail: mail.map(str::to_owned),
            other_mails: Vec::new(),
            proxy_addresses: mail.map(|m| format!("SMTP:{m}")).into_iter().collect(),
            identities: vec![ObjectIdentity {
                sign_in_type: Some("userPrincipalName".into()),
                issuer: upn.rsplit_once('@').map(|(_, d)| d.to_owned()),
                issuer_assigned_id: Some(upn.to_owned()),
            }],
            user_principal_name: upn.to_owned(),
            user_type: "Member".into(),
            external_user_state: None,
            external_user_state_change_date_time: None,
            creation_type: None,
            account_enabled: true,
            created_date_time: Utc::now(),
            visible_at: None,
        }
    }

    /// The address a test names this user by: `mail`, else the UPN (lower case).
    pub fn address(&self) -> String {
        self.mail
            .as_deref()
            .unwrap_or(&self.user_principal_name)
            .to_lowercase()
    }

    /// Whether reads see the user now.
    pub fn is_visible(&self, now: Instant) -> bool {
        self.visible_at.is_none_or(|at| now >= at)
    }

    /// Whether the user holds `email` (normalized) by mail, otherMails, UPN or guest UPN form.
    pub fn holds(&self, email: &str, tenant_domain: &str) -> bool {
        Holder::new(email, tenant_domain).holds(self)
    }

    /// Every property, as Graph serializes it.
    fn to_json(&self) -> Map<String, Value> {
        let date = |d: &DateTime<Utc>| d.to_rfc3339_opts(SecondsFormat::Secs, true);
        let mut map = Map::new();
        map.insert("id".into(), json!(self.id));
        map.insert("accountEnabled".into(), json!(self.account_enabled));
        map.insert("businessPhones".into(), json!([]));
        map.insert("companyName".into(), Value::Null);
        map.insert(
            "createdDateTime".into(),
            json!(date(&self.created_date_time)),
        );
        map.insert("creationType".into(), json!(self.creation_type));
        map.insert("displayName".into(), json!(self.display_name));
        map.insert("externalUserState".into(), json!(self.external_user_state));
        map.insert(
            "externalUserStateChangeDateTime".into(),
            json!(self.external_user_state_change_date_time.as_ref().map(date)),
        );
        map.insert("givenName".into(), json!(self.given_name));
        map.insert("identities".into(), json!(self.identities));
        map.insert("jobTitle".into(), json!(self.job_title));
        map.insert("mail".into(), json!(self.mail));
        map.insert(
            "mailNickname".into(),
            json!(
                self.user_principal_name
                    .split('@')
                    .next()
                    .map(|s| s.replace('#', "_"))
            ),
        );
        map.insert("mobilePhone".into(), Value::Null);
        map.insert("officeLocation".into(), Value::Null);
        map.insert("otherMails".into(), json!(self.other_mails));
        map.insert("preferredLanguage".into(), Value::Null);
        map.insert("proxyAddresses".into(), json!(self.proxy_addresses));
        map.insert("surname".into(), json!(self.surname));
        map.insert("userPrincipalName".into(), json!(self.user_principal_name));
        map.insert("userType".into(), json!(self.user_type));
        map
    }

    /// Only the `select`ed properties (+ `id`), or the default set.
    fn project(&self, select: Option<&[String]>) -> Value {
        let all = self.to_json();
        let keep = |k: &str| match select {
            Some(props) => k == "id" || props.iter().any(|p| p == k),
            None => DEFAULT_PROPERTIES.contains(&k),
        };
        Value::Object(all.into_iter().filter(|(k, _)| keep(k)).collect())
    }
}

/// An address prepared once for matching many users ([`SimUser::holds`]): a scan of a large
/// directory then allocates nothing per user.
pub struct Holder {
    email: String,
    guest_upn: String,
}

impl Holder {
    /// `email` as [`SimUser::holds`] matches it in a tenant of `tenant_domain`.
    pub fn new(email: &str, tenant_domain: &str) -> Self {
        let email = email.to_lowercase();
        let guest_upn = guest_upn(&email, tenant_domain).to_lowercase();
        Self { email, guest_upn }
    }

    /// Whether `user` holds the address.
    pub fn holds(&self, user: &SimUser) -> bool {
        let same = |s: &str, lower: &str| {
            if s.is_ascii() {
                s.eq_ignore_ascii_case(lower)
            } else {
                s.to_lowercase() == lower
            }
        };
        user.mail.as_deref().is_some_and(|m| same(m, &self.email))
            || user.other_mails.iter().any(|m| same(m, &self.email))
            || same(&user.user_principal_name, &self.email)
            || same(&user.user_principal_name, &self.guest_upn)
    }
}

impl Subject for SimUser {
    fn string(&self, prop: Prop) -> Option<&str> {
        match prop {
            Prop::Id => Some(&self.id),
            Prop::UserType => Some(&self.user_type),
            Prop::Mail => self.mail.as_deref(),
            Prop::UserPrincipalName => Some(&self.user_principal_name),
            Prop::DisplayName => self.display_name.as_deref(),
            Prop::ExternalUserState => self.external_user_state.as_deref(),
            Prop::CreationType => self.creation_type.as_deref(),
            Prop::AccountEnabled => None,
        }
    }

    fn boolean(&self, prop: Prop) -> Option<bool> {
        (prop == Prop::AccountEnabled).then_some(self.account_enabled)
    }

    fn collection(&self, prop: CollectionProp) -> &[String] {
        match prop {
            CollectionProp::OtherMails => &self.other_mails,
            CollectionProp::ProxyAddresses => &self.proxy_addresses,
        }
    }
}

/// One accepted `POST /invitations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvitationRecord {
    /// `invitedUserEmailAddress` as sent.
    pub email: String,
    /// `invitedUserDisplayName`.
    pub display_name: Option<String>,
    /// `sendInvitationMessage`.
    pub send_email: bool,
    /// `invitedUserMessageInfo.customizedMessageBody`.
    pub message: Option<String>,
    /// The guest's object id (new or existing).
    pub user_id: String,
    /// Whether the address already belonged to a guest (a re-send).
    pub resend: bool,
}

/// A listing position behind an opaque `$skiptoken`.
#[derive(Debug, Clone)]
struct Cursor {
    filter: Option<String>,
    select: Option<String>,
    top: Option<String>,
    after_id: Option<String>,
}

/// An access token the token endpoints issued: until when Graph accepts it and the
/// permissions it carries (fixed when issued, as in a real token's `roles`).
#[derive(Debug, Clone)]
struct IssuedToken {
    expiry: Instant,
    roles: BTreeSet<String>,
}

/// What a valid bearer token grants a Graph request.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    roles: BTreeSet<String>,
}

impl Grant {
    /// Whether the token carries one of `permissions`.
    fn has_any(&self, permissions: &[&str]) -> bool {
        permissions.iter().any(|p| self.roles.contains(*p))
    }
}

/// The emulated directory.
#[derive(Debug)]
pub struct Directory {
    credentials: SimCredentials,
    users: BTreeMap<String, SimUser>,
    deleted: BTreeMap<String, SimUser>,
    tokens: HashMap<String, IssuedToken>,
    /// `jti`s of accepted certificate assertions, with their `exp`.
    seen_assertions: HashMap<String, i64>,
    cursors: HashMap<String, Cursor>,
    invitation_counts: BTreeMap<String, u32>,
    invitations: Vec<InvitationRecord>,
    allow_invites_from: String,
    replication_delay: Duration,
    page_size_cap: Option<usize>,
    empty_first_page: bool,
    token_outages: u32,
    delta: delta::DeltaState,
    /// Lower-cased address (mail, otherMails, UPN, proxyAddresses) → ids of the live users
    /// holding it, as they were when it was built (on first use). Only narrows scans: the
    /// filter or [`Holder`] still decides.
    address_index: std::sync::OnceLock<HashMap<String, Vec<String>>>,
    /// Users changed since the index was built (every journaled mutation and
    /// [`Directory::user_mut`]): always candidates. Past [`MAX_INDEX_CHANGES`] the index is
    /// dropped and built again.
    index_changed: BTreeSet<String>,
}

/// How many changed users the address index tolerates before it is rebuilt.
const MAX_INDEX_CHANGES: usize = 4096;

impl Default for Directory {
    fn default() -> Self {
        Self {
            credentials: SimCredentials::default(),
            users: BTreeMap::new(),
            deleted: BTreeMap::new(),
            tokens: HashMap::new(),
            seen_assertions: HashMap::new(),
            cursors: HashMap::new(),
            invitation_counts: BTreeMap::new(),
            invitations: Vec::new(),
            allow_invites_from: "everyone".into(),
            replication_delay: Duration::ZERO,
            page_size_cap: None,
            empty_first_page: false,
            token_outages: 0,
            delta: delta::DeltaState::default(),
            address_index: std::sync::OnceLock::new(),
            index_changed: BTreeSet::new(),
        }
    }
}

impl Directory {
    /// What the token endpoint accepts.
    pub fn credentials(&self) -> &SimCredentials {
        &self.credentials
    }

    /// Replaces the accepted credentials.
    pub fn set_credentials(&mut self, credentials: SimCredentials) {
        self.credentials = credentials;
    }

    /// Adds a pending guest invited with `email`; returns its id. Visible at once.
    pub fn add_guest(&mut self, email: &str, display_name: &str) -> String {
        let user = SimUser::guest(email, display_name, &self.credentials.tenant_domain);
        self.insert_user(user)
    }

    /// Adds a member (work account); returns its id.
    pub fn add_member(&mut self, upn: &str, mail: Option<&str>, display_name: &str) -> String {
        self.insert_user(SimUser::member(upn, mail, display_name))
    }

    /// Adds any user as given; returns its id.
    pub fn insert_user(&mut self, user: SimUser) -> String {
        let id = user.id.clone();
        self.users.insert(id.clone(), user);
        self.record_change(&id, delta::Change::Created);
        id
    }

    /// Marks the guest's invitation redeemed (`externalUserState` → `Accepted`).
    pub fn accept_invitation(&mut self, id: &str) -> bool {
        match self.users.get_mut(id) {
            Some(user) if user.user_type == "Guest" => {
                user.external_user_state = Some("Accepted".into());
                user.external_user_state_change_date_time = Some(Utc::now());
                self.record_change(
                    id,
                    delta::Change::Updated(vec![
                        "externalUserState".into(),
                        "externalUserStateChangeDateTime".into(),
                    ]),
                );
                true
            }
            _ => false,
        }
    }

    /// Soft-deletes a user (it keeps its addresses in deleted items). `false` if unknown.
    pub fn delete_user(&mut self, id: &str) -> bool {
        match self.users.remove(id) {
            Some(user) => {
                self.deleted.insert(user.id.clone(), user);
                self.record_change(id, delta::Change::SoftDeleted);
                true
            }
            None => false,
        }
    }

    /// Restores a soft-deleted user from deleted items (same id, visible at once). `false` if
    /// it is not in deleted items.
    pub fn restore_user(&mut self, id: &str) -> bool {
        match self.deleted.remove(id) {
            Some(mut user) => {
                user.visible_at = None;
                self.users.insert(user.id.clone(), user);
                self.record_change(id, delta::Change::Restored);
                true
            }
            None => false,
        }
    }

    /// Permanently removes every soft-deleted user.
    pub fn purge_deleted(&mut self) {
        for id in std::mem::take(&mut self.deleted).into_keys() {
            self.record_change(&id, delta::Change::Purged);
        }
    }

    /// Every live user (visible or not), in listing order.
    pub fn users(&self) -> Vec<SimUser> {
        self.users.values().cloned().collect()
    }

    /// One live user by id.
    pub fn user(&self, id: &str) -> Option<&SimUser> {
        self.users.get(id)
    }

    /// One live user by id, for changes. Delta sees such changes by comparing properties
    /// (they are not in its change journal).
    pub fn user_mut(&mut self, id: &str) -> Option<&mut SimUser> {
        self.address_changed(id);
        self.users.get_mut(id)
    }

    /// The addresses of user `id` may have changed: it is a candidate of every look-up
    /// until the address index is rebuilt.
    fn address_changed(&mut self, id: &str) {
        if self.address_index.get().is_none() {
            return;
        }
        self.index_changed.insert(id.to_owned());
        if self.index_changed.len() > MAX_INDEX_CHANGES {
            self.address_index = std::sync::OnceLock::new();
            self.index_changed.clear();
        }
    }

    /// The ids of live users that may hold one of `addresses` (any letter case), in id
    /// order: a superset of the users a case-insensitive equality on an address property
    /// matches.
    fn candidates<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
        let index = self.address_index.get_or_init(|| {
            let mut index: HashMap<String, Vec<String>> = HashMap::new();
            for user in self.users.values() {
                let keys = user
                    .mail
                    .iter()
                    .chain(&user.other_mails)
                    .chain(std::iter::once(&user.user_principal_name))
                    .chain(&user.proxy_addresses);
                let keys = keys
                    .map(|k| filter::index_key(k))
                    .chain(filter::guest_upn_key(&user.user_principal_name));
                for key in keys {
                    let ids = index.entry(key).or_default();
                    if ids.last() != Some(&user.id) {
                        ids.push(user.id.clone());
                    }
                }
            }
            index
        });
        keys.into_iter()
            .filter_map(|k| index.get(k))
            .flatten()
            .chain(&self.index_changed)
            .cloned()
            .collect()
    }

    /// Soft-deleted users.
    pub fn deleted_users(&self) -> Vec<SimUser> {
        self.deleted.values().cloned().collect()
    }

    /// The live users holding `email` (any letter case).
    pub fn find_by_email(&self, email: &str) -> Vec<SimUser> {
        let holder = Holder::new(email, &self.credentials.tenant_domain);
        self.candidates([holder.email.as_str(), holder.guest_upn.as_str()])
            .iter()
            .filter_map(|id| self.users.get(id))
            .filter(|u| holder.holds(u))
            .cloned()
            .collect()
    }

    /// How many `POST /invitations` named `email` (any letter case).
    pub fn invitation_count(&self, email: &str) -> u32 {
        self.invitation_counts
            .get(&email.trim().to_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// `POST /invitations` per normalized address.
    pub fn invitation_counts(&self) -> &BTreeMap<String, u32> {
        &self.invitation_counts
    }

    /// Every accepted invitation, in order.
    pub fn invitations(&self) -> &[InvitationRecord] {
        &self.invitations
    }

    /// New guests stay invisible to reads for `delay` after their invitation.
    pub fn set_replication_delay(&mut self, delay: Duration) {
        self.replication_delay = delay;
    }

    /// Caps the page size below what `$top` asks (`None`: `$top` rules).
    pub fn set_page_size_cap(&mut self, cap: Option<usize>) {
        self.page_size_cap = cap.map(|c| c.max(1));
    }

    /// Makes the first page of every listing empty (with a nextLink), as Graph may.
    pub fn set_empty_first_page(&mut self, on: bool) {
        self.empty_first_page = on;
    }

    /// The next `count` token requests answer `temporarily_unavailable` (AADSTS90024).
    pub fn fail_token_requests(&mut self, count: u32) {
        self.token_outages = count;
    }

    /// Makes every issued token expired (Graph answers `401` until a new one is fetched).
    pub fn expire_tokens(&mut self) {
        let now = Instant::now();
        for token in self.tokens.values_mut() {
            token.expiry = now;
        }
    }

    /// Grants an application permission (e.g. `User.ReadWrite.All`) to the application.
    /// Like a real grant it reaches Graph with the next token: tokens already issued keep
    /// the roles they carry.
    pub fn grant_permission(&mut self, permission: &str) {
        if !self.credentials.roles.iter().any(|r| r == permission) {
            self.credentials.roles.push(permission.to_owned());
        }
    }

    /// Revokes an application permission (e.g. `User.Invite.All`) from the application,
    /// from the next token on.
    pub fn revoke_permission(&mut self, permission: &str) {
        self.credentials.roles.retain(|r| r != permission);
    }

    /// Replaces the application's permissions (from the next token on).
    pub fn set_roles(&mut self, roles: &[&str]) {
        self.credentials.roles = roles.iter().map(|r| (*r).to_owned()).collect();
    }

    /// `allowInvitesFrom` of the tenant's authorization policy: `none`,
    /// `adminsAndGuestInviters`, `adminsGuestInvitersAndAllMembers` or `everyone` (default).
    pub fn set_allow_invites_from(&mut self, value: &str) {
        self.allow_invites_from = value.to_owned();
    }

    /// Records an issued access token and the roles it carries; Graph accepts it for
    /// `lifetime`.
    pub(crate) fn record_token(&mut self, token: &str, lifetime: Duration, roles: &[String]) {
        self.tokens.insert(
            token.to_owned(),
            IssuedToken {
                expiry: Instant::now() + lifetime,
                roles: roles.iter().cloned().collect(),
            },
        );
    }

    /// Makes `token` a valid bearer token with the application's current roles (for tests
    /// that talk to Graph without the token endpoint).
    pub fn insert_token(&mut self, token: &str, lifetime: Duration) {
        let roles = self.credentials.roles.clone();
        self.record_token(token, lifetime, &roles);
    }

    /// The live, visible user with this id or UPN.
    fn visible(&self, key: &str, now: Instant) -> Option<&SimUser> {
        self.lookup_id(key)
            .and_then(|id| self.users.get(&id))
            .filter(|u| u.is_visible(now))
    }

    fn lookup_id(&self, key: &str) -> Option<String> {
        if self.users.contains_key(key) {
            return Some(key.to_owned());
        }
        self.users
            .values()
            .find(|u| u.user_principal_name.eq_ignore_ascii_case(key))
            .map(|u| u.id.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A Graph error body (`{"error":{"code","message","innerError":{…}}}`) with `status`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let request_id = new_request_id();
    let date = Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string();
    let mut response = (
        status,
        axum::Json(json!({"error": {
            "code": code,
            "message": message,
            "innerError": {"date": date, "request-id": request_id, "client-request-id": request_id}
        }})),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("request-id", value);
    }
    response
}

fn bad_request(message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, "Request_BadRequest", message)
}

fn unsupported(message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, "Request_UnsupportedQuery", message)
}

fn not_found(key: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!(
            "Resource '{key}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

fn denied() -> Response {
    error_response(
        StatusCode::FORBIDDEN,
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.",
    )
}

fn graph_json(status: StatusCode, body: Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(
            "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8",
        ),
    );
    response
}

/// Adds `request-id` (and echoes `client-request-id`) on every Graph response.
async fn request_ids(request: Request, next: Next) -> Response {
    let client_request_id = request.headers().get("client-request-id").cloned();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if !headers.contains_key("request-id")
        && let Ok(value) = HeaderValue::from_str(&new_request_id())
    {
        headers.insert("request-id", value);
    }
    if let Some(value) = client_request_id {
        headers.insert("client-request-id", value);
    }
    response
}

/// Routes of the token endpoint and Graph.
pub fn routes() -> Router<Sim> {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/v1.0/users", get(list_users))
        .route("/v1.0/users/delta", get(delta::users_delta))
        .route("/v1.0/users/delta()", get(delta::users_delta))
        .route(
            "/v1.0/users/{id}",
            get(get_user).patch(patch_user).delete(delete_user),
        )
        .route("/v1.0/invitations", post(invite))
        .route(
            "/v1.0/directory/deletedItems/microsoft.graph.user",
            get(list_deleted_users),
        )
        .route(
            "/v1.0/directory/deletedItems/{id}/restore",
            post(restore_deleted),
        )
        .route("/v1.0/$batch", post(batch::batch))
        .route(
            "/v1.0/policies/authorizationPolicy",
            get(authorization_policy),
        )
        .layer(middleware::from_fn(request_ids))
}

// ---------------------------------------------------------------------------------------------
// Token endpoint

pub(crate) fn aadsts(status: StatusCode, error: &str, code: u64, text: &str) -> Response {
    let trace = uuid::Uuid::new_v4().to_string();
    let correlation = uuid::Uuid::new_v4().to_string();
    let timestamp = Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {text} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {timestamp}"
        ).replacen(" Trace ID:", "\r\nTrace ID:", 1)
            .replacen(" Correlation ID:", "\r\nCorrelation ID:", 1)
            .replacen(" Timestamp:", "\r\nTimestamp:", 1),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    (status, axum::Json(body)).into_response()
}

async fn token(
    State(sim): State<Sim>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    // The URL the request was sent to: a certificate assertion's `aud` must be exactly it.
    let token_url = format!("http://{}/{tenant}/oauth2/v2.0/token", host_of(&headers));
    // A federated token needs its issuer's keys, fetched (as Entra does) without the lock:
    // the issuer may be this very simulator.
    let issuer = {
        let state = sim.state();
        let creds = &state.graph.credentials;
        match (form.get("client_assertion"), form.get("client_id")) {
            (Some(assertion), Some(client_id)) => {
                assertion::issuer_to_fetch(assertion, client_id, &creds.federated)
            }
            _ => None,
        }
    };
    let keys = match issuer {
        Some(issuer) => Some(assertion::fetch_issuer_keys(&issuer).await),
        None => None,
    };
    let mut state = sim.state();
    let dir = &mut state.graph;
    issue_token(dir, &tenant, &token_url, &form, keys.as_ref())
}

fn refusal(refusal: Refusal) -> Response {
    aadsts(refusal.status, refusal.error, refusal.code, &refusal.text)
}

/// How the client authenticated: a secret or an assertion, each checked.
fn authenticate_client(
    dir: &mut Directory,
    client_id: &str,
    token_url: &str,
    form: &HashMap<String, String>,
    keys: Option<&assertion::IssuerKeys>,
) -> Result<(), Response> {
    let creds = &dir.credentials;
    let secret = form.get("client_secret").filter(|s| !s.is_empty());
    let client_assertion = form.get("client_assertion").filter(|s| !s.is_empty());
    match (secret, client_assertion) {
        (Some(_), Some(_)) => Err(aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            9002313,
            "Invalid request. Request is malformed or invalid. [Reason - Send either 'client_secret' or 'client_assertion', not both.]",
        )),
        (None, None) => Err(aadsts(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )),
        (Some(secret), None) => {
            // An application without a secret refuses every secret as a wrong one.
            if creds.client_secret.is_empty() || *secret != creds.client_secret {
                return Err(aadsts(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    &format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                    ),
                ));
            }
            if creds.secret_expired {
                return Err(aadsts(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000222,
                    &format!(
                        "The provided client secret keys for app '{client_id}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds."
                    ),
                ));
            }
            Ok(())
        }
        (None, Some(client_assertion)) => {
            match form.get("client_assertion_type").map(String::as_str) {
                Some(assertion::JWT_BEARER) => {}
                None => {
                    return Err(aadsts(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        900144,
                        "The request body must contain the following parameter: 'client_assertion_type'.",
                    ));
                }
                Some(other) => {
                    // The code for a wrong type is not documented: the generic malformed request.
                    return Err(aadsts(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        9002313,
                        &format!(
                            "Invalid request. Request is malformed or invalid. [Reason - client_assertion_type '{other}' is not supported; use '{}'.]",
                            assertion::JWT_BEARER
                        ),
                    ));
                }
            }
            let jwt = assertion::parse(client_assertion).map_err(refusal)?;
            let now = Utc::now().timestamp();
            match assertion::kind(&jwt, client_id) {
                assertion::Kind::Certificate => assertion::check_certificate(
                    &jwt,
                    &creds.certificates,
                    client_id,
                    token_url,
                    now,
                    &mut dir.seen_assertions,
                ),
                assertion::Kind::Federated(_) => {
                    assertion::check_federated(&jwt, &creds.federated, keys, now)
                }
            }
            .map_err(refusal)
        }
    }
}

fn issue_token(
    dir: &mut Directory,
    tenant: &str,
    token_url: &str,
    form: &HashMap<String, String>,
    keys: Option<&assertion::IssuerKeys>,
) -> Response {
    let creds = dir.credentials.clone();
    if dir.token_outages > 0 {
        dir.token_outages -= 1;
        return aadsts(
            StatusCode::BAD_REQUEST,
            "temporarily_unavailable",
            90024,
            "RequestTimeout - The request has timed out.",
        );
    }
    if !tenant.eq_ignore_ascii_case(&creds.tenant_id)
        && !tenant.eq_ignore_ascii_case(&creds.tenant_domain)
    {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        );
    }
    let missing = |name: &str| {
        aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            &format!("The request body must contain the following parameter: '{name}'."),
        )
    };
    let Some(grant_type) = form.get("grant_type") else {
        return missing("grant_type");
    };
    if grant_type != "client_credentials" {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{grant_type}'."),
        );
    }
    let Some(client_id) = form.get("client_id") else {
        return missing("client_id");
    };
    if !client_id.eq_ignore_ascii_case(&creds.client_id) {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        );
    }
    if creds.app_disabled {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            7000112,
            &format!("Application '{client_id}' is disabled."),
        );
    }
    if let Err(response) = authenticate_client(dir, client_id, token_url, form, keys) {
        return response;
    }
    let Some(scope) = form.get("scope") else {
        return missing("scope");
    };
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    let resource = match scopes.as_slice() {
        [one] => match one.strip_suffix("/.default") {
            Some(resource) => resource,
            None => {
                return aadsts(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    1002012,
                    &format!(
                        "The provided value for scope {one} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                    ),
                );
            }
        },
        _ => {
            return aadsts(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                70011,
                &format!(
                    "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
                ),
            );
        }
    };
    // Graph's resource identifier in the simulated cloud, by URI or by application id; the
    // address the simulator is served on is not a resource Entra knows, nor is another cloud's
    // Graph (tokens are not interchangeable between clouds, §8; the real answer to another
    // cloud's resource is not documented: the simulator gives the unknown-resource error).
    let resource = resource.trim_end_matches('/');
    let graph = [creds.cloud.graph_resource(), GRAPH_APP_ID];
    if !graph.iter().any(|g| g.eq_ignore_ascii_case(resource)) {
        return aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500011,
            &format!(
                "The resource principal named {resource} was not found in the tenant named {}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.",
                creds.tenant_domain
            ),
        );
    }
    let access_token =
        super::entra::access_token(&creds, client_id, &creds.roles, creds.token_lifetime);
    dir.record_token(&access_token, creds.token_lifetime, &creds.roles);
    let lifetime = creds.token_lifetime.as_secs();
    (
        StatusCode::OK,
        axum::Json(json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
        })),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Graph

fn invalid_token(message: &str) -> Response {
    error_response(
        StatusCode::UNAUTHORIZED,
        "InvalidAuthenticationToken",
        message,
    )
}

/// Checks the bearer token; what it grants.
pub(crate) fn authorize(dir: &Directory, headers: &HeaderMap) -> Result<Grant, Response> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(invalid_token("Access token is empty."));
    };
    let value = value.to_str().unwrap_or("");
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(invalid_token("Access token is empty.")),
    };
    match dir.tokens.get(token) {
        None => Err(invalid_token(
            "Access token validation failure. Invalid audience.",
        )),
        Some(issued) if Instant::now() >= issued.expiry => Err(invalid_token(
            "Lifetime validation failed, the token is expired.",
        )),
        Some(issued) => Ok(Grant {
            roles: issued.roles.clone(),
        }),
    }
}

const READ: &[&str] = &[
    "User.Read.All",
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];

/// Parses a raw query string into options; a repeated option is an error.
fn query_options(uri: &Uri) -> Result<BTreeMap<String, String>, Response> {
    let mut options = BTreeMap::new();
    for (key, value) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if options.insert(key.to_string(), value.to_string()).is_some() {
            return Err(bad_request(&format!(
                "Query option '{key}' was specified more than once, but it must be specified at most once."
            )));
        }
    }
    Ok(options)
}

/// `$top`: [`DEFAULT_PAGE_SIZE`] when absent, else 1 to [`MAX_PAGE_SIZE`].
fn parse_top(raw: Option<&String>) -> Result<usize, Response> {
    match raw {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => Ok(n),
            _ => Err(bad_request(&format!(
                "Invalid page size specified: '{raw}'. Must be between 1 and {MAX_PAGE_SIZE} inclusive."
            ))),
        },
    }
}

/// Validates `$select`.
fn parse_select(raw: Option<&String>) -> Result<Option<Vec<String>>, Response> {
    let Some(raw) = raw else { return Ok(None) };
    let mut props = Vec::new();
    for prop in raw.split(',').map(str::trim) {
        if prop.is_empty() {
            return Err(bad_request("Syntax error: empty property name in $select."));
        }
        if prop == "signInActivity" {
            return Err(bad_request(
                "The simulator does not emulate signInActivity (it needs AuditLog.Read.All).",
            ));
        }
        if !SELECTABLE.contains(&prop) {
            return Err(bad_request(&format!(
                "Could not find a property named '{prop}' on type 'microsoft.graph.user'."
            )));
        }
        props.push(prop.to_owned());
    }
    Ok(Some(props))
}

fn metadata_context(host: &str, select: Option<&[String]>, entity: bool) -> String {
    let mut context = format!("http://{host}/v1.0/$metadata#users");
    if let Some(select) = select {
        context.push('(');
        context.push_str(&select.join(","));
        context.push(')');
    }
    if entity {
        context.push_str("/$entity");
    }
    context
}

/// Encodes a query value the way Graph's nextLinks do (`%20`, `%23`, `%27`, …).
fn encode(value: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b',');
    percent_encoding::utf8_percent_encode(value, SET).to_string()
}

fn host_of(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_owned()
}

const KNOWN_OPTIONS: [&str; 10] = [
    "$filter",
    "$select",
    "$top",
    "$skiptoken",
    "$count",
    "$search",
    "$orderby",
    "$skip",
    "$expand",
    "$format",
];

async fn list_users(State(sim): State<Sim>, headers: HeaderMap, uri: Uri) -> Response {
    let mut state = sim.state();
    list_users_locked(&mut state.graph, &headers, &uri)
}

/// What every read of a user collection checks first: the token, a read permission, and the
/// query options (each `$option` must be in `known`, else `refuse(key)` answers).
fn read_prologue(
    dir: &Directory,
    headers: &HeaderMap,
    uri: &Uri,
    known: &[&str],
    refuse: impl Fn(&str) -> Response,
) -> Result<BTreeMap<String, String>, Response> {
    if !authorize(dir, headers)?.has_any(READ) {
        return Err(denied());
    }
    let options = query_options(uri)?;
    match options
        .keys()
        .find(|key| key.starts_with('$') && !known.contains(&key.as_str()))
    {
        Some(key) => Err(refuse(key)),
        None => Ok(options),
    }
}

fn list_users_locked(dir: &mut Directory, headers: &HeaderMap, uri: &Uri) -> Response {
    let options = match read_prologue(dir, headers, uri, &KNOWN_OPTIONS, |key| {
        bad_request(&format!("Query option '{key}' is not supported."))
    }) {
        Ok(options) => options,
        Err(response) => return response,
    };
    let advanced = headers
        .get("ConsistencyLevel")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("eventual"));
    if options.contains_key("$skip") {
        return bad_request(
            "The query specified in the URI is not valid. Query option 'Skip' is not allowed. To allow it, set the 'AllowedQueryOptions' property on EnableQueryAttribute or QueryValidationSettings.",
        );
    }
    if options.contains_key("$expand") || options.contains_key("$format") {
        return bad_request("The simulator does not emulate $expand or $format on /users.");
    }
    if options.contains_key("$search") {
        return if advanced {
            unsupported("The simulator does not emulate $search.")
        } else {
            unsupported(
                "Request with $search query parameter only works through MSGraph with a special request header: 'ConsistencyLevel: eventual'",
            )
        };
    }
    if options.contains_key("$orderby") {
        return if options.contains_key("$filter") && !advanced {
            unsupported(
                "Sorting not supported for current query: $orderby with $filter needs ConsistencyLevel: eventual and $count=true.",
            )
        } else {
            unsupported("The simulator does not emulate $orderby.")
        };
    }
    let count = match options.get("$count").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => advanced,
        Some(other) => {
            return bad_request(&format!("'{other}' is not a valid value for $count."));
        }
    };
    let select = match parse_select(options.get("$select")) {
        Ok(select) => select,
        Err(response) => return response,
    };
    let top = match parse_top(options.get("$top")) {
        Ok(top) => top,
        Err(response) => return response,
    };
    let filter: Option<Filter> = match options.get("$filter").map(|f| filter::parse(f)) {
        None => None,
        Some(Ok(filter)) => Some(filter),
        Some(Err(FilterError::Unsupported(message))) => {
            return if advanced {
                unsupported(&format!(
                    "The simulator does not emulate advanced queries: {message}"
                ))
            } else {
                unsupported(&message)
            };
        }
        Some(Err(FilterError::Invalid(message))) => return bad_request(&message),
    };

    // Where to start: a fresh listing, or the cursor behind $skiptoken.
    let mut after_id = None;
    let mut first_page = true;
    if let Some(token) = options.get("$skiptoken") {
        let Some(cursor) = dir.cursors.get(token) else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "Directory_ExpiredPageToken",
                "The specified page token value has expired and can no longer be included in your request.",
            );
        };
        if cursor.filter.as_ref() != options.get("$filter")
            || cursor.select.as_ref() != options.get("$select")
            || cursor.top.as_ref() != options.get("$top")
        {
            return bad_request(
                "The $skiptoken does not belong to this query: follow @odata.nextLink verbatim.",
            );
        }
        after_id = cursor.after_id.clone();
        first_page = false;
    }

    let page_size = dir.page_size_cap.map_or(top, |cap| top.min(cap));
    let now = Instant::now();
    let range = match &after_id {
        Some(id) => (Bound::Excluded(id.clone()), Bound::Unbounded),
        None => (Bound::Unbounded, Bound::Unbounded),
    };
    let matching =
        |u: &&SimUser| u.is_visible(now) && filter.as_ref().is_none_or(|f| f.matches(*u));
    let empty_page = first_page && dir.empty_first_page;
    // A filter made only of address equalities (the look-ups) reads the address index's
    // candidates instead of every user; the filter still decides, in the same order.
    let candidates = filter
        .as_ref()
        .and_then(Filter::address_terms)
        .map(|terms| dir.candidates(terms.iter().map(String::as_str)));
    let taken: Vec<&SimUser> = if empty_page {
        Vec::new()
    } else if let Some(ids) = &candidates {
        ids.range::<String, _>(range.clone())
            .filter_map(|id| dir.users.get(id))
            .filter(matching)
            .take(page_size + 1)
            .collect()
    } else {
        dir.users
            .range(range)
            .map(|(_, u)| u)
            .filter(matching)
            .take(page_size + 1)
            .collect()
    };
    let more = empty_page || taken.len() > page_size;
    let page: Vec<Value> = taken
        .iter()
        .take(page_size)
        .map(|u| u.project(select.as_deref()))
        .collect();
    let last_id = if empty_page {
        after_id.clone()
    } else {
        taken[..taken.len().min(page_size)]
            .last()
            .map(|u| u.id.clone())
    };
    let total = count.then(|| match &candidates {
        Some(ids) => ids
            .iter()
            .filter_map(|id| dir.users.get(id))
            .filter(matching)
            .count(),
        None => dir.users.values().filter(matching).count(),
    });

    let host = host_of(headers);
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(metadata_context(&host, select.as_deref(), false)),
    );
    if let Some(total) = total.filter(|_| first_page) {
        body.insert("@odata.count".into(), json!(total));
    }
    if more {
        let token = format!("RFNwdAoAAQAAA{}", uuid::Uuid::new_v4().simple());
        let cursor = Cursor {
            filter: options.get("$filter").cloned(),
            select: options.get("$select").cloned(),
            top: options.get("$top").cloned(),
            after_id: last_id,
        };
        let mut link = format!("http://{host}/v1.0/users?");
        for (key, value) in [
            ("$filter", &cursor.filter),
            ("$select", &cursor.select),
            ("$top", &cursor.top),
        ] {
            if let Some(value) = value {
                link.push_str(&format!("{key}={}&", encode(value)));
            }
        }
        link.push_str(&format!("$skiptoken={token}"));
        dir.cursors.insert(token, cursor);
        body.insert("@odata.nextLink".into(), json!(link));
    }
    body.insert("value".into(), Value::Array(page));
    let listing = format!(
        "graph users {}",
        options.get("$filter").map_or("", String::as_str)
    );
    crate::sim::listing_page(
        graph_json(StatusCode::OK, Value::Object(body)),
        listing,
        first_page,
        !more,
    )
}

async fn get_user(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let state = sim.state();
    let dir = &state.graph;
    match authorize(dir, &headers) {
        Err(response) => return response,
        Ok(grant) if !grant.has_any(READ) => return denied(),
        Ok(_) => {}
    }
    if id == "$count" {
        return bad_request("$count is not currently supported.");
    }
    let options = match query_options(&uri) {
        Ok(options) => options,
        Err(response) => return response,
    };
    for key in options.keys() {
        if key.starts_with('$') && key != "$select" {
            return bad_request(&format!(
                "Query option '{key}' is not supported on a single user by the simulator."
            ));
        }
    }
    let select = match parse_select(options.get("$select")) {
        Ok(select) => select,
        Err(response) => return response,
    };
    match dir.visible(&id, Instant::now()) {
        None => not_found(&id),
        Some(user) => {
            let mut body = match user.project(select.as_deref()) {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            body.insert(
                "@odata.context".into(),
                json!(metadata_context(
                    &host_of(&headers),
                    select.as_deref(),
                    true
                )),
            );
            graph_json(StatusCode::OK, Value::Object(body))
        }
    }
}

/// Properties a `PATCH /users/{id}` may set in the simulator.
const PATCHABLE: [&str; 6] = [
    "accountEnabled",
    "displayName",
    "givenName",
    "surname",
    "jobTitle",
    "otherMails",
];

async fn patch_user(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = sim.state();
    let response = patch_user_locked(&mut state.graph, &id, &headers, &body);
    if !response.status().is_success() {
        return response;
    }
    state.counters.writes += 1;
    let disable = serde_json::from_slice::<Map<String, Value>>(&body).is_ok_and(|fields| {
        fields.len() == 1 && fields.get("accountEnabled") == Some(&Value::Bool(false))
    });
    let kind = if disable {
        WriteKind::DisableGuest
    } else {
        WriteKind::UpdateGuest
    };
    let address = state
        .graph
        .user(&id)
        .map(SimUser::address)
        .unwrap_or_default();
    crate::sim::wrote(response, kind, &address)
}

/// `415` unless the body is declared `application/json`; `what` names it in the message.
fn require_json(headers: &HeaderMap, what: &str) -> Result<(), Response> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!("{what} must be application/json."),
        ))
    }
}

fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, Response> {
    require_json(headers, "The request body")?;
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The request body must be a JSON object.",
        )),
        Err(err) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!(
                "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format. ({err})"
            ),
        )),
    }
}

fn patch_user_locked(dir: &mut Directory, key: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let grant = match authorize(dir, headers) {
        Ok(grant) => grant,
        Err(response) => return response,
    };
    let fields = match json_body(headers, body) {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    for (name, _) in fields.iter() {
        if !PATCHABLE.contains(&name.as_str()) {
            return bad_request(&format!(
                "The property '{name}' does not exist on type 'microsoft.graph.user' or cannot be updated by the simulator."
            ));
        }
    }
    let only_enable = fields.keys().all(|k| k == "accountEnabled");
    let allowed = if only_enable {
        grant.has_any(&[
            "User.EnableDisableAccount.All",
            "User.ReadWrite.All",
            "Directory.ReadWrite.All",
        ]) && grant.has_any(READ)
    } else {
        grant.has_any(&["User.ReadWrite.All", "Directory.ReadWrite.All"])
    };
    if !allowed {
        return denied();
    }
    let Some(id) = dir.visible(key, Instant::now()).map(|u| u.id.clone()) else {
        return not_found(key);
    };
    // Validate every field before changing anything.
    for (name, value) in fields.iter() {
        let ok = match name.as_str() {
            "accountEnabled" => value.is_boolean(),
            "otherMails" => value
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string)),
            _ => value.is_string() || value.is_null(),
        };
        if !ok {
            return bad_request(&format!("Invalid value for property '{name}'."));
        }
    }
    let Some(user) = dir.users.get_mut(&id) else {
        return not_found(key);
    };
    let changed = fields.keys().cloned().collect();
    for (name, value) in fields {
        let text = value.as_str().map(str::to_owned);
        match name.as_str() {
            "accountEnabled" => {
                user.account_enabled = value.as_bool().unwrap_or(user.account_enabled)
            }
            "displayName" => user.display_name = text,
            "givenName" => user.given_name = text,
            "surname" => user.surname = text,
            "jobTitle" => user.job_title = text,
            "otherMails" => {
                user.other_mails = value
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
            }
            _ => {}
        }
    }
    dir.record_change(&id, delta::Change::Updated(changed));
    StatusCode::NO_CONTENT.into_response()
}

async fn delete_user(
    State(sim): State<Sim>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut state = sim.state();
    let dir = &mut state.graph;
    let grant = match authorize(dir, &headers) {
        Ok(grant) => grant,
        Err(response) => return response,
    };
    if !grant.has_any(&[
        "User.DeleteRestore.All",
        "User.ReadWrite.All",
        "Directory.ReadWrite.All",
    ]) {
        return denied();
    }
    let Some((id, address)) = dir
        .visible(&key, Instant::now())
        .map(|u| (u.id.clone(), u.address()))
    else {
        return not_found(&key);
    };
    dir.delete_user(&id);
    state.counters.writes += 1;
    crate::sim::wrote(
        StatusCode::NO_CONTENT.into_response(),
        WriteKind::DeleteGuest,
        &address,
    )
}

// ---------------------------------------------------------------------------------------------
// Deleted items (`docs/specs/microsoft-graph.md` §6)

/// Query options `GET /directory/deletedItems/microsoft.graph.user` takes in the simulator.
const DELETED_OPTIONS: [&str; 3] = ["$filter", "$select", "$top"];

/// A soft-deleted user as deleted items show it: its UPN prefixed with its object id, as the
/// Entra PowerShell `Get-EntraDeletedUser` example shows (**[unverified]** beyond that
/// example), so a look-up by the original UPN finds nothing; `mail` and `otherMails` are kept.
fn as_deleted_item(user: &SimUser) -> SimUser {
    let mut shown = user.clone();
    shown.user_principal_name = format!("{}{}", user.id, user.user_principal_name);
    shown
}

/// `GET /v1.0/directory/deletedItems/microsoft.graph.user`: the soft-deleted users. Needs
/// `User.Read.All` (or broader), like `GET /users`. The list page says the query options of
/// the cast's resource are supported; the simulator takes `$filter` (the grammar of
/// `GET /users`, without advanced queries), `$select` and `$top`, and refuses everything else,
/// paging included (strict: more matches than `$top` is an error rather than a guess).
async fn list_deleted_users(State(sim): State<Sim>, headers: HeaderMap, uri: Uri) -> Response {
    let state = sim.state();
    let dir = &state.graph;
    let options = match read_prologue(dir, &headers, &uri, &DELETED_OPTIONS, |key| {
        bad_request(&format!(
            "Query option '{key}' is not emulated on deleted items by the simulator."
        ))
    }) {
        Ok(options) => options,
        Err(response) => return response,
    };
    let select = match parse_select(options.get("$select")) {
        Ok(select) => select,
        Err(response) => return response,
    };
    let top = match parse_top(options.get("$top")) {
        Ok(top) => top,
        Err(response) => return response,
    };
    let filter: Option<Filter> = match options.get("$filter").map(|f| filter::parse(f)) {
        None => None,
        Some(Ok(filter)) => Some(filter),
        Some(Err(FilterError::Unsupported(message))) => return unsupported(&message),
        Some(Err(FilterError::Invalid(message))) => return bad_request(&message),
    };
    let matching: Vec<Value> = dir
        .deleted
        .values()
        .map(as_deleted_item)
        .filter(|u| filter.as_ref().is_none_or(|f| f.matches(u)))
        .map(|u| {
            let mut body = match u.project(select.as_deref()) {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            body.insert("@odata.type".into(), json!("#microsoft.graph.user"));
            Value::Object(body)
        })
        .collect();
    if matching.len() > top {
        return unsupported("The simulator does not page deleted items: narrow the $filter.");
    }
    let host = host_of(&headers);
    graph_json(
        StatusCode::OK,
        json!({
            "@odata.context": format!("http://{host}/v1.0/$metadata#directoryObjects"),
            "value": matching,
        }),
    )
}

/// `POST /v1.0/directory/deletedItems/{id}/restore`: moves a soft-deleted user back (same
/// id), `200` with the object. Needs `User.DeleteRestore.All` (least privileged since
/// December 2024) or `User.ReadWrite.All`, else `403 Authorization_RequestDenied`. Takes no
/// body (the page says not to supply one; strict: a body is refused). `404` when the id is not
/// in deleted items; `400` when a live user holds its address or UPN meanwhile (the spec's
/// reuse conflict, **[unverified]**; the message is the simulator's).
async fn restore_deleted(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = sim.state();
    let dir = &mut state.graph;
    let grant = match authorize(dir, &headers) {
        Ok(grant) => grant,
        Err(response) => return response,
    };
    if !grant.has_any(&["User.DeleteRestore.All", "User.ReadWrite.All"]) {
        return denied();
    }
    if !body.iter().all(u8::is_ascii_whitespace) {
        return bad_request("The restore action takes no request body.");
    }
    let Some(user) = dir.deleted.get(&id).cloned() else {
        return not_found(&id);
    };
    let domain = dir.credentials.tenant_domain.clone();
    let taken = user
        .mail
        .iter()
        .chain(std::iter::once(&user.user_principal_name))
        .find(|address| !dir.find_by_email(address).is_empty());
    if let Some(address) = taken {
        return bad_request(&format!(
            "Another object with the same value for property {address} already exists in tenant {domain}; the deleted user {id} cannot be restored."
        ));
    }
    dir.restore_user(&id);
    state.counters.writes += 1;
    let mut body = match user.project(None) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    body.insert(
        "@odata.context".into(),
        json!(format!(
            "http://{}/v1.0/$metadata#directoryObjects/$entity",
            host_of(&headers)
        )),
    );
    body.insert("@odata.type".into(), json!("#microsoft.graph.user"));
    crate::sim::wrote(
        graph_json(StatusCode::OK, Value::Object(body)),
        WriteKind::RestoreGuest,
        &user.address(),
    )
}

// ---------------------------------------------------------------------------------------------
// Policies

/// `GET /v1.0/policies/authorizationPolicy`: the tenant's authorization policy, with
/// `allowInvitesFrom` as set by [`Directory::set_allow_invites_from`]. Needs `Policy.Read.All`
/// (least privileged, Learn "Get authorizationPolicy") or `Policy.ReadWrite.Authorization`.
/// The other properties are the defaults of a new tenant, in the documented shape.
async fn authorization_policy(State(sim): State<Sim>, headers: HeaderMap, uri: Uri) -> Response {
    let state = sim.state();
    let dir = &state.graph;
    match authorize(dir, &headers) {
        Err(response) => return response,
        Ok(grant) if !grant.has_any(&["Policy.Read.All", "Policy.ReadWrite.Authorization"]) => {
            return denied();
        }
        Ok(_) => {}
    }
    if let Some(query) = uri.query() {
        return bad_request(&format!(
            "The simulator does not emulate query options on authorizationPolicy: {query}"
        ));
    }
    graph_json(
        StatusCode::OK,
        json!({
            "@odata.context": format!(
                "http://{}/v1.0/$metadata#policies/authorizationPolicy/$entity",
                host_of(&headers)
            ),
            "id": "authorizationPolicy",
            "displayName": "Authorization Policy",
            "description": "Used to manage authorization related settings across the company.",
            "allowInvitesFrom": dir.allow_invites_from,
            "allowedToSignUpEmailBasedSubscriptions": true,
            "allowedToUseSSPR": true,
            "allowEmailVerifiedUsersToJoinOrganization": false,
            "allowUserConsentForRiskyApps": null,
            "blockMsolPowerShell": false,
            "guestUserRoleId": "10dae51f-b6af-4016-8d66-8c2a99b929b3",
            "defaultUserRolePermissions": {
                "allowedToCreateApps": true,
                "allowedToCreateSecurityGroups": true,
                "allowedToCreateTenants": true,
                "allowedToReadBitlockerKeysForOwnedDevice": true,
                "allowedToReadOtherUsers": true,
                "permissionGrantPoliciesAssigned": [
                    "ManagePermissionGrantsForSelf.microsoft-user-default-legacy"
                ]
            }
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// Invitations

/// Why `invitedUserEmailAddress` is refused (§1), if it is.
pub fn invalid_email_reason(address: &str) -> Option<String> {
    if address.chars().any(char::is_whitespace) {
        return Some("it contains white space".into());
    }
    if let Some(c) = address.chars().find(|c| REJECTED_EMAIL_CHARS.contains(*c)) {
        return Some(format!("the character '{c}' is not allowed"));
    }
    let Some((local, domain)) = address.split_once('@') else {
        return Some("it has no '@'".into());
    };
    if domain.contains('@') {
        return Some("it has more than one '@'".into());
    }
    if local.is_empty() {
        return Some("the local part is empty".into());
    }
    if local.starts_with(['.', '-']) || local.ends_with(['.', '-']) {
        return Some("'.' and '-' may not start or end the local part".into());
    }
    if !domain.contains('.') || domain.split('.').any(str::is_empty) {
        return Some(format!("'{domain}' is not a valid domain"));
    }
    None
}

const INVITATION_FIELDS: [&str; 10] = [
    "invitedUserDisplayName",
    "invitedUserEmailAddress",
    "invitedUserMessageInfo",
    "invitedUserType",
    "inviteRedirectUrl",
    "resetRedemption",
    "sendInvitationMessage",
    "invitedUser",
    "invitedUserSponsors",
    "@odata.type",
];

fn invitation_error(message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, "BadRequest", message)
}

async fn invite(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    let mut state = sim.state();
    let response = invite_locked(&mut state.graph, &headers, &body);
    if response.status() != StatusCode::CREATED {
        return response;
    }
    state.counters.writes += 1;
    let address = serde_json::from_slice::<Map<String, Value>>(&body)
        .ok()
        .and_then(|fields| {
            fields
                .get("invitedUserEmailAddress")
                .and_then(Value::as_str)
                .map(|a| a.trim().to_owned())
        })
        .unwrap_or_default();
    crate::sim::wrote(response, WriteKind::Invite, &address)
}

fn invite_locked(dir: &mut Directory, headers: &HeaderMap, body: &[u8]) -> Response {
    let grant = match authorize(dir, headers) {
        Ok(grant) => grant,
        Err(response) => return response,
    };
    if !grant.has_any(&[
        "User.Invite.All",
        "User.ReadWrite.All",
        "Directory.ReadWrite.All",
    ]) {
        return denied();
    }
    let fields = match json_body(headers, body) {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !INVITATION_FIELDS.contains(&k.as_str()))
    {
        return bad_request(&format!(
            "The property '{unknown}' does not exist on type 'microsoft.graph.invitation'. Make sure to only use property names that are defined by the type or mark the type as open type."
        ));
    }
    let email = match fields.get("invitedUserEmailAddress") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return invitation_error("Missing required parameter: invitedUserEmailAddress.");
        }
        Some(_) => return invitation_error("invitedUserEmailAddress must be a string."),
    };
    // Every POST naming an address counts, whatever its fate.
    *dir.invitation_counts
        .entry(email.trim().to_lowercase())
        .or_insert(0) += 1;
    let redirect = match fields.get("inviteRedirectUrl") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return invitation_error("Missing required parameter: inviteRedirectUrl.");
        }
        Some(_) => return invitation_error("inviteRedirectUrl must be a string."),
    };
    if url::Url::parse(&redirect).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
        return invitation_error(&format!(
            "inviteRedirectUrl '{redirect}' is not a valid absolute http(s) URL."
        ));
    }
    if let Some(reason) = invalid_email_reason(&email) {
        return invitation_error(&format!(
            "The specified email address '{email}' is not valid: {reason}."
        ));
    }
    let display_name = match fields.get("invitedUserDisplayName") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return invitation_error("invitedUserDisplayName must be a string."),
    };
    let send_email = match fields.get("sendInvitationMessage") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return invitation_error("sendInvitationMessage must be a boolean."),
    };
    match fields.get("invitedUserType") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t.eq_ignore_ascii_case("Guest") => {}
        Some(Value::String(t)) if t.eq_ignore_ascii_case("Member") => return denied(),
        Some(other) => {
            return invitation_error(&format!("invitedUserType '{other}' is not valid."));
        }
    }
    if fields
        .get("resetRedemption")
        .is_some_and(|v| v.as_bool() == Some(true))
    {
        return invitation_error("The simulator does not emulate resetRedemption.");
    }
    let mut message = None;
    let mut message_info = Value::Null;
    match fields.get("invitedUserMessageInfo") {
        None | Some(Value::Null) => {}
        Some(Value::Object(info)) => {
            for (key, value) in info {
                let ok = match key.as_str() {
                    "customizedMessageBody" | "messageLanguage" => {
                        value.is_string() || value.is_null()
                    }
                    "ccRecipients" => value.as_array().is_some_and(|a| a.len() <= 1),
                    "@odata.type" => true,
                    _ => false,
                };
                if !ok {
                    return invitation_error(&format!(
                        "invitedUserMessageInfo.{key} is not valid (only one ccRecipient is supported)."
                    ));
                }
            }
            message = info
                .get("customizedMessageBody")
                .and_then(Value::as_str)
                .map(str::to_owned);
            message_info = json!({
                "messageLanguage": info.get("messageLanguage").cloned().unwrap_or(Value::Null),
                "ccRecipients": info.get("ccRecipients").cloned().unwrap_or(json!([])),
                "customizedMessageBody": message,
            });
        }
        Some(_) => return invitation_error("invitedUserMessageInfo must be an object."),
    }
    if message_info.is_null() {
        message_info =
            json!({"messageLanguage": null, "ccRecipients": [], "customizedMessageBody": null});
    }

    let domain = dir.credentials.tenant_domain.clone();
    let holder = Holder::new(&email, &domain);
    if let Some(ghost) = dir.deleted.values().find(|u| holder.holds(u)) {
        return invitation_error(&format!(
            "The invited user already exists in the directory as object {} (a deleted user). Restore it from deleted items or delete it permanently before inviting again.",
            ghost.id
        ));
    }
    // An existing holder of the address, visible or not yet replicated.
    let existing = dir
        .candidates([holder.email.as_str(), holder.guest_upn.as_str()])
        .iter()
        .filter_map(|id| dir.users.get(id))
        .find(|u| holder.holds(u))
        .cloned();
    let (user, resend) = match existing {
        Some(user) if user.user_type != "Guest" => {
            return invitation_error(&format!(
                "The invited user already exists in the directory as a member (object {}); members need no invitation.",
                user.id
            ));
        }
        Some(user) => (user, true),
        None => {
            let mut user =
                SimUser::guest(&email, display_name.as_deref().unwrap_or(&email), &domain);
            if !dir.replication_delay.is_zero() {
                user.visible_at = Some(Instant::now() + dir.replication_delay);
            }
            dir.users.insert(user.id.clone(), user.clone());
            dir.record_change(&user.id, delta::Change::Created);
            (user, false)
        }
    };
    dir.invitations.push(InvitationRecord {
        email: email.clone(),
        display_name: display_name.clone(),
        send_email,
        message,
        user_id: user.id.clone(),
        resend,
    });
    let status = if user.external_user_state.as_deref() == Some("Accepted") {
        "Completed"
    } else {
        "PendingAcceptance"
    };
    let host = host_of(headers);
    let redeem = format!(
        "https://login.microsoftonline.com/redeem?rd=https%3a%2f%2finvitations.microsoft.com%2fredeem%2f%3ftenant%3d{}%26user%3d{}%26ticket%3d{}",
        dir.credentials.tenant_id,
        user.id,
        uuid::Uuid::new_v4().simple()
    );
    graph_json(
        StatusCode::CREATED,
        json!({
            "@odata.context": format!("http://{host}/v1.0/$metadata#invitations/$entity"),
            "id": uuid::Uuid::new_v4().to_string(),
            "inviteRedeemUrl": redeem,
            "invitedUserDisplayName": display_name,
            "invitedUserType": "Guest",
            "invitedUserEmailAddress": email,
            "sendInvitationMessage": send_email,
            "resetRedemption": false,
            "inviteRedirectUrl": redirect,
            "status": status,
            "invitedUserMessageInfo": message_info,
            "invitedUser": {"id": user.id, "userPrincipalName": user.user_principal_name},
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invitation_addresses_follow_section_1() {
        assert_eq!(invalid_email_reason("o'brien@partner.example"), None);
        assert_eq!(invalid_email_reason("first_last@partner.example"), None);
        assert!(invalid_email_reason("a+b@partner.example").is_some());
        assert!(invalid_email_reason(".ana@partner.example").is_some());
        assert!(invalid_email_reason("ana-@partner.example").is_some());
        assert!(invalid_email_reason("ana@partner").is_some());
        assert!(invalid_email_reason("ana partner.example").is_some());
    }

    #[test]
    fn default_projection_hides_guest_properties() {
        let user = SimUser::guest("ana@partner.example", "Ana", SIM_TENANT_DOMAIN);
        let shown = user.project(None);
        assert!(shown.get("userType").is_none());
        assert!(shown.get("otherMails").is_none());
        assert_eq!(
            shown["userPrincipalName"],
            "ana_partner.example#EXT#@sim.onmicrosoft.com"
        );
        let selected = user.project(Some(&["userType".to_owned()]));
        assert_eq!(selected["userType"], "Guest");
        assert!(selected.get("id").is_some());
        assert!(selected.get("mail").is_none());
    }
}

#[cfg(test)]
mod permission_tests {
    use axum::body::Body;
    use axum::http::{Method, Request};
    use tower::ServiceExt as _;

    use super::*;
    use crate::sim::entra::jwt::{Jwt, token_signer};

    /// Sends one request through the router; the status and the JSON body (or `Null`).
    async fn call(
        sim: &Sim,
        method: Method,
        uri: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "sim.test");
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .expect("a request");
        let response = sim.router().oneshot(request).await.expect("an answer");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A token from the token endpoint with the client secret.
    async fn sign_in(sim: &Sim) -> String {
        let form = format!(
            "grant_type=client_credentials&client_id={SIM_CLIENT_ID}&client_secret={SIM_CLIENT_SECRET}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"
        );
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("/{SIM_TENANT_ID}/oauth2/v2.0/token"))
            .header(header::HOST, "sim.test")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .expect("a request");
        let response = sim.router().oneshot(request).await.expect("an answer");
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        let body: Value = serde_json::from_slice(&bytes).expect("JSON");
        body["access_token"].as_str().expect("a token").to_owned()
    }

    fn code(body: &Value) -> &str {
        body["error"]["code"].as_str().unwrap_or("")
    }

    #[tokio::test]
    async fn issued_tokens_are_signed_jwts_with_the_granted_roles() {
        let sim = Sim::new();
        let token = sign_in(&sim).await;
        let jwt = Jwt::parse(&token).expect("a JWT");
        assert!(jwt.verifies("RS256", &token_signer().public_key()));
        assert_eq!(jwt.header_str("kid"), Some(token_signer().kid()));
        assert_eq!(jwt.claim_str("appid"), Some(SIM_CLIENT_ID));
        assert_eq!(jwt.claim_str("tid"), Some(SIM_TENANT_ID));
        assert_eq!(jwt.claim_str("aud"), Some("https://graph.microsoft.com"));
        let roles: BTreeSet<&str> = jwt.claims["roles"]
            .as_array()
            .expect("roles")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(roles, DEFAULT_PERMISSIONS.into_iter().collect());

        sim.state().graph.set_roles(&["User.Read.All"]);
        let narrower = Jwt::parse(&sign_in(&sim).await).expect("a JWT");
        assert_eq!(narrower.claims["roles"], json!(["User.Read.All"]));
    }

    #[tokio::test]
    async fn each_call_needs_its_permission_and_a_broader_one_will_do() {
        let sim = Sim::new();
        let id = sim.state().graph.add_guest("ana@partner.example", "Ana");
        let invitation = json!({
            "invitedUserEmailAddress": "bo@partner.example",
            "inviteRedirectUrl": "https://portal.example",
        });
        // No permission at all: every call is denied, in Graph's error shape.
        sim.state().graph.set_roles(&[]);
        let none = sign_in(&sim).await;
        let calls = [
            (Method::GET, "/v1.0/users".to_owned(), None),
            (Method::GET, format!("/v1.0/users/{id}"), None),
            (Method::GET, "/v1.0/users/delta".to_owned(), None),
            (
                Method::PATCH,
                format!("/v1.0/users/{id}"),
                Some(json!({"accountEnabled": false})),
            ),
            (Method::DELETE, format!("/v1.0/users/{id}"), None),
            (
                Method::POST,
                "/v1.0/invitations".to_owned(),
                Some(invitation.clone()),
            ),
        ];
        for (method, uri, body) in calls.clone() {
            let (status, answer) = call(&sim, method.clone(), &uri, Some(&none), body).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}: {answer}");
            assert_eq!(code(&answer), "Authorization_RequestDenied");
            assert_eq!(
                answer["error"]["message"],
                "Insufficient privileges to complete the operation."
            );
            assert!(answer["error"]["innerError"]["request-id"].is_string());
            assert!(answer["error"]["innerError"]["date"].is_string());
        }
        // The least privileged permission of one call does not open another.
        sim.state().graph.set_roles(&["User.Invite.All"]);
        let invite_only = sign_in(&sim).await;
        let (status, _) = call(&sim, Method::GET, "/v1.0/users", Some(&invite_only), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, answer) = call(
            &sim,
            Method::POST,
            "/v1.0/invitations",
            Some(&invite_only),
            Some(invitation.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        // Disabling needs a read permission too; deleting does not.
        sim.state()
            .graph
            .set_roles(&["User.EnableDisableAccount.All", "User.DeleteRestore.All"]);
        let no_read = sign_in(&sim).await;
        let (status, _) = call(
            &sim,
            Method::PATCH,
            &format!("/v1.0/users/{id}"),
            Some(&no_read),
            Some(json!({"accountEnabled": false})),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // User.ReadWrite.All covers everything guestops does.
        sim.state().graph.set_roles(&["User.ReadWrite.All"]);
        let broad = sign_in(&sim).await;
        for (method, uri, body) in calls {
            let body = body.map(|b| {
                if uri.ends_with("invitations") {
                    json!({"invitedUserEmailAddress": "cy@partner.example", "inviteRedirectUrl": "https://portal.example"})
                } else {
                    b
                }
            });
            let (status, answer) = call(&sim, method.clone(), &uri, Some(&broad), body).await;
            assert!(status.is_success(), "{method} {uri}: {status} {answer}");
        }
    }

    // Issue 9 item 4: deleted items, their look-up and the restore with its permission.
    #[tokio::test]
    async fn a_deleted_guest_is_found_by_mail_not_upn_and_restored_only_with_the_permission() {
        let sim = Sim::new();
        let id = sim.state().graph.add_guest("ana@partner.example", "Ana");
        let upn = sim
            .state()
            .graph
            .user(&id)
            .expect("ana")
            .user_principal_name
            .clone();
        assert!(sim.state().graph.delete_user(&id));
        let token = sign_in(&sim).await;
        let list = |filter: &str| {
            format!(
                "/v1.0/directory/deletedItems/microsoft.graph.user?$filter={}&$select=id,mail,userPrincipalName",
                encode(filter)
            )
        };
        let by_mail =
            list("mail eq 'ANA@partner.example' or otherMails/any(x:x eq 'ana@partner.example')");
        let (status, answer) = call(&sim, Method::GET, &by_mail, Some(&token), None).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["value"][0]["id"], id.as_str());
        assert_eq!(answer["value"][0]["@odata.type"], "#microsoft.graph.user");
        assert_eq!(
            answer["value"][0]["userPrincipalName"],
            format!("{id}{upn}")
        );
        let by_upn = list(&format!("userPrincipalName eq '{upn}'"));
        let (_, answer) = call(&sim, Method::GET, &by_upn, Some(&token), None).await;
        assert_eq!(
            answer["value"],
            json!([]),
            "the UPN of a deleted user carries its id"
        );
        let (status, _) = call(
            &sim,
            Method::GET,
            "/v1.0/directory/deletedItems/microsoft.graph.user?$orderby=displayName",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "strict on what it does not emulate"
        );
        // The invitation of a held address fails.
        let (status, answer) = call(
            &sim,
            Method::POST,
            "/v1.0/invitations",
            Some(&token),
            Some(json!({"invitedUserEmailAddress": "ana@partner.example", "inviteRedirectUrl": "https://portal.example"})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

        let restore = format!("/v1.0/directory/deletedItems/{id}/restore");
        sim.state().graph.set_roles(&[
            "User.Read.All",
            "User.Invite.All",
            "User.EnableDisableAccount.All",
        ]);
        let without = sign_in(&sim).await;
        let (status, answer) = call(&sim, Method::POST, &restore, Some(&without), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
        assert_eq!(code(&answer), "Authorization_RequestDenied");
        assert_eq!(sim.state().graph.deleted_users().len(), 1, "still deleted");
        let (status, _) = call(
            &sim,
            Method::POST,
            &restore,
            Some(&token),
            Some(json!({"anything": 1})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "no body");
        let (status, answer) = call(&sim, Method::POST, &restore, Some(&token), None).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["id"], id.as_str());
        assert_eq!(
            answer["userPrincipalName"],
            upn.as_str(),
            "the UPN is given back"
        );
        assert!(sim.state().graph.user(&id).is_some(), "live again, same id");
        assert_eq!(sim.state().counters.writes, 1);
        let (status, answer) = call(&sim, Method::POST, &restore, Some(&token), None).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "no longer in deleted items: {answer}"
        );
        // User.ReadWrite.All will do too; an address taken meanwhile blocks the restore.
        assert!(sim.state().graph.delete_user(&id));
        sim.state()
            .graph
            .add_guest("ana@partner.example", "Ana again");
        sim.state().graph.set_roles(&["User.ReadWrite.All"]);
        let broad = sign_in(&sim).await;
        let (status, answer) = call(&sim, Method::POST, &restore, Some(&broad), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    }

    #[tokio::test]
    async fn a_token_keeps_the_roles_it_was_issued_with() {
        let sim = Sim::new();
        let before = sign_in(&sim).await;
        sim.state().graph.revoke_permission("User.Read.All");
        let after = sign_in(&sim).await;
        let (status, _) = call(&sim, Method::GET, "/v1.0/users", Some(&before), None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = call(&sim, Method::GET, "/v1.0/users", Some(&after), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn inner_batch_requests_are_checked_one_by_one() {
        let sim = Sim::new();
        sim.state().graph.set_roles(&["User.Read.All"]);
        let token = sign_in(&sim).await;
        let id = sim.state().graph.add_guest("ana@partner.example", "Ana");
        let batch = json!({"requests": [
            {"id": "1", "method": "GET", "url": format!("/users/{id}")},
            {"id": "2", "method": "DELETE", "url": format!("/users/{id}")},
        ]});
        let (status, answer) = call(
            &sim,
            Method::POST,
            "/v1.0/$batch",
            Some(&token),
            Some(batch),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let responses = answer["responses"].as_array().expect("responses");
        let of = |wanted: &str| {
            responses
                .iter()
                .find(|r| r["id"] == wanted)
                .expect("an answer per request")
        };
        assert_eq!(of("1")["status"], 200);
        assert_eq!(of("2")["status"], 403);
        assert_eq!(
            of("2")["body"]["error"]["code"],
            "Authorization_RequestDenied"
        );
        assert_eq!(sim.state().graph.users().len(), 1);
    }

    #[tokio::test]
    async fn the_authorization_policy_needs_policy_read_all() {
        let sim = Sim::new();
        let token = sign_in(&sim).await;
        let uri = "/v1.0/policies/authorizationPolicy";
        let (status, answer) = call(&sim, Method::GET, uri, Some(&token), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(code(&answer), "Authorization_RequestDenied");

        sim.state().graph.grant_permission("Policy.Read.All");
        let token = sign_in(&sim).await;
        let (status, answer) = call(&sim, Method::GET, uri, Some(&token), None).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["id"], "authorizationPolicy");
        assert_eq!(answer["allowInvitesFrom"], "everyone");
        assert!(answer["defaultUserRolePermissions"].is_object());

        sim.state()
            .graph
            .set_allow_invites_from("adminsAndGuestInviters");
        let (_, answer) = call(&sim, Method::GET, uri, Some(&token), None).await;
        assert_eq!(answer["allowInvitesFrom"], "adminsAndGuestInviters");
        let (status, _) = call(&sim, Method::GET, uri, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}
