//! The emulated Power Embedded API (`docs/specs/power-embedded.md` §1 and §4).
//!
//! Follows the documented behaviour, quirks included, and is strict where the real behaviour
//! is unknown:
//! - every `/api/...` request needs `X-API-Key` (401 `{"message"}` otherwise; a key limited to
//!   some endpoints gets 403 elsewhere);
//! - `GET /api/user`: the paged envelope `{pageIndex, totalPages, hasNextPage,
//!   hasPreviousPage, data}`, 1-based `pageNumber`, a fixed server page size (no `pageSize`
//!   parameter; unknown query parameters are ignored, keys are case-insensitive as in ASP.NET),
//!   `email`/`name` filters that are case-insensitive **contains** matches, a stable order
//!   (by name, then email);
//! - `POST /api/user`: `{email, name, role, …}` validated (400 ModelState-like
//!   `{"message","errors"}`), a duplicate email is refused with 400 (unknown in reality: the
//!   emulator never creates a second one), success is 200 with an **empty** body;
//! - `PUT /api/user`: the full object with `id`; fields missing from the body are **cleared**
//!   (arrays emptied, flags false, nullables null: the worst case of §4), the email cannot
//!   change, 404 for an unknown id;
//! - the write-only flags ([`HIDDEN_FLAGS`]: `bypassFirewall`, `canExportReportOtherPages`,
//!   §1.5) are stored from `POST`, `PUT` and seeds but **never returned** by `GET`; a `PUT`
//!   that omits one resets it to `false` (kept with [`PortalDb::put_keeps_missing`]). Tests
//!   read them with [`PortalDb::write_only_flags`];
//! - `DELETE /api/user/{email}`: exact, case-insensitive match on the decoded path segment,
//!   404 `{"message":"User not found"}`;
//! - `PUT /api/user/link-groups` `{userEmail, groups}`: the groups must exist
//!   ([`PortalDb::add_group`]), 404 for an unknown user or group.
//!
//! The unknowns of the spec are switches on [`PortalDb`], so that `guestops probe portal` can
//! observe each case: [`PortalDb::put_keeps_missing`] (§4 (a) instead of the default worst
//! case), [`PortalDb::duplicate_post_status`], [`PortalDb::delete_missing_status`] and
//! [`PortalDb::reversed_role_codes`] (the conflicting mapping of §1.6).

use std::collections::{BTreeMap, BTreeSet};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use serde_json::{Map, Value, json};

use super::{Sim, WriteKind};

/// The `X-API-Key` the emulated portal accepts unless changed.
pub const SIM_API_KEY: &str = "sim-portal-api-key";

/// Users per page unless changed ([`PortalDb::page_size`]).
pub const DEFAULT_PAGE_SIZE: usize = 25;

/// The request log keeps at most this many entries (the oldest half is dropped).
const MAX_LOGGED_REQUESTS: usize = 10_000;

/// Array fields of a user (GUID or name strings); cleared to `[]`.
pub const ARRAY_FIELDS: [&str; 4] = ["reports", "groups", "companies", "reportNames"];

/// Nullable string fields of a user; cleared to `null`.
pub const NULLABLE_FIELDS: [&str; 4] = [
    "reportLandingPage",
    "department",
    "expirationDate",
    "windowsAdUser",
];

/// Boolean fields of a user as listed by `GET /api/user`; cleared to `false`.
pub const FLAG_FIELDS: [&str; 19] = [
    "canEditReport",
    "canCreateReport",
    "canOverwriteReport",
    "canRefreshDataset",
    "canCreateSubscription",
    "canDownloadPbix",
    "canExportReport",
    "canExportReportWithHiddenPages",
    "hideHomePages",
    "hideAddressBook",
    "hideFavorites",
    "hideMostAccessed",
    "hideRecentlyAccessed",
    "hideRecentlyPublished",
    "hideFolders",
    "canCreateNewUsers",
    "canStartCapacityByDemand",
    "canDisplayVisualHeaders",
    "accessReportAnyTime",
];

/// Boolean fields accepted on writes but never returned by `GET` (§1.5).
pub const WRITE_ONLY_FIELDS: [&str; 3] = [
    "bypassFirewall",
    "canExportReportOtherPages",
    "sendWelcomeEmail",
];

