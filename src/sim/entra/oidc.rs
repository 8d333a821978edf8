//! Test OIDC issuers, the external identity providers of workload identity federation: each
//! is served under `/oidc/{name}`, so its issuer URL is `{sim base}/oidc/{name}` (taken from the
//! `Host` header the request came with).
//!
//! - `GET /oidc/{name}/.well-known/openid-configuration`: `issuer` and `jwks_uri`;
//! - `GET /oidc/{name}/jwks`: the public key of `src/sim/keys/oidc-issuer.key` as a JWK;
//! - `GET /oidc/{name}/token?api-version=2.0&audience=X` with `Authorization: bearer <request
//!   token>`: `{"value": "<JWT>"}`, GitHub Actions' runner contract (§7: the client calls
//!   `$ACTIONS_ID_TOKEN_REQUEST_URL&audience=…` with `$ACTIONS_ID_TOKEN_REQUEST_TOKEN`). Missing
//!   bearer → `401`, wrong bearer → `403`; an issuer without a request token has no such
//!   endpoint (`404`).
//!
//! The tokens are RS256 JWTs with `iss`, `sub`, `aud`, `iat`, `nbf`, `exp` (5 minutes) and `jti`.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::collections::HashMap;

use super::jwt::issuer_signer;
use crate::sim::Sim;

/// The request token of a new issuer (`ACTIONS_ID_TOKEN_REQUEST_TOKEN`).
pub const DEFAULT_REQUEST_TOKEN: &str = "sim-actions-request-token";

/// The subject of a new issuer's tokens (a GitHub pull-request job).
pub const DEFAULT_SUBJECT: &str = "repo:sim-org/sim-repo:pull_request";

/// The audience of a new issuer's tokens when the request names none: GitHub's default is
/// the URL of the repository owner.
pub const DEFAULT_AUDIENCE: &str = "https://github.com/sim-org";

/// Lifetime of the tokens the token endpoint mints, in seconds.
pub const TOKEN_LIFETIME: i64 = 300;

/// A test OIDC issuer.
#[derive(Clone, PartialEq, Eq)]
pub struct SimIssuer {
    /// The bearer token its token endpoint requires; `None`: no token endpoint.
    pub request_token: Option<String>,
    /// `sub` of the tokens the token endpoint mints.
    pub subject: String,
    /// `aud` when the request has no `audience` parameter.
    pub default_audience: String,
}

impl Default for SimIssuer {
    fn default() -> Self {
        Self {
            request_token: Some(DEFAULT_REQUEST_TOKEN.into()),
            subject: DEFAULT_SUBJECT.into(),
            default_audience: DEFAULT_AUDIENCE.into(),
        }
    }
}

impl SimIssuer {
    /// An issuer minting tokens for `subject`, with the default request token.
    pub fn with_subject(subject: &str) -> Self {
        Self {
            subject: subject.to_owned(),
            ..Self::default()
        }
    }
}

impl std::fmt::Debug for SimIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimIssuer")
            .field(
                "request_token",
                &self.request_token.as_ref().map(|_| "[redacted]"),
            )
            .field("subject", &self.subject)
            .field("default_audience", &self.default_audience)
            .finish()
    }
}

/// The issuer URL of issuer `name` of a simulator served at `base` (e.g.
/// `http://127.0.0.1:8080/`): `{base}/oidc/{name}`, no trailing slash.
pub fn issuer_url(base: &str, name: &str) -> String {
    format!("{}/oidc/{name}", base.trim_end_matches('/'))
}

/// The URL of issuer `name`'s GitHub-style token endpoint (`ACTIONS_ID_TOKEN_REQUEST_URL`,
/// to which the client appends `&audience=…`).
pub fn token_request_url(base: &str, name: &str) -> String {
    format!("{}/token?api-version=2.0", issuer_url(base, name))
}

/// A token of the issuer at `issuer` for `subject` and `audience`, expiring `expires_in`
/// seconds from now (negative: already expired); `nbf`/`iat` 5 minutes before `exp` or now,
/// whichever is earlier.
pub fn mint(issuer: &str, subject: &str, audience: &str, expires_in: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    let exp = now + expires_in;
    let issued = now.min(exp - TOKEN_LIFETIME);
    issuer_signer().sign(&json!({
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": exp,
        "jti": uuid::Uuid::new_v4().to_string(),
    }))
}

