//! The daemon's HTTP endpoint: health, readiness, metrics, the GitHub webhook.

mod support;
use support::{parse_exposition, sample};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, TimeZone, Utc};
use guestops::service::metrics::{Metrics, ReconcileResult};
use guestops::service::server::{Health, ServerState, Trigger, WebhookConfig, router, serve, sign};
use http_body_util::BodyExt;
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const SECRET: &str = "webhook-test-secret";

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0)
        .single()
        .expect("valid time")
}

/// A server state whose health reads a settable clock, and the receiving end of its triggers.
struct Fixture {
    state: ServerState,
    triggers: mpsc::Receiver<Trigger>,
    now: Arc<Mutex<DateTime<Utc>>>,
}

fn fixture(webhook: bool) -> Fixture {
    let now = Arc::new(Mutex::new(t(0)));
    let clock_now = now.clone();
    let health = Health::with_clock(
        Duration::from_secs(300),
        Arc::new(move || *clock_now.lock().expect("clock lock")),
    );
    let (tx, rx) = mpsc::channel(1);
    Fixture {
        state: ServerState {
            metrics: Metrics::new(),
            health,
            webhook: webhook.then(|| WebhookConfig {
                secret: SecretString::from(SECRET),
                branch: "main".to_owned(),
            }),
            trigger: tx,
        },
        triggers: rx,
        now,
    }
}

struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    body: String,
}

async fn call(state: &ServerState, request: Request<Body>) -> Answer {
    let response = router(state.clone())
        .oneshot(request)
        .await
        .expect("router is infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        content_type,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn get(state: &ServerState, path: &str) -> Answer {
    call(
        state,
        Request::get(path).body(Body::empty()).expect("request"),
    )
    .await
}

fn hook(event: &str, body: &[u8], signature: Option<String>) -> Request<Body> {
    let mut request = Request::post("/hooks/github")
        .header("x-github-event", event)
        .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    request.body(Body::from(body.to_vec())).expect("request")
}

fn push_body(branch: &str) -> Vec<u8> {
    serde_json::json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "0000000000000000000000000000000000000000",
        "after": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
        "repository": { "full_name": "contoso/portal-admins" },
    })
    .to_string()
    .into_bytes()
}

fn json(answer: &Answer) -> serde_json::Value {
    serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{e}: {}", answer.body))
}

#[tokio::test]
async fn healthz_answers_ok() {
    let f = fixture(false);
    let answer = get(&f.state, "/healthz").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body.trim(), "ok");
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let f = fixture(true);
    assert_eq!(get(&f.state, "/").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&f.state, "/admin").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&f.state, "/hooks/gitlab").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn readyz_follows_load_success_and_failure() {
    let f = fixture(false);

    let answer = get(&f.state, "/readyz").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&answer)["status"], "not-loaded");

    f.state.health.set_loaded("abc123");
    f.state.health.record_success(t(0));
    let answer = get(&f.state, "/readyz").await;
    assert_eq!(answer.status, StatusCode::OK);
    let detail = json(&answer);
    assert_eq!(detail["ready"], true);
    assert_eq!(detail["loadedRevision"], "abc123");
    assert_eq!(detail["lastSuccess"], "2027-01-15T08:00:00Z");

    // Failing, but not for longer than the threshold (300 s): still ready.
    f.state
        .health
        .record_failure(t(10), "Graph: 503 Service Unavailable from /v1.0/users");
    *f.now.lock().expect("clock") = t(300);
    let answer = get(&f.state, "/readyz").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(json(&answer)["failingSince"], "2027-01-15T08:00:10Z");

    // Failing for longer than the threshold: unready, with the detail.
    *f.now.lock().expect("clock") = t(311);
    let answer = get(&f.state, "/readyz").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    let detail = json(&answer);
    assert_eq!(detail["status"], "failing");
    assert_eq!(detail["failingSince"], "2027-01-15T08:00:10Z");
    assert_eq!(
        detail["lastError"],
        "Graph: 503 Service Unavailable from /v1.0/users"
    );
    assert_eq!(detail["loadedRevision"], "abc123");
    assert_eq!(detail["readyThresholdSeconds"], 300);

    // An invalid new revision keeps the last valid one and is shown.
    f.state
        .health
        .set_invalid_revision("def456", "users.yaml:3:12: E003 invalid email");
    f.state.health.record_success(t(320));
    let answer = get(&f.state, "/readyz").await;
    assert_eq!(answer.status, StatusCode::OK);
    let detail = json(&answer);
    assert_eq!(detail["failingSince"], serde_json::Value::Null);
    assert_eq!(detail["invalidRevision"]["revision"], "def456");
    assert_eq!(
        detail["invalidRevision"]["message"],
        "users.yaml:3:12: E003 invalid email"
    );
}