/// The write-only fields that are a user's settings (stored, never listed, reset to `false`
/// by a `PUT` that omits them); `sendWelcomeEmail` is an instruction of the `POST`, not stored.
pub const HIDDEN_FLAGS: [&str; 2] = ["bypassFirewall", "canExportReportOtherPages"];

/// The role codes the emulated portal knows (1 Administrator … 4 Workspace Contributor).
pub const ROLE_CODES: std::ops::RangeInclusive<i64> = 1..=4;

/// Successful writes, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortalWrites {
    /// `POST /api/user` that created a user.
    pub creates: u64,
    /// `PUT /api/user` that updated a user.
    pub updates: u64,
    /// `DELETE /api/user/{email}` that removed a user.
    pub deletes: u64,
}

/// A seeding mistake.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// Users are JSON objects.
    #[error("a portal user must be a JSON object, not {0}")]
    NotAnObject(String),
}

/// The emulated portal organization.
#[derive(Debug)]
pub struct PortalDb {
    /// The organization-wide key (`X-API-Key`), [`SIM_API_KEY`] unless changed.
    pub api_key: String,
    /// Users per page of `GET /api/user` (the server decides; at least 1).
    pub page_size: usize,
    /// Keys limited to some endpoints (`"GET /api/user"`, `"POST /api/user"`,
    /// `"PUT /api/user"`, `"DELETE /api/user/{email}"`); any other endpoint answers 403.
    pub limited_keys: BTreeMap<String, BTreeSet<String>>,
    users: Vec<Map<String, Value>>,
    creates_per_email: BTreeMap<String, u32>,
    writes: PortalWrites,
    during_scan: Vec<(u32, Map<String, Value>)>,
    requests: Vec<String>,
    /// Speak the old blog post's mapping on the wire (§1.6: 1 Viewer, 3 Administrator): users
    /// are stored by meaning ([`ROLE_CODES`]) and codes 1 and 3 are swapped in every listed
    /// user and in every `role` received. `false` (the default): the documented mapping.
    pub reversed_role_codes: bool,
    /// `PUT /api/user` keeps the fields missing from the body (§4 case (a)), the write-only
    /// flags included; `false` (the default): they are cleared (the worst case).
    pub put_keeps_missing: bool,
    /// Fields `PUT /api/user` resets to their default even when the body carries them (a
    /// portal whose `PUT` does not take them, e.g. groups changed only through `link-groups`):
    /// what guestops' check after an update must catch. Empty by default.
    pub put_resets: BTreeSet<String>,
    /// The status of `POST /api/user` for an address that is registered already (unknown in
    /// reality; default 400 with a ModelState-like body). Nothing is created either way.
    pub duplicate_post_status: u16,
    /// The status of `DELETE /api/user/{email}` for an address that is not registered
    /// (default 404 `{"message":"User not found"}`).
    pub delete_missing_status: u16,
    groups: BTreeSet<String>,
    /// The write-only flags of each user ([`HIDDEN_FLAGS`]), by lower-case id.
    hidden: BTreeMap<String, BTreeMap<String, bool>>,
}

impl Default for PortalDb {
    fn default() -> Self {
        Self {
            api_key: SIM_API_KEY.to_owned(),
            page_size: DEFAULT_PAGE_SIZE,
            limited_keys: BTreeMap::new(),
            users: Vec::new(),
            creates_per_email: BTreeMap::new(),
            writes: PortalWrites::default(),
            during_scan: Vec::new(),
            requests: Vec::new(),
            reversed_role_codes: false,
            put_keeps_missing: false,
            put_resets: BTreeSet::new(),
            duplicate_post_status: 400,
            delete_missing_status: 404,
            groups: BTreeSet::new(),
            hidden: BTreeMap::new(),
        }
    }
}

/// Lower-case, trimmed: how the emulator compares addresses.
fn normalize(email: &str) -> String {
    email.trim().to_lowercase()
}

/// A user with every field of §1.5 at its default, and a fresh GUID.
pub fn default_user(email: &str, name: &str, role: i64) -> Map<String, Value> {
    let mut user = Map::new();
    user.insert(
        "id".to_owned(),
        Value::String(uuid::Uuid::new_v4().to_string()),
    );
    user.insert("email".to_owned(), Value::String(email.to_owned()));
    user.insert("name".to_owned(), Value::String(name.to_owned()));
    user.insert("role".to_owned(), Value::from(role));
    fill_defaults(&mut user);
    user
}

