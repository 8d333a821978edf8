//! Workload identity federation (`docs/specs/microsoft-graph.md` §7): the client-credentials
//! grant with a token of another identity provider as the client assertion.
//!
//! - `workloadIdentity` ([`WorkloadIdentityCredential`]): the token is read from a file before
//!   **each** token request (AKS projects it and rotates it), whitespace trimmed.
//! - `githubActions` ([`GithubActionsCredential`]): before each token request the runner's OIDC
//!   endpoint is asked for a token with the configured audience
//!   (`GET {request_url}&audience=…`, `Authorization: bearer {request_token}`,
//!   answer `{"value": "<jwt>"}`).
//!
//! When Entra finds no federated identity credential for the token, the advice prints the
//! `iss`, `sub` and `aud` guestops sent: the token's payload is decoded without verifying, for
//! that message only ([`federated_claims`]). The token itself is never shown.

use std::fmt;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::header::AUTHORIZATION;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::{ClientAuth, Fetched, TokenCache, TokenEndpoint, TokenFuture, TokenSource};
use crate::remote::graph::credential::GithubActionsSettings;
use crate::remote::graph::error::{
    CredentialError, FederatedClaims, FederatedSource, GraphError, SignInContext,
};
use crate::remote::http::{Idempotency, Request, check_url};

/// `workloadIdentity`: a federated token read from a file before each token request.
pub struct WorkloadIdentityCredential {
    endpoint: TokenEndpoint,
    token_file: PathBuf,
    cache: TokenCache,
}

impl fmt::Debug for WorkloadIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadIdentityCredential")
            .field("endpoint", &self.endpoint)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl WorkloadIdentityCredential {
    pub(crate) fn new(endpoint: TokenEndpoint, token_file: PathBuf) -> Self {
        WorkloadIdentityCredential {
            endpoint,
            token_file,
            cache: TokenCache::new(),
        }
    }

    /// The federated token now in the file.
    async fn read_token(&self) -> Result<SecretString, CredentialError> {
        let file = self.token_file.display().to_string();
        let text = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|err| CredentialError::TokenFile {
                file: file.clone(),
                detail: if err.kind() == std::io::ErrorKind::NotFound {
                    "it does not exist: is the pod labelled azure.workload.identity/use: \"true\" \
                     with a service account annotated azure.workload.identity/client-id?"
                        .to_owned()
                } else {
                    format!("{err}")
                },
            })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(CredentialError::TokenFile {
                file,
                detail: "it is empty: the projected service-account token is missing".into(),
            });
        }
        Ok(SecretString::from(token.to_owned()))
    }

    async fn fetch(&self) -> Result<Fetched, GraphError> {
        let token = self.read_token().await?;
        let source = FederatedSource::File(self.token_file.display().to_string());
        exchange_federated(&self.endpoint, &token, source).await
    }
}

impl TokenSource for WorkloadIdentityCredential {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(self.cache.get(self.fetch()))
    }

    fn invalidate(&self) {
        self.cache.invalidate();
    }
}

/// `githubActions`: a federated token from the GitHub Actions runner before each token request.
pub struct GithubActionsCredential {
    endpoint: TokenEndpoint,
    settings: GithubActionsSettings,
    cache: TokenCache,
}

impl fmt::Debug for GithubActionsCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubActionsCredential")
            .field("endpoint", &self.endpoint)
            .field("request_url", &without_query(&self.settings.request_url))
            .field("request_token", &self.settings.request_token)
            .field("audience", &self.settings.audience)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct GithubAnswer {
    #[serde(default)]
    value: Option<String>,
}

impl GithubActionsCredential {
    pub(crate) fn new(
        endpoint: TokenEndpoint,
        settings: GithubActionsSettings,
    ) -> Result<Self, GraphError> {
        check_url(&settings.request_url).map_err(|reason| GraphError::Config {
            detail: format!(
                "$ACTIONS_ID_TOKEN_REQUEST_URL `{}`: {reason}",
                without_query(&settings.request_url)
            ),
        })?;
        if settings.audience.trim().is_empty() {
            return Err(GraphError::Config {
                detail: "tenant.credential.audience is empty; use api://AzureADTokenExchange"
                    .into(),
            });
        }
        Ok(GithubActionsCredential {
            endpoint,
            settings,
            cache: TokenCache::new(),
        })
    }

