//! Liveness and readiness as the daemon reports them; rendered by `GET /readyz`.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Error messages kept for `/readyz` are cut to this many characters.
pub const MAX_MESSAGE_CHARS: usize = 2000;

/// A clock returning the current time (injected in tests).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// A revision whose `users.yaml` is invalid; the last valid desired state stays in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvalidRevision {
    /// The revision (commit id or content hash).
    pub revision: String,
    /// Why it is invalid (the diagnostics, summarized).
    pub message: String,
}

/// Why the daemon is or is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadinessStatus {
    /// A desired state is loaded and reconciles are not failing for too long.
    Ready,
    /// No valid desired state has been loaded yet.
    NotLoaded,
    /// Reconciles have been failing for longer than the threshold.
    Failing,
}

/// A snapshot of readiness: the JSON body of `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// Whether `/readyz` answers 200.
    pub ready: bool,
    /// Why (or why not).
    pub status: ReadinessStatus,
    /// The revision of the desired state in use.
    pub loaded_revision: Option<String>,
    /// When the last reconcile succeeded.
    pub last_success: Option<DateTime<Utc>>,
    /// When reconciles started failing (the first failure since the last success).
    pub failing_since: Option<DateTime<Utc>>,
    /// When the last reconcile failed.
    pub last_failure: Option<DateTime<Utc>>,
    /// The message of the last failure (kept after a success, for context).
    pub last_error: Option<String>,
    /// A newer revision that could not be loaded because it is invalid.
    pub invalid_revision: Option<InvalidRevision>,
    /// What policy refused in the last reconcile (a per-user refusal still counts as a
    /// success), if anything.
    pub refused: Option<String>,
    /// How long reconciles may fail before the daemon is not ready, in seconds.
    pub ready_threshold_seconds: u64,
    /// The suspension in force (`guestops suspend`: since, reason, by), if any. A suspended
    /// daemon reconciles nothing; it is a deliberate state, not a fault, so it does not
    /// change `ready` by itself.
    pub suspended: Option<crate::reconcile::plan::owned::Suspension>,
}

#[derive(Debug, Default)]
struct HealthState {
    loaded_revision: Option<String>,
    last_success: Option<DateTime<Utc>>,
    failing_since: Option<DateTime<Utc>>,
    last_failure: Option<DateTime<Utc>>,
    last_error: Option<String>,
    invalid_revision: Option<InvalidRevision>,
    refused: Option<String>,
    suspended: Option<crate::reconcile::plan::owned::Suspension>,
}

/// What the daemon tells `/readyz`. `Clone` shares the state.
///
/// Ready means: a valid desired state is loaded ([`Health::set_loaded`]) and reconciles have
/// not been failing for longer than [`Health::ready_threshold`] (measured from the first
/// failure after the last success). An invalid newer revision does not make the daemon
/// unready (it keeps the last valid one) but is shown in the detail.
#[derive(Clone)]
pub struct Health {
    state: Arc<RwLock<HealthState>>,
    ready_threshold: Duration,
    clock: Clock,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("ready_threshold", &self.ready_threshold)
            .finish_non_exhaustive()
    }
}

impl Health {
    /// Health with the system clock: unready once reconciles fail for longer than
    /// `ready_threshold`.
    pub fn new(ready_threshold: Duration) -> Health {
        Health::with_clock(ready_threshold, Arc::new(Utc::now))
    }

    /// Health reading the time from `clock` (tests).
    pub fn with_clock(ready_threshold: Duration, clock: Clock) -> Health {
        Health {
            state: Arc::new(RwLock::new(HealthState::default())),
            ready_threshold,
            clock,
        }
    }

    /// How long reconciles may fail before the daemon is not ready.
    pub fn ready_threshold(&self) -> Duration {
        self.ready_threshold
    }

    /// A valid desired state at `revision` is in use; clears a reported invalid revision.
    pub fn set_loaded(&self, revision: &str) {
        let mut state = self.write();
        state.loaded_revision = Some(revision.to_owned());
        state.invalid_revision = None;
    }