/// The cleared value of a field (`PUT` without it, [`PortalDb::put_resets`]).
fn cleared(key: &str) -> Value {
    if ARRAY_FIELDS.contains(&key) {
        Value::Array(Vec::new())
    } else if FLAG_FIELDS.contains(&key) {
        Value::Bool(false)
    } else {
        Value::Null
    }
}

/// Takes the write-only flags out of `user` (a seed or a `POST` body): every one of
/// [`HIDDEN_FLAGS`], `false` when absent or not a boolean.
fn take_hidden(user: &mut Map<String, Value>) -> BTreeMap<String, bool> {
    HIDDEN_FLAGS
        .iter()
        .map(|flag| {
            let value = user
                .remove(*flag)
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            ((*flag).to_owned(), value)
        })
        .collect()
}

/// Adds every known field missing from `user` at its default value.
fn fill_defaults(user: &mut Map<String, Value>) {
    for field in ARRAY_FIELDS {
        user.entry(field)
            .or_insert_with(|| Value::Array(Vec::new()));
    }
    for field in NULLABLE_FIELDS {
        user.entry(field).or_insert(Value::Null);
    }
    for field in FLAG_FIELDS {
        user.entry(field).or_insert(Value::Bool(false));
    }
}

fn email_of(user: &Map<String, Value>) -> &str {
    user.get("email").and_then(Value::as_str).unwrap_or("")
}

fn name_of(user: &Map<String, Value>) -> &str {
    user.get("name").and_then(Value::as_str).unwrap_or("")
}

fn id_of(user: &Map<String, Value>) -> &str {
    user.get("id").and_then(Value::as_str).unwrap_or("")
}

impl PortalDb {
    /// Inserts a user as a full JSON object (groups, reports, flags, unknown fields…), without
    /// validation and without counting a write. Known fields missing from it get their
    /// defaults; a missing `id` gets a fresh GUID. Returns the id.
    pub fn insert_user(&mut self, user: Value) -> Result<String, SeedError> {
        let mut user = match user {
            Value::Object(map) => map,
            other => return Err(SeedError::NotAnObject(other.to_string())),
        };
        if !matches!(user.get("id"), Some(Value::String(_))) {
            user.insert(
                "id".to_owned(),
                Value::String(uuid::Uuid::new_v4().to_string()),
            );
        }
        let hidden = take_hidden(&mut user);
        fill_defaults(&mut user);
        let id = id_of(&user).to_owned();
        self.hidden.insert(id.to_lowercase(), hidden);
        self.users.push(user);
        Ok(id)
    }

    /// Inserts a user with default fields (no write counted). Returns the id.
    pub fn add_user(&mut self, email: &str, name: &str, role: i64) -> String {
        let mut user = default_user(email, name, role);
        let id = id_of(&user).to_owned();
        self.hidden
            .insert(id.to_lowercase(), take_hidden(&mut user));
        self.users.push(user);
        id
    }

    /// The write-only flags stored for the user with `email` ([`HIDDEN_FLAGS`]: what the last
    /// `POST`/`PUT` sent, or `false`), which `GET` never shows. `None`: no such user.
    pub fn write_only_flags(&self, email: &str) -> Option<BTreeMap<String, bool>> {
        let id = id_of(self.find(email)?).to_lowercase();
        Some(self.hidden.get(&id).cloned().unwrap_or_else(|| {
            HIDDEN_FLAGS
                .iter()
                .map(|f| ((*f).to_owned(), false))
                .collect()
        }))
    }

    /// Sets a write-only flag of the user with `email` (a change made by hand in the portal);
    /// `false` when there is no such user or `flag` is not one of [`HIDDEN_FLAGS`].
    pub fn set_write_only_flag(&mut self, email: &str, flag: &str, value: bool) -> bool {
        let Some(user) = self.find(email) else {
            return false;
        };
        if !HIDDEN_FLAGS.contains(&flag) {
            return false;
        }
        let id = id_of(user).to_lowercase();
        self.hidden
            .entry(id)
            .or_default()
            .insert(flag.to_owned(), value);
        true
    }

    /// The user whose email equals `email`, case-insensitively.
    pub fn find(&self, email: &str) -> Option<&Map<String, Value>> {
        let wanted = normalize(email);
        self.users.iter().find(|u| normalize(email_of(u)) == wanted)
    }

    /// The user with this id.
    pub fn find_by_id(&self, id: &str) -> Option<&Map<String, Value>> {
        self.users
            .iter()
            .find(|u| id_of(u).eq_ignore_ascii_case(id))
    }

