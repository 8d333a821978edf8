//! The Power Embedded HTTP client (`docs/specs/power-embedded.md` §1, design §7).
//!
//! Follows the documented behaviour of the API, not the simulator's conveniences:
//! - every request carries `X-API-Key` (a sensitive header) and goes through the shared
//!   [`Edge`] (redirects off, so the key never follows one; 429 always retried, 5xx/transport
//!   only for idempotent requests; writes paced at `portal.maxWritesPerSecond` by one
//!   [`Pacer`] shared by the client's clones, paused by every `Retry-After`);
//! - listings loop `pageNumber=1,2,…` until `hasNextPage` is false, guarded by
//!   `pageIndex < totalPages` and a hard page cap (fail closed), and de-duplicate by `id`;
//! - the `email` filter is a contains match, so the client matches exactly itself;
//! - `POST /api/user` succeeds on 200/201/204 with any body (the body is undocumented);
//! - `PUT /api/user` sends back every field the GET returned, unknown ones included, because
//!   leaving a field out may clear it (§4), and then reads the user once more: any field other
//!   than `name` and `role` that changed is a loss, reported as [`PortalError::FieldsLost`];
//! - the write-only flags (`bypassFirewall`, `canExportReportOtherPages`, §1.5) cannot be read
//!   back: only those the operator stated ([`super::WriteOnlyFlags`]) are sent, on every
//!   `POST` and `PUT`;
//! - `DELETE /api/user/{email}` percent-encodes the address as one path segment; 404 means
//!   "already gone".
//!
//! Must not: read the configuration (it takes [`PortalSettings`]), retry or time out on its
//! own (the edge does), or decide what to change (the plan does).

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};
use url::Url;

use super::{NewPortalUser, Portal, PortalSettings, PortalUser, RoleCodes};
use crate::desired::spec::Role;
use crate::remote::Credential;
use crate::remote::http::{self, Edge, Idempotency, Request, RetryPolicy, TransportError};
use crate::remote::identity;
use crate::remote::pace::Pacer;

/// Pages a listing may read before it is refused as endless (fail closed).
pub const DEFAULT_MAX_PAGES: u32 = 10_000;

/// The header that carries the API key.
pub const API_KEY_HEADER: &str = "X-API-Key";

/// At most this much of an unparseable error body is kept in an error.
pub(crate) const MAX_ERROR_BODY: usize = 512;

