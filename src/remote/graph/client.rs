//! The Microsoft Graph HTTP client: [`GraphClient`] implements [`super::Tenant`] over
//! `reqwest`, following the documented behaviour of Graph (`docs/specs/microsoft-graph.md`):
//! `$select` always, `$top=999`, `@odata.nextLink` followed verbatim, OData literals escaped,
//! `429`/`503`/`504` retried through [`crate::remote::http::send`], `POST /invitations` never retried
//! blindly, a read that fails part-way failing as a whole.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use url::Url;

use super::token::{ClientSecretCredential, TokenProblem, TokenSource};
use super::{DirectoryUser, Invitation, Invited, ObjectIdentity, Tenant, USER_SELECT};
use crate::config::TenantConfig;
use crate::remote::http::{self, Idempotency, RetryPolicy};

/// A failed Graph operation. Keeps Graph's `code`, `message` and `request-id`.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Graph answered with an error status.
    #[error("Graph answered {status} {code} to {operation}: {message}{}", api_advice(*.status, .code))]
    Api {
        /// What was being done, e.g. `list guests`.
        operation: String,
        /// HTTP status.
        status: u16,
        /// `error.code`.
        code: String,
        /// `error.message`.
        message: String,
        /// `innerError.request-id` or the `request-id` header.
        request_id: Option<String>,
    },

    /// Graph kept answering `429 Too Many Requests` for longer than the retry budget allows.
    #[error(
        "Graph kept throttling {operation} (429) beyond the retry budget{}; nothing was changed by \
         the refused request: retry later, or lower tenant.concurrency",
        .retry_after.map(|d| format!(" (last Retry-After {}s)", d.as_secs_f64())).unwrap_or_default()
    )]
    Throttled {
        /// What was being done.
        operation: String,
        /// The last `Retry-After`, if any.
        retry_after: Option<Duration>,
        /// The `request-id` of the last response.
        request_id: Option<String>,
    },

    /// No access token could be obtained.
    #[error("{0}")]
    Token(Box<TokenFailure>),

    /// The request got no HTTP response (connection, TLS, timeout).
    #[error(
        "could not reach Graph to {operation} after {attempts} attempt(s){}: {source}; check \
         tenant.graphEndpoint / tenant.authorityHost and the network",
        if *.maybe_sent { " (the request may have been processed)" } else { "" }
    )]
    Transport {
        /// What was being done.
        operation: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
        /// Whether the request may have reached Graph (a write may have happened).
        maybe_sent: bool,
        /// Attempts made.
        attempts: usize,
    },

    /// Graph answered success with a body that does not have the documented shape.
    #[error("Graph answered {operation} with an unexpected response: {detail}")]
    Malformed {
        /// What was being done.
        operation: String,
        /// What was wrong.
        detail: String,
        /// The `request-id` header, if any.
        request_id: Option<String>,
    },

    /// A listing did not end within the page guard.
    #[error(
        "{operation} did not end after {pages} pages of @odata.nextLink; the listing was \
         abandoned (nothing is assumed about the rest)"
    )]
    TooManyPages {
        /// What was being done.
        operation: String,
        /// Pages read.
        pages: usize,
    },

    /// The client cannot be built from the configuration.
    #[error("invalid Graph client configuration: {detail}")]
    Config {
        /// What is wrong and how to fix it.
        detail: String,
    },
}

/// Why the token endpoint refused, with what to fix ([`GraphError::Token`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "could not get a Graph access token from {token_url}: {} ({error}{}{}: {description})",
    .problem.advice(),
    codes_suffix(.error_codes),
    .trace_id.as_deref().map(|t| format!(", trace id {t}")).unwrap_or_default()
)]
pub struct TokenFailure {
    /// The classified problem (what to fix).
    pub problem: TokenProblem,
    /// HTTP status of the token endpoint.
    pub status: u16,
    /// The OAuth `error` value, e.g. `invalid_client`.
    pub error: String,
    /// The AADSTS `error_codes`.
    pub error_codes: Vec<u64>,
    /// First line of `error_description`.
    pub description: String,
    /// `trace_id`, for a support request.
    pub trace_id: Option<String>,
    /// `correlation_id`, for a support request.
    pub correlation_id: Option<String>,
    /// The token endpoint that refused.
    pub token_url: String,
}