    /// Every user, in the listing order (name, then email, case-insensitively).
    pub fn users(&self) -> Vec<&Map<String, Value>> {
        let mut users: Vec<&Map<String, Value>> = self.users.iter().collect();
        users.sort_by_cached_key(|u| (name_of(u).to_lowercase(), normalize(email_of(u))));
        users
    }

    /// How many users the portal holds.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the portal holds no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Removes a user without counting a write (a change made by hand in the portal).
    pub fn remove(&mut self, email: &str) -> bool {
        let wanted = normalize(email);
        let before = self.users.len();
        self.users.retain(|u| normalize(email_of(u)) != wanted);
        self.users.len() != before
    }

    /// How many times `POST /api/user` created a user with this address (case-insensitive).
    pub fn creates_for(&self, email: &str) -> u32 {
        self.creates_per_email
            .get(&normalize(email))
            .copied()
            .unwrap_or(0)
    }

    /// Creates per normalized address.
    pub fn create_counts(&self) -> &BTreeMap<String, u32> {
        &self.creates_per_email
    }

    /// Successful writes so far.
    pub fn writes(&self) -> PortalWrites {
        self.writes
    }

    /// Sets the server page size (at least 1).
    pub fn set_page_size(&mut self, page_size: usize) {
        self.page_size = page_size.max(1);
    }

    /// Simulates a change made concurrently with a scan: right after serving page
    /// `after_page` of a `GET /api/user`, `user` is inserted (as [`PortalDb::insert_user`]),
    /// shifting later pages.
    pub fn insert_during_scan(&mut self, after_page: u32, user: Value) -> Result<(), SeedError> {
        match user {
            Value::Object(map) => {
                self.during_scan.push((after_page, map));
                Ok(())
            }
            other => Err(SeedError::NotAnObject(other.to_string())),
        }
    }

    /// The requests that reached the portal handlers (the most recent ones), as
    /// `METHOD path?query` (raw, as sent). Requests answered by injected faults are not here.
    pub fn requests(&self) -> &[String] {
        &self.requests
    }

    /// Creates a portal group (an id `PUT /api/user/link-groups` accepts).
    pub fn add_group(&mut self, id: &str) {
        self.groups.insert(id.to_lowercase());
    }

    /// A role code as it travels on the wire: codes 1 and 3 swapped when
    /// [`PortalDb::reversed_role_codes`] (an involution: the same swap reads and writes).
    fn wire_role(&self, code: i64) -> i64 {
        match (self.reversed_role_codes, code) {
            (true, 1) => 3,
            (true, 3) => 1,
            (_, code) => code,
        }
    }

    /// `user` as listed: its `role` on the wire.
    fn listed(&self, user: &Map<String, Value>) -> Value {
        let mut user = user.clone();
        if let Some(code) = user.get("role").and_then(Value::as_i64) {
            user.insert("role".to_owned(), Value::from(self.wire_role(code)));
        }
        Value::Object(user)
    }

    /// Allows `key` only on `endpoints` (e.g. `"GET /api/user"`): 403 elsewhere.
    pub fn add_limited_key(&mut self, key: &str, endpoints: &[&str]) {
        self.limited_keys.insert(
            key.to_owned(),
            endpoints.iter().map(|e| (*e).to_owned()).collect(),
        );
    }

    /// 401/403 unless the request carries a key allowed on `endpoint`.
    fn authorize(&self, headers: &HeaderMap, endpoint: &str) -> Result<(), Refusal> {
        let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) else {
            return Err(message(StatusCode::UNAUTHORIZED, "API key is missing."));
        };
        if key == self.api_key {
            return Ok(());
        }
        match self.limited_keys.get(key) {
            Some(allowed) if allowed.contains(endpoint) => Ok(()),
            Some(_) => Err(message(
                StatusCode::FORBIDDEN,
                "The API key has no permission for this endpoint.",
            )),
            None => Err(message(StatusCode::UNAUTHORIZED, "Invalid API key.")),
        }
    }
}

/// An error answer: a status and a JSON body.
struct Refusal {
    status: StatusCode,
    body: Value,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// `{"message": …}` with `status`.
fn message(status: StatusCode, text: &str) -> Refusal {
    Refusal {
        status,
        body: json!({ "message": text }),
    }
}

/// A 400 in the ASP.NET ModelState-like shape `{"message", "errors": {field: [..]}}`.
fn validation(errors: &BTreeMap<String, Vec<String>>) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        body: json!({
            "message": "One or more validation errors occurred.",
            "errors": errors,
        }),
    }
}

