//! Notifications end to end (issue 10 item 7): the real daemon against the simulator posts
//! to a loopback receiver. A failing reconcile (the portal's listing refused by an injected
//! fault) posts exactly one `failed` to each notifier however often it is retried, then
//! `recovered` once the fault clears; the webhook's signature verifies; the URLs, which are
//! secrets, never appear in the daemon's log.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use guestops::config::NotifyConfig;
use guestops::service::notify::{EventKind, NotifierKind};
use guestops::sim::FailRule;
use hmac::{KeyInit, Mac};
use tokio_util::sync::CancellationToken;

use super::support::{Guestops, parse_exposition, sample, users_yaml, wait_for};
use super::{ANA, Repo, Setup, get, reconciles};

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn event(&self) -> String {
        self.headers
            .get("x-guestops-event")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

/// A loopback HTTP server recording every request (path, headers, body), answering 202 as a
/// Teams workflow does.
struct Receiver {
    addr: std::net::SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    _stop: tokio_util::sync::DropGuard,
}

impl Receiver {
    async fn start() -> Receiver {
        Receiver::answering(|_| StatusCode::ACCEPTED).await
    }

    /// A receiver answering the `n`-th request (from 0) with `answer(n)`.
    async fn answering(
        answer: impl Fn(usize) -> StatusCode + Clone + Send + Sync + 'static,
    ) -> Receiver {
        let received = Arc::new(Mutex::new(Vec::new()));
        let seen = received.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            let answer = answer.clone();
            async move {
                let mut seen = seen.lock().expect("lock");
                let n = seen.len();
                seen.push(Received {
                    path: uri.path().to_owned(),
                    headers,
                    body,
                });
                answer(n)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("address");
        let stop = CancellationToken::new();
        let cancelled = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { cancelled.cancelled().await })
                .await;
        });
        Receiver {
            addr,
            received,
            _stop: stop.drop_guard(),
        }
    }

    /// The events posted to `path`, in order.
    fn events(&self, path: &str) -> Vec<String> {
        self.posts(path).iter().map(Received::event).collect()
    }

    fn posts(&self, path: &str) -> Vec<Received> {
        self.received
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

const TEAMS_PATH: &str = "/workflows/teams-TOPSECRET-TEAMS/triggers/manual/paths/invoke";
const HOOK_PATH: &str = "/hooks/guestops-TOPSECRET-HOOK";
const HOOK_KEY: &str = "hook-key-TOPSECRET-KEY";

async fn metric(guestops: &Guestops, series: &str) -> Option<f64> {
    let (status, text) = get(&guestops.url("/metrics")).await?;
    assert_eq!(status, 200);
    sample(&parse_exposition(&text), series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_daemon_posts_one_failed_then_recovered_and_never_logs_the_urls() {
    let receiver = Receiver::start().await;
    let secrets = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, content: &str| {
        let path = secrets.path().join(name);
        std::fs::write(&path, content).expect("write a secret file");
        path
    };
    let teams_url = write(
        "teams-url",
        &format!(
            "http://{}{TEAMS_PATH}?api-version=1&sig=TOPSECRET-SIG\n",
            receiver.addr
        ),
    );
    let hook_url = write(
        "hook-url",
        &format!("http://{}{HOOK_PATH}\n", receiver.addr),
    );
    let hook_key = write("hook-key", HOOK_KEY);

    let repo = Repo::new();
    repo.commit(&users_yaml(&[ANA]), "add ana");
    let setup = Setup::new_with(&repo, |config| {
        config.notify = vec![
            NotifyConfig {
                kind: NotifierKind::Teams,
                url_file: teams_url.clone(),
                secret_file: None,
                events: EventKind::ALL.to_vec(),
            },
            NotifyConfig {
                kind: NotifierKind::Webhook,
                url_file: hook_url.clone(),
                secret_file: Some(hook_key.clone()),
                events: EventKind::ALL.to_vec(),
            },
        ];
    })
    .await;
    // The portal refuses its listing: every reconcile fails before any write.
    setup.sim.state().portal_faults.fail.push(FailRule {
        method: Some("GET".to_owned()),
        path_prefix: "/api/user".to_owned(),
        query_contains: None,
        status: 403,
        times: None,
        after_processing: false,
    });
    let guestops = setup.start(None);

    wait_for("the first failed reconcile", &guestops, || async {
        reconciles(&guestops, "error").await.filter(|n| *n >= 1.0)
    })
    .await;
    // Retried at once on each SIGHUP (a trigger does not wait for the backoff): the failure
    // goes on.
    for n in 2..=3 {
        guestops.signal("-HUP");
        wait_for("another failed reconcile", &guestops, || async {
            reconciles(&guestops, "error")
                .await
                .filter(|count| *count >= f64::from(n))
        })
        .await;
    }
    wait_for("failed posted to both notifiers", &guestops, || async {
        (!receiver.events(TEAMS_PATH).is_empty() && !receiver.events(HOOK_PATH).is_empty())
            .then_some(())
    })
    .await;
    assert!(!setup.registered(ANA.0), "nothing written while failing");

    // The fault clears; the next reconcile succeeds.
    setup.sim.state().portal_faults.fail.clear();
    guestops.signal("-HUP");
    wait_for("recovered posted to both notifiers", &guestops, || async {
        let done = |path| receiver.events(path).iter().any(|e| e == "recovered");
        (done(TEAMS_PATH) && done(HOOK_PATH)).then_some(())
    })
    .await;
    assert!(
        setup.registered(ANA.0),
        "the recovered reconcile applied the plan"
    );

    // Each notifier's posts go out in order: everything queued before `recovered` arrived.
    for path in [TEAMS_PATH, HOOK_PATH] {
        assert_eq!(
            receiver.events(path),
            ["failed", "recovered"],
            "one failed for three failed reconciles, then recovered ({path})"
        );
    }

    // The webhook: guestops' JSON, signed with the key (verified here with the hmac crate).
    let hook = receiver.posts(HOOK_PATH);
    for post in &hook {
        let header = post
            .headers
            .get("x-guestops-signature-256")
            .and_then(|v| v.to_str().ok())
            .expect("a signature header");
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOK_KEY.as_bytes()).expect("any key");
        mac.update(&post.body);
        assert_eq!(
            header,
            format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
            "the signature is the HMAC-SHA256 of the body"
        );
        assert_eq!(
            post.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
    }
    let failed = hook[0].json();
    assert_eq!(failed["schema"], "guestops.notification/v1");
    assert_eq!(failed["event"], "failed");
    assert_eq!(failed["tenant"], "sim.onmicrosoft.com");
    let text = failed["text"].as_str().unwrap_or_default();
    assert!(text.contains("403"), "the error is told: {text}");
    assert_eq!(failed["revision"]["id"].as_str().map(str::len), Some(40));
    assert_eq!(hook[1].json()["event"], "recovered");

    // Teams: a message with one Adaptive Card, unsigned.
    let teams = receiver.posts(TEAMS_PATH);
    let card = teams[0].json();
    assert_eq!(card["type"], "message");
    let attachment = &card["attachments"][0];
    assert_eq!(
        attachment["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(attachment["content"]["type"], "AdaptiveCard");
    assert_eq!(attachment["content"]["version"], "1.4");
    assert_eq!(
        attachment["content"]["body"][0]["text"],
        "guestops: reconcile failed"
    );
    assert!(teams[0].headers.get("x-guestops-signature-256").is_none());

    for kind in ["teams", "webhook"] {
        let series = format!("guestops_notifications_sent_total{{kind=\"{kind}\"}}");
        assert_eq!(metric(&guestops, &series).await, Some(2.0), "{series}");
        let series = format!("guestops_notifications_failed_total{{kind=\"{kind}\"}}");
        assert_eq!(metric(&guestops, &series).await, Some(0.0), "{series}");
    }

    let (code, log) = guestops.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("the teams notifier #1: notification sent"),
        "{log}"
    );
    assert!(
        !log.contains("TOPSECRET"),
        "a notifier's URL or key in the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_and_expiring_are_posted_once_per_user_and_removals_when_made() {
    let receiver = Receiver::start().await;
    let secrets = tempfile::tempdir().expect("temp dir");
    let hook_url = secrets.path().join("hook-url");
    std::fs::write(&hook_url, format!("http://{}{HOOK_PATH}", receiver.addr)).expect("write");
    let soon = (chrono::Utc::now().date_naive() + chrono::Days::new(2)).to_string();
    let users = |with_bob: bool| {
        let mut text = users_yaml(&[ANA]);
        if with_bob {
            text.push_str(&format!(
                "  - email: bob@partner.example\n    name: Bob\n    expires: {soon}\n"
            ));
        }
        text
    };

    let repo = Repo::new();
    repo.commit(&users(true), "ana, and bob until the day after tomorrow");
    let setup = Setup::new_with(&repo, |config| {
        config.policy.prune = true;
        // Any invitation is "long pending" after a second: the next resync says so.
        config.policy.pending_alert_after = Some(std::time::Duration::from_secs(1));
        config.notify = vec![NotifyConfig {
            kind: NotifierKind::Webhook,
            url_file: hook_url.clone(),
            secret_file: None,
            events: vec![EventKind::Pending, EventKind::Expiring, EventKind::Removed],
        }];
    })
    .await;
    let guestops = setup.start(None);

    let users_of = |event: &str| -> Vec<String> {
        receiver
            .posts(HOOK_PATH)
            .iter()
            .map(Received::json)
            .filter(|body| body["event"] == event)
            .flat_map(|body| {
                body["users"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|u| u["email"].as_str().unwrap_or_default().to_owned())
            })
            .collect()
    };
    wait_for("pending and expiring posted", &guestops, || async {
        (users_of("pending").len() == 2 && !users_of("expiring").is_empty()).then_some(())
    })
    .await;
    // A few more resyncs: still pending, still expiring, nothing posted again.
    let before = reconciles(&guestops, "success").await.unwrap_or_default();
    wait_for("three more reconciles", &guestops, || async {
        reconciles(&guestops, "success")
            .await
            .filter(|n| *n >= before + 3.0)
    })
    .await;
    let mut pending = users_of("pending");
    pending.sort();
    assert_eq!(pending, [ANA.0, "bob@partner.example"], "once per user");
    assert_eq!(users_of("expiring"), ["bob@partner.example"], "once");
    let expiring = receiver
        .posts(HOOK_PATH)
        .iter()
        .map(Received::json)
        .find(|body| body["event"] == "expiring")
        .expect("the expiring post");
    assert_eq!(expiring["users"][0]["expires"], soon.as_str());
    assert_eq!(
        metric(&guestops, "guestops_access_expiring").await,
        Some(1.0),
        "the gauge counts bob"
    );

    // Bob is removed from users.yaml: his access is removed, and that is posted.
    repo.commit(&users(false), "bob leaves");
    wait_for("removed posted", &guestops, || async {
        (!users_of("removed").is_empty()).then_some(())
    })
    .await;
    assert_eq!(users_of("removed"), ["bob@partner.example"]);
    let removed = receiver
        .posts(HOOK_PATH)
        .iter()
        .map(Received::json)
        .find(|body| body["event"] == "removed")
        .expect("the removed post");
    let changes = removed["users"][0]["changes"].clone();
    assert!(
        changes
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "unregister")),
        "{removed}"
    );
    assert!(!setup.registered("bob@partner.example"));
    assert_eq!(
        metric(&guestops, "guestops_access_expiring").await,
        Some(0.0)
    );

    let (code, log) = guestops.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("TOPSECRET"), "{log}");
}

/// The senders on their own (no daemon): an invalid revision reported through the handle.
async fn post_one_invalid(receiver: &Receiver) -> guestops::service::metrics::Metrics {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = dir.path().join("slack-url");
    std::fs::write(
        &url,
        format!("http://{}/services/T0/B0/TOPSECRET", receiver.addr),
    )
    .expect("write");
    let base = url::Url::parse("http://127.0.0.1:1/").expect("url");
    let mut config = guestops::config::Config::for_simulator(&base, dir.path());
    config.notify = vec![NotifyConfig {
        kind: NotifierKind::Slack,
        url_file: url,
        secret_file: None,
        events: EventKind::ALL.to_vec(),
    }];
    let metrics = guestops::service::metrics::Metrics::new();
    let policy = guestops::service::notify::send::SendPolicy {
        attempts: 3,
        first_delay: std::time::Duration::from_millis(10),
        max_delay: std::time::Duration::from_millis(50),
        timeout: std::time::Duration::from_secs(10),
    };
    let (notifications, senders) = guestops::service::notify::Notifications::start_with(
        &config,
        metrics.notifications(),
        policy,
    )
    .expect("the notifier loads");
    notifications.invalid(
        &"a".repeat(40),
        "aaaaaaa",
        "users.yaml at aaaaaaa is invalid",
        chrono::Utc::now(),
    );
    drop(notifications);
    // A hang guard, not a speed assertion.
    senders.finish(std::time::Duration::from_secs(60)).await;
    metrics
}

fn count(metrics: &guestops::service::metrics::Metrics, series: &str) -> Option<f64> {
    sample(&parse_exposition(&metrics.encode()), series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_retried_on_5xx_and_given_up_on_4xx_and_queued_posts_go_out_at_shutdown() {
    let flaky = Receiver::answering(|n| {
        if n < 2 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    })
    .await;
    let metrics = post_one_invalid(&flaky).await;
    assert_eq!(
        flaky.events("/services/T0/B0/TOPSECRET"),
        ["invalid"; 3],
        "two 503s, then 200"
    );
    assert_eq!(
        count(
            &metrics,
            "guestops_notifications_sent_total{kind=\"slack\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        count(
            &metrics,
            "guestops_notifications_failed_total{kind=\"slack\"}"
        ),
        Some(0.0)
    );
    let body = flaky.posts("/services/T0/B0/TOPSECRET")[0].json();
    assert!(
        body["text"]
            .as_str()
            .is_some_and(|t| t.contains("is not applied")),
        "{body}"
    );
    assert_eq!(body["blocks"][0]["type"], "header");

    let refusing = Receiver::answering(|_| StatusCode::NOT_FOUND).await;
    let metrics = post_one_invalid(&refusing).await;
    assert_eq!(
        refusing.events("/services/T0/B0/TOPSECRET").len(),
        1,
        "a 404 is not retried"
    );
    assert_eq!(
        count(
            &metrics,
            "guestops_notifications_sent_total{kind=\"slack\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        count(
            &metrics,
            "guestops_notifications_failed_total{kind=\"slack\"}"
        ),
        Some(1.0)
    );

    let down = Receiver::answering(|_| StatusCode::BAD_GATEWAY).await;
    let metrics = post_one_invalid(&down).await;
    assert_eq!(
        down.events("/services/T0/B0/TOPSECRET").len(),
        3,
        "bounded: 3 attempts"
    );
    assert_eq!(
        count(
            &metrics,
            "guestops_notifications_failed_total{kind=\"slack\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_file_without_a_usable_url_stops_the_start_naming_the_notifier_not_the_url() {
    let secrets = tempfile::tempdir().expect("temp dir");
    let bad = secrets.path().join("slack-url");
    // Plain http off loopback is refused; the message must not repeat the URL.
    std::fs::write(&bad, "http://hooks.example/services/T0/B0/TOPSECRET\n").expect("write");
    let repo = Repo::new();
    repo.commit(&users_yaml(&[ANA]), "add ana");
    let setup = Setup::new_with(&repo, |config| {
        config.notify = vec![
            NotifyConfig {
                kind: NotifierKind::Teams,
                url_file: secrets.path().join("teams-url-that-is-missing"),
                secret_file: None,
                events: EventKind::ALL.to_vec(),
            },
            NotifyConfig {
                kind: NotifierKind::Slack,
                url_file: bad.clone(),
                secret_file: None,
                events: EventKind::ALL.to_vec(),
            },
        ];
    })
    .await;
    let (code, log) = setup.start(None).terminate_when_done().await;
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("the teams notifier #1"), "{log}");
    assert!(
        log.contains("teams-url-that-is-missing"),
        "names the file: {log}"
    );
    assert!(!setup.registered(ANA.0), "nothing reconciled");

    // The first notifier fixed: the second one is refused the same way.
    std::fs::write(
        secrets.path().join("teams-url-that-is-missing"),
        "https://teams.example/x",
    )
    .expect("write");
    let (code, log) = setup.start(None).terminate_when_done().await;
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("the slack notifier #2"), "{log}");
    assert!(log.contains("loopback"), "says why: {log}");
    assert!(!log.contains("TOPSECRET"), "{log}");
}