fn codes_suffix(codes: &[u64]) -> String {
    codes.iter().map(|c| format!(", AADSTS{c}")).collect()
}

/// What to do about an error status, by status and Graph code.
fn api_advice(status: u16, code: &str) -> &'static str {
    match (status, code) {
        (403, _) => {
            " — the app lacks an application permission: grant User.Invite.All (invitations) and \
             User.Read.All (reads), plus User.EnableDisableAccount.All to disable or \
             User.DeleteRestore.All to delete guests, with admin consent"
        }
        (401, _) => {
            " — Graph refused the access token: check tenant.tenantId and tenant.cloud (the \
             token must be issued for the Graph of that cloud)"
        }
        (400, "Request_UnsupportedQuery") => {
            " — this query needs advanced query support; this is a guestops bug, please report it"
        }
        (404, _) => " — the object does not exist (or is not replicated yet)",
        (s, _) if s >= 500 => " — Graph failed; it is retried on the next reconcile",
        _ => "",
    }
}

impl GraphError {
    /// The Graph `request-id`, for the audit log.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            GraphError::Api { request_id, .. }
            | GraphError::Throttled { request_id, .. }
            | GraphError::Malformed { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// Whether a write may have happened despite the error (timeout, 5xx): the caller must
    /// look the user up before repeating the write.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            GraphError::Api { status, .. } => *status >= 500 || *status == 408,
            GraphError::Transport { maybe_sent, .. } => *maybe_sent,
            GraphError::Malformed { .. } => true,
            _ => false,
        }
    }

    /// The HTTP status Graph answered, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            GraphError::Api { status, .. } => Some(*status),
            GraphError::Token(failure) => Some(failure.status),
            GraphError::Throttled { .. } => Some(429),
            _ => None,
        }
    }

    /// The token problem, when no token could be obtained.
    pub fn token_problem(&self) -> Option<TokenProblem> {
        match self {
            GraphError::Token(failure) => Some(failure.problem),
            _ => None,
        }
    }

    /// Graph's `error.code`, when Graph answered with an error body.
    pub fn code(&self) -> Option<&str> {
        match self {
            GraphError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The default bound on pages of one listing (999 users each: about ten million users).
pub const DEFAULT_MAX_PAGES: usize = 10_000;

/// The HTTP implementation of [`super::Tenant`].
#[derive(Debug, Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    /// `{graphEndpoint}/v1.0/`.
    root: Url,
    token: Arc<dyn TokenSource>,
    retry: RetryPolicy,
    invite_redirect_url: String,
    max_pages: usize,
    limit: Arc<Semaphore>,
}

/// Builds the shared `reqwest` client (rustls, no redirects: Graph does not redirect API calls
/// and a redirect must not carry the bearer token elsewhere).
pub fn http_client() -> Result<reqwest::Client, GraphError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("guestops/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| GraphError::Config {
            detail: format!("cannot build the HTTP client: {err}"),
        })
}

/// Refuses plain `http://` except on loopback (design §5).
fn check_scheme(url: &Url, key: &str) -> Result<(), GraphError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(GraphError::Config {
                    detail: format!(
                        "{key} `{url}` uses plain http; use https (http is allowed on loopback only)"
                    ),
                })
            }
        }
        other => Err(GraphError::Config {
            detail: format!("{key} `{url}` has scheme `{other}`; use https"),
        }),
    }
}

