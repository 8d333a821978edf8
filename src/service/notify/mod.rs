//! Notifications (`notify:` in the host configuration): the daemon tells a Teams channel
//! (a Workflows webhook), a Slack channel (an incoming webhook) or any HTTP endpoint (a JSON
//! webhook, HMAC-signed) what needs a person: a reconcile that fails and later recovers, a
//! plan refused by policy, an invalid revision, invitations nobody accepts, access about to
//! end, access removed.
//!
//! Three parts:
//! - [`Tracker`]: the transitions, pure. The daemon reports every reconcile to it; it
//!   answers with the [`Event`]s to send, so that each condition is sent once per episode:
//!   one `failed` however often the retry fails, `recovered` when a reconcile succeeds
//!   again, `pending` and `expiring` once per user until the condition ends. What was sent
//!   is remembered **in memory**: a restart starts new episodes (a daemon still failing
//!   after a restart sends `failed` once more, users still pending or expiring are named
//!   once more).
//! - [`render`]: the body of each kind (Teams Adaptive Card, Slack blocks, the documented
//!   JSON of `kind: webhook`) and the webhook's signature.
//! - [`send`]: one background task per notifier with a bounded queue; a full queue drops the
//!   event (counted); each event is sent with a few bounded retries. Nothing here ever blocks
//!   a reconcile.
//!
//! A notifier's URL is a secret (a Slack or Teams webhook URL is a bearer credential): it
//! is read from `urlFile`, never logged, never part of an error. Messages name the notifier
//! as "the teams notifier #2" (its position in `notify`, from 1).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

pub mod render;
pub mod send;

/// The kind of a notifier (`notify[].kind`): the shape of what is posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NotifierKind {
    /// A Teams Workflows webhook ("Post to a channel when a webhook request is received"):
    /// a message with an Adaptive Card attachment.
    Teams,
    /// A Slack incoming webhook: `text` and `blocks`.
    Slack,
    /// Any HTTP endpoint: guestops' own JSON ([`render::webhook`]), signed with
    /// `X-Guestops-Signature-256` when `secretFile` is set.
    Webhook,
}

impl NotifierKind {
    /// Every kind, in documentation order.
    pub const ALL: [NotifierKind; 3] = [
        NotifierKind::Teams,
        NotifierKind::Slack,
        NotifierKind::Webhook,
    ];

    /// The config name (and metric label): `teams`, `slack`, `webhook`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifierKind::Teams => "teams",
            NotifierKind::Slack => "slack",
            NotifierKind::Webhook => "webhook",
        }
    }

    /// Parses a config name.
    pub fn from_name(name: &str) -> Option<NotifierKind> {
        NotifierKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// What a notification is about (`notify[].events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A reconcile failed (an incomplete read, a failed change); sent once until one succeeds.
    Failed,
    /// A reconcile succeeded after `failed` or `refused`.
    Recovered,
    /// Policy refused the whole plan (`maxDeletions`, an empty `users.yaml`) or some users'
    /// changes (`allowedDomains`).
    Refused,
    /// A new revision is invalid, or refused by `source.verify`; the last valid one is kept.
    Invalid,
    /// Invitations not accepted after `policy.pendingAlertAfter`.
    Pending,
    /// Access ending within `policy.expiryNoticeBefore`.
    Expiring,
    /// Access removed (a removal made: unregister, disable or delete the guest).
    Removed,
}

impl EventKind {
    /// Every event, in the canonical order (the default of `events`).
    pub const ALL: [EventKind; 7] = [
        EventKind::Failed,
        EventKind::Recovered,
        EventKind::Refused,
        EventKind::Invalid,
        EventKind::Pending,
        EventKind::Expiring,
        EventKind::Removed,
    ];

    /// The config name, also the webhook's `event`: `failed`, `recovered`, …
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Failed => "failed",
            EventKind::Recovered => "recovered",
            EventKind::Refused => "refused",
            EventKind::Invalid => "invalid",
            EventKind::Pending => "pending",
            EventKind::Expiring => "expiring",
            EventKind::Removed => "removed",
        }
    }

    /// Parses a config name.
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The revision a notification is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRevision {
    /// Full id (commit or content hash).
    pub id: String,
    /// Short form.
    pub short: String,
}