    /// A reconcile succeeded at `now`: the failing streak ends.
    pub fn record_success(&self, now: DateTime<Utc>) {
        let mut state = self.write();
        state.last_success = Some(now);
        state.failing_since = None;
    }

    /// A reconcile failed at `now` with `message`; starts the failing streak if none is running.
    pub fn record_failure(&self, now: DateTime<Utc>, message: &str) {
        let mut state = self.write();
        state.failing_since.get_or_insert(now);
        state.last_failure = Some(now);
        state.last_error = Some(truncate(message));
    }

    /// `users.yaml` at `revision` is invalid (`message` says why); the loaded revision stays.
    pub fn set_invalid_revision(&self, revision: &str, message: &str) {
        self.write().invalid_revision = Some(InvalidRevision {
            revision: revision.to_owned(),
            message: truncate(message),
        });
    }

    /// Readiness now (by the clock given at construction).
    /// What policy refused in the last successful reconcile (`None`: nothing).
    pub fn set_refused(&self, refused: Option<&str>) {
        self.write().refused = refused.map(truncate);
    }

    /// The suspension in force (`None`: reconciling).
    pub fn set_suspended(&self, suspended: Option<&crate::reconcile::plan::owned::Suspension>) {
        self.write().suspended = suspended.cloned();
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness_at((self.clock)())
    }

    /// Readiness at `now`.
    pub fn readiness_at(&self, now: DateTime<Utc>) -> Readiness {
        let state = self
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let failing_too_long = state.failing_since.is_some_and(|since| {
            let failing_for = now.signed_duration_since(since);
            failing_for.to_std().is_ok_and(|d| d > self.ready_threshold)
        });
        let status = if state.loaded_revision.is_none() {
            ReadinessStatus::NotLoaded
        } else if failing_too_long {
            ReadinessStatus::Failing
        } else {
            ReadinessStatus::Ready
        };
        Readiness {
            ready: status == ReadinessStatus::Ready,
            status,
            loaded_revision: state.loaded_revision.clone(),
            last_success: state.last_success,
            failing_since: state.failing_since,
            last_failure: state.last_failure,
            last_error: state.last_error.clone(),
            invalid_revision: state.invalid_revision.clone(),
            refused: state.refused.clone(),
            ready_threshold_seconds: self.ready_threshold.as_secs(),
            suspended: state.suspended.clone(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HealthState> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn truncate(message: &str) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0)
            .single()
            .expect("valid time")
    }

    #[test]
    fn failing_streak_starts_at_first_failure_and_ends_on_success() {
        let health = Health::new(Duration::from_secs(60));
        health.set_loaded("r1");
        health.record_failure(at(0), "first");
        health.record_failure(at(50), "second");
        let r = health.readiness_at(at(60));
        assert!(r.ready);
        assert_eq!(r.failing_since, Some(at(0)));
        assert_eq!(r.last_error.as_deref(), Some("second"));
        let r = health.readiness_at(at(61));
        assert!(!r.ready);
        assert_eq!(r.status, ReadinessStatus::Failing);
        health.record_success(at(70));
        let r = health.readiness_at(at(1000));
        assert!(r.ready);
        assert_eq!(r.failing_since, None);
    }

    #[test]
    fn a_valid_load_clears_the_invalid_revision() {
        let health = Health::new(Duration::from_secs(60));
        health.set_loaded("r1");
        health.set_invalid_revision("r2", "E001 bad email");
        let r = health.readiness_at(at(0));
        assert!(
            r.ready,
            "an invalid newer revision keeps the last valid one"
        );
        assert_eq!(
            r.invalid_revision.map(|i| i.revision).as_deref(),
            Some("r2")
        );
        health.set_loaded("r3");
        assert_eq!(health.readiness_at(at(0)).invalid_revision, None);
    }

    #[test]
    fn long_messages_are_cut() {
        let health = Health::new(Duration::from_secs(60));
        health.record_failure(at(0), &"é".repeat(MAX_MESSAGE_CHARS + 10));
        let kept = health.readiness_at(at(0)).last_error.unwrap_or_default();
        assert_eq!(kept.chars().count(), MAX_MESSAGE_CHARS + 1);
    }
}