impl GraphClient {
    /// A client for the tenant in `tenant`, authenticating with `token`, retrying by `retry`.
    pub fn new(
        tenant: &TenantConfig,
        token: Arc<dyn TokenSource>,
        retry: RetryPolicy,
    ) -> Result<GraphClient, GraphError> {
        Self::with_http(http_client()?, tenant, token, retry)
    }

    /// Like [`GraphClient::new`] but sharing an existing `reqwest` client.
    pub fn with_http(
        http: reqwest::Client,
        tenant: &TenantConfig,
        token: Arc<dyn TokenSource>,
        retry: RetryPolicy,
    ) -> Result<GraphClient, GraphError> {
        check_scheme(&tenant.graph_endpoint, "tenant.graphEndpoint")?;
        let mut root = tenant.graph_endpoint.clone();
        root.set_query(None);
        root.set_fragment(None);
        root.path_segments_mut()
            .map_err(|()| GraphError::Config {
                detail: format!(
                    "tenant.graphEndpoint `{}` is not a base URL; use e.g. https://graph.microsoft.com",
                    tenant.graph_endpoint
                ),
            })?
            .pop_if_empty()
            .push("v1.0")
            .push("");
        Ok(GraphClient {
            http,
            root,
            token,
            retry,
            invite_redirect_url: tenant.invite_redirect_url.clone(),
            max_pages: DEFAULT_MAX_PAGES,
            limit: Arc::new(Semaphore::new(tenant.concurrency.max(1))),
        })
    }

    /// A client that authenticates with the client secret `secret` (already loaded from
    /// `tenant.client_secret`) through a [`ClientSecretCredential`].
    pub fn from_config(
        tenant: &TenantConfig,
        secret: SecretString,
        retry: RetryPolicy,
    ) -> Result<GraphClient, GraphError> {
        check_scheme(&tenant.authority_host, "tenant.authorityHost")?;
        let http = http_client()?;
        let credential = ClientSecretCredential::new(
            http.clone(),
            &tenant.authority_host,
            &tenant.tenant_id,
            &tenant.client_id,
            secret,
            // The scope names Graph as a resource (its identifier in the configured cloud), not
            // the URL requests go to: a `graphEndpoint` override (a proxy, a test double) does
            // not change which resource the token is for.
            &tenant.cloud.graph_endpoint(),
            retry.clone(),
        )?;
        Self::with_http(http, tenant, Arc::new(credential), retry)
    }

    /// Changes the bound on pages of one listing (default [`DEFAULT_MAX_PAGES`]).
    pub fn with_max_pages(mut self, pages: usize) -> Self {
        self.max_pages = pages.max(1);
        self
    }

    /// `{graphEndpoint}/v1.0/`.
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// A URL under the version root: `path` segments (each encoded) and a raw, already-encoded
    /// query.
    fn url(&self, segments: &[&str], query: Option<&str>) -> Url {
        let mut url = self.root.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url.set_query(query);
        url
    }

