//! Client assertions at the token endpoint (`client_assertion_type=urn:ietf:params:oauth:
//! client-assertion-type:jwt-bearer`, §7): a JWT the application signed with the private key of
//! a registered certificate, or a federated token from an external issuer that a federated
//! identity credential of the application trusts (workload identity federation).
//!
//! An assertion that names a certificate (`x5t#S256` or `x5t`) and is issued by the client id
//! itself is a certificate assertion; any other is a federated token. The checks follow what
//! Entra is documented or reported to check, in a plausible order; where it is unknown the
//! simulator is strict.
//!
//! # The AADSTS codes and texts
//! From `docs/specs/microsoft-graph.md` §7 and, where it is silent, public captures of Entra's
//! answers (issue threads, test fixtures, troubleshooting tables: "community"):
//! - `50027` "JWT token is invalid or malformed." (malformed JWT, unsupported `alg`, a
//!   missing `exp`/`nbf`): code from the reference table, the details are the simulator's.
//! - `700027` certificate not registered ("… [Reason - The key was not found., Thumbprint of
//!   key used by client: …]"), invalid signature ("Client assertion contains an invalid
//!   signature. [Reason - The provided signature value did not match the expected signature
//!   value., …]"), and for federated tokens "Client assertion failed signature validation.":
//!   community (azure-sdk troubleshooting guides, issue threads); bracketed details abridged.
//! - `700021` "Client assertion application identifier doesn't match 'client_id' parameter."
//!   (`iss`/`sub` not the client id): **unverified** (code and text from memory of Entra's
//!   answers; not in the spec).
//! - `700023` "Client assertion audience claim does not match Realm issuer." (`aud` not the
//!   token URL): community (a third-party explanation of the code); the spec lists only
//!   `50012/50013` for bad assertions.
//! - `700024` "Client assertion is not within its valid time range. …": community (many
//!   captured answers).
//! - `50012` for a missing or replayed `jti`: **unverified**, the code is the spec's generic
//!   bad-assertion code; Entra's own answer to a replay is not documented.
//! - `700211`/`700212`/`700213` "No matching federated identity record found for presented
//!   assertion issuer/audience/subject '…'": community (captured answers in issue threads and a
//!   test fixture); the `700213` text also carries the issuer, subject and audience as the
//!   older `AADSTS70021` answer did (the simulator's combination, so that a test or a user
//!   sees what was presented).

use std::collections::HashMap;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, SecondsFormat, Utc};
use rsa::PublicKey;
use rsa::sha2::{Digest as _, Sha256};
use serde_json::Value;

use super::jwt::{self, Jwt};
use super::{SimCertificate, SimFederatedCredential};

/// The only `client_assertion_type` Entra accepts.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Clock skew tolerated on `nbf` and `exp` (5 minutes, Entra's documented default skew).
pub const CLOCK_SKEW: i64 = 300;

/// Entra keeps only the first 100 signing keys of an external issuer (§7).
const MAX_ISSUER_KEYS: usize = 100;

/// Why an assertion is refused: the pieces of an AADSTS error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: StatusCode,
    /// OAuth `error`.
    pub error: &'static str,
    /// The AADSTS number.
    pub code: u64,
    /// The description after `AADSTS{code}: `.
    pub text: String,
}

fn refuse(status: StatusCode, error: &'static str, code: u64, text: String) -> Refusal {
    Refusal {
        status,
        error,
        code,
        text,
    }
}

fn malformed(why: &str) -> Refusal {
    refuse(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        50027,
        format!("JWT token is invalid or malformed. [Reason - {why}]"),
    )
}

fn invalid_client(code: u64, text: String) -> Refusal {
    refuse(StatusCode::UNAUTHORIZED, "invalid_client", code, text)
}

/// The kind of a client assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Signed by the application with a certificate's key.
    Certificate,
    /// A token of an external issuer (`iss`).
    Federated(String),
}

/// Parses `assertion`; `Err` if it is not a JWT.
pub fn parse(assertion: &str) -> Result<Jwt, Refusal> {
    Jwt::parse(assertion).ok_or_else(|| malformed("The assertion is not a JWS in compact form."))
}