/// Everything but RFC 3986 unreserved characters is encoded in a path segment (`@` → `%40`,
/// `'` → `%27`, `+` → `%2B`, `/` → `%2F`).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A failed portal operation.
///
/// `operation` names the request (e.g. `GET /api/user page 3`), `user` the address concerned.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    /// The portal answered with an error status (generic form, also used by fakes).
    #[error("the portal answered {status} to {operation}: {message}")]
    Api {
        /// What was being done.
        operation: String,
        /// HTTP status.
        status: u16,
        /// `message` from the body, or the raw body.
        message: String,
    },

    /// The portal answered an error status other than 401/403/429 (400 validation, 404, 5xx).
    #[error(
        "the portal answered {status} to {operation}{}: {message}{}",
        for_user(.user),
        errors_suffix(.errors)
    )]
    Rejected {
        /// What was being done.
        operation: String,
        /// The address concerned, if any.
        user: Option<String>,
        /// HTTP status.
        status: u16,
        /// `message` of the body, or the raw body (truncated).
        message: String,
        /// The body's `errors` member (ASP.NET ModelState-like), as compact JSON.
        errors: Option<String>,
    },

    /// 401: the key is missing, wrong or revoked.
    #[error(
        "the portal refused the API key on {operation} (401): check {key_origin} / regenerate the key"
    )]
    Unauthorized {
        /// What was being done.
        operation: String,
        /// Where the key was read from (a file and its key, a credential, a variable).
        key_origin: String,
        /// `message` of the body, if any.
        message: String,
    },

    /// 403: the key is valid but not allowed on this endpoint (granular keys).
    #[error(
        "the API key lacks permission for {endpoint} (403): grant the user endpoints to the key"
    )]
    Forbidden {
        /// Method and path template, e.g. `DELETE /api/user/{email}`.
        endpoint: String,
        /// What was being done.
        operation: String,
        /// `message` of the body, if any.
        message: String,
    },

    /// 429 that outlasted the retry budget.
    #[error(
        "the portal kept throttling {operation}{} (429) beyond the retry budget{}: retry later or lower portal.concurrency or portal.maxWritesPerSecond",
        for_user(.user),
        .retry_after.map(|d| format!(" (last Retry-After {}s)", d.as_secs_f64())).unwrap_or_default()
    )]
    Throttled {
        /// What was being done.
        operation: String,
        /// The address concerned, if any.
        user: Option<String>,
        /// The last `Retry-After`, if any.
        retry_after: Option<Duration>,
    },

    /// The `PUT /api/user` took effect but the read after it shows that fields guestops sent
    /// back unchanged were changed (cleared, reset): the portal's `PUT` does not keep them.
    #[error(
        "the PUT /api/user of {email} changed {} field(s) it was sent unchanged: {}; the new name and role are stored, the lost values are not restored: set them again in the Administration Portal (Users → {email}) and check the portal's PUT with guestops probe portal (docs/specs/power-embedded.md §4)",
        .fields.len(),
        lost_list(.fields)
    )]
    FieldsLost {
        /// The address of the user.
        email: String,
        /// What changed, field by field, in the order of the first read's object.
        fields: Vec<super::LostField>,
    },

    /// The `PUT /api/user` was accepted but the read after it, which checks that nothing else
    /// changed, failed.
    #[error(
        "the PUT /api/user of {email} was accepted but the read that checks its other fields failed, so a loss of groups, reports, companies or flags cannot be ruled out: look at the user in the Administration Portal (Users)"
    )]
    Unverified {
        /// The address of the user.
        email: String,
        /// Why the read failed.
        #[source]
        source: Box<PortalError>,
    },

    /// The user to update does not exist (any more) in the portal.
    #[error(
        "no portal user has the email {email} ({operation}): it was removed meanwhile; the next reconcile re-observes it"
    )]
    UserNotFound {
        /// What was being done.
        operation: String,
        /// The address looked for.
        email: String,
    },

    /// Several portal users carry the same address (case-insensitively): guestops will not
    /// guess which one is meant.
    #[error(
        "{count} portal users have the email {email}: remove the duplicates in the Administration Portal (Users) so that one remains"
    )]
    DuplicateUsers {
        /// The address.
        email: String,
        /// How many users carry it.
        count: usize,
    },

    /// A response guestops relies on could not be understood.
    #[error("the portal's answer to {operation} is malformed: {detail}")]
    Malformed {
        /// What was being done.
        operation: String,
        /// What is wrong, naming the page, item and field.
        detail: String,
    },

    /// No HTTP answer (timeout, connection reset, TLS, …) after the retries allowed.
    #[error(
        "{operation}{} got no answer from the portal{}: check portal.baseUrl and the network",
        for_user(.user),
        if *.maybe_sent { " (the request may have been processed)" } else { "" }
    )]
    Transport {
        /// What was being done.
        operation: String,
        /// The address concerned, if any.
        user: Option<String>,
        /// Whether the request may have reached the portal: a write may have happened.
        maybe_sent: bool,
        /// The underlying failure.
        #[source]
        source: TransportError,
    },

    /// The listing still had pages after the hard page cap: refused as incomplete.
    #[error(
        "{operation} still had more pages after {max_pages} pages: the listing is refused as incomplete (is the portal ignoring pageNumber?)"
    )]
    PageCapExceeded {
        /// The listing.
        operation: String,
        /// The cap.
        max_pages: u32,
    },

    /// The portal answered with a redirect. Redirects are not followed: the API key must not
    /// travel to wherever it points.
    #[error(
        "the portal answered {operation} with a redirect ({status}) to {location}, which is not followed so that the API key stays with portal.baseUrl: set portal.baseUrl to the API's final address"
    )]
    Redirected {
        /// What was being done.
        operation: String,
        /// HTTP status (3xx).
        status: u16,
        /// The `Location` header.
        location: String,
    },

    /// `portal.baseUrl` cannot be used.
    #[error("portal.baseUrl {url} is not usable: {reason}")]
    InvalidBaseUrl {
        /// The configured URL.
        url: String,
        /// What to fix.
        reason: String,
    },

    /// The API key cannot be sent in a header.
    #[error(
        "the portal API key is empty or contains characters an HTTP header cannot carry: check {key_origin}"
    )]
    InvalidApiKey {
        /// Where the key was read from.
        key_origin: String,
    },

    /// `portal.roleCodes` maps two roles to one code.
    #[error(
        "portal.roleCodes gives two roles the same code ({codes:?}): give each role its own code"
    )]
    InconsistentRoleCodes {
        /// The configured codes.
        codes: RoleCodes,
    },

    /// The HTTP client could not be built (TLS backend).
    #[error("cannot build the portal HTTP client")]
    Client(#[source] reqwest::Error),
}