/// Routes of the portal API.
pub fn routes() -> Router<Sim> {
    Router::new()
        .route(
            "/api/user",
            get(list_users).post(create_user).put(update_user),
        )
        .route("/api/user/{email}", delete(delete_user))
        .route("/api/user/link-groups", put(link_groups))
}

fn log(db: &mut PortalDb, method: &Method, uri: &Uri) {
    let target = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| uri.path().to_owned());
    if db.requests.len() >= MAX_LOGGED_REQUESTS {
        db.requests.drain(..MAX_LOGGED_REQUESTS / 2);
    }
    db.requests.push(format!("{method} {target}"));
}

/// `GET /api/user?pageNumber=&email=&name=`.
async fn list_users(State(sim): State<Sim>, headers: HeaderMap, uri: Uri) -> Response {
    let mut state = sim.state();
    let db = &mut state.portal;
    log(db, &Method::GET, &uri);
    if let Err(refusal) = db.authorize(&headers, "GET /api/user") {
        return refusal.into_response();
    }
    let mut page_number: u64 = 1;
    let mut email_filter: Option<String> = None;
    let mut name_filter: Option<String> = None;
    let mut errors = BTreeMap::new();
    for (key, value) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match key.to_ascii_lowercase().as_str() {
            "pagenumber" => match value.trim().parse::<u64>() {
                Ok(n) if n >= 1 => page_number = n,
                _ => {
                    errors.insert(
                        "pageNumber".to_owned(),
                        vec![format!("The value '{value}' is not valid for pageNumber.")],
                    );
                }
            },
            "email" => email_filter = Some(value.to_lowercase()),
            "name" => name_filter = Some(value.to_lowercase()),
            _ => {}
        }
    }
    if !errors.is_empty() {
        return validation(&errors).into_response();
    }
    let page_size = db.page_size.max(1);
    let matching: Vec<Value> = db
        .users()
        .into_iter()
        .filter(|u| {
            email_filter
                .as_deref()
                .is_none_or(|f| email_of(u).to_lowercase().contains(f))
                && name_filter
                    .as_deref()
                    .is_none_or(|f| name_of(u).to_lowercase().contains(f))
        })
        .map(|u| db.listed(u))
        .collect();
    let total_pages = matching.len().div_ceil(page_size) as u64;
    let start =
        usize::try_from((page_number - 1).saturating_mul(page_size as u64)).unwrap_or(usize::MAX);
    let data: Vec<Value> = matching.into_iter().skip(start).take(page_size).collect();
    let body = json!({
        "pageIndex": page_number,
        "totalPages": total_pages,
        "hasNextPage": page_number < total_pages,
        "hasPreviousPage": page_number > 1,
        "data": data,
    });
    // Concurrent changes scheduled for after this page.
    let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut db.during_scan)
        .into_iter()
        .partition(|(after, _)| u64::from(*after) == page_number);
    db.during_scan = later;
    for (_, user) in due {
        // Only objects are ever scheduled.
        let _ = db.insert_user(Value::Object(user));
    }
    let response = (StatusCode::OK, axum::Json(body)).into_response();
    if email_filter.is_some() || name_filter.is_some() {
        return response;
    }
    // The whole listing ends with the page that holds its last user (any page past it
    // holds none: a client that reads it has read them all as well).
    crate::sim::listing_page(
        response,
        "portal users".to_owned(),
        page_number == 1,
        page_number >= total_pages,
    )
}

/// Parses a JSON object body, or the 400/415 to answer.
fn json_object(headers: &HeaderMap, body: &Bytes) -> Result<Map<String, Value>, Refusal> {
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        return Err(message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json.",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(validation(&BTreeMap::from([(
            "$".to_owned(),
            vec!["The JSON value must be an object.".to_owned()],
        )]))),
        Err(err) => Err(validation(&BTreeMap::from([(
            "$".to_owned(),
            vec![format!("The JSON value could not be converted: {err}")],
        )]))),
    }
}