/// Certificate if it names a certificate thumbprint and `iss` is `client_id`, else federated.
pub fn kind(jwt: &Jwt, client_id: &str) -> Kind {
    let names_certificate = jwt.header_str("x5t#S256").is_some() || jwt.header_str("x5t").is_some();
    let iss = jwt.claim_str("iss").unwrap_or("");
    if names_certificate && iss.eq_ignore_ascii_case(client_id) {
        Kind::Certificate
    } else {
        Kind::Federated(iss.to_owned())
    }
}

fn time(seconds: i64) -> String {
    DateTime::<Utc>::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `nbf`/`exp` within `now` ± [`CLOCK_SKEW`]; both are required.
fn check_lifetime(jwt: &Jwt, now: i64) -> Result<i64, Refusal> {
    let exp = jwt
        .claim_time("exp")
        .ok_or_else(|| malformed("The assertion has no 'exp' claim."))?;
    let nbf = jwt
        .claim_time("nbf")
        .ok_or_else(|| malformed("The assertion has no 'nbf' claim."))?;
    if now + CLOCK_SKEW < nbf || now - CLOCK_SKEW >= exp {
        return Err(invalid_client(
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                time(now),
                time(nbf),
                time(exp)
            ),
        ));
    }
    Ok(exp)
}

fn hex_of(b64: &str) -> String {
    jwt::unb64(b64).map_or_else(|| b64.to_owned(), hex::encode_upper)
}

/// Checks a certificate assertion of `client_id` sent to `token_url` (the URL as requested:
/// `http://{Host}/{tenant}/oauth2/v2.0/token`). `seen` holds the `jti`s already used with their
/// `exp`; an accepted assertion's `jti` is added (only once everything else passed, so a bad
/// assertion cannot spend a `jti`).
pub fn check_certificate(
    jwt: &Jwt,
    certificates: &[SimCertificate],
    client_id: &str,
    token_url: &str,
    now: i64,
    seen: &mut HashMap<String, i64>,
) -> Result<(), Refusal> {
    let alg = jwt.header_str("alg").unwrap_or("");
    if !matches!(alg, "PS256" | "RS256") {
        return Err(malformed(&format!(
            "The algorithm '{alg}' is not supported for client assertions: use PS256 or RS256."
        )));
    }
    // x5t#S256 first (the current documentation's header), then the older SHA-1 x5t.
    let (thumbprint, certificate) = match (jwt.header_str("x5t#S256"), jwt.header_str("x5t")) {
        (Some(s256), _) => (s256, certificates.iter().find(|c| c.x5t_s256() == s256)),
        (None, Some(sha1)) => (sha1, certificates.iter().find(|c| c.x5t() == sha1)),
        (None, None) => return Err(malformed("The assertion names no certificate.")),
    };
    let Some(certificate) = certificate else {
        return Err(invalid_client(
            700027,
            format!(
                "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'.]",
                hex_of(thumbprint)
            ),
        ));
    };
    // x5c, when sent, must start with the certificate the thumbprint names.
    if let Some(chain) = jwt.header.get("x5c") {
        let first = chain
            .as_array()
            .and_then(|c| c.first())
            .and_then(Value::as_str)
            .and_then(|b64| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(b64).ok()
            });
        if first.is_none_or(|der| Sha256::digest(&der)[..] != Sha256::digest(certificate.der())[..])
        {
            return Err(invalid_client(
                700027,
                format!(
                    "Client assertion contains an invalid signature. [Reason - The first certificate of the x5c chain is not the certificate the thumbprint names., Thumbprint of key used by client: '{}']",
                    certificate.thumbprint()
                ),
            ));
        }
    }
    let key = certificate.public_key();
    if !key.is_some_and(|key| jwt.verifies(alg, &key)) {
        return Err(invalid_client(
            700027,
            format!(
                "Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value., Thumbprint of key used by client: '{}', Found key 'Thumbprint={}']",
                hex_of(thumbprint),
                certificate.thumbprint()
            ),
        ));
    }
    let iss = jwt.claim_str("iss").unwrap_or("");
    let sub = jwt.claim_str("sub").unwrap_or("");
    if !iss.eq_ignore_ascii_case(client_id) || !sub.eq_ignore_ascii_case(client_id) {
        return Err(invalid_client(
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .".into(),
        ));
    }
    // Strict: exactly the URL the request was sent to (one audience).
    let audiences = jwt.audiences();
    if audiences.len() != 1 || audiences[0] != token_url {
        return Err(invalid_client(
            700023,
            format!(
                "Client assertion audience claim does not match Realm issuer. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials . [Presented audience: '{}', expected '{token_url}']",
                audiences.join(", ")
            ),
        ));
    }
    let exp = check_lifetime(jwt, now)?;
    let Some(jti) = jwt.claim_str("jti").filter(|j| !j.is_empty()) else {
        return Err(invalid_client(
            50012,
            "Client assertion must contain a 'jti' claim (a unique identifier).".into(),
        ));
    };
    seen.retain(|_, until| *until + CLOCK_SKEW > now);
    if seen.contains_key(jti) {
        return Err(invalid_client(
            50012,
            format!(
                "Client assertion with jti '{jti}' was already used: a client assertion may be presented only once."
            ),
        ));
    }
    seen.insert(jti.to_owned(), exp);
    Ok(())
}