fn for_user(user: &Option<String>) -> String {
    user.as_deref()
        .map(|u| format!(" for {u}"))
        .unwrap_or_default()
}

/// `groups: ["a"] → [], department: "x" → null` (values shortened).
fn lost_list(fields: &[super::LostField]) -> String {
    fields
        .iter()
        .map(|f| {
            format!(
                "{}: {} → {}",
                f.field,
                shown(Some(&f.before)),
                f.after
                    .as_ref()
                    .map_or_else(|| "(missing)".to_owned(), |v| shown(Some(v)))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fields of `before` other than the ones the update changes (`name`, `role`) whose value
/// differs in `after`.
fn lost_fields(before: &Map<String, Value>, after: &Map<String, Value>) -> Vec<super::LostField> {
    before
        .iter()
        .filter(|(key, _)| !matches!(key.as_str(), "name" | "role"))
        .filter(|(key, value)| after.get(key.as_str()) != Some(*value))
        .map(|(key, value)| super::LostField {
            field: key.clone(),
            before: value.clone(),
            after: after.get(key.as_str()).cloned(),
        })
        .collect()
}

fn errors_suffix(errors: &Option<String>) -> String {
    errors
        .as_deref()
        .map(|e| format!(" (errors: {e})"))
        .unwrap_or_default()
}

impl PortalError {
    /// Whether a write may have happened despite the error (timeout, 5xx).
    pub fn is_ambiguous(&self) -> bool {
        match self {
            PortalError::Api { status, .. } | PortalError::Rejected { status, .. } => {
                *status >= 500
            }
            PortalError::Transport { maybe_sent, .. } => *maybe_sent,
            _ => false,
        }
    }

    /// The HTTP status the portal answered, when it answered one.
    pub fn status(&self) -> Option<u16> {
        match self {
            PortalError::Api { status, .. } | PortalError::Rejected { status, .. } => Some(*status),
            PortalError::Unauthorized { .. } => Some(401),
            PortalError::Forbidden { .. } => Some(403),
            PortalError::Throttled { .. } => Some(429),
            _ => None,
        }
    }

    /// How long the portal asked to wait (`Retry-After` of a throttle that outlasted the
    /// retry budget), for the daemon's backoff.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PortalError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The HTTP implementation of [`super::Portal`].
///
/// Cheap to clone; clones share the connection pool, the concurrency bound
/// (`portal.concurrency`) and the write pacer (`portal.maxWritesPerSecond`). `Debug` never shows the API key.
#[derive(Clone)]
pub struct PortalClient {
    edge: Edge,
    /// `{baseUrl}/api/user`.
    user_url: Url,
    api_key: Credential,
    role_codes: RoleCodes,
    write_only_flags: super::WriteOnlyFlags,
    max_pages: u32,
    progress: Option<crate::remote::ReadProgress>,
}

impl fmt::Debug for PortalClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortalClient")
            .field("user_url", &self.user_url.as_str())
            .field("api_key", &self.api_key)
            .field("retry", self.edge.retry())
            .field("role_codes", &self.role_codes)
            .field("write_only_flags", &self.write_only_flags)
            .field("max_pages", &self.max_pages)
            .finish()
    }
}

/// An HTTP answer: status, body and `Retry-After`.
struct Reply {
    status: StatusCode,
    body: Vec<u8>,
    retry_after: Option<Duration>,
    /// The `Location` of a redirect (not followed).
    location: Option<String>,
    /// The `Date` header, when present and valid.
    date: Option<SystemTime>,
}

/// An answer of [`PortalClient::raw`]: whatever status the portal gave, as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAnswer {
    /// HTTP status.
    pub status: u16,
    /// The answer's `Date` header, when present and valid (for the clock check).
    pub date: Option<SystemTime>,
    /// The body (at most the edge's body limit).
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON; `None` when it is empty or not JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as text (lossy, truncated to a few hundred characters), for records.
    pub fn text(&self) -> String {
        truncate(String::from_utf8_lossy(&self.body).trim(), MAX_ERROR_BODY)
    }
}

/// What a request is, for errors and logs.
struct Op<'a> {
    /// e.g. `GET /api/user page 2`.
    operation: String,
    /// Method and path template, for 403.
    endpoint: &'static str,
    /// The address concerned.
    user: Option<&'a str>,
}

/// One page of a listing.
pub(crate) struct Page {
    items: Vec<Value>,
    has_more: bool,
}

impl PortalClient {
    /// A client for `settings.base_url` with `api_key` sent as `X-API-Key`.
    ///
    /// `retry.timeout` is the timeout of one attempt: keep it long (30–60 s), the real API
    /// can take about 14 s for one page. Plain `http://` is refused except on loopback.
    pub fn new(
        settings: &PortalSettings,
        api_key: Credential,
        retry: RetryPolicy,
    ) -> Result<PortalClient, PortalError> {
        let base = &settings.base_url;
        let invalid = |reason: &str| PortalError::InvalidBaseUrl {
            url: base.to_string(),
            reason: reason.to_owned(),
        };
        http::check_url(base).map_err(|reason| invalid(&reason))?;
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(invalid("it has no host"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("remove the query string and fragment"));
        }
        let mut root = base.clone();
        if !root.path().ends_with('/') {
            let path = format!("{}/", root.path());
            root.set_path(&path);
        }
        let user_url = root
            .join("api/user")
            .map_err(|_| invalid("cannot append api/user to it"))?;

        let key = api_key.secret().expose_secret();
        if key.is_empty() || HeaderValue::from_str(key).is_err() {
            return Err(PortalError::InvalidApiKey {
                key_origin: api_key.origin().to_owned(),
            });
        }
        if !settings.role_codes.is_consistent() {
            return Err(PortalError::InconsistentRoleCodes {
                codes: settings.role_codes,
            });
        }
        // Writes are paced at `portal.maxWritesPerSecond`, shared by every clone of the client.
        let edge = Edge::new(retry, settings.concurrency)
            .map_err(PortalError::Client)?
            .with_pacer(Pacer::new(settings.write_rate));
        Ok(PortalClient {
            edge,
            user_url,
            api_key,
            role_codes: settings.role_codes,
            write_only_flags: settings.write_only_flags,
            max_pages: DEFAULT_MAX_PAGES,
            progress: None,
        })
    }

    /// The same client with another hard page cap (at least 1).
    pub fn with_max_pages(mut self, max_pages: u32) -> Self {
        self.max_pages = max_pages.max(1);
        self
    }

    /// Reports every page of the complete listing to `progress` (a terminal's progress line).
    pub fn with_progress(mut self, progress: crate::remote::ReadProgress) -> Self {
        self.progress = Some(progress);
        self
    }

    /// The role mapping in use.
    pub fn role_codes(&self) -> RoleCodes {
        self.role_codes
    }

    /// One request to `{baseUrl}/api/user[/segment…]?query` with the API key, for diagnostics
    /// (`guestops doctor`, `guestops probe portal`): every status is returned as it came (the
    /// caller records it), only a missing answer is an error. Each segment is percent-encoded
    /// as one path segment (`@` → `%40`). Writes are paced like every write; a `POST` is never
    /// retried (not idempotent).
    pub async fn raw(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<RawAnswer, PortalError> {
        let mut url = self.user_url.clone();
        let mut path = url.path().to_owned();
        for segment in segments {
            path.push('/');
            path.push_str(&utf8_percent_encode(segment, PATH_SEGMENT).to_string());
        }
        url.set_path(&path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let idempotency = if method == Method::POST {
            Idempotency::NotIdempotent
        } else {
            Idempotency::Idempotent
        };
        let op = Op {
            operation: format!("{method} {}", url.path()),
            endpoint: "/api/user",
            user: None,
        };
        let reply = self.send(method, url, body, idempotency, &op).await?;
        Ok(RawAnswer {
            status: reply.status.as_u16(),
            date: reply.date,
            body: reply.body,
        })
    }

    /// Sends one request through the edge (permit, retry policy, redirects off); any HTTP
    /// answer is returned.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        idempotency: Idempotency,
        op: &Op<'_>,
    ) -> Result<Reply, PortalError> {
        let mut request = Request::new(method, url)
            // API_KEY_HEADER (header names are case-insensitive; `from_static` wants lower case).
            .secret_header(HeaderName::from_static("x-api-key"), self.api_key.secret())
            .map_err(|_| PortalError::InvalidApiKey {
                key_origin: self.api_key.origin().to_owned(),
            })?
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        tracing::debug!(operation = %op.operation, "portal request");
        let reply = self
            .edge
            .send(&request, idempotency)
            .await
            .map_err(|source| self.transport(op, source))?;
        tracing::debug!(operation = %op.operation, status = reply.status.as_u16(), "portal answer");
        let location = reply
            .headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let date = reply
            .headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        Ok(Reply {
            status: reply.status,
            body: reply.body,
            retry_after: reply.retry_after,
            location,
            date,
        })
    }

    fn transport(&self, op: &Op<'_>, source: TransportError) -> PortalError {
        PortalError::Transport {
            operation: op.operation.clone(),
            user: op.user.map(str::to_owned),
            maybe_sent: source.maybe_sent,
            source,
        }
    }

    /// A 2xx reply as is, anything else as its typed error.
    fn check(&self, reply: Reply, op: &Op<'_>) -> Result<Reply, PortalError> {
        if reply.status.is_success() {
            Ok(reply)
        } else {
            Err(status_error(&reply, op, self.api_key.origin()))
        }
    }

    /// Every item of every page of `GET /api/user` (optionally filtered by `email`),
    /// de-duplicated by `id`, in the order served.
    async fn scan(&self, email: Option<&str>) -> Result<Vec<Value>, PortalError> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut items = Vec::new();
        let mut page: u32 = 1;
        loop {
            let mut url = self.user_url.clone();
            {
                let mut query = url.query_pairs_mut();
                if let Some(email) = email {
                    query.append_pair("email", email);
                }
                query.append_pair("pageNumber", &page.to_string());
            }
            let op = Op {
                operation: match email {
                    Some(_) => format!("GET /api/user?email= page {page}"),
                    None => format!("GET /api/user page {page}"),
                },
                endpoint: "GET /api/user",
                user: email,
            };
            let reply = self.send(Method::GET, url, None, Idempotency::Idempotent, &op);
            let reply = self.check(reply.await?, &op)?;
            let parsed =
                parse_page(&reply.body, page).map_err(|detail| PortalError::Malformed {
                    operation: op.operation.clone(),
                    detail,
                })?;
            for item in parsed.items {
                match item.get("id").and_then(Value::as_str) {
                    Some(id) if !seen.insert(id.to_owned()) => {
                        tracing::debug!(operation = %op.operation, id, "user listed twice");
                    }
                    _ => items.push(item),
                }
            }
            if let (Some(progress), None) = (&self.progress, email) {
                progress.page(crate::remote::ReadPage {
                    what: "list the portal's users",
                    pages: page as usize,
                    items: items.len(),
                    done: !parsed.has_more,
                });
            }
            if !parsed.has_more {
                return Ok(items);
            }
            if page >= self.max_pages {
                return Err(PortalError::PageCapExceeded {
                    operation: match email {
                        Some(_) => "GET /api/user?email=".to_owned(),
                        None => "GET /api/user".to_owned(),
                    },
                    max_pages: self.max_pages,
                });
            }
            page += 1;
        }
    }

    /// The raw JSON object of the user whose email equals `email` exactly,
    /// case-insensitively, after trimming.
    async fn find_raw(&self, email: &str) -> Result<Option<Map<String, Value>>, PortalError> {
        let wanted = identity::normalize_email(email);
        let items = self.scan(Some(email.trim())).await?;
        let mut matches: Vec<Map<String, Value>> = items
            .into_iter()
            .filter_map(|item| match item {
                Value::Object(map) => Some(map),
                _ => None,
            })
            .filter(|map| {
                map.get("email")
                    .and_then(Value::as_str)
                    .is_some_and(|e| identity::normalize_email(e) == wanted)
            })
            .collect();
        match matches.len() {
            0 => Ok(None),
            1 => Ok(matches.pop()),
            count => Err(PortalError::DuplicateUsers {
                email: email.trim().to_owned(),
                count,
            }),
        }
    }

    fn to_user(&self, item: &Map<String, Value>, origin: &str) -> Result<PortalUser, String> {
        let id = match item.get("id") {
            Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
            other => {
                return Err(format!(
                    "{origin} has no string `id` (found {})",
                    shown(other)
                ));
            }
        };
        let email = match item.get("email") {
            Some(Value::String(email)) if !email.trim().is_empty() => email.clone(),
            other => {
                return Err(format!(
                    "{origin} (id {id}) has no string `email` (found {})",
                    shown(other)
                ));
            }
        };
        let name = match item.get("name") {
            Some(Value::String(name)) => name.clone(),
            other => {
                return Err(format!(
                    "user {email} has no string `name` (found {})",
                    shown(other)
                ));
            }
        };
        let role_code = match item.get("role") {
            Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
            other => {
                return Err(format!(
                    "user {email} has no integer `role` code (found {}); check the API version",
                    shown(other)
                ));
            }
        };
        Ok(PortalUser {
            id,
            email,
            name,
            role: role_code.and_then(|c| self.role_codes.role(c)),
            role_code,
        })
    }
}

impl Portal for PortalClient {
    async fn list_users(&self) -> Result<Vec<PortalUser>, PortalError> {
        let items = self.scan(None).await?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(map) => self.to_user(map, &format!("user #{}", i + 1)),
                _ => Err(format!("user #{} is not a JSON object", i + 1)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|detail| PortalError::Malformed {
                operation: "GET /api/user".to_owned(),
                detail,
            })
    }

    async fn find_user(&self, email: &str) -> Result<Option<PortalUser>, PortalError> {
        match self.find_raw(email).await? {
            None => Ok(None),
            Some(map) => self
                .to_user(&map, &format!("the user {}", email.trim()))
                .map(Some)
                .map_err(|detail| PortalError::Malformed {
                    operation: "GET /api/user?email=".to_owned(),
                    detail,
                }),
        }
    }

    async fn create_user(&self, user: &NewPortalUser) -> Result<(), PortalError> {
        let email = user.email.trim();
        let mut body = serde_json::json!({
            "email": email,
            "name": user.name,
            "role": self.role_codes.code(user.role),
        });
        for (flag, value) in self.write_only_flags.stated() {
            body[flag] = Value::Bool(value);
        }
        let op = Op {
            operation: "POST /api/user".to_owned(),
            endpoint: "POST /api/user",
            user: Some(email),
        };
        let reply = self.send(
            Method::POST,
            self.user_url.clone(),
            Some(&body),
            Idempotency::NotIdempotent,
            &op,
        );
        // Any 2xx is success; the body is undocumented and deliberately ignored.
        self.check(reply.await?, &op).map(|_| ())
    }

    async fn update_user(&self, email: &str, name: &str, role: Role) -> Result<(), PortalError> {
        let email = email.trim();
        let Some(mut user) = self.find_raw(email).await? else {
            return Err(PortalError::UserNotFound {
                operation: "PUT /api/user".to_owned(),
                email: email.to_owned(),
            });
        };
        if !matches!(user.get("id"), Some(Value::String(id)) if !id.trim().is_empty()) {
            return Err(PortalError::Malformed {
                operation: "GET /api/user?email=".to_owned(),
                detail: format!("the user {email} has no string `id`, so it cannot be updated"),
            });
        }
        let code = self.role_codes.code(role);
        let same_name = user.get("name").and_then(Value::as_str) == Some(name);
        let same_role = user.get("role").and_then(Value::as_i64) == Some(code);
        if same_name && same_role {
            tracing::debug!(user = email, "portal user already has this name and role");
            return Ok(());
        }
        let before = user.clone();
        user.insert("name".to_owned(), Value::String(name.to_owned()));
        user.insert("role".to_owned(), Value::from(code));
        // GET never returns them, so only what the operator stated can be sent.
        for (flag, value) in self.write_only_flags.stated() {
            user.insert(flag.to_owned(), Value::Bool(value));
        }
        let body = Value::Object(user);
        let op = Op {
            operation: "PUT /api/user".to_owned(),
            endpoint: "PUT /api/user",
            user: Some(email),
        };
        let reply = self.send(
            Method::PUT,
            self.user_url.clone(),
            Some(&body),
            Idempotency::Idempotent,
            &op,
        );
        let reply = reply.await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Err(PortalError::UserNotFound {
                operation: op.operation,
                email: email.to_owned(),
            });
        }
        self.check(reply, &op)?;
        // One read after the write: did the portal keep what it was sent back?
        let after = match self.find_raw(email).await {
            Ok(Some(after)) => after,
            Ok(None) => {
                return Err(PortalError::Unverified {
                    email: email.to_owned(),
                    source: Box::new(PortalError::UserNotFound {
                        operation: "GET /api/user?email= after PUT".to_owned(),
                        email: email.to_owned(),
                    }),
                });
            }
            Err(err) => {
                return Err(PortalError::Unverified {
                    email: email.to_owned(),
                    source: Box::new(err),
                });
            }
        };
        let lost = lost_fields(&before, &after);
        if lost.is_empty() {
            Ok(())
        } else {
            Err(PortalError::FieldsLost {
                email: email.to_owned(),
                fields: lost,
            })
        }
    }

    async fn delete_user(&self, email: &str) -> Result<bool, PortalError> {
        let email = email.trim();
        let mut url = self.user_url.clone();
        let path = format!(
            "{}/{}",
            url.path(),
            utf8_percent_encode(email, PATH_SEGMENT)
        );
        url.set_path(&path);
        let op = Op {
            operation: "DELETE /api/user/{email}".to_owned(),
            endpoint: "DELETE /api/user/{email}",
            user: Some(email),
        };
        let reply = self
            .send(Method::DELETE, url, None, Idempotency::Idempotent, &op)
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        self.check(reply, &op).map(|_| true)
    }
}