/// Validates the fields shared by POST and PUT: `name`, `role` and the types of the optional
/// known fields. `email` is checked by the caller.
fn validate_common(body: &Map<String, Value>, errors: &mut BTreeMap<String, Vec<String>>) {
    match body.get("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => {}
        _ => {
            errors.insert(
                "Name".to_owned(),
                vec!["The Name field is required.".to_owned()],
            );
        }
    }
    match body.get("role").and_then(Value::as_i64) {
        Some(code) if ROLE_CODES.contains(&code) => {}
        Some(code) => {
            errors.insert(
                "Role".to_owned(),
                vec![format!("The role {code} is not valid.")],
            );
        }
        None => {
            errors.insert(
                "Role".to_owned(),
                vec!["The Role field is required.".to_owned()],
            );
        }
    }
    for field in ARRAY_FIELDS {
        match body.get(field) {
            None => {}
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
            Some(_) => {
                errors.insert(
                    field.to_owned(),
                    vec![format!("{field} must be an array of strings.")],
                );
            }
        }
    }
    for field in NULLABLE_FIELDS {
        match body.get(field) {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => {
                errors.insert(
                    field.to_owned(),
                    vec![format!("{field} must be a string or null.")],
                );
            }
        }
    }
    for field in FLAG_FIELDS.iter().chain(WRITE_ONLY_FIELDS.iter()) {
        match body.get(*field) {
            None | Some(Value::Bool(_)) => {}
            Some(_) => {
                errors.insert(
                    (*field).to_owned(),
                    vec![format!("{field} must be a boolean.")],
                );
            }
        }
    }
}

/// `POST /api/user`.
async fn create_user(
    State(sim): State<Sim>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let mut state = sim.state();
    let db = &mut state.portal;
    log(db, &Method::POST, &uri);
    if let Err(refusal) = db.authorize(&headers, "POST /api/user") {
        return refusal.into_response();
    }
    let body = match json_object(&headers, &body) {
        Ok(body) => body,
        Err(refusal) => return refusal.into_response(),
    };
    let mut errors = BTreeMap::new();
    let email = match body.get("email") {
        Some(Value::String(email)) if email_address::EmailAddress::is_valid(email) => email.clone(),
        Some(Value::String(email)) if !email.is_empty() => {
            errors.insert(
                "Email".to_owned(),
                vec![format!("'{email}' is not a valid e-mail address.")],
            );
            String::new()
        }
        _ => {
            errors.insert(
                "Email".to_owned(),
                vec!["The Email field is required.".to_owned()],
            );
            String::new()
        }
    };
    validate_common(&body, &mut errors);
    if !errors.is_empty() {
        return validation(&errors).into_response();
    }
    if db.find(&email).is_some() {
        return (
            StatusCode::from_u16(db.duplicate_post_status).unwrap_or(StatusCode::BAD_REQUEST),
            axum::Json(json!({
                "message": format!("A user with the e-mail {email} already exists."),
                "errors": { "Email": ["The e-mail is already registered."] },
            })),
        )
            .into_response();
    }
    let name = name_of(&body).to_owned();
    let role = db.wire_role(body.get("role").and_then(Value::as_i64).unwrap_or(0));
    let mut user = default_user(&email, &name, role);
    let mut sent = body.clone();
    let hidden = take_hidden(&mut sent);
    db.hidden.insert(id_of(&user).to_lowercase(), hidden);
    for field in ARRAY_FIELDS
        .iter()
        .chain(NULLABLE_FIELDS.iter())
        .chain(FLAG_FIELDS.iter())
    {
        if let Some(value) = body.get(*field) {
            user.insert((*field).to_owned(), value.clone());
        }
    }
    db.users.push(user);
    *db.creates_per_email.entry(normalize(&email)).or_insert(0) += 1;
    db.writes.creates += 1;
    state.counters.writes += 1;
    // The real response body is undocumented: answer none, so that no client relies on it.
    crate::sim::wrote(StatusCode::OK.into_response(), WriteKind::Register, &email)
}

