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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::Credential;
    use crate::remote::graph::error::TokenProblem;
    use crate::remote::graph::token::testing::{Answer, CLIENT_ID, Server, TOKEN_ANSWER, endpoint};

    /// An unsigned JWT-shaped token with these claims (Entra is not asked to verify it here).
    fn jwt(claims: serde_json::Value) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[tokio::test]
    async fn the_token_file_is_read_again_for_each_token_request() {
        let server = Server::start(|_, _| Answer::json(200, TOKEN_ANSWER)).await;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("azure-identity-token");
        std::fs::write(&file, "first-federated-token\n").unwrap_or_else(|e| panic!("{e}"));
        let credential = WorkloadIdentityCredential::new(endpoint(&server.url), file.clone());
        credential.token().await.unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&file, "  second-federated-token ").unwrap_or_else(|e| panic!("{e}"));
        credential.invalidate();
        credential.token().await.unwrap_or_else(|e| panic!("{e}"));
        let sent: Vec<Option<String>> = server
            .requests()
            .iter()
            .map(|r| r.field("client_assertion"))
            .collect();
        assert_eq!(
            sent,
            [
                Some("first-federated-token".to_owned()),
                Some("second-federated-token".to_owned())
            ]
        );
        let request = &server.requests()[0];
        assert_eq!(
            request.field("client_assertion_type").as_deref(),
            Some(super::super::JWT_BEARER)
        );
        assert_eq!(request.field("client_id").as_deref(), Some(CLIENT_ID));
    }

    #[tokio::test]
    async fn a_missing_or_empty_token_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("token");
        let server = Server::start(|_, _| Answer::json(200, TOKEN_ANSWER)).await;
        let credential = WorkloadIdentityCredential::new(endpoint(&server.url), file.clone());
        for content in [None, Some(" \n")] {
            if let Some(content) = content {
                std::fs::write(&file, content).unwrap_or_else(|e| panic!("{e}"));
            }
            let message = match credential.token().await {
                Ok(_) => panic!("a token"),
                Err(e) => e.to_string(),
            };
            assert!(message.contains(&file.display().to_string()), "{message}");
            assert!(message.contains("$AZURE_FEDERATED_TOKEN_FILE"), "{message}");
        }
        assert!(server.requests().is_empty());
    }

    #[tokio::test]
    async fn a_subject_mismatch_prints_what_guestops_sent() {
        let server = Server::start(|r, _| {
            if r.path.starts_with("/oidc") {
                let token = jwt(serde_json::json!({
                    "iss": "https://token.actions.githubusercontent.com",
                    "sub": "repo:contoso/guests:pull_request",
                    "aud": "api://AzureADTokenExchange",
                    "exp": 1_900_000_000,
                }));
                Answer::json(200, &format!(r#"{{"count":1,"value":"{token}"}}"#))
            } else {
                Answer::json(
                    400,
                    r#"{"error":"invalid_request","error_description":"AADSTS700213: No matching federated identity record found for presented assertion subject 'repo:contoso/guests:pull_request'.\r\nTrace ID: x","error_codes":[700213]}"#,
                )
            }
        })
        .await;
        let settings = GithubActionsSettings {
            request_url: server.at("oidc/token?api-version=2.0"),
            request_token: Credential::new(
                SecretString::from("runner-request-token".to_owned()),
                "the environment variable ACTIONS_ID_TOKEN_REQUEST_TOKEN",
            ),
            audience: "api://AzureADTokenExchange".into(),
        };
        let credential = GithubActionsCredential::new(endpoint(&server.url), settings)
            .unwrap_or_else(|e| panic!("{e}"));
        let err = match credential.token().await {
            Ok(_) => panic!("a token"),
            Err(e) => e,
        };
        assert_eq!(err.token_problem(), Some(TokenProblem::FederatedSubject));
        let message = err.to_string();
        for needle in [
            "iss https://token.actions.githubusercontent.com",
            "sub repo:contoso/guests:pull_request",
            "aud api://AzureADTokenExchange",
            "Subject identifier",
            CLIENT_ID,
        ] {
            assert!(message.contains(needle), "{needle}: {message}");
        }
        assert!(!message.contains("c2lnbmF0dXJl"), "{message}");
        assert!(!message.contains("runner-request-token"), "{message}");

        let requests = server.requests();
        let github = &requests[0];
        assert_eq!(github.path, "/oidc/token");
        assert_eq!(github.param("api-version").as_deref(), Some("2.0"));
        assert_eq!(
            github.param("audience").as_deref(),
            Some("api://AzureADTokenExchange")
        );
        assert!(
            github
                .query
                .contains("audience=api%3A%2F%2FAzureADTokenExchange"),
            "{}",
            github.query
        );
        assert_eq!(
            github.header("authorization"),
            "bearer runner-request-token"
        );
        let exchange = &requests[1];
        assert_eq!(
            exchange.field("client_assertion").as_deref(),
            Some(
                jwt(serde_json::json!({
                    "iss": "https://token.actions.githubusercontent.com",
                    "sub": "repo:contoso/guests:pull_request",
                    "aud": "api://AzureADTokenExchange",
                    "exp": 1_900_000_000,
                }))
                .as_str()
            )
        );
    }

    #[tokio::test]
    async fn github_refusals_say_what_to_fix() {
        let server = Server::start(|r, _| match r.param("audience").as_deref() {
            Some("forbidden") => Answer::json(403, "{}"),
            _ => Answer::json(200, r#"{"value":"not a jwt"}"#),
        })
        .await;
        let credential = |audience: &str| {
            GithubActionsCredential::new(
                endpoint(&server.url),
                GithubActionsSettings {
                    request_url: server.at("oidc?x=1"),
                    request_token: Credential::new(SecretString::from("t".to_owned()), "env"),
                    audience: audience.into(),
                },
            )
            .unwrap_or_else(|e| panic!("{e}"))
        };
        let message = |c: GithubActionsCredential| async move {
            match c.token().await {
                Ok(_) => panic!("a token"),
                Err(e) => e.to_string(),
            }
        };
        let forbidden = message(credential("forbidden")).await;
        assert!(
            forbidden.contains("permissions: id-token: write"),
            "{forbidden}"
        );
        let malformed = message(credential("api://AzureADTokenExchange")).await;
        assert!(malformed.contains("{\"value\": \"<jwt>\"}"), "{malformed}");
        let plain = GithubActionsCredential::new(
            endpoint(&server.url),
            GithubActionsSettings {
                request_url: Url::parse("http://pipelines.example/oidc?x=1")
                    .unwrap_or_else(|e| panic!("{e}")),
                request_token: Credential::new(SecretString::from("t".to_owned()), "env"),
                audience: "a".into(),
            },
        );
        assert!(matches!(plain, Err(GraphError::Config { .. })));
    }

    #[test]
    fn claims_are_read_from_the_payload() {
        let claims = federated_claims(&jwt(serde_json::json!({
            "iss": "https://oidc.example", "sub": "system:serviceaccount:ns:sa", "aud": ["a", "b"]
        })))
        .unwrap_or_else(|| panic!("claims"));
        assert_eq!(claims.issuer.as_deref(), Some("https://oidc.example"));
        assert_eq!(
            claims.subject.as_deref(),
            Some("system:serviceaccount:ns:sa")
        );
        assert_eq!(claims.audiences, ["a", "b"]);
        assert!(federated_claims("opaque").is_none());
    }
}