/// A JSON value for an error message (short).
fn shown(value: Option<&Value>) -> String {
    match value {
        None => "nothing".to_owned(),
        Some(v) => {
            let text = v.to_string();
            truncate(&text, 60)
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Parses one page envelope `{pageIndex, totalPages, hasNextPage, hasPreviousPage, data}`.
///
/// `data` must be an array; `hasNextPage` decides whether to go on, and `pageIndex >=
/// totalPages` stops too (when both are present). A bare array is taken as a complete,
/// unpaged list.
pub(crate) fn parse_page(body: &[u8], page: u32) -> Result<Page, String> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        format!(
            "page {page} is not JSON ({err}): {}",
            truncate(&String::from_utf8_lossy(body), 80)
        )
    })?;
    let envelope = match value {
        Value::Array(items) => {
            return Ok(Page {
                items,
                has_more: false,
            });
        }
        Value::Object(map) => map,
        other => {
            return Err(format!(
                "page {page} is {}, not a page object",
                shown(Some(&other))
            ));
        }
    };
    let items = match envelope.get("data") {
        Some(Value::Array(items)) => items.clone(),
        other => {
            return Err(format!(
                "page {page} has no `data` array (found {})",
                shown(other)
            ));
        }
    };
    let index = envelope.get("pageIndex").and_then(Value::as_u64);
    if let Some(index) = index
        && index != u64::from(page)
    {
        return Err(format!(
            "pageNumber={page} was answered with pageIndex {index}: the portal does not page as documented (1-based pageNumber)"
        ));
    }
    let total = envelope.get("totalPages").and_then(Value::as_u64);
    let within = match (index, total) {
        (Some(index), Some(total)) => Some(index < total),
        _ => None,
    };
    let has_more = match (envelope.get("hasNextPage"), within) {
        (Some(Value::Bool(next)), within) => *next && within.unwrap_or(true),
        (None | Some(Value::Null), Some(within)) => within,
        (other, _) => {
            return Err(format!(
                "page {page} has no boolean `hasNextPage` (found {}), so the end of the list is unknown",
                shown(other)
            ));
        }
    };
    Ok(Page { items, has_more })
}

