//! The managed-identity endpoints of Azure hosts, on the simulator's loopback listener (§7):
//!
//! - **IMDS** (Azure VMs): `GET /metadata/identity/oauth2/token?api-version=2018-02-01&
//!   resource=R[&client_id=C]` with `Metadata: true`; the answer's fields are all strings
//!   (`access_token`, `client_id`, `expires_in`, `expires_on`, `ext_expires_in`, `not_before`,
//!   `resource`, `token_type`, `refresh_token` = "").
//! - **Azure Arc**: the same path when [`IdentityState::arc_key_dir`] is set. A request without
//!   `Authorization` gets `401` with `WWW-Authenticate: Basic realm=<file>`, a file the
//!   simulator writes with a random secret; the retry with `Authorization: Basic <secret>` gets
//!   the token (each secret once).
//! - **App Service** (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`): `GET /msi/token?api-version=
//!   2019-08-01&resource=R[&client_id=C]` with `X-IDENTITY-HEADER`; the answer has
//!   `access_token`, `expires_on` (epoch seconds as a string), `resource`, `token_type`,
//!   `client_id`.
//!
//! `resource` must be the simulated cloud's Graph (with or without a trailing slash). Strict
//! answers where the real ones are unknown: IMDS's missing-header and unknown-identity answers
//! are the documented `invalid_request` bodies ("Required metadata header not specified",
//! "Identity not found"); an unknown resource answers `invalid_resource` with Entra's
//! AADSTS500011 text; App Service's answers to a missing (`400`) or wrong (`401`) identity
//! header are **unverified**; `object_id`, `msi_res_id`, `mi_res_id` and `principal_id` are not
//! emulated (refused as an unknown identity).
//!
//! [`IdentityState::fail_managed_identity`] makes the next requests answer an error status
//! (e.g. `410` while "IMDS is updating", `500`, `503`). Tokens are the JWTs of
//! [`super::access_token`] with `appid` the identity's client id and its roles.

// Handlers answer refusals as early `Err(Response)`s, axum's usual shape.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{IdentityState, SimManagedIdentity};
use crate::sim::Sim;
use crate::sim::graph::SimCredentials;

/// The App Service style path.
pub const APP_SERVICE_PATH: &str = "/msi/token";
/// The IMDS (and Azure Arc) path.
pub const IMDS_PATH: &str = "/metadata/identity/oauth2/token";

/// Routes of the managed-identity endpoints.
pub fn routes() -> Router<Sim> {
    Router::new()
        .route(APP_SERVICE_PATH, get(app_service))
        .route(IMDS_PATH, get(imds))
}

fn error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn identity_not_found() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "Identity not found",
    )
}

/// An injected failure, if one is due.
fn injected(identity: &mut IdentityState) -> Option<Response> {
    let status = identity.managed_failures.pop_front()?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Some(error(
        status,
        "service_unavailable",
        if status == StatusCode::GONE {
            "IMDS is being updated; retry within 70 seconds."
        } else {
            "The managed identity endpoint failed (injected)."
        },
    ))
}

/// The client id of the identity asked for (`client_id`, or the system-assigned one).
fn pick_identity(
    managed: &SimManagedIdentity,
    query: &HashMap<String, String>,
) -> Result<String, Response> {
    if ["object_id", "msi_res_id", "mi_res_id", "principal_id"]
        .iter()
        .any(|name| query.contains_key(*name))
    {
        return Err(identity_not_found());
    }
    match query.get("client_id") {
        None if !managed.system_client_id.is_empty() => Ok(managed.system_client_id.clone()),
        None => Err(identity_not_found()),
        Some(asked) => managed
            .user_assigned
            .iter()
            .chain(std::iter::once(&managed.system_client_id))
            .find(|id| !id.is_empty() && id.eq_ignore_ascii_case(asked))
            .cloned()
            .ok_or_else(identity_not_found),
    }
}

/// `resource` must be the simulated cloud's Graph, with or without the trailing slash.
fn check_resource(
    creds: &SimCredentials,
    query: &HashMap<String, String>,
) -> Result<String, Response> {
    let Some(resource) = query.get("resource").filter(|r| !r.is_empty()) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'resource' is missing",
        ));
    };
    if resource.trim_end_matches('/') == creds.cloud.graph_resource() {
        Ok(resource.clone())
    } else {
        Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            &format!(
                "AADSTS500011: The resource principal named {resource} was not found in the tenant named {}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.",
                creds.tenant_domain
            ),
        ))
    }
}