    /// Sends one logical request: bounded concurrency, bearer token, `client-request-id`,
    /// the shared retry policy, one token refresh after a `401`. Success statuses are returned;
    /// error statuses become [`GraphError`] unless `accept` lets them through.
    async fn execute(
        &self,
        operation: &str,
        method: Method,
        url: &Url,
        body: Option<&Value>,
        idempotency: Idempotency,
        accept: &[StatusCode],
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), GraphError> {
        let _permit = self.limit.acquire().await.map_err(|_| GraphError::Config {
            detail: "the Graph client was shut down".into(),
        })?;
        let client_request_id = uuid::Uuid::new_v4().to_string();
        let mut refreshed = false;
        loop {
            let token = self.token.token().await?;
            let response = http::send(&self.retry, idempotency, || {
                let mut request = self
                    .http
                    .request(method.clone(), url.clone())
                    .bearer_auth(token.expose_secret())
                    .header("client-request-id", client_request_id.as_str());
                if let Some(body) = body {
                    request = request.json(body);
                }
                request
            })
            .await
            .map_err(|err| GraphError::Transport {
                operation: operation.to_owned(),
                maybe_sent: err.maybe_sent,
                attempts: err.attempts,
                source: err.source,
            })?;
            let status = response.status();
            let headers = response.headers().clone();
            let retry_after = http::retry_after(&response);
            let bytes = response
                .bytes()
                .await
                .map_err(|source| GraphError::Transport {
                    operation: operation.to_owned(),
                    source,
                    maybe_sent: true,
                    attempts: 1,
                })?;
            if status.is_success() || accept.contains(&status) {
                return Ok((status, headers, bytes.to_vec()));
            }
            let request_id = header_request_id(&headers);
            if status == StatusCode::TOO_MANY_REQUESTS {
                return Err(GraphError::Throttled {
                    operation: operation.to_owned(),
                    retry_after,
                    request_id,
                });
            }
            let error = parse_error(&bytes);
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                // An expired or revoked token: fetch a fresh one, once.
                refreshed = true;
                self.token.invalidate();
                tracing::debug!(operation, "Graph refused the token; fetching a new one");
                continue;
            }
            return Err(GraphError::Api {
                operation: operation.to_owned(),
                status: status.as_u16(),
                code: error.code,
                message: error.message,
                request_id: error.request_id.or(request_id),
            });
        }
    }

    /// Reads every page of a user listing starting at `first`, following `@odata.nextLink`
    /// verbatim, failing as a whole if any page fails.
    async fn list_all(
        &self,
        operation: &str,
        first: Url,
    ) -> Result<Vec<DirectoryUser>, GraphError> {
        let mut users = Vec::new();
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(url) = next.take() {
            if pages >= self.max_pages {
                return Err(GraphError::TooManyPages {
                    operation: operation.to_owned(),
                    pages,
                });
            }
            pages += 1;
            let (_, headers, bytes) = self
                .execute(
                    operation,
                    Method::GET,
                    &url,
                    None,
                    Idempotency::Idempotent,
                    &[],
                )
                .await?;
            let page: Page =
                serde_json::from_slice(&bytes).map_err(|err| GraphError::Malformed {
                    operation: operation.to_owned(),
                    detail: format!("page {pages} is not a user collection: {err}"),
                    request_id: header_request_id(&headers),
                })?;
            users.extend(page.value.into_iter().map(DirectoryUser::from));
            if let Some(link) = page.next_link {
                next = Some(self.check_next_link(operation, &link, &headers)?);
            }
        }
        tracing::debug!(operation, pages, users = users.len(), "listing complete");
        Ok(users)
    }

    /// Parses a nextLink without rebuilding it, and refuses one that leaves the Graph origin
    /// (the bearer token must not be sent elsewhere).
    fn check_next_link(
        &self,
        operation: &str,
        link: &str,
        headers: &HeaderMap,
    ) -> Result<Url, GraphError> {
        // Graph sends absolute links; a relative one is taken relative to the Graph root.
        let url = Url::parse(link)
            .or_else(|_| self.root.join(link))
            .map_err(|err| GraphError::Malformed {
                operation: operation.to_owned(),
                detail: format!("@odata.nextLink is not a URL ({err})"),
                request_id: header_request_id(headers),
            })?;
        if url.origin() != self.root.origin() && !same_loopback_service(&url, &self.root) {
            return Err(GraphError::Malformed {
                operation: operation.to_owned(),
                detail: format!(
                    "@odata.nextLink points to {} instead of the Graph endpoint {}",
                    url.origin().ascii_serialization(),
                    self.root.origin().ascii_serialization()
                ),
                request_id: header_request_id(headers),
            });
        }
        Ok(url)
    }
}

/// Whether `a` and `b` are the same port on this machine under two loopback names (`localhost`
/// and `127.0.0.1`): a local Graph double may name itself either way, and the token stays on
/// the machine.
fn same_loopback_service(a: &Url, b: &Url) -> bool {
    let loopback = |url: &Url| match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    a.scheme() == b.scheme()
        && a.port_or_known_default() == b.port_or_known_default()
        && loopback(a)
        && loopback(b)
}

