//! The daemon's Prometheus metrics (design §9): what reconciles do, how far the remote systems
//! drift from `users.yaml`, and how old the pending invitations are.
//!
//! [`Metrics`] owns a `prometheus-client` registry; the daemon records into it and the server's
//! `GET /metrics` renders it with [`Metrics::encode`] (OpenMetrics text, which Prometheus
//! scrapes natively). Cloning is cheap and every clone records into the same registry.
//!
//! Never does I/O, never reads a clock: times are passed in.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `guestops_reconciles_total` | counter | `result` = `success`, `error`, `refused`, `invalid` | reconciles run, by outcome |
//! | `guestops_reconcile_duration_seconds` | histogram | — | wall time of one reconcile |
//! | `guestops_desired_users` | gauge | — | users in the current desired state |
//! | `guestops_drift` | gauge | `system` (`tenant`, `portal`, `state`), `kind` (the change kind, e.g. `invite`, `register`, `update-portal`, `unregister`) | changes the last plan found necessary |
//! | `guestops_changes_total` | counter | `system`, `kind`, `result` (e.g. `success`, `error`) | changes executed against a system |
//! | `guestops_portal_fields_lost_total` | counter | `field` (e.g. `groups`, `reports`, `companies`, `canExportReport`) | portal fields an `update-portal` lost: the read after its `PUT` found them changed although they were sent back unchanged (the change failed); `groups`, `reports` and `companies` start at 0 |
//! | `guestops_refused_changes` | gauge | — | changes the last plan left out because policy refuses their user (`allowedDomains`) or the whole plan |
//! | `guestops_tenant_full_syncs_total` | counter | — | full enumerations of the tenant through delta (first sync, expired link, `tenant.fullResyncInterval`, a lost cache); the log line says why |
//! | `guestops_pending_invitations` | gauge | — | invited guests that have not redeemed yet |
//! | `guestops_pending_invitation_oldest_age_seconds` | gauge | — | age of the oldest pending invitation (0 when none) |
//! | `guestops_access_expiring` | gauge | — | desired users whose access ends within `policy.expiryNoticeBefore` (the plan's notices `expiring`) |
//! | `guestops_notifications_sent_total`, `_failed_total`, `_dropped_total` | counter | `kind` (`teams`, `slack`, `webhook`) | notifications delivered, given up, dropped (queue full): [`crate::service::notify::NotifyMetrics`] |
//! | `guestops_last_success_timestamp_seconds` | gauge | — | unix time of the last successful reconcile (0 = never) |
//! | `guestops_revision_info` | gauge | `revision` | always 1; only the current revision of the desired state is kept |
//! | `guestops_suspended` | gauge | — | 1 while reconciles are suspended (`guestops suspend`), else 0 |

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::reconcile::plan::{Plan, System};

/// The content type of [`Metrics::encode`]'s output (OpenMetrics text 1.0.0).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the buckets of `guestops_reconcile_duration_seconds`: a steady-state
/// reconcile takes well under a second, a first full read of a large tenant minutes.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// How one reconcile ended (the `result` label of `guestops_reconciles_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReconcileResult {
    /// Observed, planned and applied (or nothing to do).
    Success,
    /// A read or a write failed; the reconcile will be retried.
    Error,
    /// The plan was refused by policy (e.g. `maxDeletions`); nothing was written.
    Refused,
    /// The desired state at the new revision is invalid; the last valid one is kept.
    Invalid,
    /// The new revision is refused by `source.verify` (unsigned, unknown signer, bad
    /// signature); the last verified one is kept.
    Unverified,
}

impl ReconcileResult {
    /// Every result, in label order.
    pub const ALL: [ReconcileResult; 5] = [
        ReconcileResult::Success,
        ReconcileResult::Error,
        ReconcileResult::Refused,
        ReconcileResult::Invalid,
        ReconcileResult::Unverified,
    ];