#[tokio::test]
async fn metrics_parse_and_change_after_a_reconcile() {
    let f = fixture(false);
    let answer = get(&f.state, "/metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    let content_type = answer.content_type.clone().unwrap_or_default();
    assert!(
        content_type.starts_with("application/openmetrics-text")
            || content_type.starts_with("text/plain"),
        "{content_type}"
    );
    let before = parse_exposition(&answer.body);
    assert_eq!(
        sample(&before, "guestops_reconciles_total{result=\"success\"}"),
        Some(0.0)
    );

    f.state
        .metrics
        .record_reconcile(ReconcileResult::Success, Duration::from_millis(1500));
    f.state.metrics.set_revision("6dcb09b5");
    f.state.metrics.set_drift(&[("tenant", "invite", 2)]);
    f.state.metrics.set_last_success(1_800_000_000);

    let after = parse_exposition(&get(&f.state, "/metrics").await.body);
    assert_eq!(
        sample(&after, "guestops_reconciles_total{result=\"success\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, "guestops_reconcile_duration_seconds_sum"),
        Some(1.5)
    );
    assert_eq!(
        sample(&after, "guestops_revision_info{revision=\"6dcb09b5\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, "guestops_drift{system=\"tenant\",kind=\"invite\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&after, "guestops_last_success_timestamp_seconds"),
        Some(1_800_000_000.0)
    );
}

#[tokio::test]
async fn signed_push_to_the_branch_triggers_a_reconcile() {
    let mut f = fixture(true);
    let body = push_body("main");
    let answer = call(&f.state, hook("push", &body, Some(sign(SECRET, &body)))).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(
        f.triggers.try_recv().ok(),
        Some(Trigger::GithubPush {
            after: Some("6dcb09b5b57875f334f61aebed695e2e4193db5e".to_owned()),
            delivery: Some("72d3162e-cc78-11e3-81ab-4c9367dc0958".to_owned()),
        })
    );
}

#[tokio::test]
async fn bursts_of_pushes_coalesce_without_blocking() {
    let mut f = fixture(true);
    let body = push_body("main");
    for _ in 0..3 {
        let answer = call(&f.state, hook("push", &body, Some(sign(SECRET, &body)))).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    }
    assert!(f.triggers.try_recv().is_ok());
    assert!(
        f.triggers.try_recv().is_err(),
        "one pending trigger for a burst"
    );
}

#[tokio::test]
async fn bad_signature_is_401_and_triggers_nothing() {
    let mut f = fixture(true);
    let body = push_body("main");
    let signed_other = sign("another-secret", &body);
    let answer = call(&f.state, hook("push", &body, Some(signed_other))).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.body.contains("does not match"), "{}", answer.body);
    assert!(f.triggers.try_recv().is_err());

    // A signature of another body (tampered payload).
    let tampered = push_body("main-but-longer");
    let answer = call(&f.state, hook("push", &tampered, Some(sign(SECRET, &body)))).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(f.triggers.try_recv().is_err());
}

#[tokio::test]
async fn missing_signature_is_401_and_triggers_nothing() {
    let mut f = fixture(true);
    let answer = call(&f.state, hook("push", &push_body("main"), None)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(
        answer.body.contains("X-Hub-Signature-256"),
        "{}",
        answer.body
    );
    assert!(f.triggers.try_recv().is_err());
}

#[tokio::test]
async fn signature_is_checked_before_the_body_is_parsed() {
    let mut f = fixture(true);
    // Malformed JSON and a bad signature: refused for the signature, not for the JSON.
    let answer = call(&f.state, hook("push", b"{not json", Some(sign("x", b"y")))).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(f.triggers.try_recv().is_err());
}

#[tokio::test]
async fn push_to_another_branch_is_ignored() {
    let mut f = fixture(true);
    let body = push_body("feature/add-ana");
    let answer = call(&f.state, hook("push", &body, Some(sign(SECRET, &body)))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.contains("ignored"), "{}", answer.body);
    assert!(f.triggers.try_recv().is_err());

    // A tag named like the branch is not the branch.
    let body = br#"{"ref":"refs/tags/main"}"#;
    let answer = call(&f.state, hook("push", body, Some(sign(SECRET, body)))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(f.triggers.try_recv().is_err());
}

#[tokio::test]
async fn ping_and_other_events_trigger_nothing() {
    let mut f = fixture(true);
    let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let answer = call(&f.state, hook("ping", body, Some(sign(SECRET, body)))).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = br#"{"action":"opened"}"#;
    let answer = call(
        &f.state,
        hook("pull_request", body, Some(sign(SECRET, body))),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.contains("ignored"), "{}", answer.body);
    assert!(f.triggers.try_recv().is_err());
}

#[tokio::test]
async fn oversized_body_is_413_and_triggers_nothing() {
    let mut f = fixture(true);
    let mut body = push_body("main");
    body.extend(std::iter::repeat_n(
        b' ',
        guestops::service::server::MAX_WEBHOOK_BODY,
    ));
    let answer = call(&f.state, hook("push", &body, Some(sign(SECRET, &body)))).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(f.triggers.try_recv().is_err());
}

#[tokio::test]
async fn malformed_json_with_valid_signature_is_400() {
    let mut f = fixture(true);
    for body in [&b"{\"ref\": "[..], b"[]", b"{\"ref\": 3}"] {
        let answer = call(&f.state, hook("push", body, Some(sign(SECRET, body)))).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    }
    assert!(f.triggers.try_recv().is_err());
}

#[tokio::test]
async fn webhook_without_secret_is_404() {
    let mut f = fixture(false);
    let body = push_body("main");
    let answer = call(&f.state, hook("push", &body, Some(sign(SECRET, &body)))).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(f.triggers.try_recv().is_err());
}

#[tokio::test]
async fn serve_answers_on_a_real_listener_and_stops_on_cancel() {
    let f = fixture(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, f.state.clone(), shutdown.clone()));

    let client = reqwest::Client::new();
    let response = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(response.status().as_u16(), 200);
    let body = push_body("main");
    let response = client
        .post(format!("http://{addr}/hooks/github"))
        .header("x-github-event", "push")
        .header("x-hub-signature-256", sign(SECRET, &body))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("hook");
    assert_eq!(response.status().as_u16(), 202);

    shutdown.cancel();
    server
        .await
        .expect("server task")
        .expect("server stopped cleanly");
}

#[test]
fn debug_output_never_shows_the_webhook_secret() {
    let f = fixture(true);
    let shown = format!("{:?}", f.state);
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("main"), "the branch is shown: {shown}");
}

#[test]
fn webhook_is_on_only_when_a_secret_is_provided() {
    let config = guestops::config::Config::from_yaml_with_env(
        "tenant:\n  tenantId: contoso.onmicrosoft.com\n  clientId: 11111111-2222-3333-4444-555555555555\nsource:\n  branch: release\n",
        "config.yaml",
        &|_| None,
    )
    .expect("valid config");
    use guestops::config::{LoadedSecret, SecretOrigin};
    let from_env = |value: &str, var: &str| {
        LoadedSecret::new(
            SecretString::from(value),
            SecretOrigin::Env {
                var: var.to_owned(),
            },
        )
    };
    let mut secrets = guestops::config::Secrets {
        graph_credential: guestops::remote::graph::CredentialSettings::ClientSecret {
            secret: from_env("g", "GUESTOPS_TENANT_CLIENT_SECRET").credential(),
        },
        portal_api_key: from_env("p", "GUESTOPS_PORTAL_API_KEY"),
        webhook_secret: None,
    };
    assert!(WebhookConfig::from_config(&config, &secrets).is_none());
    secrets.webhook_secret = Some(SecretString::from("w"));
    let webhook = WebhookConfig::from_config(&config, &secrets).expect("webhook on");
    assert_eq!(webhook.branch, "release");
}
