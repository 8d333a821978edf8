//! The transitions of [`Tracker`], and the three bodies (insta snapshots).

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use hmac::{KeyInit, Mac};

use super::render::{self, SIGNATURE_HEADER};
use super::*;
use crate::reconcile::PendingInvitation;
use crate::reconcile::plan::ExpiringAccess;
use crate::reconcile::plan::expiry::access_ends_at;

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("a time")
        .with_timezone(&Utc)
}

fn revision() -> EventRevision {
    EventRevision {
        id: "4c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d".to_owned(),
        short: "4c1d2e3".to_owned(),
    }
}

fn tracker() -> Tracker {
    Tracker::new(
        "contoso.onmicrosoft.com",
        Some(Duration::from_secs(14 * 86_400)),
        Some(Duration::from_secs(7 * 86_400)),
    )
}

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

#[test]
fn a_run_of_failures_sends_one_failed_then_one_recovered() {
    let mut t = tracker();
    let now = at("2026-12-01T10:00:00Z");
    assert_eq!(
        t.reconciled(Reconciled::Succeeded("in sync"), &revision(), now),
        None,
        "healthy from the start: nothing to say"
    );
    let failed = t
        .reconciled(
            Reconciled::Failed("the portal answered 503"),
            &revision(),
            now,
        )
        .expect("the first failure is sent");
    assert_eq!(failed.kind, EventKind::Failed);
    assert!(
        failed.text.contains("the portal answered 503"),
        "{}",
        failed.text
    );
    for _ in 0..5 {
        assert_eq!(
            t.reconciled(
                Reconciled::Failed("the portal answered 503"),
                &revision(),
                now
            ),
            None,
            "a retry that fails again is not sent"
        );
    }
    let later = at("2026-12-01T10:30:00Z");
    let recovered = t
        .reconciled(
            Reconciled::Succeeded("2 changes applied"),
            &revision(),
            later,
        )
        .expect("recovered");
    assert_eq!(recovered.kind, EventKind::Recovered);
    assert!(
        recovered
            .text
            .contains("failed since 2026-12-01 10:00 UTC (6 failed attempts)"),
        "{}",
        recovered.text
    );
    assert_eq!(
        t.reconciled(Reconciled::Succeeded("in sync"), &revision(), later),
        None
    );
    // A new episode.
    assert!(
        t.reconciled(Reconciled::Failed("again"), &revision(), later)
            .is_some()
    );
}

#[test]
fn a_refused_plan_is_sent_once_and_a_failure_after_it_too() {
    let mut t = tracker();
    let now = at("2026-12-01T10:00:00Z");
    let refused = t.reconciled(
        Reconciled::Refused("7 users would be removed"),
        &revision(),
        now,
    );
    assert_eq!(refused.map(|e| e.kind), Some(EventKind::Refused));
    assert_eq!(
        t.reconciled(
            Reconciled::Refused("7 users would be removed"),
            &revision(),
            now
        ),
        None
    );
    let failed = t.reconciled(Reconciled::Failed("timeout"), &revision(), now);
    assert_eq!(failed.map(|e| e.kind), Some(EventKind::Failed));
    let recovered = t
        .reconciled(Reconciled::Succeeded("in sync"), &revision(), now)
        .expect("recovered");
    assert_eq!(recovered.kind, EventKind::Recovered);
}

fn pending(key: &str, since: &str) -> PendingInvitation {
    PendingInvitation {
        key: key.to_owned(),
        email: key.to_owned(),
        since: at(since),
    }
}

fn expiring(key: &str, day: &str) -> ExpiringAccess {
    let expires: NaiveDate = day.parse().expect("a date");
    ExpiringAccess {
        key: key.to_owned(),
        email: key.to_owned(),
        expires,
        ends_at: access_ends_at(expires),
    }
}