    /// The label value: `success`, `error`, `refused`, `invalid` or `unverified`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReconcileResult::Success => "success",
            ReconcileResult::Error => "error",
            ReconcileResult::Refused => "refused",
            ReconcileResult::Invalid => "invalid",
            ReconcileResult::Unverified => "unverified",
        }
    }
}

impl fmt::Display for ReconcileResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The label value of a [`System`]: `tenant`, `portal` or `state`.
pub fn system_label(system: System) -> &'static str {
    match system {
        System::Tenant => "tenant",
        System::Portal => "portal",
        System::State => "state",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
struct DriftLabels {
    system: String,
    kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ChangeLabels {
    system: String,
    kind: String,
    result: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FieldLabels {
    field: String,
}

/// The `field` series of `guestops_portal_fields_lost_total` exposed at 0 from the start.
pub const FIELDS_LOST_AT_START: [&str; 3] = ["groups", "reports", "companies"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RevisionLabels {
    revision: String,
}

struct Inner {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_duration: Histogram,
    desired_users: Gauge,
    drift: Family<DriftLabels, Gauge>,
    /// Drift series already exposed: kept at 0 when a later plan no longer has them, so that
    /// a series does not vanish (and alerts resolve on 0, not on absence).
    drift_seen: std::sync::Mutex<Vec<DriftLabels>>,
    changes: Family<ChangeLabels, Counter>,
    fields_lost: Family<FieldLabels, Counter>,
    refused_changes: Gauge,
    full_syncs: Counter,
    pending_invitations: Gauge,
    pending_oldest_age: Gauge,
    access_expiring: Gauge,
    notifications: crate::service::notify::NotifyMetrics,
    last_success: Gauge,
    revision: Family<RevisionLabels, Gauge>,
    /// Serializes [`Metrics::set_revision`] so that only one revision series is ever kept.
    revision_lock: std::sync::Mutex<()>,
    /// 1 while suspended.
    suspended: Gauge,
}

/// The daemon's metrics registry (module docs list every metric). `Clone` shares the registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered; each `guestops_reconciles_total{result}` series
    /// starts at 0 so that rates work from the first scrape.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();

        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "guestops_reconciles",
            "Reconciles run, by result: success, error (a read or write failed), refused (by policy), invalid (users.yaml at the new revision is invalid)",
            reconciles.clone(),
        );
        for result in ReconcileResult::ALL {
            reconciles
                .get_or_create(&ResultLabels {
                    result: result.as_str().to_owned(),
                })
                .get();
        }

        let reconcile_duration = Histogram::new(DURATION_BUCKETS);
        registry.register(
            "guestops_reconcile_duration_seconds",
            "Wall time of one reconcile (observe, plan, apply), in seconds",
            reconcile_duration.clone(),
        );

        let desired_users = Gauge::default();
        registry.register(
            "guestops_desired_users",
            "Users in the current desired state (users.yaml)",
            desired_users.clone(),
        );

        let drift = Family::<DriftLabels, Gauge>::default();
        registry.register(
            "guestops_drift",
            "Changes the last plan found necessary, by system (tenant, portal, state) and kind (invite, register, update-portal, unregister, ...)",
            drift.clone(),
        );

        let changes = Family::<ChangeLabels, Counter>::default();
        registry.register(
            "guestops_changes",
            "Changes executed, by system, kind and result",
            changes.clone(),
        );

        let fields_lost = Family::<FieldLabels, Counter>::default();
        registry.register(
            "guestops_portal_fields_lost",
            "Portal fields a role or name update lost: the read after its PUT found them changed although they were sent back unchanged (the update failed)",
            fields_lost.clone(),
        );
        for field in FIELDS_LOST_AT_START {
            fields_lost
                .get_or_create(&FieldLabels {
                    field: field.to_owned(),
                })
                .get();
        }

        let refused_changes = Gauge::default();
        registry.register(
            "guestops_refused_changes",
            "Changes the last plan left out because policy refuses them",
            refused_changes.clone(),
        );
        let full_syncs = Counter::default();
        registry.register(
            "guestops_tenant_full_syncs",
            "Full enumerations of the tenant through delta queries (first sync, expired link, fullResyncInterval, lost cache)",
            full_syncs.clone(),
        );
        let pending_invitations = Gauge::default();
        registry.register(
            "guestops_pending_invitations",
            "Invited guests that have not redeemed their invitation yet",
            pending_invitations.clone(),
        );

        let pending_oldest_age = Gauge::default();
        registry.register(
            "guestops_pending_invitation_oldest_age_seconds",
            "Age in seconds of the oldest pending invitation (0 when none is pending)",
            pending_oldest_age.clone(),
        );

        let access_expiring = Gauge::default();
        registry.register(
            "guestops_access_expiring",
            "Desired users whose access ends within policy.expiryNoticeBefore",
            access_expiring.clone(),
        );
        let notifications = crate::service::notify::NotifyMetrics::register(&mut registry);

        let last_success = Gauge::default();
        registry.register(
            "guestops_last_success_timestamp_seconds",
            "Unix time of the last successful reconcile (0 = none yet)",
            last_success.clone(),
        );

        let revision = Family::<RevisionLabels, Gauge>::default();
        registry.register(
            "guestops_revision_info",
            "The revision of the desired state in use (always 1; only the current revision is kept)",
            revision.clone(),
        );

        let suspended = Gauge::default();
        registry.register(
            "guestops_suspended",
            "1 while reconciles are suspended (guestops suspend), else 0",
            suspended.clone(),
        );

        Metrics {
            inner: Arc::new(Inner {
                suspended,
                registry,
                reconciles,
                reconcile_duration,
                desired_users,
                drift,
                drift_seen: std::sync::Mutex::new(Vec::new()),
                changes,
                fields_lost,
                refused_changes,
                full_syncs,
                pending_invitations,
                pending_oldest_age,
                access_expiring,
                notifications,
                last_success,
                revision,
                revision_lock: std::sync::Mutex::new(()),
            }),
        }
    }

    /// Counts one reconcile with its `result` and observes its `duration`.
    pub fn record_reconcile(&self, result: ReconcileResult, duration: Duration) {
        self.inner
            .reconciles
            .get_or_create(&ResultLabels {
                result: result.as_str().to_owned(),
            })
            .inc();
        self.inner
            .reconcile_duration
            .observe(duration.as_secs_f64());
    }

    /// Sets `guestops_desired_users`.
    pub fn set_desired_users(&self, count: usize) {
        self.inner.desired_users.set(saturating_i64(count as u64));
    }

    /// Replaces `guestops_drift` with `counts`: `(system, kind, count)` triples, e.g.
    /// `("tenant", "invite", 2)`. Repeated pairs are added up. Series set earlier and absent
    /// from `counts` are set to 0 (they stay exposed).
    pub fn set_drift(&self, counts: &[(&str, &str, u64)]) {
        let mut totals: BTreeMap<DriftLabels, u64> = BTreeMap::new();
        for (system, kind, count) in counts {
            let labels = DriftLabels {
                system: (*system).to_owned(),
                kind: (*kind).to_owned(),
            };
            let total = totals.entry(labels).or_default();
            *total = total.saturating_add(*count);
        }
        let mut seen = self
            .inner
            .drift_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for labels in seen.iter() {
            if !totals.contains_key(labels) {
                self.inner.drift.get_or_create(labels).set(0);
            }
        }
        for (labels, total) in totals {
            self.inner
                .drift
                .get_or_create(&labels)
                .set(saturating_i64(total));
            if !seen.contains(&labels) {
                seen.push(labels);
            }
        }
    }

    /// [`Metrics::set_drift`] from a plan: one count per change, by its system and its
    /// action's stable name (`invite`, `register`, `update-portal`, …).
    pub fn set_drift_from_plan(&self, plan: &Plan) {
        let counts: Vec<(&str, &str, u64)> = plan
            .changes
            .iter()
            .map(|change| {
                (
                    system_label(change.action.system()),
                    change.action.name(),
                    1,
                )
            })
            .collect();
        self.set_drift(&counts);
    }

    /// Counts one executed change, e.g. `("portal", "register", "success")`.
    pub fn record_change(&self, system: &str, kind: &str, result: &str) {
        self.inner
            .changes
            .get_or_create(&ChangeLabels {
                system: system.to_owned(),
                kind: kind.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts the portal fields one update lost (`guestops_portal_fields_lost_total{field}`).
    pub fn record_fields_lost(&self, fields: &[String]) {
        for field in fields {
            self.inner
                .fields_lost
                .get_or_create(&FieldLabels {
                    field: field.clone(),
                })
                .inc();
        }
    }

    /// Sets the pending invitations gauge and the age of the oldest one (`None`: none pending,
    /// the age gauge reads 0).
    pub fn set_pending_invitations(&self, count: usize, oldest_age: Option<Duration>) {
        self.inner
            .pending_invitations
            .set(saturating_i64(count as u64));
        self.inner
            .pending_oldest_age
            .set(saturating_i64(oldest_age.map_or(0, |age| age.as_secs())));
    }

    /// Sets `guestops_access_expiring`.
    pub fn set_access_expiring(&self, count: usize) {
        self.inner.access_expiring.set(saturating_i64(count as u64));
    }

    /// The notification counters (shared with the notifiers' senders).
    pub fn notifications(&self) -> crate::service::notify::NotifyMetrics {
        self.inner.notifications.clone()
    }

    /// Counts one full enumeration of the tenant.
    pub fn count_full_sync(&self) {
        self.inner.full_syncs.inc();
    }

    /// Sets the refused changes gauge.
    pub fn set_refused_changes(&self, count: usize) {
        self.inner.refused_changes.set(saturating_i64(count as u64));
    }

    /// Makes `revision` the only series of `guestops_revision_info`.
    pub fn set_revision(&self, revision: &str) {
        let _guard = self
            .inner
            .revision_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.inner.revision.clear();
        self.inner
            .revision
            .get_or_create(&RevisionLabels {
                revision: revision.to_owned(),
            })
            .set(1);
    }

    /// Sets `guestops_suspended` (1 while suspended).
    pub fn set_suspended(&self, suspended: bool) {
        self.inner.suspended.set(i64::from(suspended));
    }

    /// Sets `guestops_last_success_timestamp_seconds` (unix seconds).
    pub fn set_last_success(&self, unix_secs: i64) {
        self.inner.last_success.set(unix_secs);
    }

    /// The whole registry as OpenMetrics text (content type [`CONTENT_TYPE`]), ending in
    /// `# EOF`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; an Err could only come from a label encoder, and
        // ours are plain strings.
        if prometheus_client::encoding::text::encode(&mut text, &self.inner.registry).is_err() {
            text.clear();
            text.push_str("# EOF\n");
        }
        text
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_owned)
    }

    #[test]
    fn reconcile_results_start_at_zero_and_count() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        for result in ReconcileResult::ALL {
            let series = format!("guestops_reconciles_total{{result=\"{result}\"}}");
            assert_eq!(line_value(&text, &series).as_deref(), Some("0"), "{text}");
        }
        metrics.record_reconcile(ReconcileResult::Refused, Duration::from_millis(300));
        let text = metrics.encode();
        assert_eq!(
            line_value(&text, "guestops_reconciles_total{result=\"refused\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            line_value(&text, "guestops_reconcile_duration_seconds_count").as_deref(),
            Some("1")
        );
        assert_eq!(
            line_value(
                &text,
                "guestops_reconcile_duration_seconds_bucket{le=\"0.25\"}"
            )
            .as_deref(),
            Some("0")
        );
        assert_eq!(
            line_value(
                &text,
                "guestops_reconcile_duration_seconds_bucket{le=\"0.5\"}"
            )
            .as_deref(),
            Some("1")
        );
    }

    #[test]
    fn drift_is_replaced_and_old_series_drop_to_zero() {
        let metrics = Metrics::new();
        metrics.set_drift(&[("tenant", "invite", 2), ("portal", "register", 1)]);
        metrics.set_drift(&[("portal", "register", 3), ("portal", "register", 1)]);
        let text = metrics.encode();
        assert_eq!(
            line_value(&text, "guestops_drift{system=\"portal\",kind=\"register\"}").as_deref(),
            Some("4")
        );
        assert_eq!(
            line_value(&text, "guestops_drift{system=\"tenant\",kind=\"invite\"}").as_deref(),
            Some("0")
        );
    }

    #[test]
    fn lost_portal_fields_are_counted_by_field() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        assert_eq!(
            line_value(&text, "guestops_portal_fields_lost_total{field=\"groups\"}").as_deref(),
            Some("0"),
            "{text}"
        );
        metrics.record_fields_lost(&["groups".to_owned(), "department".to_owned()]);
        metrics.record_fields_lost(&["groups".to_owned()]);
        let text = metrics.encode();
        assert_eq!(
            line_value(&text, "guestops_portal_fields_lost_total{field=\"groups\"}").as_deref(),
            Some("2")
        );
        assert_eq!(
            line_value(
                &text,
                "guestops_portal_fields_lost_total{field=\"department\"}"
            )
            .as_deref(),
            Some("1")
        );
    }

    #[test]
    fn only_the_current_revision_is_kept() {
        let metrics = Metrics::new();
        metrics.set_revision("aaaa");
        metrics.set_revision("bbbb");
        let text = metrics.encode();
        assert!(!text.contains("aaaa"), "{text}");
        assert_eq!(
            line_value(&text, "guestops_revision_info{revision=\"bbbb\"}").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn revision_label_is_escaped() {
        let metrics = Metrics::new();
        metrics.set_revision("a\"b\\c\nd");
        let text = metrics.encode();
        assert!(
            text.contains(r#"guestops_revision_info{revision="a\"b\\c\nd"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn pending_and_last_success() {
        let metrics = Metrics::new();
        metrics.set_pending_invitations(3, Some(Duration::from_secs(86_400)));
        metrics.set_last_success(1_700_000_000);
        metrics.set_desired_users(12);
        metrics.record_change("portal", "register", "success");
        let text = metrics.encode();
        assert_eq!(
            line_value(&text, "guestops_pending_invitations").as_deref(),
            Some("3")
        );
        assert_eq!(
            line_value(&text, "guestops_pending_invitation_oldest_age_seconds").as_deref(),
            Some("86400")
        );
        assert_eq!(
            line_value(&text, "guestops_last_success_timestamp_seconds").as_deref(),
            Some("1700000000")
        );
        assert_eq!(
            line_value(&text, "guestops_desired_users").as_deref(),
            Some("12")
        );
        assert_eq!(
            line_value(
                &text,
                "guestops_changes_total{system=\"portal\",kind=\"register\",result=\"success\"}"
            )
            .as_deref(),
            Some("1")
        );
        metrics.set_access_expiring(2);
        let text = metrics.encode();
        assert_eq!(
            line_value(&text, "guestops_access_expiring").as_deref(),
            Some("2")
        );
        for kind in ["teams", "slack", "webhook"] {
            for counter in ["sent", "failed", "dropped"] {
                let series = format!("guestops_notifications_{counter}_total{{kind=\"{kind}\"}}");
                assert_eq!(line_value(&text, &series).as_deref(), Some("0"), "{series}");
            }
        }
        metrics
            .notifications()
            .failed(crate::service::notify::NotifierKind::Slack);
        let text = metrics.encode();
        assert_eq!(
            line_value(&text, "guestops_notifications_failed_total{kind=\"slack\"}").as_deref(),
            Some("1")
        );
        metrics.set_pending_invitations(0, None);
        let text = metrics.encode();
        assert_eq!(
            line_value(&text, "guestops_pending_invitation_oldest_age_seconds").as_deref(),
            Some("0")
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
