//! Access tokens for Graph: the [`TokenSource`] seam and every Entra sign-in kind behind it
//! (`docs/specs/microsoft-graph.md` §7):
//!
//! - [`secret`]: the client-credentials grant with a client secret;
//! - [`certificate`]: the same grant with a client assertion signed by a certificate's key;
//! - [`federated`]: the same grant with a federated token as the assertion (a workload
//!   identity token file, or GitHub Actions' OIDC provider);
//! - [`managed`]: a managed identity's endpoint (App Service, Azure Arc, IMDS).
//!
//! This module holds what they share: the token cache (`TokenCache`: refreshed before
//! expiry, concurrent callers share one refresh, forgotten after a `401`), the token-endpoint
//! exchange (`TokenEndpoint`: the POST, the answer, retries of `temporarily_unavailable`,
//! AADSTS codes classified as a [`TokenProblem`] that says what to fix), and
//! [`from_settings`], which builds the token source of a [`CredentialSettings`].
//!
//! No secret, private key, assertion, federated token or access token is ever logged or shown
//! in `Debug` or in an error.
//!
//! Must not import the client ([`super::client`]): the error types it shares with the client
//! live in [`super::error`], so the dependency goes one way (client → token → error).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

pub mod certificate;
pub mod federated;
pub mod managed;
pub mod secret;

use super::GraphSettings;
use super::credential::CredentialSettings;
pub use super::error::TokenProblem;
use super::error::{GraphError, SignInContext, TokenFailure};
use crate::remote::Credential;
use crate::remote::http::{Edge, Idempotency, Request};
pub use certificate::{CertificateInfo, ClientCertificate, ClientCertificateCredential};
pub use federated::{GithubActionsCredential, WorkloadIdentityCredential};
pub use managed::{ManagedIdentityCredential, ManagedRetry};
pub use secret::ClientSecretCredential;

/// A boxed token future, so that [`TokenSource`] stays dyn-compatible.
pub type TokenFuture<'a> =
    Pin<Box<dyn Future<Output = Result<SecretString, GraphError>> + Send + 'a>>;

/// Where Graph access tokens come from.
pub trait TokenSource: Send + Sync + fmt::Debug {
    /// A valid access token (cached while it lasts).
    fn token(&self) -> TokenFuture<'_>;

    /// Forgets the cached token (called after Graph rejected it with `401`), so that the next
    /// [`TokenSource::token`] fetches a fresh one.
    fn invalidate(&self) {}
}

/// A fixed token, for tests and for tokens obtained elsewhere.
pub struct StaticToken(SecretString);

impl StaticToken {
    /// Wraps `token`.
    pub fn new(token: SecretString) -> Self {
        Self(token)
    }
}

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticToken([redacted])")
    }
}

impl TokenSource for StaticToken {
    fn token(&self) -> TokenFuture<'_> {
        let token = self.0.clone();
        Box::pin(async move { Ok(token) })
    }
}

/// The token source of `credential` for the tenant of `settings`: the token endpoint is
/// `{authority_host}/{tenant_id}/oauth2/v2.0/token`, the scope `{resource}/.default` (and a
/// managed identity's `resource=` is `settings.resource`, never the overridden
/// `graph_endpoint`). `edge` is shared with the Graph client; a managed identity's requests go
/// through an edge of their own that never uses a proxy. Certificate files are read here, once;
/// federated tokens before each token request.
pub fn from_settings(
    edge: Edge,
    settings: &GraphSettings,
    credential: CredentialSettings,
) -> Result<Arc<dyn TokenSource>, GraphError> {
    let endpoint = || {
        TokenEndpoint::new(
            edge.clone(),
            &settings.authority_host,
            &settings.tenant_id,
            &settings.client_id,
            &settings.resource,
        )
    };
    Ok(match credential {
        CredentialSettings::ClientSecret { secret } => {
            Arc::new(ClientSecretCredential::from_endpoint(endpoint()?, secret))
        }
        CredentialSettings::ClientCertificate(certificate) => {
            let certificate = ClientCertificate::load(&certificate, SystemTime::now())?;
            Arc::new(ClientCertificateCredential::new(endpoint()?, certificate))
        }
        CredentialSettings::WorkloadIdentity { token_file } => {
            Arc::new(WorkloadIdentityCredential::new(endpoint()?, token_file))
        }
        CredentialSettings::GithubActions(github) => {
            Arc::new(GithubActionsCredential::new(endpoint()?, github)?)
        }
        CredentialSettings::ManagedIdentity(managed) => Arc::new(ManagedIdentityCredential::new(
            edge.retry().clone(),
            managed,
            &settings.resource,
        )?),
    })
}