/// One signing key of an external issuer.
#[derive(Debug, Clone)]
pub struct IssuerKey {
    /// `kid`.
    pub kid: Option<String>,
    /// The RSA key.
    pub key: PublicKey,
}

/// The outcome of fetching an issuer's keys (`Err`: why they could not be had).
pub type IssuerKeys = Result<Vec<IssuerKey>, String>;

/// The issuer whose keys a federated `assertion` of `client_id` needs, if a federated
/// credential names it (no fetch for an unknown issuer, which is refused without).
pub fn issuer_to_fetch(
    assertion: &str,
    client_id: &str,
    federated: &[SimFederatedCredential],
) -> Option<String> {
    let jwt = Jwt::parse(assertion)?;
    match kind(&jwt, client_id) {
        Kind::Federated(iss) if federated.iter().any(|c| c.issuer == iss) => Some(iss),
        _ => None,
    }
}

/// `https://…`, or `http://` to a loopback host (the simulator's own issuers in tests).
fn fetchable(url: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|err| format!("'{url}' is not a URL: {err}"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if loopback => Ok(parsed),
        _ => Err(format!("'{url}' is neither https nor a loopback http URL")),
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> Result<Value, String> {
    let url = fetchable(url)?;
    let response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|err| format!("GET {url} failed: {err}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {url} answered {}", response.status()));
    }
    response
        .json()
        .await
        .map_err(|err| format!("GET {url} is not JSON: {err}"))
}

/// Fetches `issuer`'s signing keys as Entra does: its OpenID configuration at
/// `{issuer}/.well-known/openid-configuration` (whose `issuer` must be `issuer` exactly), then
/// the JWKS at its `jwks_uri`; RSA keys only, the first 100.
pub async fn fetch_issuer_keys(issuer: &str) -> IssuerKeys {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| format!("no HTTP client: {err}"))?;
    let discovery_url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let discovery = get_json(&client, &discovery_url).await?;
    if discovery.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err(format!(
            "the OpenID configuration at {discovery_url} names issuer {}, not '{issuer}'",
            discovery.get("issuer").unwrap_or(&Value::Null)
        ));
    }
    let Some(jwks_uri) = discovery.get("jwks_uri").and_then(Value::as_str) else {
        return Err(format!(
            "the OpenID configuration at {discovery_url} has no jwks_uri"
        ));
    };
    let jwks = get_json(&client, jwks_uri).await?;
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("the JWKS at {jwks_uri} has no keys"))?;
    Ok(keys
        .iter()
        .take(MAX_ISSUER_KEYS)
        .filter_map(|jwk| {
            Some(IssuerKey {
                kid: jwk.get("kid").and_then(Value::as_str).map(str::to_owned),
                key: jwt::jwk_public_key(jwk)?,
            })
        })
        .collect())
}

