//! Access tokens for Graph: the [`TokenSource`] seam and the client-credentials flow with a
//! client secret ([`ClientSecretCredential`], `docs/specs/microsoft-graph.md` §7).
//!
//! Tokens are cached and refreshed before they expire; concurrent callers share one refresh.
//! Token-endpoint errors are mapped from the documented AADSTS codes to a [`TokenProblem`]
//! that says what to fix, naming where the secret was read from. Neither the secret nor a
//! token is ever logged or shown in `Debug`.
//!
//! Must not import the client ([`super::client`]): the error types it shares with the client
//! live in [`super::error`], so the dependency goes one way (client → token → error).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

pub use super::error::TokenProblem;
use super::error::{GraphError, TokenFailure};
use crate::remote::Credential;
use crate::remote::http::{Edge, Idempotency, Request};

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

/// The error body of the token endpoint.
#[derive(Debug, Default, Deserialize)]
struct TokenErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u64>,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
}

/// `expires_in` is a number in the v2 endpoint and a string in some others.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    expires_in: NumberOrString,
}

/// The safety margin before expiry at which a cached token is refreshed.
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(300);

struct Cached {
    token: SecretString,
    refresh_at: Instant,
}

/// The OAuth 2.0 client-credentials flow with a client secret.
pub struct ClientSecretCredential {
    edge: Edge,
    token_url: Url,
    client_id: String,
    secret: Credential,
    scope: String,
    refresh_margin: Duration,
    cache: Mutex<Option<Cached>>,
}

impl fmt::Debug for ClientSecretCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecretCredential")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
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
    format!("{}/.default", graph_endpoint.as_str().trim_end_matches('/'))
}

impl ClientSecretCredential {
    /// A credential for `client_id` in `tenant` at `authority_host`, asking for
    /// `{graph_endpoint}/.default`. `edge` is shared with the Graph client (its retry policy
    /// and concurrency bound apply to token requests too). `secret`'s origin is named in the
    /// advice when the token endpoint refuses the secret.
    pub fn new(
        edge: Edge,
        authority_host: &Url,
        tenant: &str,
        client_id: &str,
        secret: Credential,
        graph_endpoint: &Url,
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
        Ok(Self {
            edge,
            token_url: token_url(authority_host, tenant.trim())?,
            client_id: client_id.trim().to_owned(),
            secret,
            scope: default_scope(graph_endpoint),
            refresh_margin: DEFAULT_REFRESH_MARGIN,
            cache: Mutex::new(None),
        })
    }

    /// Changes the refresh margin (default [`DEFAULT_REFRESH_MARGIN`]).
    pub fn with_refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    /// The token endpoint used.
    pub fn token_url(&self) -> &Url {
        &self.token_url
    }

    async fn cached_or_fetch(&self) -> Result<SecretString, GraphError> {
        // Holding the async lock across the fetch makes concurrent callers wait for one request.
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        let (token, lifetime) = self.fetch().await?;
        let refresh_at = Instant::now() + refresh_after(lifetime, self.refresh_margin);
        *cache = Some(Cached {
            token: token.clone(),
            refresh_at,
        });
        Ok(token)
    }

    async fn fetch(&self) -> Result<(SecretString, Duration), GraphError> {
        const OPERATION: &str = "get a Graph access token";
        let mut attempt = 0;
        loop {
            attempt += 1;
            let request = Request::new(reqwest::Method::POST, self.token_url.clone()).form(&[
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.secret.secret().expose_secret()),
                ("scope", self.scope.as_str()),
                ("grant_type", "client_credentials"),
            ]);
            let reply = self
                .edge
                .send(&request, Idempotency::Idempotent)
                .await
                .map_err(|err| GraphError::transport(OPERATION, err))?;
            let status = reply.status;
            let bytes = reply.body;
            if status.is_success() {
                let parsed: TokenResponse =
                    serde_json::from_slice(&bytes).map_err(|err| GraphError::Malformed {
                        operation: OPERATION.into(),
                        detail: format!("the token response is not the documented JSON: {err}"),
                        request_id: None,
                    })?;
                if let Some(kind) = parsed.token_type.as_deref()
                    && !kind.eq_ignore_ascii_case("bearer")
                {
                    return Err(GraphError::Malformed {
                        operation: OPERATION.into(),
                        detail: format!("token_type is `{kind}`, expected `Bearer`"),
                        request_id: None,
                    });
                }
                let seconds = match parsed.expires_in {
                    NumberOrString::Number(n) => Some(n),
                    NumberOrString::Text(t) => t.trim().parse().ok(),
                }
                .ok_or_else(|| GraphError::Malformed {
                    operation: OPERATION.into(),
                    detail: "expires_in is not a number of seconds".into(),
                    request_id: None,
                })?;
                if parsed.access_token.is_empty() {
                    return Err(GraphError::Malformed {
                        operation: OPERATION.into(),
                        detail: "access_token is empty".into(),
                        request_id: None,
                    });
                }
                tracing::debug!(expires_in = seconds, "obtained a Graph access token");
                return Ok((
                    SecretString::from(parsed.access_token),
                    Duration::from_secs(seconds),
                ));
            }
            let body: TokenErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
            let description = first_line(&body.error_description);
            let problem = TokenProblem::classify(&body.error, &body.error_codes, &description);
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
            return Err(GraphError::Token(Box::new(TokenFailure {
                problem,
                status: status.as_u16(),
                error: if body.error.is_empty() {
                    "(no error field)".into()
                } else {
                    body.error
                },
                error_codes: body.error_codes,
                description,
                trace_id: body.trace_id,
                correlation_id: body.correlation_id,
                token_url: self.token_url.to_string(),
                secret_origin: Some(self.secret.origin().to_owned()),
            })));
        }
    }
}

/// How long after issue a token of `lifetime` is refreshed: `margin` before expiry, but never
/// later than half its lifetime for short-lived tokens.
pub fn refresh_after(lifetime: Duration, margin: Duration) -> Duration {
    let margin = margin.min(lifetime / 2);
    lifetime.saturating_sub(margin)
}

/// The first line of an AADSTS description (the rest repeats trace and correlation ids).
fn first_line(description: &str) -> String {
    description
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .take(500)
        .collect()
}

impl TokenSource for ClientSecretCredential {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(self.cached_or_fetch())
    }

    fn invalidate(&self) {
        if let Ok(mut cache) = self.cache.try_lock() {
            *cache = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_uses_codes_within_the_error_family() {
        use TokenProblem::*;
        assert_eq!(
            TokenProblem::classify("invalid_client", &[7000215], ""),
            WrongSecret
        );
        assert_eq!(
            TokenProblem::classify("invalid_client", &[7000222], ""),
            ExpiredSecret
        );
        assert_eq!(
            TokenProblem::classify("unauthorized_client", &[700016], ""),
            UnknownApp
        );
        assert_eq!(
            TokenProblem::classify("invalid_request", &[90002], ""),
            UnknownTenant
        );
        assert_eq!(
            TokenProblem::classify("invalid_request", &[], "AADSTS90002: Tenant 'x' not found."),
            UnknownTenant
        );
        assert_eq!(
            TokenProblem::classify("unauthorized_client", &[7000112], ""),
            AppDisabled
        );
        assert_eq!(
            TokenProblem::classify("invalid_resource", &[], ""),
            WrongResource
        );
        assert_eq!(
            TokenProblem::classify("temporarily_unavailable", &[], ""),
            Unavailable
        );
        assert_eq!(
            TokenProblem::classify("invalid_client", &[], ""),
            ClientAuthentication
        );
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
}