/// Characters encoded in a query value: everything but unreserved characters and the OData
/// punctuation that is safe in a query (`'`, `(`, `)`, `,`, `:`, `/`, `$`, `@`). `#`, `&`, `+`,
/// `=`, `%` and spaces are always encoded.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b',')
    .remove(b':')
    .remove(b'/')
    .remove(b'$')
    .remove(b'@');

/// Builds an encoded query string from OData options.
pub fn encode_query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                percent_encoding::utf8_percent_encode(k, QUERY_VALUE),
                percent_encoding::utf8_percent_encode(v, QUERY_VALUE)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// An OData string literal: quoted, with `'` doubled.
pub fn odata_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The `$filter` that finds every user holding `email` by `mail`, `otherMails`, UPN or the
/// guest UPN form `local_domain#EXT#…`, using only filters that work without advanced queries.
pub fn email_filter(email: &str) -> String {
    let literal = odata_string(email);
    let mut filter = format!(
        "mail eq {literal} or otherMails/any(x:x eq {literal}) or userPrincipalName eq {literal}"
    );
    if email.contains('@') {
        let guest_prefix = format!("{}#EXT#", email.replace('@', "_"));
        filter.push_str(&format!(
            " or startsWith(userPrincipalName,{})",
            odata_string(&guest_prefix)
        ));
    }
    filter
}

/// Whether `user` holds `email` (lower-cased) by mail, otherMails, UPN, guest UPN form or a
/// sign-in identity.
pub fn holds_email(user: &DirectoryUser, email: &str) -> bool {
    let email = email.trim().to_lowercase();
    let eq = |s: &str| s.trim().to_lowercase() == email;
    let guest_prefix = format!("{}#ext#", email.replace('@', "_"));
    user.mail.as_deref().is_some_and(eq)
        || user.other_mails.iter().any(|m| eq(m))
        || user.user_principal_name.as_deref().is_some_and(|upn| {
            let upn = upn.to_lowercase();
            upn == email || upn.starts_with(&guest_prefix)
        })
        || user
            .identities
            .iter()
            .any(|i| i.issuer_assigned_id.as_deref().is_some_and(eq))
}

fn header_request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("request-id")
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .map(str::to_owned)
}

struct ParsedError {
    code: String,
    message: String,
    request_id: Option<String>,
}

/// Reads `{"error":{"code","message","innerError":{"request-id"}}}`; tolerates other bodies.
fn parse_error(bytes: &[u8]) -> ParsedError {
    let value: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let error = &value["error"];
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let code = text(&error["code"]).unwrap_or_else(|| "(no error code)".into());
    let message = text(&error["message"]).unwrap_or_else(|| {
        let raw = String::from_utf8_lossy(bytes);
        let raw: String = raw.chars().take(200).collect();
        if raw.trim().is_empty() {
            "(empty body)".into()
        } else {
            raw
        }
    });
    let inner = if error["innerError"].is_object() {
        &error["innerError"]
    } else {
        &error["innererror"]
    };
    ParsedError {
        code,
        message,
        request_id: text(&inner["request-id"]),
    }
}