fn no_match(code: u64, what: &str, value: &str) -> Refusal {
    invalid_client(
        code,
        format!(
            "No matching federated identity record found for presented assertion {what} '{value}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
        ),
    )
}

/// Checks a federated token (`iss` not the application) against the application's federated
/// credentials, with the issuer's keys as fetched (`None`: not fetched, because no credential
/// names the issuer). Federated tokens may be presented more than once within their lifetime
/// (clients such as the Azure CLI do), so there is no `jti` replay check.
pub fn check_federated(
    jwt: &Jwt,
    federated: &[SimFederatedCredential],
    keys: Option<&IssuerKeys>,
    now: i64,
) -> Result<(), Refusal> {
    let iss = jwt.claim_str("iss").unwrap_or("");
    let candidates: Vec<&SimFederatedCredential> =
        federated.iter().filter(|c| c.issuer == iss).collect();
    let Some(keys) = keys.filter(|_| !candidates.is_empty()) else {
        return Err(no_match(700211, "issuer", iss));
    };
    let alg = jwt.header_str("alg").unwrap_or("");
    if alg != "RS256" {
        return Err(malformed(&format!(
            "The algorithm '{alg}' is not supported for federated tokens: use RS256."
        )));
    }
    let keys = keys.as_ref().map_err(|why| {
        invalid_client(
            700027,
            format!(
                "Client assertion failed signature validation. [Reason - The signing keys of issuer '{iss}' could not be retrieved: {why}]"
            ),
        )
    })?;
    let kid = jwt.header_str("kid").unwrap_or("");
    let Some(key) = keys.iter().find(|k| k.kid.as_deref() == Some(kid)) else {
        return Err(invalid_client(
            700027,
            format!(
                "Client assertion failed signature validation. [Reason - The key was not found., Key id of key used by client: '{kid}', issuer '{iss}']"
            ),
        ));
    };
    if !jwt.verifies(alg, &key.key) {
        return Err(invalid_client(
            700027,
            "Client assertion failed signature validation. [Reason - The provided signature value did not match the expected signature value.]".into(),
        ));
    }
    check_lifetime(jwt, now)?;
    let sub = jwt.claim_str("sub").unwrap_or("");
    let audiences = jwt.audiences();
    let same_subject: Vec<&&SimFederatedCredential> =
        candidates.iter().filter(|c| c.subject == sub).collect();
    if same_subject.is_empty() {
        return Err(invalid_client(
            700213,
            format!(
                "No matching federated identity record found for presented assertion subject '{sub}'. Check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{}'.",
                audiences.join(", ")
            ),
        ));
    }
    if !same_subject
        .iter()
        .any(|c| c.audiences.iter().any(|a| audiences.contains(a)))
    {
        return Err(no_match(700212, "audience", &audiences.join(", ")));
    }
    Ok(())
}

/// Test helpers shared by the identity tests: assertions signed with `rsa` directly and token
/// requests through the router.
#[cfg(test)]
pub(crate) mod testing {
    use axum::body::Body;
    use axum::http::{Method, Request, header};
    use rsa::PrivateKey;
    use rsa::pkcs8::DecodePrivateKey as _;
    use rsa::signature::{SignatureEncoding as _, Signer as _};
    use serde_json::{Value, json};
    use tower::ServiceExt as _;

    use super::*;
    use crate::sim::Sim;
    use crate::sim::graph::{SIM_CLIENT_ID, SIM_TENANT_ID};

    /// The application's certificate and key (fixtures).
    pub const APP_CRT: &str = include_str!("../../../tests/fixtures/credentials/app.crt");
    /// The application's private key.
    pub const APP_KEY: &str = include_str!("../../../tests/fixtures/credentials/app.key");
    /// Another key pair's certificate.
    pub const OTHER_CRT: &str = include_str!("../../../tests/fixtures/credentials/other.crt");
    /// Another key pair's private key.
    pub const OTHER_KEY: &str = include_str!("../../../tests/fixtures/credentials/other.key");
    /// The Host header the tests send.
    pub const HOST: &str = "sim.test";