/// Issues a token for identity `client_id`: the JWT, `expires_in`, `expires_on`, `not_before`.
fn issue(
    sim_state: &mut crate::sim::SimState,
    managed: &SimManagedIdentity,
    client_id: &str,
) -> (String, u64, i64, i64) {
    let creds = sim_state.graph.credentials().clone();
    let lifetime = creds.token_lifetime;
    let token = super::access_token(&creds, client_id, &managed.roles, lifetime);
    sim_state
        .graph
        .record_token(&token, lifetime, &managed.roles);
    let now = chrono::Utc::now().timestamp();
    (
        token,
        lifetime.as_secs(),
        now + lifetime.as_secs() as i64,
        now,
    )
}

async fn app_service(
    State(sim): State<Sim>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut state = sim.state();
    let Some(managed) = state.graph.credentials().managed_identity.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "This host has no managed identity.",
        );
    };
    if let Some(response) = injected(&mut state.identity) {
        return response;
    }
    match headers
        .get("X-IDENTITY-HEADER")
        .and_then(|v| v.to_str().ok())
    {
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The X-IDENTITY-HEADER header is missing.",
            );
        }
        Some(value) if value != managed.identity_header => {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized_client",
                "The X-IDENTITY-HEADER header is not valid.",
            );
        }
        Some(_) => {}
    }
    if query.get("api-version").map(String::as_str) != Some("2019-08-01") {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "api-version must be 2019-08-01.",
        );
    }
    let creds = state.graph.credentials().clone();
    let resource = match check_resource(&creds, &query) {
        Ok(resource) => resource,
        Err(response) => return response,
    };
    let client_id = match pick_identity(&managed, &query) {
        Ok(id) => id,
        Err(response) => return response,
    };
    let (token, _, expires_on, _) = issue(&mut state, &managed, &client_id);
    axum::Json(json!({
        "access_token": token,
        "expires_on": expires_on.to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": client_id,
    }))
    .into_response()
}

/// `api-version` present and a date from 2018-02-01 on (IMDS's first identity version).
fn check_api_version(query: &HashMap<String, String>) -> Result<(), Response> {
    match query.get("api-version") {
        Some(version)
            if version.len() == 10
                && version.as_str() >= "2018-02-01"
                && chrono::NaiveDate::parse_from_str(version, "%Y-%m-%d").is_ok() =>
        {
            Ok(())
        }
        Some(version) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("Invalid or unsupported api-version '{version}'"),
        )),
        None => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'api-version' is missing",
        )),
    }
}

/// Azure Arc's challenge: `None` when the request carries a secret handed out earlier (now
/// spent), else the answer (`401` with a new challenge file, or `401` for a wrong secret).
fn arc_challenge(
    identity: &mut IdentityState,
    dir: &std::path::Path,
    headers: &HeaderMap,
) -> Option<Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, secret)| secret.trim().to_owned());
    match presented {
        Some(secret) if identity.arc_secrets.remove(&secret) => None,
        Some(_) => Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "The secret is not valid (each challenge secret is good for one request).",
        )),
        None => {
            let secret = uuid::Uuid::new_v4().simple().to_string();
            let path = dir.join(format!("{}.key", uuid::Uuid::new_v4()));
            if let Err(err) = std::fs::write(&path, &secret) {
                return Some(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    &format!("cannot write the challenge file {}: {err}", path.display()),
                ));
            }
            identity.arc_secrets.insert(secret);
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized_client",
                "Authorization required: read the secret from the file the WWW-Authenticate header names.",
            );
            if let Ok(value) = HeaderValue::from_str(&format!("Basic realm={}", path.display())) {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, value);
            }
            Some(response)
        }
    }
}