/// The typed error of a non-2xx answer; `key_origin` says where the API key came from.
fn status_error(reply: &Reply, op: &Op<'_>, key_origin: &str) -> PortalError {
    let (message, errors) = error_body(&reply.body);
    let operation = op.operation.clone();
    let user = op.user.map(str::to_owned);
    if reply.status.is_redirection() {
        return PortalError::Redirected {
            operation,
            status: reply.status.as_u16(),
            location: reply
                .location
                .clone()
                .unwrap_or_else(|| "(no Location)".to_owned()),
        };
    }
    match reply.status.as_u16() {
        401 => PortalError::Unauthorized {
            operation,
            key_origin: key_origin.to_owned(),
            message,
        },
        403 => PortalError::Forbidden {
            endpoint: op.endpoint.to_owned(),
            operation,
            message,
        },
        429 => PortalError::Throttled {
            operation,
            user,
            retry_after: reply.retry_after,
        },
        status => PortalError::Rejected {
            operation,
            user,
            status,
            message,
            errors,
        },
    }
}

/// `message` (or `title`) and `errors` of an error body, or the raw body.
pub(crate) fn error_body(body: &[u8]) -> (String, Option<String>) {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        let message = ["message", "title", "detail", "error"]
            .iter()
            .find_map(|k| map.get(*k).and_then(Value::as_str))
            .map(str::to_owned);
        let errors = map
            .get("errors")
            .filter(|e| !e.is_null())
            .map(|e| truncate(&e.to_string(), MAX_ERROR_BODY));
        if message.is_some() || errors.is_some() {
            return (message.unwrap_or_else(|| "(no message)".to_owned()), errors);
        }
    }
    let raw = String::from_utf8_lossy(body);
    let raw = raw.trim();
    if raw.is_empty() {
        ("(empty body)".to_owned(), None)
    } else {
        (truncate(raw, MAX_ERROR_BODY), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_guards() {
        let page = parse_page(
            br#"{"pageIndex":2,"totalPages":2,"hasNextPage":true,"data":[{"id":"a"}]}"#,
            2,
        )
        .expect("valid page");
        assert!(!page.has_more, "pageIndex >= totalPages stops the loop");
        let page = parse_page(
            br#"{"pageIndex":1,"totalPages":3,"hasNextPage":true,"data":[]}"#,
            1,
        )
        .expect("valid page");
        assert!(page.has_more);
        let page = parse_page(br#"{"pageIndex":1,"totalPages":3,"data":[]}"#, 1)
            .expect("indexes suffice without hasNextPage");
        assert!(page.has_more);
        assert!(parse_page(br#"{"hasNextPage":false}"#, 1).is_err());
        let ignored = parse_page(
            br#"{"pageIndex":1,"totalPages":3,"hasNextPage":true,"data":[]}"#,
            2,
        );
        assert!(ignored.is_err(), "a server ignoring pageNumber is caught");
        assert!(parse_page(br#"{"data":[]}"#, 1).is_err());
        assert!(parse_page(b"<html>", 1).is_err());
        let bare = parse_page(br#"[{"id":"a"}]"#, 1).expect("bare array");
        assert!(!bare.has_more);
        assert_eq!(bare.items.len(), 1);
    }

    #[test]
    fn error_bodies() {
        let (message, errors) =
            error_body(br#"{"message":"bad","errors":{"Email":["The Email field is required."]}}"#);
        assert_eq!(message, "bad");
        assert_eq!(
            errors.as_deref(),
            Some(r#"{"Email":["The Email field is required."]}"#)
        );
        assert_eq!(error_body(b"").0, "(empty body)");
        assert_eq!(error_body(b"Bad Gateway").0, "Bad Gateway");
    }

    #[test]
    fn path_segment_encoding() {
        assert_eq!(
            utf8_percent_encode("o'brien+x@partner.example", PATH_SEGMENT).to_string(),
            "o%27brien%2Bx%40partner.example"
        );
    }
}
