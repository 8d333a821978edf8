//! Delivery: one background task per notifier, fed by a bounded queue ([`Queue::offer`]
//! never waits: a full queue drops the event and counts it), posting each event with a few
//! bounded retries ([`SendPolicy`]). A plain `reqwest` client, not the remote systems' HTTP
//! edge: the edge names the URL in its logs and errors, and a notifier's URL is a secret.
//! Redirects are off (a webhook that redirects is misconfigured, and the body must not follow
//! it elsewhere), every attempt has a timeout.
//!
//! Retried: no answer (connect error, timeout, broken exchange), `408`, `429` (after its
//! `Retry-After`, at most [`SendPolicy::max_delay`]) and `5xx`. Any other answer ends the
//! attempts: a `2xx` is delivered, another status is a failure. A retried post may reach the
//! channel twice (a timeout after the receiver took it): notifications are at least once,
//! never at the cost of a reconcile.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;

use super::{Event, NotifierKind, NotifyError, NotifyMetrics, render};
use crate::config::{NotifyConfig, SecretSource};

/// Events waiting per notifier at most; more are dropped (`guestops_notifications_dropped_total`).
pub const QUEUE_CAPACITY: usize = 64;

/// How hard one event is tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendPolicy {
    /// Attempts at most (the first one included).
    pub attempts: u32,
    /// Delay before the first retry; doubled for each further one.
    pub first_delay: Duration,
    /// Longest delay between two attempts (also caps a `Retry-After`).
    pub max_delay: Duration,
    /// Timeout of one attempt.
    pub timeout: Duration,
}

impl Default for SendPolicy {
    /// 4 attempts, 2 s, 4 s, 8 s apart (a `Retry-After` up to a minute), 10 s each.
    fn default() -> Self {
        SendPolicy {
            attempts: 4,
            first_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The HTTP client of every notifier.
pub fn client(policy: &SendPolicy) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(policy.timeout)
        .timeout(policy.timeout)
        .user_agent(concat!("guestops/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// One notifier, loaded: where to post (a secret), how to sign, what to send.
pub struct Target {
    /// "the teams notifier #1", in every message about it.
    pub name: String,
    /// Its kind.
    pub kind: NotifierKind,
    url: SecretString,
    secret: Option<SecretString>,
    events: Vec<super::EventKind>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("url", &"[REDACTED]")
            .field("signed", &self.secret.is_some())
            .finish()
    }
}

/// "the teams notifier #2" for the item `index` (from 0) of `notify`.
pub fn notifier_name(index: usize, kind: NotifierKind) -> String {
    format!("the {} notifier #{}", kind.as_str(), index + 1)
}

impl Target {
    /// Reads item `index` of `notify`: its URL (an absolute `https://` URL, `http://` on
    /// loopback only) and its signing secret. Warns when a file may be read by group or
    /// others.
    pub fn load(index: usize, item: &NotifyConfig) -> Result<Target, NotifyError> {
        let name = notifier_name(index, item.kind);
        let read = |path: &PathBuf, key: String| {
            let no_env = |_: &str| None;
            warn_loose_mode(&name, &key, path);
            SecretSource::File(path.clone())
                .load_required(&no_env, &key)
                .map(|loaded| loaded.value().clone())
                .map_err(|source| NotifyError::Secret {
                    notifier: name.clone(),
                    source,
                })
        };
        let url_key = format!("notify[{index}].urlFile");
        let url = read(&item.url_file, url_key.clone())?;
        let bad = |reason: &str| NotifyError::BadUrl {
            notifier: name.clone(),
            key: url_key.clone(),
            path: item.url_file.clone(),
            reason: reason.to_owned(),
        };
        let text = url.expose_secret().trim();
        // `url`'s errors never repeat the input.
        let parsed =
            url::Url::parse(text).map_err(|e| bad(&format!("not an absolute URL: {e}")))?;
        crate::remote::http::check_url(&parsed).map_err(|reason| bad(&reason))?;
        if parsed.host().is_none() {
            return Err(bad("no host"));
        }
        let secret = match &item.secret_file {
            Some(path) => Some(read(path, format!("notify[{index}].secretFile"))?),
            None => None,
        };
        Ok(Target {
            name,
            kind: item.kind,
            url: SecretString::from(text.to_owned()),
            secret,
            events: item.events.clone(),
        })
    }
}

fn warn_loose_mode(name: &str, key: &str, path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{name}: {key} {} may be read by group or others (mode {mode:04o}): it holds a secret; chmod 600 it",
                path.display()
            );
        }
    }
}

/// The sending end of one notifier's queue.
pub struct Queue {
    name: String,
    kind: NotifierKind,
    events: Vec<super::EventKind>,
    tx: mpsc::Sender<Arc<Event>>,
    metrics: NotifyMetrics,
}

impl Queue {
    /// Queues `event` if this notifier wants its kind; never waits. A full queue drops it
    /// (counted, logged).
    pub fn offer(&self, event: &Arc<Event>) {
        if !self.events.contains(&event.kind) {
            return;
        }
        match self.tx.try_send(event.clone()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.dropped(self.kind);
                tracing::warn!(
                    event = event.kind.as_str(),
                    "{}: its queue is full ({QUEUE_CAPACITY} waiting): this notification is dropped",
                    self.name
                );
            }
            // The sender stopped (shutdown): nothing to do.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Starts the sender of `target`: its queue and its task (which ends when the queue's every
/// sender is dropped and it is empty).
pub fn spawn(
    target: Target,
    client: reqwest::Client,
    metrics: NotifyMetrics,
    policy: SendPolicy,
) -> (Queue, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Arc<Event>>(QUEUE_CAPACITY);
    let queue = Queue {
        name: target.name.clone(),
        kind: target.kind,
        events: target.events.clone(),
        tx,
        metrics: metrics.clone(),
    };
    let task = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            match deliver(&client, &target, &event, &policy).await {
                Ok(attempts) => {
                    metrics.sent(target.kind);
                    tracing::info!(
                        event = event.kind.as_str(),
                        attempts,
                        "{}: notification sent",
                        target.name
                    );
                }
                Err(why) => {
                    metrics.failed(target.kind);
                    tracing::warn!(
                        event = event.kind.as_str(),
                        "{}: the notification could not be sent: {why}",
                        target.name
                    );
                }
            }
        }
    });
    (queue, task)
}