    /// `{request_url}&audience={audience}`.
    pub fn request_url(&self) -> Url {
        let mut url = self.settings.request_url.clone();
        url.query_pairs_mut()
            .append_pair("audience", &self.settings.audience);
        url
    }

    /// A fresh OIDC token from the runner.
    async fn github_token(&self) -> Result<SecretString, CredentialError> {
        let endpoint = without_query(&self.settings.request_url);
        let fail = |detail: String| CredentialError::Github {
            endpoint: endpoint.clone(),
            detail,
            source: None,
        };
        let authorization = SecretString::from(format!(
            "bearer {}",
            self.settings.request_token.secret().expose_secret()
        ));
        let request = Request::new(reqwest::Method::GET, self.request_url())
            .header(reqwest::header::ACCEPT, "application/json")
            .secret_header(AUTHORIZATION, &authorization)
            .map_err(|_| {
                fail(format!(
                    "the request token from {} cannot be sent in a header",
                    self.settings.request_token.origin()
                ))
            })?;
        let reply = self
            .endpoint
            .edge()
            .send(&request, Idempotency::Idempotent)
            .await
            .map_err(|err| CredentialError::Github {
                endpoint: endpoint.clone(),
                detail: "the runner's OIDC endpoint is unreachable; is this a GitHub Actions job?"
                    .into(),
                source: Some(err),
            })?;
        match reply.status.as_u16() {
            200..=299 => {}
            401 | 403 => {
                return Err(fail(format!(
                    "it answered {}: the job needs `permissions: id-token: write` (and \
                     $ACTIONS_ID_TOKEN_REQUEST_TOKEN is valid only inside the job that received \
                     it)",
                    reply.status.as_u16()
                )));
            }
            status => {
                return Err(fail(format!(
                    "it answered {status}; retry the job, and check $ACTIONS_ID_TOKEN_REQUEST_URL"
                )));
            }
        }
        let value = serde_json::from_slice::<GithubAnswer>(&reply.body)
            .ok()
            .and_then(|a| a.value)
            .filter(|v| v.split('.').count() == 3)
            .ok_or_else(|| {
                fail("its answer is not the documented {\"value\": \"<jwt>\"}".into())
            })?;
        Ok(SecretString::from(value))
    }

    async fn fetch(&self) -> Result<Fetched, GraphError> {
        let token = self.github_token().await?;
        let source = FederatedSource::GithubActions {
            audience: self.settings.audience.clone(),
        };
        exchange_federated(&self.endpoint, &token, source).await
    }
}

impl TokenSource for GithubActionsCredential {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(self.cache.get(self.fetch()))
    }

    fn invalidate(&self) {
        self.cache.invalidate();
    }
}

/// The exchange with `token` as the assertion; a refusal carries the token's claims.
async fn exchange_federated(
    endpoint: &TokenEndpoint,
    token: &SecretString,
    source: FederatedSource,
) -> Result<Fetched, GraphError> {
    let context = SignInContext::Federated {
        client_id: endpoint.client_id().to_owned(),
        source: source.clone(),
        claims: None,
    };
    match endpoint
        .exchange(ClientAuth::Assertion(token), &context)
        .await
    {
        Err(GraphError::Token(mut failure)) => {
            failure.context = SignInContext::Federated {
                client_id: endpoint.client_id().to_owned(),
                source,
                claims: federated_claims(token.expose_secret()),
            };
            Err(GraphError::Token(failure))
        }
        other => other,
    }
}

/// The `iss`, `sub`, `aud` and `exp` of a JWT, read **without verifying** it: for the advice
/// about a refused federated token only, never to decide anything.
pub fn federated_claims(jwt: &str) -> Option<FederatedClaims> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Audience {
        One(String),
        Many(Vec<String>),
    }
    #[derive(Deserialize)]
    struct Payload {
        iss: Option<String>,
        sub: Option<String>,
        aud: Option<Audience>,
        exp: Option<i64>,
    }
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let payload: Payload = serde_json::from_slice(&bytes).ok()?;
    Some(FederatedClaims {
        issuer: payload.iss,
        subject: payload.sub,
        audiences: match payload.aud {
            None => Vec::new(),
            Some(Audience::One(a)) => vec![a],
            Some(Audience::Many(a)) => a,
        },
        expires: payload.exp,
    })
}

/// The URL without its query (which may carry a token), for messages.
fn without_query(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}