    /// The token URL a request with [`HOST`] is sent to.
    pub fn token_url() -> String {
        format!("http://{HOST}/{SIM_TENANT_ID}/oauth2/v2.0/token")
    }

    /// `header` + `claims` signed with `key_pem` (`RS256` or `PS256`).
    pub fn sign(key_pem: &str, header: &Value, claims: &Value) -> String {
        let key = PrivateKey::from_pkcs8_pem(key_pem).expect("a PKCS#8 key");
        let input = format!(
            "{}.{}",
            jwt::b64(header.to_string().as_bytes()),
            jwt::b64(claims.to_string().as_bytes())
        );
        let signature = match header["alg"].as_str() {
            Some("PS256") => rsa::pss::SigningKey::<Sha256>::new(key)
                .sign(input.as_bytes())
                .to_vec(),
            _ => rsa::pkcs1v15::SigningKey::<Sha256>::new(key)
                .sign(input.as_bytes())
                .to_vec(),
        };
        format!("{input}.{}", jwt::b64(&signature))
    }

    /// The claims of a good certificate assertion.
    pub fn claims() -> Value {
        let now = Utc::now().timestamp();
        json!({
            "aud": token_url(),
            "iss": SIM_CLIENT_ID,
            "sub": SIM_CLIENT_ID,
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now,
            "iat": now,
            "exp": now + 600,
        })
    }

    /// A PS256 header naming `certificate` by `x5t#S256`.
    pub fn header(certificate: &SimCertificate) -> Value {
        json!({"alg": "PS256", "typ": "JWT", "x5t#S256": certificate.x5t_s256()})
    }