/// Whether an answer with `status` is worth another attempt.
pub fn is_retryable(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// What went wrong with one attempt, without the URL (`reqwest`'s messages name it).
fn describe(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        "no answer in time"
    } else if err.is_connect() {
        "cannot connect"
    } else if err.is_body() || err.is_request() {
        "the exchange broke off"
    } else {
        "the request failed"
    }
}

/// Posts `event` to `target` as `policy` says; `Ok(attempts)` once a `2xx` came back.
async fn deliver(
    client: &reqwest::Client,
    target: &Target,
    event: &Event,
    policy: &SendPolicy,
) -> Result<u32, String> {
    let body = render::body(target.kind, event).to_string().into_bytes();
    let signature = target
        .secret
        .as_ref()
        .map(|secret| render::signature(secret.expose_secret().as_bytes(), &body));
    let mut delay = policy.first_delay;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut request = client
            .post(target.url.expose_secret())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Guestops-Event", event.kind.as_str())
            .body(body.clone());
        if let Some(signature) = &signature {
            request = request.header(render::SIGNATURE_HEADER, signature);
        }
        let (why, retry_after) = match request.send().await {
            Ok(response) if response.status().is_success() => return Ok(attempt),
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        crate::remote::http::parse_retry_after(v, std::time::SystemTime::now())
                    });
                let why = format!("HTTP {}", status.as_u16());
                if !is_retryable(status.as_u16()) {
                    return Err(format!("{why} (not retried)"));
                }
                (why, retry_after)
            }
            Err(err) => (describe(&err).to_owned(), None),
        };
        if attempt >= policy.attempts {
            return Err(format!("{why}, after {attempt} attempts"));
        }
        let wait = retry_after.unwrap_or(delay).min(policy.max_delay);
        tracing::debug!(
            event = event.kind.as_str(),
            attempt,
            "{}: {why}; trying again in {:.1} s",
            target.name,
            wait.as_secs_f64()
        );
        tokio::time::sleep(wait).await;
        delay = (delay * 2).min(policy.max_delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::notify::EventKind;

    fn event(kind: EventKind) -> Arc<Event> {
        Arc::new(Event {
            kind,
            time: chrono::Utc::now(),
            tenant: "t".to_owned(),
            revision: None,
            title: "t".to_owned(),
            text: "t".to_owned(),
            users: Vec::new(),
        })
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_unwanted_events_are_not_queued() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = NotifyMetrics::register(&mut registry);
        let (tx, mut rx) = mpsc::channel(1);
        let queue = Queue {
            name: notifier_name(0, NotifierKind::Slack),
            kind: NotifierKind::Slack,
            events: vec![EventKind::Failed],
            tx,
            metrics: metrics.clone(),
        };
        queue.offer(&event(EventKind::Pending));
        assert!(rx.try_recv().is_err(), "pending is not among its events");
        queue.offer(&event(EventKind::Failed));
        queue.offer(&event(EventKind::Failed));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("guestops_notifications_dropped_total{kind=\"slack\"} 1"),
            "{text}"
        );
        assert_eq!(rx.try_recv().map(|e| e.kind).ok(), Some(EventKind::Failed));
        assert!(rx.try_recv().is_err(), "the second one was dropped");
    }
}