/// The safety margin before expiry at which a cached token is refreshed.
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// An access token and how long it lasts from now.
pub(crate) struct Fetched {
    pub(crate) token: SecretString,
    pub(crate) lifetime: Duration,
}

struct Cached {
    token: SecretString,
    refresh_at: Instant,
}

/// The cache every sign-in kind shares: a token is refreshed [`refresh_after`] it was
/// obtained; concurrent callers wait for one refresh.
pub(crate) struct TokenCache {
    margin: Duration,
    slot: Mutex<Option<Cached>>,
    /// Set by [`TokenCache::invalidate`] when the slot was busy: the next caller drops the
    /// cached token.
    stale: AtomicBool,
}

impl TokenCache {
    pub(crate) fn new() -> Self {
        TokenCache {
            margin: DEFAULT_REFRESH_MARGIN,
            slot: Mutex::new(None),
            stale: AtomicBool::new(false),
        }
    }

    pub(crate) fn set_margin(&mut self, margin: Duration) {
        self.margin = margin;
    }

    /// The cached token while it is fresh, else the result of `fetch` (cached).
    pub(crate) async fn get(
        &self,
        fetch: impl Future<Output = Result<Fetched, GraphError>>,
    ) -> Result<SecretString, GraphError> {
        // Holding the async lock across the fetch makes concurrent callers wait for one request.
        let mut slot = self.slot.lock().await;
        if self.stale.swap(false, Ordering::SeqCst) {
            *slot = None;
        }
        if let Some(cached) = slot.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        let fetched = fetch.await?;
        let refresh_at = Instant::now() + refresh_after(fetched.lifetime, self.margin);
        *slot = Some(Cached {
            token: fetched.token.clone(),
            refresh_at,
        });
        Ok(fetched.token)
    }

    /// Forgets the cached token. When another caller holds the slot, the next caller to take
    /// it drops the token instead (at worst one extra token request).
    pub(crate) fn invalidate(&self) {
        match self.slot.try_lock() {
            Ok(mut slot) => *slot = None,
            Err(_) => self.stale.store(true, Ordering::SeqCst),
        }
    }
}