async fn imds(
    State(sim): State<Sim>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut state = sim.state();
    if let Some(response) = injected(&mut state.identity) {
        return response;
    }
    let metadata = headers
        .get("Metadata")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !metadata {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    if let Err(response) = check_api_version(&query) {
        return response;
    }
    if let Some(dir) = state.identity.arc_key_dir.clone()
        && let Some(response) = arc_challenge(&mut state.identity, &dir, &headers)
    {
        return response;
    }
    let Some(managed) = state.graph.credentials().managed_identity.clone() else {
        return identity_not_found();
    };
    let creds = state.graph.credentials().clone();
    let resource = match check_resource(&creds, &query) {
        Ok(resource) => resource,
        Err(response) => return response,
    };
    let client_id = match pick_identity(&managed, &query) {
        Ok(id) => id,
        Err(response) => return response,
    };
    let (token, expires_in, expires_on, not_before) = issue(&mut state, &managed, &client_id);
    axum::Json(json!({
        "access_token": token,
        "client_id": client_id,
        "expires_in": expires_in.to_string(),
        "expires_on": expires_on.to_string(),
        "ext_expires_in": expires_in.to_string(),
        "not_before": not_before.to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "refresh_token": "",
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use serde_json::Value;
    use tower::ServiceExt as _;

    use super::*;
    use crate::sim::entra::jwt::Jwt;
    use crate::sim::entra::{SIM_IDENTITY_HEADER, SIM_MANAGED_CLIENT_ID};

    const USER_ASSIGNED: &str = "11111111-2222-3333-4444-555555555555";
    const GRAPH: &str = "https://graph.microsoft.com/";

    fn sim() -> Sim {
        let sim = Sim::new();
        {
            let mut state = sim.state();
            let mut creds = state.graph.credentials().clone();
            creds.managed_identity = Some(SimManagedIdentity {
                user_assigned: vec![USER_ASSIGNED.into()],
                roles: vec!["User.Read.All".into()],
                ..SimManagedIdentity::default()
            });
            state.graph.set_credentials(creds);
        }
        sim
    }

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: Value,
    }

    async fn get(sim: &Sim, uri: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = Request::builder()
            .uri(uri)
            .header(header::HOST, "127.0.0.1");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Body::empty()).expect("a request");
        let response = sim.router().oneshot(request).await.expect("an answer");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    fn imds_uri(extra: &str) -> String {
        format!("{IMDS_PATH}?api-version=2018-02-01&resource={GRAPH}{extra}")
    }

    /// The token's `appid`, after checking Graph accepts it with the identity's roles.
    async fn graph_accepts(sim: &Sim, token: &str) -> String {
        let bearer = format!("Bearer {token}");
        let users = get(sim, "/v1.0/users", &[("Authorization", &bearer)]).await;
        assert_eq!(users.status, StatusCode::OK, "{}", users.body);
        let invite = Request::builder()
            .method("POST")
            .uri("/v1.0/invitations")
            .header("Authorization", &bearer)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                r#"{"invitedUserEmailAddress":"a@partner.example","inviteRedirectUrl":"https://x.example"}"#,
            ))
            .expect("a request");
        let status = sim
            .router()
            .oneshot(invite)
            .await
            .expect("an answer")
            .status();
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "the identity has only User.Read.All"
        );
        let jwt = Jwt::parse(token).expect("a JWT");
        jwt.claim_str("appid").expect("an appid").to_owned()
    }

    #[tokio::test]
    async fn imds_answers_strings_for_the_system_and_user_assigned_identities() {
        let sim = sim();
        let answer = get(&sim, &imds_uri(""), &[("Metadata", "true")]).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        for field in [
            "access_token",
            "expires_in",
            "expires_on",
            "not_before",
            "resource",
            "token_type",
            "refresh_token",
        ] {
            assert!(answer.body[field].is_string(), "{field}: {}", answer.body);
        }
        assert_eq!(answer.body["expires_in"], "3599");
        assert_eq!(answer.body["resource"], GRAPH);
        assert_eq!(answer.body["refresh_token"], "");
        let token = answer.body["access_token"].as_str().expect("a token");
        assert_eq!(graph_accepts(&sim, token).await, SIM_MANAGED_CLIENT_ID);

        let user = get(
            &sim,
            &imds_uri(&format!("&client_id={USER_ASSIGNED}")),
            &[("Metadata", "true")],
        )
        .await;
        assert_eq!(user.status, StatusCode::OK, "{}", user.body);
        assert_eq!(user.body["client_id"], USER_ASSIGNED);
        let token = user.body["access_token"].as_str().expect("a token");
        assert_eq!(graph_accepts(&sim, token).await, USER_ASSIGNED);
        assert_eq!(sim.state().counters.identity_requests, 2);
    }

    #[tokio::test]
    async fn imds_refuses_a_missing_header_a_wrong_resource_and_an_unknown_identity() {
        let sim = sim();
        let answer = get(&sim, &imds_uri(""), &[]).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            answer.body["error_description"],
            "Required metadata header not specified"
        );

        let wrong =
            format!("{IMDS_PATH}?api-version=2018-02-01&resource=https://management.azure.com/");
        let answer = get(&sim, &wrong, &[("Metadata", "true")]).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(answer.body["error"], "invalid_resource");

        let unknown = imds_uri("&client_id=99999999-0000-0000-0000-000000000000");
        let answer = get(&sim, &unknown, &[("Metadata", "true")]).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(answer.body["error_description"], "Identity not found");

        let no_version = format!("{IMDS_PATH}?resource={GRAPH}");
        assert_eq!(
            get(&sim, &no_version, &[("Metadata", "true")]).await.status,
            StatusCode::BAD_REQUEST
        );

        let bare = Sim::new();
        let answer = get(&bare, &imds_uri(""), &[("Metadata", "true")]).await;
        assert_eq!(answer.body["error_description"], "Identity not found");
    }

    #[tokio::test]
    async fn imds_can_be_updating_or_failing_a_number_of_times() {
        let sim = sim();
        {
            let mut state = sim.state();
            state.identity.fail_managed_identity(410, 2);
            state.identity.fail_managed_identity(503, 1);
        }
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(
                get(&sim, &imds_uri(""), &[("Metadata", "true")])
                    .await
                    .status
                    .as_u16(),
            );
        }
        assert_eq!(statuses, [410, 410, 503, 200]);
    }

    #[tokio::test]
    async fn app_service_wants_its_identity_header() {
        let sim = sim();
        let uri = format!("{APP_SERVICE_PATH}?api-version=2019-08-01&resource={GRAPH}");
        assert_eq!(get(&sim, &uri, &[]).await.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            get(&sim, &uri, &[("X-IDENTITY-HEADER", "wrong")])
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
        let answer = get(&sim, &uri, &[("X-IDENTITY-HEADER", SIM_IDENTITY_HEADER)]).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let expires_on: i64 = answer.body["expires_on"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("epoch seconds as a string");
        assert!(expires_on > chrono::Utc::now().timestamp());
        assert_eq!(answer.body["token_type"], "Bearer");
        assert_eq!(answer.body["client_id"], SIM_MANAGED_CLIENT_ID);
        let token = answer.body["access_token"].as_str().expect("a token");
        assert_eq!(graph_accepts(&sim, token).await, SIM_MANAGED_CLIENT_ID);

        let user = format!("{uri}&client_id={USER_ASSIGNED}");
        let answer = get(&sim, &user, &[("X-IDENTITY-HEADER", SIM_IDENTITY_HEADER)]).await;
        assert_eq!(answer.body["client_id"], USER_ASSIGNED);
        let wrong =
            format!("{APP_SERVICE_PATH}?api-version=2019-08-01&resource=https://vault.azure.net");
        let answer = get(&sim, &wrong, &[("X-IDENTITY-HEADER", SIM_IDENTITY_HEADER)]).await;
        assert_eq!(answer.body["error"], "invalid_resource");
    }

    #[tokio::test]
    async fn arc_challenges_with_a_secret_file_and_takes_the_secret_once() {
        let sim = sim();
        let dir = tempfile::tempdir().expect("a temporary folder");
        sim.state().identity.arc_key_dir = Some(dir.path().to_owned());
        let uri = format!("{IMDS_PATH}?api-version=2020-06-01&resource={GRAPH}");
        let challenge = get(&sim, &uri, &[("Metadata", "true")]).await;
        assert_eq!(challenge.status, StatusCode::UNAUTHORIZED);
        let realm = challenge.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .expect("text")
            .strip_prefix("Basic realm=")
            .expect("a Basic challenge")
            .to_owned();
        assert!(
            std::path::Path::new(&realm).starts_with(dir.path()),
            "{realm}"
        );
        let secret = std::fs::read_to_string(&realm).expect("the secret file");
        let authorization = format!("Basic {secret}");
        let answer = get(
            &sim,
            &uri,
            &[("Metadata", "true"), ("Authorization", &authorization)],
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert!(answer.body["access_token"].is_string());
        let again = get(
            &sim,
            &uri,
            &[("Metadata", "true"), ("Authorization", &authorization)],
        )
        .await;
        assert_eq!(again.status, StatusCode::UNAUTHORIZED);
        let wrong = get(
            &sim,
            &uri,
            &[("Metadata", "true"), ("Authorization", "Basic guessed")],
        )
        .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(!wrong.headers.contains_key(header::WWW_AUTHENTICATE));
    }
}