#[test]
fn pending_and_expiring_are_sent_once_per_user_and_episode() {
    let mut t = tracker();
    let now = at("2026-12-01T10:00:00Z");
    let findings = UserFindings {
        pending: vec![
            pending("ana@partner.example", "2026-11-01T09:00:00Z"),
            // Younger than pendingAlertAfter: not yet.
            pending("bob@partner.example", "2026-11-25T09:00:00Z"),
        ],
        expiring: vec![expiring("carl@vendor.example", "2026-12-04")],
        ..UserFindings::default()
    };
    let events = t.users(&findings, &revision(), now);
    assert_eq!(kinds(&events), [EventKind::Pending, EventKind::Expiring]);
    assert_eq!(events[0].users.len(), 1);
    assert_eq!(events[0].users[0].email, "ana@partner.example");
    assert_eq!(
        events[0].users[0].detail,
        "pending since 2026-11-01 (30 days)"
    );
    assert_eq!(
        events[1].users[0].detail,
        "access ends with 2026-12-04 (UTC), in 3 days"
    );

    assert!(
        t.users(&findings, &revision(), now).is_empty(),
        "the same users again: nothing new"
    );

    // Bob's invitation grows old; Ana accepts (she leaves the list).
    let later = at("2026-12-10T10:00:00Z");
    let findings = UserFindings {
        pending: vec![pending("bob@partner.example", "2026-11-25T09:00:00Z")],
        expiring: vec![expiring("carl@vendor.example", "2026-12-04")],
        ..UserFindings::default()
    };
    let events = t.users(&findings, &revision(), later);
    assert_eq!(kinds(&events), [EventKind::Pending]);
    assert_eq!(events[0].users[0].email, "bob@partner.example");

    // Carl's access is extended, then shortened again: a new episode.
    let extended = UserFindings {
        expiring: vec![],
        ..findings.clone()
    };
    assert!(t.users(&extended, &revision(), later).is_empty());
    let shortened = UserFindings {
        expiring: vec![expiring("carl@vendor.example", "2026-12-12")],
        ..findings
    };
    assert_eq!(
        kinds(&t.users(&shortened, &revision(), later)),
        [EventKind::Expiring]
    );
}

#[test]
fn refusals_one_by_one_and_removals() {
    let mut t = tracker();
    let now = at("2026-12-01T10:00:00Z");
    let findings = UserFindings {
        refused: vec![(
            "eve@elsewhere.example".to_owned(),
            "eve@elsewhere.example".to_owned(),
            "eve@elsewhere.example: domain elsewhere.example is not in policy.allowedDomains (partner.example)".to_owned(),
        )],
        removed: vec![(
            "old@partner.example".to_owned(),
            "removed from users.yaml".to_owned(),
            vec!["disable-guest".to_owned(), "unregister".to_owned()],
        )],
        ..UserFindings::default()
    };
    let events = t.users(&findings, &revision(), now);
    assert_eq!(kinds(&events), [EventKind::Refused, EventKind::Removed]);
    assert_eq!(
        events[1].users[0].detail,
        "removed from users.yaml: disable-guest, unregister"
    );
    let again = UserFindings {
        removed: vec![],
        ..findings
    };
    assert!(
        t.users(&again, &revision(), now).is_empty(),
        "a refusal that stays is not sent again"
    );
}

#[test]
fn an_invalid_revision_is_sent_once() {
    let mut t = tracker();
    let now = at("2026-12-01T10:00:00Z");
    let event = t.invalid(&revision(), "users.yaml at 4c1d2e3 is invalid", now);
    assert_eq!(event.map(|e| e.kind), Some(EventKind::Invalid));
    assert_eq!(
        t.invalid(&revision(), "users.yaml at 4c1d2e3 is invalid", now),
        None
    );
}

#[test]
fn no_pending_alert_when_it_is_off() {
    let mut t = Tracker::new("t", None, None);
    let findings = UserFindings {
        pending: vec![pending("ana@partner.example", "2020-01-01T00:00:00Z")],
        ..UserFindings::default()
    };
    assert!(
        t.users(&findings, &revision(), at("2026-12-01T10:00:00Z"))
            .is_empty()
    );
}

// ---- the bodies -------------------------------------------------------------------------

fn sample_failed() -> Event {
    Event {
        kind: EventKind::Failed,
        time: at("2026-12-01T10:00:00Z"),
        tenant: "contoso.onmicrosoft.com".to_owned(),
        revision: Some(revision()),
        title: "guestops: reconcile failed".to_owned(),
        text: "Reconciling revision 4c1d2e3 failed: GET /api/user page 1 answered 503 <Service Unavailable> & more. guestops retries with backoff; nothing more is sent until a reconcile succeeds again.".to_owned(),
        users: Vec::new(),
    }
}