/// `PUT /api/user`: the full object; what is missing is cleared.
async fn update_user(
    State(sim): State<Sim>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let mut state = sim.state();
    let db = &mut state.portal;
    log(db, &Method::PUT, &uri);
    if let Err(refusal) = db.authorize(&headers, "PUT /api/user") {
        return refusal.into_response();
    }
    let body = match json_object(&headers, &body) {
        Ok(body) => body,
        Err(refusal) => return refusal.into_response(),
    };
    let mut errors = BTreeMap::new();
    let id = match body.get("id") {
        Some(Value::String(id)) if uuid::Uuid::parse_str(id).is_ok() => id.clone(),
        _ => {
            errors.insert(
                "Id".to_owned(),
                vec!["The Id field is required (a GUID).".to_owned()],
            );
            String::new()
        }
    };
    if !matches!(body.get("email"), Some(Value::String(e)) if !e.is_empty()) {
        errors.insert(
            "Email".to_owned(),
            vec!["The Email field is required.".to_owned()],
        );
    }
    validate_common(&body, &mut errors);
    if !errors.is_empty() {
        return validation(&errors).into_response();
    }
    let Some(index) = db
        .users
        .iter()
        .position(|u| id_of(u).eq_ignore_ascii_case(&id))
    else {
        return message(StatusCode::NOT_FOUND, "User not found").into_response();
    };
    let stored = &db.users[index];
    if body.get("email").and_then(Value::as_str) != Some(email_of(stored)) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "message": "The e-mail of a user cannot be changed.",
                "errors": { "Email": ["The e-mail cannot be changed."] },
            })),
        )
            .into_response();
    }
    // Every field the user has is replaced by the body's value, or cleared when missing
    // (kept with `put_keeps_missing`).
    let keep = db.put_keeps_missing;
    let mut updated = Map::new();
    for (key, old) in stored {
        let value = match body.get(key) {
            _ if db.put_resets.contains(key) => cleared(key),
            Some(value) if key == "role" => Value::from(db.wire_role(value.as_i64().unwrap_or(0))),
            Some(value) => value.clone(),
            None if keep => old.clone(),
            None if key == "id" => old.clone(),
            None => cleared(key),
        };
        updated.insert(key.clone(), value);
    }
    // The write-only flags: as sent, else kept or reset like any missing field.
    let hidden_key = id.to_lowercase();
    let old_hidden = db.hidden.get(&hidden_key).cloned().unwrap_or_default();
    let hidden: BTreeMap<String, bool> = HIDDEN_FLAGS
        .iter()
        .map(|flag| {
            let value = match body.get(*flag).and_then(Value::as_bool) {
                _ if db.put_resets.contains(*flag) => false,
                Some(value) => value,
                None if keep => old_hidden.get(*flag).copied().unwrap_or(false),
                None => false,
            };
            ((*flag).to_owned(), value)
        })
        .collect();
    db.hidden.insert(hidden_key, hidden);
    let email = email_of(&updated).to_owned();
    db.users[index] = updated;
    db.writes.updates += 1;
    state.counters.writes += 1;
    crate::sim::wrote(
        StatusCode::OK.into_response(),
        WriteKind::UpdatePortal,
        &email,
    )
}

/// `DELETE /api/user/{email}`.
async fn delete_user(
    State(sim): State<Sim>,
    headers: HeaderMap,
    uri: Uri,
    Path(email): Path<String>,
) -> Response {
    let mut state = sim.state();
    let db = &mut state.portal;
    log(db, &Method::DELETE, &uri);
    if let Err(refusal) = db.authorize(&headers, "DELETE /api/user/{email}") {
        return refusal.into_response();
    }
    if !email_address::EmailAddress::is_valid(&email) {
        return validation(&BTreeMap::from([(
            "userEmail".to_owned(),
            vec![format!("'{email}' is not a valid e-mail address.")],
        )]))
        .into_response();
    }
    let wanted = email.to_lowercase();
    let Some(index) = db
        .users
        .iter()
        .position(|u| email_of(u).to_lowercase() == wanted)
    else {
        let status =
            StatusCode::from_u16(db.delete_missing_status).unwrap_or(StatusCode::NOT_FOUND);
        return message(status, "User not found").into_response();
    };
    db.users.remove(index);
    db.writes.deletes += 1;
    state.counters.writes += 1;
    crate::sim::wrote(
        StatusCode::OK.into_response(),
        WriteKind::Unregister,
        &email,
    )
}

