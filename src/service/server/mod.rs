//! The daemon's HTTP endpoint (design §9): health, readiness, metrics and the GitHub webhook.
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` while the process serves |
//! | `GET /readyz` | 200 when a desired state is loaded and reconciles have not been failing for longer than the threshold, else 503; a JSON [`Readiness`] body either way |
//! | `GET /metrics` | the [`Metrics`] registry as OpenMetrics text |
//! | `POST /hooks/github` | a verified GitHub push to the followed branch triggers a reconcile (202); 404 when no webhook secret is configured |
//!
//! Everything else is 404. The server only reports and triggers: it never reconciles itself,
//! and a trigger never blocks (a full trigger channel means a reconcile is already pending).
//! Owns no clock beyond [`Health`]'s, takes its listener and cancellation token as parameters.

mod health;
pub(crate) mod webhook;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

pub use health::{Clock, Health, InvalidRevision, MAX_MESSAGE_CHARS, Readiness, ReadinessStatus};
pub use webhook::{
    DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, SignatureError, sign, verify_signature,
};

use crate::service::metrics::{self, Metrics};

/// Webhook bodies larger than this are refused with 413 before verification (GitHub caps
/// payloads at 25 MB; a push event to a `users.yaml` repository is a few KiB).
pub const MAX_WEBHOOK_BODY: usize = 1024 * 1024;

/// A request to reconcile now, sent by the server to the daemon loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A verified GitHub push to the followed branch.
    GithubPush {
        /// The commit the branch points at after the push (`after`), when the event had it.
        after: Option<String>,
        /// GitHub's delivery id (`X-GitHub-Delivery`), for the logs.
        delivery: Option<String>,
    },
    /// `SIGHUP`.
    Hangup,
    /// The watched `users.yaml` file changed (`--desired FILE` mode).
    FileChanged,
}

/// The GitHub webhook's settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The HMAC secret shared with GitHub (`server.webhookSecretFile`, the `webhook-secret`
    /// credential or `GUESTOPS_SERVER_WEBHOOK_SECRET`).
    pub secret: SecretString,
    /// The followed branch (`source.branch`): only pushes to `refs/heads/{branch}` trigger.
    pub branch: String,
}

impl WebhookConfig {
    /// The webhook of a loaded configuration: on when a webhook secret was provided, following
    /// `source.branch`; `None` (webhook off, `/hooks/github` answers 404) otherwise.
    pub fn from_config(
        config: &crate::config::Config,
        secrets: &crate::config::Secrets,
    ) -> Option<WebhookConfig> {
        secrets.webhook_secret.as_ref().map(|secret| WebhookConfig {
            secret: secret.clone(),
            branch: config.source.branch.clone(),
        })
    }
}

/// A sensible readiness threshold for [`Health::new`] when nothing else is configured: a
/// daemon whose reconciles have failed for half an hour is not ready.
pub const DEFAULT_READY_THRESHOLD: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// What the server reads and where it sends triggers. `Clone` shares everything.
#[derive(Debug, Clone)]
pub struct ServerState {
    /// Rendered by `GET /metrics`.
    pub metrics: Metrics,
    /// Rendered by `GET /readyz`.
    pub health: Health,
    /// `None`: `/hooks/github` answers 404.
    pub webhook: Option<WebhookConfig>,
    /// Where verified pushes are sent with `try_send` (never blocks). A channel of capacity 1
    /// coalesces bursts: while a trigger is pending, more pushes add nothing.
    pub trigger: mpsc::Sender<Trigger>,
}

/// Serves [`router`] on `listener` until `shutdown` is cancelled, then finishes the requests in
/// flight and returns.
pub async fn serve(
    listener: TcpListener,
    app: ServerState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// The routes (module docs), for [`serve`] or for tests with `tower::ServiceExt::oneshot`.
pub fn router(app: ServerState) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text));
    if app.webhook.is_some() {
        router = router.route(
            "/hooks/github",
            post(github_hook).layer(DefaultBodyLimit::max(MAX_WEBHOOK_BODY)),
        );
    }
    router.fallback(not_found).with_state(app)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<ServerState>) -> Response {
    let readiness = app.health.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness)).into_response()
}

async fn metrics_text(State(app): State<ServerState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        app.metrics.encode(),
    )
        .into_response()
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found\n")
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut body = body.into();
    body.push('\n');
    (status, body).into_response()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn github_hook(State(app): State<ServerState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(config) = &app.webhook else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let delivery = header_str(&headers, DELIVERY_HEADER).map(str::to_owned);

    // Nothing of the request is interpreted before this check.
    let signature = headers.get(SIGNATURE_HEADER).map(HeaderValue::as_bytes);
    if let Err(error) = verify_signature(&config.secret, &body, signature) {
        tracing::warn!(delivery = delivery.as_deref(), %error, "webhook refused");
        return text(StatusCode::UNAUTHORIZED, error.to_string());
    }

    let Some(event) = header_str(&headers, EVENT_HEADER) else {
        return text(
            StatusCode::BAD_REQUEST,
            "missing X-GitHub-Event header: is this a GitHub webhook delivery?",
        );
    };
    match event {
        "ping" => text(StatusCode::OK, "pong"),
        "push" => {
            let form_encoded = header_str(&headers, header::CONTENT_TYPE.as_str())
                .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
            let push = match webhook::parse_push(&body, form_encoded) {
                Ok(push) => push,
                Err(error) => {
                    tracing::warn!(delivery = delivery.as_deref(), %error, "webhook push unreadable");
                    return text(StatusCode::BAD_REQUEST, error.to_string());
                }
            };
            let followed = format!("refs/heads/{}", config.branch);
            if push.git_ref != followed {
                tracing::debug!(delivery = delivery.as_deref(), git_ref = %push.git_ref, "webhook push to another ref ignored");
                return text(
                    StatusCode::OK,
                    format!("ignored: push to {}, following {followed}", push.git_ref),
                );
            }
            let trigger = Trigger::GithubPush {
                after: push.after,
                delivery: delivery.clone(),
            };
            match app.trigger.try_send(trigger) {
                Ok(()) => {
                    tracing::info!(
                        delivery = delivery.as_deref(),
                        "webhook push: reconcile triggered"
                    );
                    text(StatusCode::ACCEPTED, "reconcile triggered")
                }
                Err(TrySendError::Full(_)) => {
                    tracing::debug!(
                        delivery = delivery.as_deref(),
                        "webhook push: a reconcile is already pending"
                    );
                    text(StatusCode::ACCEPTED, "reconcile already pending")
                }
                Err(TrySendError::Closed(_)) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the daemon is stopping; GitHub may redeliver later",
                ),
            }
        }
        other => text(StatusCode::OK, format!("ignored: event {other}")),
    }
}