fn sample_pending() -> Event {
    let mut t = tracker();
    let findings = UserFindings {
        pending: vec![
            pending("ana.silva@partner.example", "2026-11-01T09:00:00Z"),
            pending("bob@vendor.example", "2026-11-10T09:00:00Z"),
        ],
        ..UserFindings::default()
    };
    t.users(&findings, &revision(), at("2026-12-01T10:00:00Z"))
        .remove(0)
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON")
}

#[test]
fn teams_body() {
    insta::assert_snapshot!("teams-failed", pretty(&render::teams(&sample_failed())));
    insta::assert_snapshot!("teams-pending", pretty(&render::teams(&sample_pending())));
}

#[test]
fn slack_body() {
    let body = render::slack(&sample_failed());
    insta::assert_snapshot!("slack-failed", pretty(&body));
    // Slack's control characters are escaped in mrkdwn.
    let section = body["blocks"][1]["text"]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        section.contains("&lt;Service Unavailable&gt; &amp; more"),
        "{section}"
    );
    insta::assert_snapshot!("slack-pending", pretty(&render::slack(&sample_pending())));
}

#[test]
fn webhook_body() {
    insta::assert_snapshot!("webhook-failed", pretty(&render::webhook(&sample_failed())));
    insta::assert_snapshot!(
        "webhook-pending",
        pretty(&render::webhook(&sample_pending()))
    );
}

#[test]
fn many_users_are_listed_up_to_a_bound_in_chat_and_all_in_the_webhook() {
    let mut event = sample_pending();
    event.users = (0..25)
        .map(|i| EventUser {
            email: format!("user{i}@partner.example"),
            detail: "pending".to_owned(),
            ..EventUser::default()
        })
        .collect();
    let teams = render::teams(&event);
    let card = &teams["attachments"][0]["content"]["body"];
    assert_eq!(card[2]["facts"].as_array().map(Vec::len), Some(20));
    assert_eq!(card[3]["text"], "… and 5 more");
    let slack = render::slack(&event);
    let list = slack["blocks"][2]["text"]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(list.ends_with("… and 5 more"), "{list}");
    assert_eq!(
        render::webhook(&event)["users"].as_array().map(Vec::len),
        Some(25)
    );
}

#[test]
fn the_signature_is_the_hmac_sha256_of_the_body() {
    let body = render::webhook(&sample_failed()).to_string();
    let signature = render::signature(b"s3cr3t", body.as_bytes());
    // Computed here with the hmac crate directly.
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cr3t").expect("any key length");
    mac.update(body.as_bytes());
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(signature, expected);
    assert_ne!(render::signature(b"other", body.as_bytes()), expected);
    assert_eq!(SIGNATURE_HEADER, "X-Guestops-Signature-256");
}

#[test]
fn retryable_statuses() {
    for status in [408, 429, 500, 502, 503, 504] {
        assert!(send::is_retryable(status), "{status}");
    }
    for status in [200, 202, 400, 401, 403, 404, 410] {
        assert!(!send::is_retryable(status), "{status}");
    }
}

#[test]
fn a_target_never_shows_its_url() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("teams-url");
    std::fs::write(
        &file,
        "https://example.invalid/workflows/abc?sig=topsecret\n",
    )
    .expect("write");
    let item = crate::config::NotifyConfig {
        kind: NotifierKind::Teams,
        url_file: file.clone(),
        secret_file: None,
        events: EventKind::ALL.to_vec(),
    };
    let target = send::Target::load(1, &item).expect("loads");
    assert_eq!(target.name, "the teams notifier #2");
    assert!(!format!("{target:?}").contains("topsecret"));

    std::fs::write(&file, "not a url topsecret").expect("write");
    let err = send::Target::load(1, &item).expect_err("not a URL");
    let text = crate::error::chain(&err);
    assert!(text.contains("the teams notifier #2"), "{text}");
    assert!(!text.contains("topsecret"), "{text}");
    std::fs::write(&file, "http://example.com/hook?sig=topsecret").expect("write");
    let text = crate::error::chain(&send::Target::load(1, &item).expect_err("plain http"));
    assert!(text.contains("loopback"), "{text}");
    assert!(!text.contains("topsecret"), "{text}");
}