/// How the client proves who it is at the token endpoint.
pub(crate) enum ClientAuth<'a> {
    /// `client_secret`.
    Secret(&'a Credential),
    /// `client_assertion` (a signed JWT, or a federated token).
    Assertion(&'a SecretString),
}

/// The assertion type of a JWT client assertion (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The v2.0 token endpoint of one app in one tenant: the client-credentials grant for
/// `{resource}/.default`.
pub(crate) struct TokenEndpoint {
    edge: Edge,
    token_url: Url,
    client_id: String,
    scope: String,
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl TokenEndpoint {
    /// Checks the settings: `authority_host` https (or loopback http), a tenant and a client id.
    pub(crate) fn new(
        edge: Edge,
        authority_host: &Url,
        tenant: &str,
        client_id: &str,
        resource: &Url,
    ) -> Result<Self, GraphError> {
        if let Err(reason) = crate::remote::http::check_url(authority_host) {
            return Err(GraphError::Config {
                detail: format!("tenant.authorityHost `{authority_host}`: {reason}"),
            });
        }
        if tenant.trim().is_empty() {
            return Err(GraphError::Config {
                detail: "tenant.tenantId is empty; set the tenant GUID or its primary domain"
                    .into(),
            });
        }
        if client_id.trim().is_empty() {
            return Err(GraphError::Config {
                detail: "tenant.clientId is empty; set the Application (client) ID of the app registration".into(),
            });
        }
        Ok(TokenEndpoint {
            edge,
            token_url: token_url(authority_host, tenant.trim())?,
            client_id: client_id.trim().to_owned(),
            scope: default_scope(resource),
        })
    }

    pub(crate) fn token_url(&self) -> &Url {
        &self.token_url
    }

    pub(crate) fn client_id(&self) -> &str {
        &self.client_id
    }

    pub(crate) fn edge(&self) -> &Edge {
        &self.edge
    }

    /// One client-credentials exchange, retrying `temporarily_unavailable` by the edge's retry
    /// policy. A refusal is a [`GraphError::Token`] carrying `context` for its advice.
    pub(crate) async fn exchange(
        &self,
        auth: ClientAuth<'_>,
        context: &SignInContext,
    ) -> Result<Fetched, GraphError> {
        const OPERATION: &str = "get a Graph access token";
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut form = vec![
                ("client_id", self.client_id.as_str()),
                ("scope", self.scope.as_str()),
                ("grant_type", "client_credentials"),
            ];
            match &auth {
                ClientAuth::Secret(secret) => {
                    form.push(("client_secret", secret.secret().expose_secret()));
                }
                ClientAuth::Assertion(assertion) => {
                    form.push(("client_assertion_type", JWT_BEARER));
                    form.push(("client_assertion", assertion.expose_secret()));
                }
            }
            let request = Request::new(reqwest::Method::POST, self.token_url.clone()).form(&form);
            let reply = self
                .edge
                .send(&request, Idempotency::Idempotent)
                .await
                .map_err(|err| GraphError::transport(OPERATION, err))?;
            if reply.status.is_success() {
                return parse_token_response(&reply.body, OPERATION, SystemTime::now());
            }
            let Refusal {
                body,
                description,
                problem,
            } = parse_refusal(&reply.body);
            let retry = self.edge.retry();
            if problem.is_transient() && attempt <= retry.max_retries {
                let delay = retry
                    .base_delay
                    .saturating_mul(1 << (attempt - 1).min(10))
                    .min(retry.max_delay);
                tracing::debug!(
                    error = %body.error,
                    delay_ms = delay.as_millis() as u64,
                    "token endpoint temporarily unavailable; retrying"
                );
                tokio::time::sleep(delay).await;
                continue;
            }
            let secret_origin = match &auth {
                ClientAuth::Secret(secret) => Some(secret.origin().to_owned()),
                ClientAuth::Assertion(_) => None,
            };
            return Err(body.into_failure(
                problem,
                reply.status.as_u16(),
                description,
                self.token_url.as_str(),
                secret_origin,
                context.clone(),
            ));
        }
    }
}

/// The error body of the token endpoint (and of the managed-identity endpoints, which mimic
/// it).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TokenErrorBody {
    #[serde(default)]
    pub(crate) error: String,
    #[serde(default)]
    pub(crate) error_description: String,
    #[serde(default)]
    pub(crate) error_codes: Vec<u64>,
    #[serde(default)]
    pub(crate) trace_id: Option<String>,
    #[serde(default)]
    pub(crate) correlation_id: Option<String>,
}