    /// Posts a token request with `fields` (plus grant type, client id and scope) to `path`
    /// (default: the tenant's token endpoint); status and JSON body.
    pub async fn post_token(sim: &Sim, fields: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials")
            .append_pair("client_id", SIM_CLIENT_ID)
            .append_pair("scope", "https://graph.microsoft.com/.default");
        for (name, value) in fields {
            form.append_pair(name, value);
        }
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("/{SIM_TENANT_ID}/oauth2/v2.0/token"))
            .header(header::HOST, HOST)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form.finish()))
            .expect("a request");
        let response = sim.router().oneshot(request).await.expect("an answer");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        (status, serde_json::from_slice(&bytes).expect("JSON"))
    }

    /// Posts `assertion` as a client assertion.
    pub async fn post_assertion(sim: &Sim, assertion: &str) -> (StatusCode, Value) {
        post_token(
            sim,
            &[
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", assertion),
            ],
        )
        .await
    }

    /// The AADSTS code of an error answer.
    pub fn aadsts_code(body: &Value) -> u64 {
        body["error_codes"][0].as_u64().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::testing::*;
    use super::*;
    use crate::sim::Sim;
    use crate::sim::graph::SIM_CLIENT_ID;

    /// A simulator with the app certificate registered; the certificate.
    fn sim() -> (Sim, SimCertificate) {
        let sim = Sim::new();
        let certificate = SimCertificate::from_pem(APP_CRT).expect("a certificate");
        {
            let mut state = sim.state();
            let mut creds = state.graph.credentials().clone();
            creds.certificates = vec![certificate.clone()];
            state.graph.set_credentials(creds);
        }
        (sim, certificate)
    }

    fn refused(answer: &(StatusCode, Value), code: u64, error: &str) {
        assert_eq!(aadsts_code(&answer.1), code, "{}", answer.1);
        assert_eq!(answer.1["error"], error, "{}", answer.1);
        assert!(!answer.0.is_success());
        assert!(answer.1.get("access_token").is_none());
    }

    #[tokio::test]
    async fn ps256_with_x5t_s256_and_rs256_with_x5t_are_accepted() {
        let (sim, certificate) = sim();
        let ps256 = sign(APP_KEY, &header(&certificate), &claims());
        let (status, body) = post_assertion(&sim, &ps256).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let token =
            jwt::Jwt::parse(body["access_token"].as_str().expect("a token")).expect("a JWT");
        assert_eq!(token.claim_str("appid"), Some(SIM_CLIENT_ID));

        let rs256 = json!({"alg": "RS256", "typ": "JWT", "x5t": certificate.x5t()});
        let (status, body) = post_assertion(&sim, &sign(APP_KEY, &rs256, &claims())).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    #[tokio::test]
    async fn a_signature_by_another_key_is_invalid() {
        let (sim, certificate) = sim();
        let forged = sign(OTHER_KEY, &header(&certificate), &claims());
        let answer = post_assertion(&sim, &forged).await;
        refused(&answer, 700027, "invalid_client");
        assert!(
            answer.1["error_description"]
                .as_str()
                .is_some_and(|d| d.contains("invalid signature")),
            "{}",
            answer.1
        );
    }

    #[tokio::test]
    async fn an_unregistered_certificate_is_not_found() {
        let (sim, _) = sim();
        let other = SimCertificate::from_pem(OTHER_CRT).expect("a certificate");
        let answer = post_assertion(&sim, &sign(OTHER_KEY, &header(&other), &claims())).await;
        refused(&answer, 700027, "invalid_client");
        let description = answer.1["error_description"].as_str().unwrap_or("");
        assert!(
            description.contains("The key was not found"),
            "{description}"
        );
        assert!(
            description.contains(&hex_of(&other.x5t_s256())),
            "{description}"
        );
    }

    #[tokio::test]
    async fn only_ps256_and_rs256_are_accepted() {
        let (sim, certificate) = sim();
        let mut header = header(&certificate);
        header["alg"] = json!("HS256");
        let answer = post_assertion(&sim, &sign(APP_KEY, &header, &claims())).await;
        refused(&answer, 50027, "invalid_request");
    }

    #[tokio::test]
    async fn the_audience_must_be_the_token_url_as_requested() {
        let (sim, certificate) = sim();
        for aud in [
            json!("https://login.microsoftonline.com/sim.onmicrosoft.com/oauth2/v2.0/token"),
            json!(format!(
                "http://{HOST}/sim.onmicrosoft.com/oauth2/v2.0/token"
            )),
            json!([token_url(), "https://elsewhere.example"]),
        ] {
            let mut claims = claims();
            claims["aud"] = aud;
            let answer = post_assertion(&sim, &sign(APP_KEY, &header(&certificate), &claims)).await;
            refused(&answer, 700023, "invalid_client");
        }
    }

    #[tokio::test]
    async fn issuer_and_subject_must_be_the_client_id() {
        let (sim, certificate) = sim();
        let mut claims = claims();
        claims["sub"] = json!("someone-else");
        let answer = post_assertion(&sim, &sign(APP_KEY, &header(&certificate), &claims)).await;
        refused(&answer, 700021, "invalid_client");
    }

    #[tokio::test]
    async fn assertions_outside_their_time_range_are_refused_with_five_minutes_of_skew() {
        let (sim, certificate) = sim();
        let now = Utc::now().timestamp();
        for (nbf, exp, ok) in [
            (now - 900, now - 400, false),
            (now - 900, now - 200, true),
            (now + 400, now + 900, false),
            (now + 200, now + 900, true),
        ] {
            let mut claims = claims();
            claims["nbf"] = json!(nbf);
            claims["exp"] = json!(exp);
            let answer = post_assertion(&sim, &sign(APP_KEY, &header(&certificate), &claims)).await;
            if ok {
                assert_eq!(answer.0, StatusCode::OK, "{nbf} {exp}: {}", answer.1);
            } else {
                refused(&answer, 700024, "invalid_client");
            }
        }
        let mut claims = claims();
        claims.as_object_mut().expect("an object").remove("exp");
        let answer = post_assertion(&sim, &sign(APP_KEY, &header(&certificate), &claims)).await;
        refused(&answer, 50027, "invalid_request");
    }

    #[tokio::test]
    async fn a_jti_is_used_once_and_required() {
        let (sim, certificate) = sim();
        let assertion = sign(APP_KEY, &header(&certificate), &claims());
        assert_eq!(post_assertion(&sim, &assertion).await.0, StatusCode::OK);
        let answer = post_assertion(&sim, &assertion).await;
        refused(&answer, 50012, "invalid_client");
        assert!(
            answer.1["error_description"]
                .as_str()
                .is_some_and(|d| d.contains("already used"))
        );
        let mut claims = claims();
        claims.as_object_mut().expect("an object").remove("jti");
        let answer = post_assertion(&sim, &sign(APP_KEY, &header(&certificate), &claims)).await;
        refused(&answer, 50012, "invalid_client");
    }

    #[tokio::test]
    async fn a_refused_assertion_does_not_spend_its_jti() {
        let (sim, certificate) = sim();
        let mut claims = claims();
        let good_aud = claims["aud"].clone();
        claims["aud"] = json!("https://elsewhere.example");
        let bad = sign(APP_KEY, &header(&certificate), &claims);
        refused(&post_assertion(&sim, &bad).await, 700023, "invalid_client");
        claims["aud"] = good_aud;
        let good = sign(APP_KEY, &header(&certificate), &claims);
        assert_eq!(post_assertion(&sim, &good).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn an_x5c_chain_must_start_with_the_named_certificate() {
        use base64::Engine as _;
        let (sim, certificate) = sim();
        let other = SimCertificate::from_pem(OTHER_CRT).expect("a certificate");
        let b64 = |c: &SimCertificate| base64::engine::general_purpose::STANDARD.encode(c.der());
        let mut header = header(&certificate);
        header["x5c"] = json!([b64(&certificate)]);
        assert_eq!(
            post_assertion(&sim, &sign(APP_KEY, &header, &claims()))
                .await
                .0,
            StatusCode::OK
        );
        header["x5c"] = json!([b64(&other), b64(&certificate)]);
        let answer = post_assertion(&sim, &sign(APP_KEY, &header, &claims())).await;
        refused(&answer, 700027, "invalid_client");
    }

    #[tokio::test]
    async fn secrets_and_assertions_do_not_mix_and_an_app_without_a_secret_refuses_secrets() {
        let (sim, certificate) = sim();
        let assertion = sign(APP_KEY, &header(&certificate), &claims());
        let both = post_token(
            &sim,
            &[
                ("client_secret", crate::sim::graph::SIM_CLIENT_SECRET),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
            ],
        )
        .await;
        assert_eq!(both.1["error"], "invalid_request", "{}", both.1);
        assert_eq!(both.0, StatusCode::BAD_REQUEST);

        let secret = [("client_secret", crate::sim::graph::SIM_CLIENT_SECRET)];
        assert_eq!(post_token(&sim, &secret).await.0, StatusCode::OK);
        {
            let mut state = sim.state();
            let mut creds = state.graph.credentials().clone();
            creds.client_secret = String::new();
            state.graph.set_credentials(creds);
        }
        refused(&post_token(&sim, &secret).await, 7000215, "invalid_client");
        let empty = post_token(&sim, &[("client_secret", "")]).await;
        refused(&empty, 7000218, "invalid_client");

        let wrong_type = post_token(
            &sim,
            &[
                ("client_assertion_type", "urn:other"),
                ("client_assertion", &assertion),
            ],
        )
        .await;
        assert_eq!(wrong_type.1["error"], "invalid_request");
        let malformed = post_assertion(&sim, "not-a-jwt").await;
        refused(&malformed, 50027, "invalid_request");
    }

    #[tokio::test]
    async fn a_thumbprint_with_another_issuer_is_a_federated_token_of_an_unknown_issuer() {
        let (sim, certificate) = sim();
        let mut claims = claims();
        claims["iss"] = json!("https://issuer.example");
        let answer = post_assertion(&sim, &sign(APP_KEY, &header(&certificate), &claims)).await;
        refused(&answer, 700211, "invalid_client");
    }
}