/// Routes of the test issuers.
pub fn routes() -> Router<Sim> {
    Router::new()
        .route(
            "/oidc/{name}/.well-known/openid-configuration",
            get(configuration),
        )
        .route("/oidc/{name}/jwks", get(jwks))
        .route("/oidc/{name}/token", get(token))
}

fn base_of(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn unknown(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"message": format!("no issuer named '{name}'")})),
    )
        .into_response()
}

fn known(sim: &Sim, name: &str) -> Option<SimIssuer> {
    sim.state().identity.issuers.get(name).cloned()
}

async fn configuration(
    State(sim): State<Sim>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if known(&sim, &name).is_none() {
        return unknown(&name);
    }
    let issuer = issuer_url(&base_of(&headers), &name);
    axum::Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public", "pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti", "nbf"],
        "scopes_supported": ["openid"],
    }))
    .into_response()
}

async fn jwks(State(sim): State<Sim>, Path(name): Path<String>) -> Response {
    if known(&sim, &name).is_none() {
        return unknown(&name);
    }
    axum::Json(json!({"keys": [issuer_signer().jwk()]})).into_response()
}

async fn token(
    State(sim): State<Sim>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(issuer) = known(&sim, &name) else {
        return unknown(&name);
    };
    let Some(expected) = issuer.request_token else {
        return unknown(&name);
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    let error = |status: StatusCode, message: &str| {
        (status, axum::Json(json!({"message": message}))).into_response()
    };
    match presented {
        None => error(StatusCode::UNAUTHORIZED, "Bad credentials"),
        Some(token) if token != expected => error(
            StatusCode::FORBIDDEN,
            "The request token is not valid for this job.",
        ),
        Some(_) => {
            let audience = query
                .get("audience")
                .cloned()
                .unwrap_or(issuer.default_audience);
            let url = issuer_url(&base_of(&headers), &name);
            let value: Value = mint(&url, &issuer.subject, &audience, TOKEN_LIFETIME).into();
            axum::Json(json!({"value": value})).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use serde_json::json;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::sim::entra::assertion::JWT_BEARER;
    use crate::sim::entra::jwt::Jwt;
    use crate::sim::entra::{SimFederatedCredential, TOKEN_EXCHANGE_AUDIENCE};
    use crate::sim::graph::{SIM_CLIENT_ID, SIM_TENANT_ID};

    const SUBJECT: &str = "repo:org/repo:pull_request";

    /// A served simulator with issuer `gh` (subject [`SUBJECT`]) trusted by the application;
    /// its base URL.
    async fn served(shutdown: &CancellationToken) -> (Sim, url::Url) {
        let sim = Sim::new();
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        let base = sim.spawn(addr, shutdown.clone()).await.expect("served");
        let mut state = sim.state();
        state
            .identity
            .add_issuer("gh", SimIssuer::with_subject(SUBJECT));
        let mut creds = state.graph.credentials().clone();
        creds.federated = vec![SimFederatedCredential::new(
            "github-pr",
            &issuer_url(base.as_str(), "gh"),
            SUBJECT,
        )];
        state.graph.set_credentials(creds);
        drop(state);
        (sim, base)
    }

    async fn exchange(base: &url::Url, assertion: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{base}{SIM_TENANT_ID}/oauth2/v2.0/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", SIM_CLIENT_ID),
                ("scope", "https://graph.microsoft.com/.default"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", assertion),
            ])
            .send()
            .await
            .expect("an answer");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON"))
    }

    fn described(body: &Value) -> &str {
        body["error_description"].as_str().unwrap_or("")
    }

    #[tokio::test]
    async fn the_actions_token_endpoint_wants_its_bearer_and_honours_the_audience() {
        let shutdown = CancellationToken::new();
        let (sim, base) = served(&shutdown).await;
        let url = token_request_url(base.as_str(), "gh");
        let client = reqwest::Client::new();
        let missing = client.get(&url).send().await.expect("an answer");
        assert_eq!(missing.status().as_u16(), 401);
        let wrong = client
            .get(&url)
            .bearer_auth("not-it")
            .send()
            .await
            .expect("an answer");
        assert_eq!(wrong.status().as_u16(), 403);

        let asked: Value = client
            .get(format!("{url}&audience={TOKEN_EXCHANGE_AUDIENCE}"))
            .header("Authorization", format!("bearer {DEFAULT_REQUEST_TOKEN}"))
            .send()
            .await
            .expect("an answer")
            .json()
            .await
            .expect("JSON");
        let jwt = Jwt::parse(asked["value"].as_str().expect("a value")).expect("a JWT");
        assert_eq!(jwt.claim_str("sub"), Some(SUBJECT));
        assert_eq!(jwt.claim_str("aud"), Some(TOKEN_EXCHANGE_AUDIENCE));
        assert_eq!(
            jwt.claim_str("iss").map(str::to_owned),
            Some(issuer_url(base.as_str(), "gh"))
        );
        let lifetime = jwt.claim_time("exp").zip(jwt.claim_time("iat"));
        assert_eq!(lifetime.map(|(e, i)| e - i), Some(TOKEN_LIFETIME));
        assert!(jwt.claim_str("jti").is_some());

        let default: Value = client
            .get(&url)
            .bearer_auth(DEFAULT_REQUEST_TOKEN)
            .send()
            .await
            .expect("an answer")
            .json()
            .await
            .expect("JSON");
        let jwt = Jwt::parse(default["value"].as_str().expect("a value")).expect("a JWT");
        assert_eq!(jwt.claim_str("aud"), Some(DEFAULT_AUDIENCE));

        // The discovery document and the keys verify what the issuer mints.
        let issuer = issuer_url(base.as_str(), "gh");
        let config: Value = reqwest::get(format!("{issuer}/.well-known/openid-configuration"))
            .await
            .expect("an answer")
            .json()
            .await
            .expect("JSON");
        assert_eq!(config["issuer"], issuer.as_str());
        let keys: Value = reqwest::get(config["jwks_uri"].as_str().expect("a jwks_uri"))
            .await
            .expect("an answer")
            .json()
            .await
            .expect("JSON");
        let jwk = &keys["keys"][0];
        assert_eq!(jwk["kid"], jwt.header_str("kid").expect("a kid"));
        assert_eq!(
            (jwk["kty"].as_str(), jwk["use"].as_str()),
            (Some("RSA"), Some("sig"))
        );
        let key = crate::sim::entra::jwt::jwk_public_key(jwk).expect("an RSA key");
        assert!(jwt.verifies("RS256", &key));
        let unknown = reqwest::get(format!("{base}oidc/nope/jwks"))
            .await
            .expect("an answer");
        assert_eq!(unknown.status().as_u16(), 404);

        let counters = sim.state().counters.clone();
        assert_eq!(counters.identity_requests, 7);
        assert_eq!(counters.graph_requests, 0);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_federated_token_of_the_trusted_subject_and_audience_signs_the_app_in() {
        let shutdown = CancellationToken::new();
        let (sim, base) = served(&shutdown).await;
        let token = sim.mint_federated_token(&base, "gh", SUBJECT, TOKEN_EXCHANGE_AUDIENCE, 300);
        let (status, body) = exchange(&base, &token).await;
        assert_eq!(status, 200, "{body}");
        let access = Jwt::parse(body["access_token"].as_str().expect("a token")).expect("a JWT");
        assert_eq!(access.claim_str("appid"), Some(SIM_CLIENT_ID));
        // A federated token may be presented again while it is valid.
        assert_eq!(exchange(&base, &token).await.0, 200);
        assert_eq!(sim.state().counters.token_requests, 2);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_wrong_subject_names_what_was_presented() {
        let shutdown = CancellationToken::new();
        let (sim, base) = served(&shutdown).await;
        let subject = "repo:org/repo:ref:refs/heads/main";
        let token = sim.mint_federated_token(&base, "gh", subject, TOKEN_EXCHANGE_AUDIENCE, 300);
        let (status, body) = exchange(&base, &token).await;
        assert_eq!(
            (status, body["error_codes"][0].as_u64()),
            (401, Some(700213))
        );
        assert_eq!(body["error"], "invalid_client");
        assert!(described(&body).contains(subject), "{body}");
        assert!(described(&body).contains(TOKEN_EXCHANGE_AUDIENCE), "{body}");
        // Subjects match case-sensitively.
        let shouting = SUBJECT.to_uppercase();
        let token = sim.mint_federated_token(&base, "gh", &shouting, TOKEN_EXCHANGE_AUDIENCE, 300);
        assert_eq!(exchange(&base, &token).await.1["error_codes"][0], 700213);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_wrong_audience_an_unknown_issuer_and_an_expired_token_are_refused() {
        let shutdown = CancellationToken::new();
        let (sim, base) = served(&shutdown).await;
        let wrong_aud = sim.mint_federated_token(&base, "gh", SUBJECT, "api://other", 300);
        let (status, body) = exchange(&base, &wrong_aud).await;
        assert_eq!(
            (status, body["error_codes"][0].as_u64()),
            (401, Some(700212))
        );
        assert!(described(&body).contains("api://other"), "{body}");

        sim.state()
            .identity
            .add_issuer("stranger", SimIssuer::default());
        let unknown =
            sim.mint_federated_token(&base, "stranger", SUBJECT, TOKEN_EXCHANGE_AUDIENCE, 300);
        let (status, body) = exchange(&base, &unknown).await;
        assert_eq!(
            (status, body["error_codes"][0].as_u64()),
            (401, Some(700211))
        );
        assert!(described(&body).contains("/oidc/stranger"), "{body}");

        let expired = sim.mint_federated_token(&base, "gh", SUBJECT, TOKEN_EXCHANGE_AUDIENCE, -600);
        let (status, body) = exchange(&base, &expired).await;
        assert_eq!(
            (status, body["error_codes"][0].as_u64()),
            (401, Some(700024))
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_token_not_signed_by_the_issuers_key_fails_signature_validation() {
        let shutdown = CancellationToken::new();
        let (_sim, base) = served(&shutdown).await;
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": issuer_url(base.as_str(), "gh"), "sub": SUBJECT,
            "aud": TOKEN_EXCHANGE_AUDIENCE, "iat": now, "nbf": now, "exp": now + 300,
        });
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": issuer_signer().kid()});
        let forged = crate::sim::entra::assertion::testing::sign(
            crate::sim::entra::assertion::testing::OTHER_KEY,
            &header,
            &claims,
        );
        let (status, body) = exchange(&base, &forged).await;
        assert_eq!(
            (status, body["error_codes"][0].as_u64()),
            (401, Some(700027))
        );
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": "unknown-kid"});
        let forged = crate::sim::entra::assertion::testing::sign(
            crate::sim::entra::assertion::testing::OTHER_KEY,
            &header,
            &claims,
        );
        let (_, body) = exchange(&base, &forged).await;
        assert!(described(&body).contains("The key was not found"), "{body}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn graph_fault_injection_does_not_reach_the_identity_endpoints() {
        use tower::ServiceExt as _;
        let sim = Sim::new();
        {
            let mut state = sim.state();
            state.identity.add_issuer("gh", SimIssuer::default());
            state.graph_faults = crate::sim::Faults {
                throttle_every: Some(1),
                fail: vec![crate::sim::FailRule {
                    method: None,
                    path_prefix: "/".into(),
                    query_contains: None,
                    status: 503,
                    times: None,
                    after_processing: false,
                }],
                ..crate::sim::Faults::default()
            };
        }
        let request = axum::http::Request::builder()
            .uri("/oidc/gh/jwks")
            .body(axum::body::Body::empty())
            .expect("a request");
        let response = sim.router().oneshot(request).await.expect("an answer");
        assert_eq!(response.status(), StatusCode::OK);
        let counters = sim.state().counters.clone();
        assert_eq!(
            (
                counters.identity_requests,
                counters.graph_requests,
                counters.injected_failures
            ),
            (1, 0, 0)
        );
    }

    #[tokio::test]
    async fn keys_come_only_from_https_or_loopback_issuers() {
        let sim = Sim::new();
        let issuer = "http://issuer.example/oidc/gh";
        {
            let mut state = sim.state();
            let mut creds = state.graph.credentials().clone();
            creds.federated = vec![SimFederatedCredential::new("x", issuer, SUBJECT)];
            state.graph.set_credentials(creds);
        }
        let token = mint(issuer, SUBJECT, TOKEN_EXCHANGE_AUDIENCE, 300);
        let (status, body) =
            crate::sim::entra::assertion::testing::post_assertion(&sim, &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error_codes"][0], 700027);
        assert!(
            described(&body).contains("neither https nor a loopback"),
            "{body}"
        );
    }
}