/// One user a notification names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventUser {
    /// The address.
    pub email: String,
    /// One line about this user (stable text).
    pub detail: String,
    /// `pending`: since when the invitation is pending.
    pub pending_since: Option<DateTime<Utc>>,
    /// `expiring`: the `expires` day.
    pub expires: Option<NaiveDate>,
    /// `removed`: the removals made (`unregister`, `disable-guest`, `delete-guest`).
    pub changes: Vec<String>,
}

/// One notification, whatever it is rendered as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What it is about.
    pub kind: EventKind,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// The tenant (`tenant.tenantId`), naming the target.
    pub tenant: String,
    /// The revision concerned, when one.
    pub revision: Option<EventRevision>,
    /// One line (stable text).
    pub title: String,
    /// What happened and what to do (stable text).
    pub text: String,
    /// The users concerned (`pending`, `expiring`, `removed`, a per-user `refused`).
    pub users: Vec<EventUser>,
}

/// How the last reconcile ended, for the transitions `failed` / `refused` → `recovered`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Condition {
    /// Succeeding (also before the first reconcile).
    #[default]
    Healthy,
    /// Failing since, attempts so far.
    Failing(DateTime<Utc>, u32),
    /// The plan refused as a whole since.
    Refused(DateTime<Utc>),
}