impl TokenErrorBody {
    /// Reads an error body of the token endpoint (or of a managed-identity endpoint): the
    /// documented JSON, or else an empty body (every field empty).
    pub(crate) fn parse(bytes: &[u8]) -> Self {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    /// The refusal as a [`GraphError::Token`]: `problem` classified from this body,
    /// `description` its first line, `token_url` the endpoint that answered `status`.
    pub(crate) fn into_failure(
        self,
        problem: TokenProblem,
        status: u16,
        description: String,
        token_url: &str,
        secret_origin: Option<String>,
        context: SignInContext,
    ) -> GraphError {
        GraphError::Token(Box::new(TokenFailure {
            problem,
            status,
            error: if self.error.is_empty() {
                "(no error field)".into()
            } else {
                self.error
            },
            error_codes: self.error_codes,
            description,
            trace_id: self.trace_id,
            correlation_id: self.correlation_id,
            token_url: token_url.to_owned(),
            secret_origin,
            context,
        }))
    }
}

/// A refusal of a token endpoint, read from its body.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// The body.
    pub(crate) body: TokenErrorBody,
    /// The first line of its description ([`first_line`]).
    pub(crate) description: String,
    /// What it classifies as.
    pub(crate) problem: TokenProblem,
}

/// Reads the error body of the token endpoint: the body, the first line of
/// `error_description`, and the problem `error` and `error_codes` classify as
/// ([`TokenProblem::classify`]).
pub(crate) fn parse_refusal(bytes: &[u8]) -> Refusal {
    let body = TokenErrorBody::parse(bytes);
    let description = first_line(&body.error_description);
    let problem = TokenProblem::classify(&body.error, &body.error_codes, &description);
    Refusal {
        body,
        description,
        problem,
    }
}

/// `expires_in`/`expires_on` are numbers in the v2 endpoint and strings in IMDS and App Service.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(u64),
    Text(String),
}

impl NumberOrString {
    fn seconds(&self) -> Option<u64> {
        match self {
            NumberOrString::Number(n) => Some(*n),
            NumberOrString::Text(t) => t.trim().parse().ok(),
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<NumberOrString>,
    #[serde(default)]
    expires_on: Option<NumberOrString>,
}

/// Parses a token answer: `access_token`, `token_type` Bearer (when given), and the lifetime
/// from `expires_in` (seconds) or else `expires_on` (epoch seconds, relative to `now`), each a
/// number or a string.
pub(crate) fn parse_token_response(
    bytes: &[u8],
    operation: &str,
    now: SystemTime,
) -> Result<Fetched, GraphError> {
    let malformed = |detail: String| GraphError::Malformed {
        operation: operation.into(),
        detail,
        request_id: None,
    };
    let parsed: TokenResponse = serde_json::from_slice(bytes).map_err(|err| {
        malformed(format!(
            "the token response is not the documented JSON: {err}"
        ))
    })?;
    if let Some(kind) = parsed.token_type.as_deref()
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(malformed(format!(
            "token_type is `{kind}`, expected `Bearer`"
        )));
    }
    let now_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let seconds = match (&parsed.expires_in, &parsed.expires_on) {
        (Some(expires_in), _) => expires_in.seconds(),
        (None, Some(expires_on)) => expires_on.seconds().map(|at| at.saturating_sub(now_epoch)),
        (None, None) => None,
    }
    .ok_or_else(|| malformed("expires_in is not a number of seconds".into()))?;
    if parsed.access_token.is_empty() {
        return Err(malformed("access_token is empty".into()));
    }
    tracing::debug!(expires_in = seconds, "obtained a Graph access token");
    Ok(Fetched {
        token: SecretString::from(parsed.access_token),
        lifetime: Duration::from_secs(seconds),
    })
}

/// `{authority_host}/{tenant}/oauth2/v2.0/token`, with `tenant` encoded as one path segment.
pub fn token_url(authority_host: &Url, tenant: &str) -> Result<Url, GraphError> {
    let mut url = authority_host.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| GraphError::Config {
            detail: format!(
                "tenant.authorityHost `{authority_host}` cannot be a base URL; use e.g. https://login.microsoftonline.com"
            ),
        })?
        .pop_if_empty()
        .extend([tenant, "oauth2", "v2.0", "token"]);
    Ok(url)
}

/// `{graph_endpoint}/.default`: every application permission consented for the app.
pub fn default_scope(graph_endpoint: &Url) -> String {
    format!("{}/.default", resource_name(graph_endpoint))
}

/// The resource identifier without a trailing slash, e.g. `https://graph.microsoft.com`.
pub fn resource_name(resource: &Url) -> &str {
    resource.as_str().trim_end_matches('/')
}