/// One page of a user collection.
#[derive(Deserialize)]
struct Page {
    value: Vec<WireUser>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

/// A user as Graph sends it; tolerant of `null` collections.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUser {
    id: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    mail: Option<String>,
    #[serde(default)]
    other_mails: Option<Vec<String>>,
    #[serde(default)]
    user_principal_name: Option<String>,
    #[serde(default)]
    user_type: Option<String>,
    #[serde(default)]
    external_user_state: Option<String>,
    #[serde(default)]
    external_user_state_change_date_time: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    creation_type: Option<String>,
    #[serde(default)]
    identities: Option<Vec<ObjectIdentity>>,
    #[serde(default)]
    account_enabled: Option<bool>,
    #[serde(default)]
    created_date_time: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<WireUser> for DirectoryUser {
    fn from(w: WireUser) -> Self {
        DirectoryUser {
            id: w.id,
            display_name: w.display_name,
            mail: w.mail,
            other_mails: w.other_mails.unwrap_or_default(),
            user_principal_name: w.user_principal_name,
            user_type: w.user_type,
            external_user_state: w.external_user_state,
            external_user_state_change_date_time: w.external_user_state_change_date_time,
            creation_type: w.creation_type,
            identities: w.identities.unwrap_or_default(),
            account_enabled: w.account_enabled,
            created_date_time: w.created_date_time,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvitationResponse {
    #[serde(default)]
    invited_user: Option<InvitedUserRef>,
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvitedUserRef {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    user_principal_name: Option<String>,
}

impl Tenant for GraphClient {
    async fn list_guests(&self) -> Result<Vec<DirectoryUser>, GraphError> {
        let query = encode_query(&[
            ("$filter", "userType eq 'Guest'"),
            ("$select", USER_SELECT),
            ("$top", "999"),
        ]);
        let url = self.url(&["users"], Some(&query));
        self.list_all("list the tenant's guests", url).await
    }

    async fn find_by_email(&self, email: &str) -> Result<Vec<DirectoryUser>, GraphError> {
        let email = email.trim();
        let filter = email_filter(email);
        let query = encode_query(&[
            ("$filter", &filter),
            ("$select", USER_SELECT),
            ("$top", "999"),
        ]);
        let url = self.url(&["users"], Some(&query));
        let operation = format!("look up users holding {email}");
        let users = self.list_all(&operation, url).await?;
        Ok(users
            .into_iter()
            .filter(|u| holds_email(u, email))
            .collect())
    }

    async fn get_user(&self, id: &str) -> Result<Option<DirectoryUser>, GraphError> {
        let query = encode_query(&[("$select", USER_SELECT)]);
        let url = self.url(&["users", id], Some(&query));
        let operation = format!("read user {id}");
        let (status, headers, bytes) = self
            .execute(
                &operation,
                Method::GET,
                &url,
                None,
                Idempotency::Idempotent,
                &[StatusCode::NOT_FOUND],
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let user: WireUser =
            serde_json::from_slice(&bytes).map_err(|err| GraphError::Malformed {
                operation,
                detail: format!("not a user object: {err}"),
                request_id: header_request_id(&headers),
            })?;
        Ok(Some(user.into()))
    }

    async fn invite(&self, invitation: &Invitation) -> Result<Invited, GraphError> {
        let mut body = json!({
            "invitedUserEmailAddress": invitation.email,
            "invitedUserDisplayName": invitation.display_name,
            "inviteRedirectUrl": self.invite_redirect_url,
            "sendInvitationMessage": invitation.send_email,
        });
        if let Some(message) = &invitation.message {
            body["invitedUserMessageInfo"] = json!({ "customizedMessageBody": message });
        }
        let url = self.url(&["invitations"], None);
        let operation = format!("invite {}", invitation.email);
        let (_, headers, bytes) = self
            .execute(
                &operation,
                Method::POST,
                &url,
                Some(&body),
                Idempotency::NotIdempotent,
                &[],
            )
            .await?;
        let request_id = header_request_id(&headers);
        let parsed: InvitationResponse =
            serde_json::from_slice(&bytes).map_err(|err| GraphError::Malformed {
                operation: operation.clone(),
                detail: format!("not an invitation object: {err}"),
                request_id: request_id.clone(),
            })?;
        let user = parsed.invited_user.unwrap_or(InvitedUserRef {
            id: None,
            user_principal_name: None,
        });
        let user_id = user
            .id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| GraphError::Malformed {
                operation,
                detail: "the invitation has no invitedUser.id; look the guest up by email".into(),
                request_id: request_id.clone(),
            })?;
        Ok(Invited {
            user_id,
            user_principal_name: user.user_principal_name,
            status: parsed.status,
            request_id,
        })
    }

    async fn set_account_enabled(&self, id: &str, enabled: bool) -> Result<(), GraphError> {
        let url = self.url(&["users", id], None);
        let operation = format!("{} user {id}", if enabled { "enable" } else { "disable" });
        self.execute(
            &operation,
            Method::PATCH,
            &url,
            Some(&json!({ "accountEnabled": enabled })),
            Idempotency::Idempotent,
            &[],
        )
        .await?;
        Ok(())
    }

    async fn delete_user(&self, id: &str) -> Result<bool, GraphError> {
        let url = self.url(&["users", id], None);
        let operation = format!("delete user {id}");
        let (status, _, _) = self
            .execute(
                &operation,
                Method::DELETE,
                &url,
                None,
                Idempotency::Idempotent,
                &[StatusCode::NOT_FOUND],
            )
            .await?;
        Ok(status != StatusCode::NOT_FOUND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_next_link_may_name_the_same_local_service_another_way_but_never_another_host() {
        let root = Url::parse("http://127.0.0.1:8080/").unwrap();
        let same = |link: &str| same_loopback_service(&Url::parse(link).unwrap(), &root);
        assert!(same("http://localhost:8080/v1.0/users?$skiptoken=x"));
        assert!(same("http://[::1]:8080/v1.0/users"));
        assert!(!same("http://localhost:9090/v1.0/users"), "another port");
        assert!(!same("https://localhost:8080/v1.0/users"), "another scheme");
        assert!(
            !same("http://graph.example:8080/v1.0/users"),
            "another host"
        );
        let graph = Url::parse("https://graph.microsoft.com/").unwrap();
        assert!(!same_loopback_service(
            &Url::parse("https://evil.example/v1.0/users").unwrap(),
            &graph
        ));
    }

    #[test]
    fn filter_escapes_quotes_and_encodes_hash() {
        let filter = email_filter("o'brien@partner.example");
        assert!(filter.contains("mail eq 'o''brien@partner.example'"));
        assert!(filter.contains("startsWith(userPrincipalName,'o''brien_partner.example#EXT#')"));
        let query = encode_query(&[("$filter", &filter)]);
        assert!(query.contains("%23EXT%23"), "{query}");
        assert!(!query.contains('#'));
        assert!(!query.contains(' '));
        assert!(encode_query(&[("$filter", "mail eq 'a+b@x.example'")]).contains("a%2Bb"));
    }

    #[test]
    fn holds_email_is_case_insensitive_and_knows_the_guest_upn() {
        let user = DirectoryUser {
            id: "1".into(),
            user_principal_name: Some("Ana.Silva_Partner.example#EXT#@sim.onmicrosoft.com".into()),
            ..Default::default()
        };
        assert!(holds_email(&user, "ana.silva@partner.example"));
        assert!(!holds_email(&user, "ana@partner.example"));
        let member = DirectoryUser {
            id: "2".into(),
            other_mails: vec!["Bob@Vendor.example".into()],
            ..Default::default()
        };
        assert!(holds_email(&member, "bob@vendor.example"));
    }

    #[test]
    fn error_bodies_keep_code_and_request_id() {
        let body = br#"{"error":{"code":"Authorization_RequestDenied","message":"Insufficient privileges to complete the operation.","innerError":{"request-id":"abc","date":"2025-02-13T10:17:05"}}}"#;
        let parsed = parse_error(body);
        assert_eq!(parsed.code, "Authorization_RequestDenied");
        assert_eq!(parsed.request_id.as_deref(), Some("abc"));
        let err = GraphError::Api {
            operation: "invite a@b.example".into(),
            status: 403,
            code: parsed.code,
            message: parsed.message,
            request_id: parsed.request_id,
        };
        assert!(err.to_string().contains("User.Invite.All"));
        assert!(!err.is_ambiguous());
    }
}