/// How a reconcile of the daemon ended, as the tracker needs it.
#[derive(Debug, Clone, Copy)]
pub enum Reconciled<'a> {
    /// It succeeded; the summary line.
    Succeeded(&'a str),
    /// Policy refused the whole plan; why.
    Refused(&'a str),
    /// It failed; the error (its whole chain).
    Failed(&'a str),
}

/// What one reconcile found about users, for the per-user events (plain data, so that the
/// tracker stays pure).
#[derive(Debug, Clone, Default)]
pub struct UserFindings {
    /// Pending invitations (all of them: the tracker applies `pendingAlertAfter`).
    pub pending: Vec<crate::reconcile::PendingInvitation>,
    /// Access ending within `policy.expiryNoticeBefore`.
    pub expiring: Vec<crate::reconcile::plan::ExpiringAccess>,
    /// Users whose changes policy refused one by one: `(key, email, message)`.
    pub refused: Vec<(String, String, String)>,
    /// Users whose removals were made: `(email, reason, changes made)`.
    pub removed: Vec<(String, String, Vec<String>)>,
}

/// The transitions (module docs): fed every reconcile, it answers with what to send.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    tenant: String,
    pending_after: Option<Duration>,
    expiry_before: Option<Duration>,
    condition: Condition,
    /// Users whose long-pending invitation was notified.
    pending: BTreeSet<String>,
    /// Users whose expiring access was notified, with the `expires` day notified.
    expiring: BTreeMap<String, NaiveDate>,
    /// Users whose refusal was notified.
    refused: BTreeSet<String>,
    /// The last invalid revision notified.
    invalid: Option<String>,
}

impl Tracker {
    /// A tracker for `tenant`, with `policy.pendingAlertAfter` and
    /// `policy.expiryNoticeBefore` (for the texts; `None`: that event never happens).
    pub fn new(
        tenant: &str,
        pending_after: Option<Duration>,
        expiry_before: Option<Duration>,
    ) -> Tracker {
        Tracker {
            tenant: tenant.to_owned(),
            pending_after,
            expiry_before,
            ..Tracker::default()
        }
    }

    fn event(
        &self,
        kind: EventKind,
        now: DateTime<Utc>,
        revision: Option<&EventRevision>,
        title: String,
        text: String,
        users: Vec<EventUser>,
    ) -> Event {
        Event {
            kind,
            time: now,
            tenant: self.tenant.clone(),
            revision: revision.cloned(),
            title,
            text,
            users,
        }
    }

    /// How a reconcile of `revision` ended: `failed` on the first failure of a run of
    /// them, `refused` when the plan becomes refused, `recovered` on the first success after
    /// either.
    pub fn reconciled(
        &mut self,
        result: Reconciled<'_>,
        revision: &EventRevision,
        now: DateTime<Utc>,
    ) -> Option<Event> {
        let short = &revision.short;
        match (result, self.condition.clone()) {
            (Reconciled::Succeeded(_), Condition::Healthy) => None,
            (Reconciled::Succeeded(summary), before) => {
                self.condition = Condition::Healthy;
                let had = match before {
                    Condition::Failing(since, attempts) => format!(
                        "Reconciles had failed since {} ({attempts} failed attempt{}).",
                        since.format("%Y-%m-%d %H:%M UTC"),
                        if attempts == 1 { "" } else { "s" }
                    ),
                    Condition::Refused(since) => format!(
                        "The plan had been refused by policy since {}.",
                        since.format("%Y-%m-%d %H:%M UTC")
                    ),
                    Condition::Healthy => String::new(),
                };
                Some(self.event(
                    EventKind::Recovered,
                    now,
                    Some(revision),
                    "guestops: reconciling again".to_owned(),
                    format!("Revision {short} reconciled: {summary}. {had}"),
                    Vec::new(),
                ))
            }
            (Reconciled::Failed(_), Condition::Failing(since, attempts)) => {
                self.condition = Condition::Failing(since, attempts.saturating_add(1));
                None
            }
            (Reconciled::Failed(error), _) => {
                self.condition = Condition::Failing(now, 1);
                Some(self.event(
                    EventKind::Failed,
                    now,
                    Some(revision),
                    "guestops: reconcile failed".to_owned(),
                    format!(
                        "Reconciling revision {short} failed: {error}. guestops retries with backoff; nothing more is sent until a reconcile succeeds again."
                    ),
                    Vec::new(),
                ))
            }
            (Reconciled::Refused(_), Condition::Refused(_)) => None,
            (Reconciled::Refused(why), _) => {
                self.condition = Condition::Refused(now);
                Some(self.event(
                    EventKind::Refused,
                    now,
                    Some(revision),
                    "guestops: plan refused by policy".to_owned(),
                    format!(
                        "Nothing was written for revision {short}: {why}. `guestops plan` lists the refused changes; if they are intended, apply them once with `guestops apply --force`."
                    ),
                    Vec::new(),
                ))
            }
        }
    }

    /// The per-user events of one reconcile of `revision` that reached a plan: users newly
    /// pending for longer than `pendingAlertAfter`, newly expiring, newly refused, and
    /// removed. A user whose condition ended is forgotten (a later one is a new episode).
    pub fn users(
        &mut self,
        findings: &UserFindings,
        revision: &EventRevision,
        now: DateTime<Utc>,
    ) -> Vec<Event> {
        let mut events = Vec::new();

        // pending
        let long: Vec<&crate::reconcile::PendingInvitation> = match self.pending_after {
            None => Vec::new(),
            Some(after) => {
                let after = chrono::TimeDelta::from_std(after).unwrap_or(chrono::TimeDelta::MAX);
                findings
                    .pending
                    .iter()
                    .filter(|p| now.signed_duration_since(p.since) >= after)
                    .collect()
            }
        };
        let users: Vec<EventUser> = long
            .iter()
            .filter(|p| !self.pending.contains(&p.key))
            .map(|p| EventUser {
                email: p.email.clone(),
                detail: format!(
                    "pending since {} ({} days)",
                    p.since.format("%Y-%m-%d"),
                    now.signed_duration_since(p.since).num_days()
                ),
                pending_since: Some(p.since),
                ..EventUser::default()
            })
            .collect();
        self.pending = long.iter().map(|p| p.key.clone()).collect();
        if !users.is_empty() {
            let after = self.pending_after.map(human_duration).unwrap_or_default();
            events.push(self.event(
                EventKind::Pending,
                now,
                Some(revision),
                format!(
                    "guestops: {} not accepted after {after}",
                    plural(users.len(), "invitation", "invitations")
                ),
                format!(
                    "These guests have not redeemed their invitation for longer than policy.pendingAlertAfter ({after}): until they do, they cannot sign in to the portal. Ask them to accept it (`guestops status` shows every invitation)."
                ),
                users,
            ));
        }

        // expiring
        let users: Vec<EventUser> = findings
            .expiring
            .iter()
            .filter(|e| self.expiring.get(&e.key) != Some(&e.expires))
            .map(|e| EventUser {
                email: e.email.clone(),
                detail: format!(
                    "access ends with {} (UTC), {}",
                    e.expires,
                    match e.days_left(now) {
                        0 => "today".to_owned(),
                        1 => "in 1 day".to_owned(),
                        n => format!("in {n} days"),
                    }
                ),
                expires: Some(e.expires),
                ..EventUser::default()
            })
            .collect();
        self.expiring = findings
            .expiring
            .iter()
            .map(|e| (e.key.clone(), e.expires))
            .collect();
        if !users.is_empty() {
            let before = self.expiry_before.map(human_duration).unwrap_or_default();
            events.push(self.event(
                EventKind::Expiring,
                now,
                Some(revision),
                format!(
                    "guestops: access of {} ends within {before}",
                    plural(users.len(), "user", "users")
                ),
                "To keep it, extend `expires` in users.yaml by a pull request; once the day has passed, the access is removed (with policy.prune).".to_owned(),
                users,
            ));
        }

        // refused, one by one
        let users: Vec<EventUser> = findings
            .refused
            .iter()
            .filter(|(key, _, _)| !self.refused.contains(key))
            .map(|(_, email, message)| EventUser {
                email: email.clone(),
                detail: message.clone(),
                ..EventUser::default()
            })
            .collect();
        self.refused = findings.refused.iter().map(|(k, _, _)| k.clone()).collect();
        if !users.is_empty() {
            events.push(self.event(
                EventKind::Refused,
                now,
                Some(revision),
                format!(
                    "guestops: changes of {} refused by policy",
                    plural(users.len(), "user", "users")
                ),
                "These users' changes are not made (the other users proceed): fix their entries in users.yaml, or the policy in the host configuration.".to_owned(),
                users,
            ));
        }

        // removed
        let users: Vec<EventUser> = findings
            .removed
            .iter()
            .map(|(email, reason, changes)| EventUser {
                email: email.clone(),
                detail: format!("{reason}: {}", changes.join(", ")),
                changes: changes.clone(),
                ..EventUser::default()
            })
            .collect();
        if !users.is_empty() {
            events.push(self.event(
                EventKind::Removed,
                now,
                Some(revision),
                format!(
                    "guestops: access of {} removed",
                    plural(users.len(), "user", "users")
                ),
                format!(
                    "Applying revision {} removed these users' access.",
                    revision.short
                ),
                users,
            ));
        }
        events
    }

    /// A revision that cannot be applied (invalid `users.yaml`, or refused by
    /// `source.verify`): `invalid`, once per revision.
    pub fn invalid(
        &mut self,
        revision: &EventRevision,
        message: &str,
        now: DateTime<Utc>,
    ) -> Option<Event> {
        if self.invalid.as_deref() == Some(revision.id.as_str()) {
            return None;
        }
        self.invalid = Some(revision.id.clone());
        Some(self.event(
            EventKind::Invalid,
            now,
            Some(revision),
            format!("guestops: revision {} is not applied", revision.short),
            format!("{message}."),
            Vec::new(),
        ))
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// A duration as the configuration writes it (`14d`, `36h`, `90s`).
pub fn human_duration(d: Duration) -> String {
    match d.as_secs() {
        0 => "0".to_owned(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// The notification metrics, registered with the daemon's others ([`NotifyMetrics::register`]):
///
/// | metric | type | labels | meaning |
/// |---|---|---|---|
/// | `guestops_notifications_sent_total` | counter | `kind` (`teams`, `slack`, `webhook`) | notifications delivered (a 2xx answer) |
/// | `guestops_notifications_failed_total` | counter | `kind` | notifications given up after their retries (or refused by the receiver) |
/// | `guestops_notifications_dropped_total` | counter | `kind` | notifications dropped because the notifier's queue was full |
#[derive(Debug, Clone, Default)]
pub struct NotifyMetrics {
    sent: Family<KindLabels, Counter>,
    failed: Family<KindLabels, Counter>,
    dropped: Family<KindLabels, Counter>,
}

impl NotifyMetrics {
    /// Registers the three counters in `registry`, every `kind` at 0.
    pub fn register(registry: &mut Registry) -> NotifyMetrics {
        let metrics = NotifyMetrics::default();
        registry.register(
            "guestops_notifications_sent",
            "Notifications delivered, by notifier kind (teams, slack, webhook)",
            metrics.sent.clone(),
        );
        registry.register(
            "guestops_notifications_failed",
            "Notifications that could not be delivered after their retries, by notifier kind",
            metrics.failed.clone(),
        );
        registry.register(
            "guestops_notifications_dropped",
            "Notifications dropped because the notifier's queue was full, by notifier kind",
            metrics.dropped.clone(),
        );
        for kind in NotifierKind::ALL {
            let labels = KindLabels {
                kind: kind.as_str().to_owned(),
            };
            metrics.sent.get_or_create(&labels).get();
            metrics.failed.get_or_create(&labels).get();
            metrics.dropped.get_or_create(&labels).get();
        }
        metrics
    }

    fn labels(kind: NotifierKind) -> KindLabels {
        KindLabels {
            kind: kind.as_str().to_owned(),
        }
    }

    /// Counts one delivered notification.
    pub fn sent(&self, kind: NotifierKind) {
        self.sent.get_or_create(&Self::labels(kind)).inc();
    }

    /// Counts one notification given up.
    pub fn failed(&self, kind: NotifierKind) {
        self.failed.get_or_create(&Self::labels(kind)).inc();
    }

    /// Counts one notification dropped (queue full).
    pub fn dropped(&self, kind: NotifierKind) {
        self.dropped.get_or_create(&Self::labels(kind)).inc();
    }
}

/// Why notifications cannot start (a `urlFile` or `secretFile` that cannot be read or does
/// not hold what it should). Never shows a URL.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A secret file cannot be read.
    #[error("{notifier}: {source}")]
    Secret {
        /// "the teams notifier #1".
        notifier: String,
        /// Why (names the file, never its content).
        #[source]
        source: crate::config::ConfigError,
    },
    /// `urlFile` does not hold a URL guestops may post to.
    #[error(
        "{notifier}: the file {} ({key}) does not hold a usable URL ({reason}); write the webhook URL alone, on one line",
        path.display()
    )]
    BadUrl {
        /// "the teams notifier #1".
        notifier: String,
        /// `notify[0].urlFile`.
        key: String,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong (never the URL).
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client of the notifications")]
    Client(#[source] reqwest::Error),
}

/// The daemon's handle on notifications: it feeds the [`Tracker`] and queues what it answers
/// to each notifier whose `events` include it. Cheap to clone; [`Notifications::disabled`]
/// sends nothing.
#[derive(Clone, Default)]
pub struct Notifications {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tracker: Mutex<Tracker>,
    queues: Vec<send::Queue>,
}

impl fmt::Debug for Notifications {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the URLs.
        let count = self.inner.as_ref().map_or(0, |i| i.queues.len());
        f.debug_struct("Notifications")
            .field("notifiers", &count)
            .finish()
    }
}

/// The background senders of [`Notifications::start`]: they end when every handle is
/// dropped and their queues are empty ([`Senders::finish`]).
#[derive(Debug, Default)]
pub struct Senders {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Senders {
    /// Waits at most `budget` for the queued notifications to go out (after the daemon
    /// stopped, so that its last `failed` is delivered), then stops the senders.
    pub async fn finish(self, budget: Duration) {
        let deadline = tokio::time::Instant::now() + budget;
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                tracing::warn!("notifications still queued at shutdown were not sent");
            }
        }
    }
}

impl Notifications {
    /// Sends nothing (no `notify` configured, tests).
    pub fn disabled() -> Notifications {
        Notifications::default()
    }

    /// Reads each notifier's `urlFile` (and `secretFile`) and starts its sender. Must run
    /// inside a tokio runtime.
    pub fn start(
        config: &crate::config::Config,
        metrics: NotifyMetrics,
    ) -> Result<(Notifications, Senders), NotifyError> {
        Self::start_with(config, metrics, send::SendPolicy::default())
    }

    /// [`Notifications::start`] with a retry policy (tests).
    pub fn start_with(
        config: &crate::config::Config,
        metrics: NotifyMetrics,
        policy: send::SendPolicy,
    ) -> Result<(Notifications, Senders), NotifyError> {
        if config.notify.is_empty() {
            return Ok((Notifications::disabled(), Senders::default()));
        }
        let client = send::client(&policy).map_err(NotifyError::Client)?;
        let mut queues = Vec::new();
        let mut tasks = Vec::new();
        for (index, item) in config.notify.iter().enumerate() {
            let target = send::Target::load(index, item)?;
            let (queue, task) =
                send::spawn(target, client.clone(), metrics.clone(), policy.clone());
            queues.push(queue);
            tasks.push(task);
        }
        let tracker = Tracker::new(
            &config.tenant.tenant_id,
            config.policy.pending_alert_after,
            config.policy.expiry_notice_before,
        );
        tracing::info!(notifiers = queues.len(), "notifications on");
        Ok((
            Notifications {
                inner: Some(Arc::new(Inner {
                    tracker: Mutex::new(tracker),
                    queues,
                })),
            },
            Senders { tasks },
        ))
    }

    fn with_tracker<R>(&self, f: impl FnOnce(&mut Tracker) -> R) -> Option<R> {
        let inner = self.inner.as_ref()?;
        let mut tracker = inner
            .tracker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(f(&mut tracker))
    }

    fn queue(&self, events: impl IntoIterator<Item = Event>) {
        let Some(inner) = &self.inner else { return };
        for event in events {
            let event = Arc::new(event);
            for queue in &inner.queues {
                queue.offer(&event);
            }
        }
    }

    /// The per-user events of a reconcile that reached a plan (`outcome`, with the desired
    /// state it was planned for).
    pub fn outcome(
        &self,
        desired: &crate::reconcile::Desired,
        outcome: &crate::reconcile::Outcome,
        now: DateTime<Utc>,
    ) {
        if self.inner.is_none() {
            return;
        }
        let revision = event_revision(desired);
        let findings = findings(desired, outcome, now, self.expiry_before());
        let events = self.with_tracker(|t| t.users(&findings, &revision, now));
        self.queue(events.unwrap_or_default());
    }

    /// How a reconcile of the daemon ended (`failed`, `refused`, `recovered`; an interrupted
    /// one says nothing).
    pub fn reconciled(
        &self,
        desired: &crate::reconcile::Desired,
        result: &Result<
            (crate::service::daemon::Action, String),
            crate::service::daemon::ReconcileError,
        >,
        now: DateTime<Utc>,
    ) {
        use crate::service::daemon::ReconcileError;
        if self.inner.is_none() {
            return;
        }
        let message;
        let result = match result {
            Ok((_, summary)) => Reconciled::Succeeded(summary),
            Err(ReconcileError::Interrupted) => return,
            Err(ReconcileError::Refused(why)) => Reconciled::Refused(why),
            Err(err) => {
                message = crate::error::chain(err);
                Reconciled::Failed(&message)
            }
        };
        let revision = event_revision(desired);
        let event = self.with_tracker(|t| t.reconciled(result, &revision, now));
        self.queue(event.flatten());
    }

    /// A revision that cannot be applied (invalid, or refused by `source.verify`).
    pub fn invalid(&self, id: &str, short: &str, message: &str, now: DateTime<Utc>) {
        let revision = EventRevision {
            id: id.to_owned(),
            short: short.to_owned(),
        };
        let event = self.with_tracker(|t| t.invalid(&revision, message, now));
        self.queue(event.flatten());
    }

    fn expiry_before(&self) -> Option<Duration> {
        self.with_tracker(|t| t.expiry_before).flatten()
    }
}

fn event_revision(desired: &crate::reconcile::Desired) -> EventRevision {
    EventRevision {
        id: desired.revision.id.clone(),
        short: desired.revision.short.clone(),
    }
}

/// What a reconcile's outcome says about users (see [`UserFindings`]).
pub fn findings(
    desired: &crate::reconcile::Desired,
    outcome: &crate::reconcile::Outcome,
    now: DateTime<Utc>,
    expiry_before: Option<Duration>,
) -> UserFindings {
    use crate::reconcile::apply::ChangeResult;
    use crate::reconcile::plan::{Action, RefusalScope};

    let mut removed: BTreeMap<String, (String, String, Vec<String>)> = BTreeMap::new();
    for done in outcome.report.iter().flat_map(|r| r.outcomes.iter()) {
        let removal = matches!(
            done.change.action,
            Action::Unregister { .. } | Action::DisableGuest { .. } | Action::DeleteGuest { .. }
        );
        if removal && matches!(done.result, ChangeResult::Done { .. }) {
            let entry = removed.entry(done.change.key.clone()).or_insert_with(|| {
                (
                    done.change.email.clone(),
                    done.change
                        .reason
                        .clone()
                        .unwrap_or_else(|| "removed".to_owned()),
                    Vec::new(),
                )
            });
            entry.2.push(done.change.action.name().to_owned());
        }
    }
    UserFindings {
        pending: outcome.pending.invitations.clone(),
        expiring: crate::reconcile::plan::expiring_access(&desired.state, now, expiry_before),
        refused: outcome
            .plan
            .refusals
            .iter()
            .filter(|r| r.scope == RefusalScope::User)
            .filter_map(|r| {
                let email = r.email.clone()?;
                let key = crate::desired::spec::normalize_email(&email);
                Some((key, email, r.message.clone()))
            })
            .collect(),
        removed: removed.into_values().collect(),
    }
}

#[cfg(test)]
mod tests;