/// How long after issue a token of `lifetime` is refreshed: `margin` before expiry, but never
/// later than half its lifetime for short-lived tokens.
pub fn refresh_after(lifetime: Duration, margin: Duration) -> Duration {
    let margin = margin.min(lifetime / 2);
    lifetime.saturating_sub(margin)
}

/// The first line of an AADSTS description (the rest repeats trace and correlation ids).
pub(crate) fn first_line(description: &str) -> String {
    description
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .take(500)
        .collect()
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_uses_codes_within_the_error_family() {
        use TokenProblem::*;
        let cases: &[(&str, &[u64], &str, TokenProblem)] = &[
            ("invalid_client", &[7000215], "", WrongSecret),
            ("invalid_client", &[7000222], "", ExpiredSecret),
            ("unauthorized_client", &[700016], "", UnknownApp),
            ("invalid_request", &[90002], "", UnknownTenant),
            (
                "invalid_request",
                &[],
                "AADSTS90002: Tenant 'x' not found.",
                UnknownTenant,
            ),
            ("unauthorized_client", &[7000112], "", AppDisabled),
            ("invalid_resource", &[], "", WrongResource),
            ("temporarily_unavailable", &[], "", Unavailable),
            ("invalid_client", &[], "", ClientAuthentication),
            ("invalid_client", &[700027], "", CertificateNotRegistered),
            ("invalid_client", &[700024], "", AssertionTime),
            ("invalid_request", &[700211], "", FederatedIssuer),
            ("invalid_request", &[700212], "", FederatedAudience),
            ("invalid_request", &[700213], "", FederatedSubject),
            ("invalid_request", &[70021], "", FederatedNoMatch),
            ("invalid_client", &[50013], "", InvalidAssertion),
            (
                "invalid_request",
                &[],
                "AADSTS700213: No matching",
                FederatedSubject,
            ),
            (
                "invalid_grant",
                &[123456],
                "AADSTS123456: something new",
                Other,
            ),
        ];
        for (error, codes, description, expected) in cases {
            assert_eq!(
                TokenProblem::classify(error, codes, description),
                *expected,
                "{error} {codes:?} {description}"
            );
        }
        assert!(WrongSecret.advice(None).contains("VALUE"));
    }

    #[test]
    fn refresh_happens_before_expiry() {
        let hour = Duration::from_secs(3599);
        assert_eq!(
            refresh_after(hour, DEFAULT_REFRESH_MARGIN),
            Duration::from_secs(3299)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(60), DEFAULT_REFRESH_MARGIN),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn token_url_encodes_the_tenant() {
        let host =
            Url::parse("https://login.microsoftonline.com/").unwrap_or_else(|e| panic!("{e}"));
        let url = token_url(&host, "contoso.onmicrosoft.com").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            url.as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        let graph = Url::parse("https://graph.microsoft.com").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            default_scope(&graph),
            "https://graph.microsoft.com/.default"
        );
    }

    #[test]
    fn lifetimes_are_numbers_or_strings() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let cases: &[(&str, u64)] = &[
            (
                r#"{"access_token":"t","token_type":"Bearer","expires_in":3599}"#,
                3599,
            ),
            (
                r#"{"access_token":"t","token_type":"Bearer","expires_in":"3599","expires_on":"1700003599"}"#,
                3599,
            ),
            (
                r#"{"access_token":"t","token_type":"Bearer","expires_on":"1700001000"}"#,
                1000,
            ),
            (r#"{"access_token":"t","expires_on":1700000060}"#, 60),
        ];
        for (body, seconds) in cases {
            let fetched = parse_token_response(body.as_bytes(), "test", now)
                .unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(fetched.lifetime, Duration::from_secs(*seconds), "{body}");
        }
        let missing = parse_token_response(br#"{"access_token":"t"}"#, "test", now);
        assert!(matches!(missing, Err(GraphError::Malformed { .. })));
    }

    fn graph_settings(authority: &Url, client_id: &str) -> GraphSettings {
        let graph = Url::parse("https://graph.microsoft.com").unwrap_or_else(|e| panic!("{e}"));
        GraphSettings {
            tenant_id: "tenant".into(),
            client_id: client_id.into(),
            authority_host: authority.clone(),
            graph_endpoint: graph.clone(),
            resource: graph,
            invite_redirect_url: "https://myapps.microsoft.com".into(),
            concurrency: 2,
            write_rate: crate::remote::pace::WriteRate::GRAPH,
        }
    }

    fn certificate_settings() -> crate::remote::graph::credential::CertificateSettings {
        crate::remote::graph::credential::CertificateSettings {
            file: testing::fixture("app.pem"),
            origin: "tenant.credential.certificateFile".into(),
            password: None,
            send_chain: true,
            algorithm: Default::default(),
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_certificate_exchange() {
        let server =
            testing::Server::start(|_, _| testing::Answer::json(200, testing::TOKEN_ANSWER)).await;
        let edge = Edge::new(testing::retry(), 4).unwrap_or_else(|e| panic!("{e}"));
        let source = from_settings(
            edge,
            &graph_settings(&server.url, testing::CLIENT_ID),
            CredentialSettings::ClientCertificate(certificate_settings()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let tokens = futures::future::join_all((0..5).map(|_| source.token())).await;
        assert!(tokens.iter().all(|t| t.is_ok()));
        assert_eq!(server.requests().len(), 1);
        source.invalidate();
        source.token().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(server.requests().len(), 2);
    }

    #[test]
    fn a_managed_identity_needs_no_client_id_and_the_others_do() {
        let edge = Edge::new(testing::retry(), 1).unwrap_or_else(|e| panic!("{e}"));
        let authority =
            Url::parse("https://login.microsoftonline.com").unwrap_or_else(|e| panic!("{e}"));
        let settings = graph_settings(&authority, " ");
        let managed = CredentialSettings::ManagedIdentity(
            crate::remote::graph::credential::ManagedIdentitySettings {
                client_id: None,
                source: crate::remote::graph::credential::ManagedIdentitySource::Imds {
                    host: Url::parse(crate::remote::graph::credential::IMDS_ENDPOINT)
                        .unwrap_or_else(|e| panic!("{e}")),
                },
            },
        );
        assert!(from_settings(edge.clone(), &settings, managed).is_ok());
        let certificate = CredentialSettings::ClientCertificate(certificate_settings());
        match from_settings(edge, &settings, certificate) {
            Err(GraphError::Config { detail }) => assert!(detail.contains("tenant.clientId")),
            other => panic!("{other:?}"),
        }
    }

    /// No secret, key, assertion, federated token or access token in `Debug` or in a message.
    #[tokio::test]
    async fn no_secret_appears_in_debug_or_in_errors() {
        const REFUSAL: &str = r#"{"error":"invalid_client","error_description":"AADSTS700027: Client assertion failed signature validation.","error_codes":[700027]}"#;
        let server = testing::Server::start(|r, _| {
            if r.path.starts_with("/oidc") {
                testing::Answer::json(
                    200,
                    r#"{"value":"aGVhZGVy.eyJzdWIiOiJ4In0.c2VjcmV0LXNpZw"}"#,
                )
            } else {
                testing::Answer::json(401, REFUSAL)
            }
        })
        .await;
        let key_pem = std::fs::read_to_string(testing::fixture("app.key")).unwrap_or_default();
        let key_lines: Vec<&str> = key_pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 20)
            .collect();
        assert!(key_lines.len() > 10);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "federated-token-from-the-file")
            .unwrap_or_else(|e| panic!("{e}"));
        let settings = graph_settings(&server.url, testing::CLIENT_ID);
        let kinds = [
            CredentialSettings::ClientSecret {
                secret: Credential::new(
                    SecretString::from("the-client-secret".to_owned()),
                    "the environment variable GUESTOPS_TENANT_CLIENT_SECRET",
                ),
            },
            CredentialSettings::ClientCertificate(certificate_settings()),
            CredentialSettings::WorkloadIdentity { token_file },
            CredentialSettings::GithubActions(
                crate::remote::graph::credential::GithubActionsSettings {
                    request_url: server.at("oidc?api-version=2.0"),
                    request_token: Credential::new(
                        SecretString::from("the-request-token".to_owned()),
                        "the environment variable ACTIONS_ID_TOKEN_REQUEST_TOKEN",
                    ),
                    audience: "api://AzureADTokenExchange".into(),
                },
            ),
        ];
        let mut shown = Vec::new();
        for kind in kinds {
            shown.push(format!("{kind:?}"));
            let edge = Edge::new(testing::retry(), 2).unwrap_or_else(|e| panic!("{e}"));
            let source = from_settings(edge, &settings, kind).unwrap_or_else(|e| panic!("{e}"));
            shown.push(format!("{source:?}"));
            let err = match source.token().await {
                Ok(_) => panic!("a token"),
                Err(e) => e,
            };
            shown.push(format!("{err:?}"));
            shown.push(err.to_string());
            shown.push(crate::error::chain(&err).to_string());
        }
        let certificate =
            certificate::ClientCertificate::load(&certificate_settings(), SystemTime::now())
                .unwrap_or_else(|e| panic!("{e}"));
        shown.push(format!("{certificate:?}"));
        let mut mismatched = certificate_settings();
        let mixed = dir.path().join("mixed.pem");
        let text = [
            std::fs::read_to_string(testing::fixture("app.crt")).unwrap_or_default(),
            std::fs::read_to_string(testing::fixture("other.key")).unwrap_or_default(),
        ]
        .concat();
        std::fs::write(&mixed, text).unwrap_or_else(|e| panic!("{e}"));
        mismatched.file = mixed;
        let err = certificate::ClientCertificate::load(&mismatched, SystemTime::now())
            .err()
            .unwrap_or_else(|| panic!("a mismatched key was accepted"));
        shown.push(format!("{err:?}"));
        shown.push(err.to_string());

        let mut sent: Vec<String> = server
            .requests()
            .iter()
            .filter_map(|r| r.field("client_assertion").or(r.field("client_secret")))
            .collect();
        assert_eq!(sent.len(), 4, "every kind reached the token endpoint");
        sent.extend(
            [
                "the-client-secret",
                "the-request-token",
                "federated-token-from-the-file",
                "c2VjcmV0LXNpZw",
            ]
            .map(str::to_owned),
        );
        let other_key = std::fs::read_to_string(testing::fixture("other.key")).unwrap_or_default();
        let secrets = sent
            .iter()
            .map(String::as_str)
            .chain(key_lines.iter().copied())
            .chain(
                other_key
                    .lines()
                    .filter(|l| !l.starts_with("-----") && l.len() > 20),
            );
        let shown = shown.join("\n");
        assert!(shown.contains("700027"), "the errors were shown: {shown}");
        for secret in secrets {
            assert!(!shown.contains(secret), "`{secret}` shown in: {shown}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_refreshes_before_expiry_and_after_invalidate() {
        let cache = TokenCache::new();
        let fetches = std::sync::atomic::AtomicUsize::new(0);
        let fetch = || async {
            let n = fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Fetched {
                token: SecretString::from(format!("token-{n}")),
                lifetime: Duration::from_secs(3600),
            })
        };
        let first = cache.get(fetch()).await.unwrap_or_else(|e| panic!("{e}"));
        let again = cache.get(fetch()).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.expose_secret(), "token-0");
        assert_eq!(again.expose_secret(), "token-0");
        tokio::time::advance(Duration::from_secs(3600 - 300)).await;
        let refreshed = cache.get(fetch()).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(refreshed.expose_secret(), "token-1");
        cache.invalidate();
        let fresh = cache.get(fetch()).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fresh.expose_secret(), "token-2");
    }
}