/// `PUT /api/user/link-groups` `{userEmail, groups: [id, …]}`: adds the groups to the user's
/// `groups` (an id linked already stays once).
async fn link_groups(
    State(sim): State<Sim>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let mut state = sim.state();
    let db = &mut state.portal;
    log(db, &Method::PUT, &uri);
    if let Err(refusal) = db.authorize(&headers, "PUT /api/user/link-groups") {
        return refusal.into_response();
    }
    let body = match json_object(&headers, &body) {
        Ok(body) => body,
        Err(refusal) => return refusal.into_response(),
    };
    let email = body.get("userEmail").and_then(Value::as_str).unwrap_or("");
    let groups: Option<Vec<String>> = body.get("groups").and_then(Value::as_array).and_then(|a| {
        a.iter()
            .map(|g| g.as_str().map(str::to_lowercase))
            .collect()
    });
    let Some(groups) = groups.filter(|g| !g.is_empty() && !email.is_empty()) else {
        return validation(&BTreeMap::from([(
            "$".to_owned(),
            vec!["userEmail and a non-empty array of group ids are required.".to_owned()],
        )]))
        .into_response();
    };
    if let Some(unknown) = groups.iter().find(|g| !db.groups.contains(*g)) {
        return message(StatusCode::NOT_FOUND, &format!("Group {unknown} not found"))
            .into_response();
    }
    let wanted = normalize(email);
    let Some(user) = db
        .users
        .iter_mut()
        .find(|u| normalize(email_of(u)) == wanted)
    else {
        return message(StatusCode::NOT_FOUND, "User not found").into_response();
    };
    let linked = user
        .entry("groups")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(linked) = linked {
        for group in groups {
            if !linked
                .iter()
                .any(|g| g.as_str().is_some_and(|g| g.eq_ignore_ascii_case(&group)))
            {
                linked.push(Value::String(group));
            }
        }
    }
    db.writes.updates += 1;
    state.counters.writes += 1;
    crate::sim::wrote(
        StatusCode::OK.into_response(),
        WriteKind::OtherPortal,
        &wanted,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_users_get_every_field() {
        let mut db = PortalDb::default();
        let id = db
            .insert_user(json!({"email": "a@x.example", "name": "A", "role": 1, "groups": ["g"]}))
            .expect("an object");
        let user = db.find("A@X.EXAMPLE").expect("found case-insensitively");
        assert_eq!(id_of(user), id);
        assert_eq!(user["groups"], json!(["g"]));
        assert_eq!(user["reports"], json!([]));
        assert_eq!(user["department"], Value::Null);
        assert_eq!(user["canCreateNewUsers"], json!(false));
        assert!(db.insert_user(json!([1])).is_err());
    }

    #[test]
    fn reversed_role_codes_swap_administrator_and_viewer_on_the_wire() {
        let mut db = PortalDb::default();
        db.add_user("a@x.example", "A", 1);
        db.add_user("v@x.example", "V", 3);
        db.add_user("c@x.example", "C", 2);
        let listed =
            |db: &PortalDb, email: &str| db.listed(db.find(email).expect("seeded"))["role"].clone();
        assert_eq!(listed(&db, "a@x.example"), json!(1));
        db.reversed_role_codes = true;
        assert_eq!(listed(&db, "a@x.example"), json!(3));
        assert_eq!(listed(&db, "v@x.example"), json!(1));
        assert_eq!(listed(&db, "c@x.example"), json!(2));
        assert_eq!(
            db.wire_role(db.wire_role(1)),
            1,
            "the same swap reads and writes"
        );
    }

    #[test]
    fn write_only_flags_are_stored_but_never_listed() {
        let mut db = PortalDb::default();
        db.insert_user(
            json!({"email": "a@x.example", "name": "A", "role": 1, "bypassFirewall": true}),
        )
        .expect("an object");
        let user = db.find("a@x.example").expect("seeded");
        assert!(user.get("bypassFirewall").is_none(), "never listed");
        assert!(db.listed(user).get("bypassFirewall").is_none());
        let flags = db.write_only_flags("a@x.example").expect("seeded");
        assert_eq!(flags.get("bypassFirewall"), Some(&true));
        assert_eq!(flags.get("canExportReportOtherPages"), Some(&false));
        assert!(db.set_write_only_flag("a@x.example", "canExportReportOtherPages", true));
        assert!(!db.set_write_only_flag("a@x.example", "hideFolders", true));
    }

    #[test]
    fn listing_order_is_by_name_then_email() {
        let mut db = PortalDb::default();
        db.add_user("z@x.example", "Bob", 1);
        db.add_user("b@x.example", "alice", 1);
        db.add_user("a@x.example", "Bob", 1);
        let emails: Vec<&str> = db.users().into_iter().map(email_of).collect();
        assert_eq!(emails, ["b@x.example", "a@x.example", "z@x.example"]);
    }
}
