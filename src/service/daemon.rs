//! The daemon (`guestops run`, design §9): triggers, the reconcile loop, backoff, systemd
//! notifications, health and metrics.
//!
//! As in kube-rs' controller: each reconcile ends in an [`Action`] (requeue after the resync
//! interval), a failure goes through the pure [`error_policy`] (backoff, holding for a
//! `Retry-After` of Graph or the portal), and triggers only mean "reconcile now" (a new revision, a verified
//! webhook, a changed file, SIGHUP); reconciles never overlap and bursts coalesce, because the
//! single loop drains every pending trigger before it reconciles once. A periodic resync runs
//! even when nothing changed (drift correction; triggers can get lost). Failures back off
//! exponentially with jitter up to a cap and keep trying; while failing, the retry replaces
//! the periodic resync (a resync must not defeat the backoff), a new revision or an explicit
//! trigger still reconciles at once, and a remote's `Retry-After` holds every reconcile.
//! Before the first valid load, source reads are retried with the same backoff (never more
//! often than the poll would).
//!
//! An invalid `users.yaml` at a new revision changes nothing remote: the last valid desired
//! state keeps being enforced and the problem is reported (log, metric, `/readyz` detail).
//! An invalid revision is reported once, not at every poll.
//! On shutdown the loop stops taking triggers, lets the in-flight writes finish, saves the
//! state and returns `Ok`; it returns an error when it had to stop because the state
//! directory cannot be written. `WATCHDOG=1` is sent from the loop on its own timer (idle or
//! reconciling, for at most [`Settings::max_reconcile_time`]), `READY=1` after the first
//! valid load, `STATUS=` after each load and reconcile, `STOPPING=1` on the way out.
//!
//! Control requests ([`crate::service::control`], the socket `state.dir/control.sock`) are
//! handled by the loop between reconciles, so the loop stays the only writer of the state:
//! `suspend` records the suspension in `state.json` and stops reconciling (the source is
//! still polled, so `/readyz` shows the newest revision and invalid commits are reported;
//! health and metrics keep being served); `resume` lifts it and reconciles at once;
//! `reconcile` reconciles now and is answered when that reconcile ends; `forget` re-reads the
//! source and drops one record unless the desired state lists the user. A suspension in
//! `state.json` holds across restarts.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::desired::source::{DesiredSource, Refusal, Revision, SourceError};
use crate::desired::spec::{self, SpecPolicy};
use crate::reconcile::ObserveError;
use crate::reconcile::apply::{ChangeOutcome, ChangeResult};
use crate::reconcile::operator;
use crate::reconcile::state::{StateError, StateStore};
use crate::remote::graph::Tenant;
use crate::remote::portal::Portal;
use crate::service::control::{Answer, ControlRequest, ReconcileReport, Request, Response};
use crate::service::metrics::{Metrics, ReconcileResult};
use crate::service::server::{Health, Trigger};
use crate::service::systemd::Notifier;

/// Timing and limits of the loop.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often the source is polled for a new revision.
    pub poll_interval: Duration,
    /// Full reconcile even without a new revision.
    pub resync_interval: Duration,
    /// First retry delay after a failure.
    pub backoff_base: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
    /// Policy and concurrency of each reconcile.
    pub reconcile: crate::reconcile::Settings,
    /// A reconcile taking longer than this stops the watchdog pings, so systemd restarts a
    /// hung daemon.
    pub max_reconcile_time: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(300),
            resync_interval: Duration::from_secs(600),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(600),
            reconcile: crate::reconcile::Settings::default(),
            max_reconcile_time: Duration::from_secs(1800),
        }
    }
}

/// The valid desired state being enforced.
type Loaded = crate::reconcile::Desired;

/// Why one round of the loop failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The reconcile failed as a whole (incomplete read, state not writable, interrupted).
    #[error(transparent)]
    Reconcile(#[from] crate::reconcile::ReconcileError),
    /// The plan is refused as a whole by policy (a mass-removal guard); nothing was written.
    #[error("the plan is refused by policy: {0}")]
    Refused(String),
    /// Some changes failed; the others were applied.
    #[error("{failed} of {} failed (first: {first})", crate::markup::count(*total, "change"))]
    ChangesFailed {
        /// Failed changes.
        failed: usize,
        /// All changes.
        total: usize,
        /// The first failure.
        first: String,
    },
    /// Stopped by shutdown before finishing.
    #[error("interrupted by shutdown")]
    Interrupted,
}

impl ReconcileError {
    /// The `Retry-After` the remote asked for, if any.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            ReconcileError::Reconcile(crate::reconcile::ReconcileError::Observe(
                ObserveError::Tenant(err),
            )) => err.retry_after(),
            ReconcileError::Reconcile(crate::reconcile::ReconcileError::Observe(
                ObserveError::Portal(err),
            )) => err.retry_after(),
            _ => None,
        }
    }

    fn metric(&self) -> ReconcileResult {
        match self {
            ReconcileError::Refused(_) => ReconcileResult::Refused,
            _ => ReconcileResult::Error,
        }
    }

    /// Whether the state directory cannot be written: going on would make changes that are
    /// not recorded, so the daemon stops.
    fn is_fatal(&self) -> bool {
        matches!(self, ReconcileError::Reconcile(e) if e.is_state_unwritable())
    }
}

/// Why the daemon stopped on its own (a clean shutdown is `Ok`).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state directory could not be written during a reconcile: the daemon stopped so
    /// that no change goes unrecorded.
    #[error(
        "stopped because the state in {} cannot be written ({reason}): free disk space or fix the permissions of state.dir, then restart guestops",
        dir.display()
    )]
    StateUnwritable {
        /// The state directory.
        dir: PathBuf,
        /// What failed.
        reason: String,
    },
    /// `state.json` could not be saved on shutdown.
    #[error(
        "could not save the state on shutdown: {0}; the next start re-observes both systems, but check state.dir"
    )]
    SaveOnShutdown(#[source] StateError),
}

/// The daemon: one target (tenant + portal), one desired source.
pub struct Daemon<S, T, P> {
    /// Timing and policy.
    pub settings: Settings,
    /// Where `users.yaml` comes from.
    pub source: S,
    /// The tenant.
    pub tenant: T,
    /// The portal.
    pub portal: P,
    /// State, audit and the instance lock.
    pub store: StateStore,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Readiness for `/readyz`.
    pub health: Health,
    /// systemd notifications (disabled outside systemd).
    pub notifier: Notifier,
    /// Notifications to Teams, Slack or webhooks (`notify`; disabled when none).
    pub notifications: crate::service::notify::Notifications,
}

/// Exponential backoff with ±20 % jitter: `base · 2^(failures-1)`, capped; at least
/// `retry_after` when the remote asked for it.
pub fn backoff_delay(
    failures: u32,
    base: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let capped = exp.min(max);
    let jittered = capped.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0)).min(max);
    jittered.max(retry_after.unwrap_or(Duration::ZERO))
}

/// What the loop does after a reconcile, as kube-rs' `Action`: reconcile again after
/// `requeue_after` unless a trigger comes first, and never before `not_before` (a remote's
/// `Retry-After`) whatever the trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    /// The next reconcile, at the latest.
    pub requeue_after: Duration,
    /// No reconcile before this, even on a trigger.
    pub not_before: Option<Duration>,
}

impl Action {
    /// Reconcile again after `after` (or at the next trigger).
    pub fn requeue(after: Duration) -> Action {
        Action {
            requeue_after: after,
            not_before: None,
        }
    }
}

/// When to reconcile again after a successful reconcile: after `resync`, or sooner while
/// `unresolved` users have an open write-ahead intent (an invitation whose outcome is
/// unknown, a guest invited but not visible yet): after a tenth of `grace`, between 1 s and
/// 60 s, so the guest is adopted soon after it replicates instead of at the next resync.
pub fn requeue_after(resync: Duration, unresolved: usize, grace: Duration) -> Duration {
    if unresolved == 0 {
        return resync;
    }
    let soon = (grace / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    resync.min(soon)
}

/// The error policy: the `failures`-th failure in a row becomes the next delay
/// ([`backoff_delay`], at least the `Retry-After` Graph *or* the portal asked for), and that
/// `Retry-After` holds every trigger. Pure: `jitter` in `[0, 1]` is passed in.
pub fn error_policy(
    err: &ReconcileError,
    failures: u32,
    settings: &Settings,
    jitter: f64,
) -> Action {
    let retry_after = err.retry_after();
    Action {
        requeue_after: backoff_delay(
            failures,
            settings.backoff_base,
            settings.backoff_max,
            retry_after,
            jitter,
        ),
        not_before: retry_after,
    }
}

/// What reading the source found.
enum Refresh {
    /// The same revision as the one enforced (or as the invalid one already reported).
    Unchanged,
    /// A new valid desired state.
    New(Loaded),
    /// The newest revision is invalid (newly reported); the message says why.
    Invalid(String),
}

/// The loop's bookkeeping between wake-ups.
struct Timers {
    /// When the source is read next.
    next_poll: Instant,
    /// When the next periodic resync is due (`None` before the first reconcile).
    next_resync: Option<Instant>,
    /// When a failed reconcile is retried (`None` when the last one succeeded).
    retry_at: Option<Instant>,
    /// No reconcile before this (the remote's `Retry-After`), whatever the trigger.
    hold_until: Option<Instant>,
    /// When the next watchdog ping is due (`None` without a watchdog).
    next_ping: Option<Instant>,
    /// Suspended: no reconcile is due, only polls and pings.
    paused: bool,
}

impl Timers {
    /// The earliest instant something is due.
    fn wake(&self, reconcile_pending: bool) -> Instant {
        // While failing, the retry replaces the periodic resync: resyncs must not defeat the
        // backoff.
        let resync = if self.retry_at.is_some() || self.paused {
            None
        } else {
            self.next_resync
        };
        let retry = if self.paused { None } else { self.retry_at };
        let hold = if reconcile_pending && !self.paused {
            self.hold_until
        } else {
            None
        };
        [resync, retry, hold, self.next_ping]
            .into_iter()
            .flatten()
            .fold(self.next_poll, Instant::min)
    }
}

impl<S: DesiredSource, T: Tenant, P: Portal> Daemon<S, T, P> {
    /// Runs until `shutdown` is cancelled. `triggers` only mean "reconcile now".
    ///
    /// Returns `Ok` after a shutdown (the in-flight changes finished and the state was
    /// saved), and an error when the daemon had to stop on its own because the state
    /// directory cannot be written.
    pub async fn run(
        self,
        triggers: mpsc::Receiver<Trigger>,
        shutdown: CancellationToken,
    ) -> Result<(), DaemonError> {
        // No control socket: a channel whose sender is gone at once.
        let (_, control) = mpsc::channel(1);
        self.run_with_control(triggers, control, shutdown).await
    }

    /// [`Daemon::run`], also answering the requests of the control socket that arrive on
    /// `control` (module docs).
    pub async fn run_with_control(
        mut self,
        mut triggers: mpsc::Receiver<Trigger>,
        mut control: mpsc::Receiver<ControlRequest>,
        shutdown: CancellationToken,
    ) -> Result<(), DaemonError> {
        // Taken out of `self` so that it can ping while `self` reconciles.
        let notifier = std::mem::replace(&mut self.notifier, Notifier::disabled());
        let ping = notifier.watchdog_ping_interval();
        let mut loaded: Option<Loaded> = None;
        let mut invalid: Option<String> = None;
        let mut ready_sent = false;
        let mut failures: u32 = 0;
        let mut load_failures: u32 = 0;
        let mut triggers_open = true;
        let mut refresh_now = false;
        let mut reconcile_pending = false;
        let mut outcome_of_run: Result<(), DaemonError> = Ok(());
        let mut control_open = true;
        // `reconcile` requests waiting for the next reconcile to end.
        let mut waiters: Vec<tokio::sync::oneshot::Sender<Response>> = Vec::new();
        let mut timers = Timers {
            next_poll: Instant::now(),
            next_resync: None,
            retry_at: None,
            hold_until: None,
            next_ping: ping.map(|p| Instant::now() + p),
            paused: false,
        };
        tracing::info!(source = %self.source.describe(), "guestops daemon started");
        if let Some(s) = self.store.state().suspended.clone() {
            tracing::warn!(
                "reconciles are {}: nothing is reconciled until `guestops resume`",
                operator::describe_suspension(&s)
            );
        }
        self.show_suspension();

        loop {
            timers.paused = self.store.state().suspended.is_some();
            let wake = timers.wake(reconcile_pending);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                request = recv_while_open(&mut control, control_open) => match request {
                    Some(request) => {
                        let mut ctl = Ctl {
                            loaded: &mut loaded,
                            invalid: &mut invalid,
                            waiters: &mut waiters,
                            reconcile_pending: &mut reconcile_pending,
                            refresh_now: &mut refresh_now,
                        };
                        self.control(request, &mut ctl, &notifier).await;
                        if !reconcile_pending {
                            continue;
                        }
                    }
                    None => {
                        control_open = false;
                        continue;
                    }
                },
                trigger = recv_while_open(&mut triggers, triggers_open) => match trigger {
                    Some(trigger) => {
                        tracing::info!(?trigger, "reconcile requested");
                        refresh_now = true;
                        reconcile_pending = true;
                    }
                    // Every sender is gone: only timers remain.
                    None => {
                        triggers_open = false;
                        continue;
                    }
                },
                () = tokio::time::sleep_until(wake) => {}
            }
            // Coalesce a burst: whatever else is queued is covered by this round.
            while let Ok(trigger) = triggers.try_recv() {
                tracing::debug!(?trigger, "reconcile requested (coalesced)");
                refresh_now = true;
                reconcile_pending = true;
            }
            let now = Instant::now();
            if let (Some(p), Some(at)) = (ping, timers.next_ping)
                && now >= at
            {
                let _ = notifier.watchdog();
                timers.next_ping = Some(now + p);
            }

            if refresh_now || now >= timers.next_poll {
                refresh_now = false;
                timers.next_poll = now + self.settings.poll_interval;
                let refreshed = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    refreshed = self.refresh(loaded.as_ref(), &mut invalid) => refreshed,
                };
                match refreshed {
                    Ok(Refresh::New(new)) => {
                        load_failures = 0;
                        reconcile_pending = true;
                        let _ = notifier.status(&format!(
                            "revision {}: loaded ({})",
                            new.revision.short,
                            crate::markup::count(new.state.users.len(), "user")
                        ));
                        loaded = Some(new);
                    }
                    Ok(Refresh::Unchanged) => {}
                    Ok(Refresh::Invalid(message)) => {
                        let _ = notifier.status(&message);
                    }
                    Err(message) => {
                        self.health
                            .record_failure((self.settings.reconcile.clock)(), &message);
                        tracing::warn!("{message}");
                        if loaded.is_none() {
                            load_failures += 1;
                            // Retry sooner than the poll at first, never later.
                            let delay = self
                                .delay(load_failures, None)
                                .min(self.settings.poll_interval);
                            timers.next_poll = Instant::now() + delay;
                            let _ = notifier.status(&format!(
                                "cannot load users.yaml: {message}; retrying in {}s",
                                delay.as_secs()
                            ));
                        }
                    }
                }
            }
            let Some(current) = loaded.clone() else {
                if !waiters.is_empty() {
                    let why = self.health.readiness().last_error.unwrap_or_default();
                    answer_all(
                        &mut waiters,
                        &Response::new(
                            Answer::Failed,
                            format!(
                                "no valid users.yaml is loaded yet, nothing was reconciled: {why}"
                            ),
                        ),
                    );
                }
                continue;
            };
            if !ready_sent {
                let _ = notifier.ready();
                ready_sent = true;
            }
            if self.store.state().suspended.is_some() {
                // Polled, not reconciled; `resume` reconciles at once.
                reconcile_pending = false;
                continue;
            }

            if timers.retry_at.is_some_and(|at| now >= at)
                || (timers.retry_at.is_none() && timers.next_resync.is_none_or(|at| now >= at))
            {
                reconcile_pending = true;
            }
            if !reconcile_pending || timers.hold_until.is_some_and(|hold| now < hold) {
                continue;
            }
            reconcile_pending = false;

            let started = Instant::now();
            let span = tracing::info_span!(
                "reconcile",
                revision = %current.revision.short,
                users = current.state.users.len()
            );
            // Only requests received before this reconcile started are answered by it.
            let mut answering = std::mem::take(&mut waiters);
            let mut report = None;
            let outcome = with_watchdog(
                &notifier,
                self.settings.max_reconcile_time,
                self.reconcile(&current, &shutdown, &mut report)
                    .instrument(span),
            )
            .await;
            self.notifications
                .reconciled(&current, &outcome, (self.settings.reconcile.clock)());
            if !answering.is_empty() {
                let response = match (&outcome, report) {
                    (_, Some((answer, report))) => Response {
                        answer,
                        message: format!("revision {}: {}", current.revision.short, report.summary),
                        suspended: None,
                        reconcile: Some(report),
                    },
                    (Err(err), None) => {
                        let message = crate::error::chain(err);
                        Response {
                            answer: Answer::Failed,
                            message: format!(
                                "revision {}: the reconcile failed: {message}",
                                current.revision.short
                            ),
                            suspended: None,
                            reconcile: Some(ReconcileReport {
                                revision: current.revision.id.clone(),
                                summary: "the reconcile failed".to_owned(),
                                failures: vec![message],
                                refusals: Vec::new(),
                            }),
                        }
                    }
                    (Ok((_, summary)), None) => Response::new(Answer::Ok, summary.clone()),
                };
                answer_all(&mut answering, &response);
            }
            let elapsed = started.elapsed();
            let after = Instant::now();
            if let Some(p) = ping {
                // `with_watchdog` pinged while the reconcile ran.
                timers.next_ping = Some(after + p);
            }
            match outcome {
                Ok((action, summary)) => {
                    failures = 0;
                    timers.next_resync = Some(after + action.requeue_after);
                    timers.retry_at = None;
                    timers.hold_until = None;
                    self.metrics
                        .record_reconcile(ReconcileResult::Success, elapsed);
                    let now = (self.settings.reconcile.clock)();
                    self.metrics.set_last_success(now.timestamp());
                    self.health.record_success(now);
                    tracing::info!(
                        revision = %current.revision.short,
                        duration_ms = elapsed.as_millis() as u64,
                        "reconciled: {summary}"
                    );
                    let mut status = format!("revision {}: {summary}", current.revision.short);
                    if let Some(invalid) = &invalid {
                        status.push_str(&format!("; newer revision {invalid} is invalid"));
                    }
                    let _ = notifier.status(&status);
                }
                Err(ReconcileError::Interrupted) => break,
                Err(err) => {
                    self.metrics.record_reconcile(err.metric(), elapsed);
                    // The whole chain, once: each error's message says its own part only.
                    let message = crate::error::chain(&err);
                    self.health
                        .record_failure((self.settings.reconcile.clock)(), &message);
                    if err.is_fatal() {
                        tracing::error!(error = %message, "the state cannot be saved: stopping");
                        let _ = notifier.status(&format!("stopped: {message}"));
                        outcome_of_run = Err(DaemonError::StateUnwritable {
                            dir: self.store.dir().to_path_buf(),
                            reason: message,
                        });
                        break;
                    }
                    failures = failures.saturating_add(1);
                    let action =
                        error_policy(&err, failures, &self.settings, rand::random::<f64>());
                    let delay = action.requeue_after;
                    // The resync timer restarts too; while failing the retry replaces it.
                    timers.next_resync = Some(after + self.settings.resync_interval);
                    timers.retry_at = Some(after + delay);
                    timers.hold_until = action.not_before.map(|d| after + d);
                    tracing::warn!(error = %message, retry_in_secs = delay.as_secs(), failures, "reconcile failed");
                    let _ = notifier.status(&format!(
                        "revision {}: {message}; retrying in {}s",
                        current.revision.short,
                        delay.as_secs()
                    ));
                }
            }
        }

        answer_all(
            &mut waiters,
            &Response::new(
                Answer::Error,
                "the daemon stopped before reconciling; nothing was reconciled",
            ),
        );
        let _ = notifier.stopping();
        if let Err(err) = self.store.save() {
            tracing::error!(error = %err, "could not save the state on shutdown");
            if outcome_of_run.is_ok() {
                outcome_of_run = Err(DaemonError::SaveOnShutdown(err));
            }
        }
        tracing::info!("guestops daemon stopped");
        outcome_of_run
    }

    fn delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        backoff_delay(
            failures,
            self.settings.backoff_base,
            self.settings.backoff_max,
            retry_after,
            rand::random::<f64>(),
        )
    }

    /// Loads the newest revision. `Err` when the source cannot be read, or when the only
    /// revision known is invalid (nothing can be enforced yet).
    ///
    /// `invalid` remembers the invalid revision last reported, so that it is reported (log,
    /// metric, `/readyz`) once, not at every poll.
    async fn refresh(
        &self,
        current: Option<&Loaded>,
        invalid: &mut Option<String>,
    ) -> Result<Refresh, String> {
        let (revision, bytes) = match self.source.load().await {
            Ok(loaded) => loaded,
            // Refused like an invalid revision: reported once, the last verified one kept.
            Err(SourceError::Unverified { revision, refusal }) => {
                return self.refused_revision(current, invalid, &revision, &refusal);
            }
            Err(e) => return Err(format!("cannot read {}: {e}", self.source.describe())),
        };
        if let Some(current) = current
            && current.revision.id == revision.id
        {
            if invalid.take().is_some() {
                // The branch went back to the revision being enforced.
                self.health.set_loaded(&revision.id);
            }
            return Ok(Refresh::Unchanged);
        }
        if invalid.as_deref() == Some(revision.id.as_str()) {
            return match current {
                Some(_) => Ok(Refresh::Unchanged),
                None => Err(format!(
                    "users.yaml at {} is invalid and no valid revision was loaded yet",
                    revision.short
                )),
            };
        }
        // `allowedDomains` is the plan's business: a refused change for that user only, not
        // an invalid revision.
        let spec_policy = SpecPolicy::default();
        let parsed = spec::parse(&bytes, &spec_policy);
        match parsed.desired {
            Some(desired) if !parsed.has_errors() => {
                tracing::info!(revision = %revision, users = desired.users.len(), "new desired state");
                *invalid = None;
                self.health.set_loaded(&revision.id);
                self.metrics.set_revision(&revision.id);
                self.metrics.set_desired_users(desired.users.len());
                Ok(Refresh::New(Loaded {
                    revision,
                    state: desired,
                    branch: self.source.branch(),
                }))
            }
            _ => {
                let errors: Vec<String> = parsed
                    .diagnostics
                    .iter()
                    .filter(|d| d.severity == spec::Severity::Error)
                    .map(|d| format!("{}:{}: {} [{}]", d.line, d.column, d.message, d.code))
                    .collect();
                let message = format!(
                    "users.yaml at {} is invalid ({}; first: {}); still enforcing {}: fix the file in a new commit (guestops validate shows every error)",
                    revision.short,
                    crate::markup::count(errors.len(), "error"),
                    errors.first().map_or("?", String::as_str),
                    current.map_or("nothing (no valid revision yet)", |c| c
                        .revision
                        .short
                        .as_str()),
                );
                tracing::error!(revision = %revision, errors = ?errors, "{message}");
                self.report_refused_revision(&revision, &message, ReconcileResult::Invalid);
                *invalid = Some(revision.id.clone());
                match current {
                    Some(_) => Ok(Refresh::Invalid(message)),
                    None => Err(message),
                }
            }
        }
    }

    /// A revision that is not applied (invalid, or refused by `source.verify`): `/readyz`,
    /// the notifiers and the metric `result` say so, once per revision.
    fn report_refused_revision(&self, revision: &Revision, message: &str, result: ReconcileResult) {
        self.health.set_invalid_revision(&revision.id, message);
        self.notifications.invalid(
            &revision.id,
            &revision.short,
            message,
            (self.settings.reconcile.clock)(),
        );
        self.metrics.record_reconcile(result, Duration::ZERO);
    }

    /// The tip of the branch is refused by `source.verify`: reported (log, metric, `/readyz`)
    /// once per revision, like an invalid one; the revision being enforced stays.
    fn refused_revision(
        &self,
        current: Option<&Loaded>,
        invalid: &mut Option<String>,
        revision: &Revision,
        refusal: &Refusal,
    ) -> Result<Refresh, String> {
        let enforcing = current.map_or("nothing (no verified revision yet)", |c| {
            c.revision.short.as_str()
        });
        let message = format!(
            "commit {} is refused by source.verify: {refusal}; still enforcing {enforcing}: \
             sign the commit with a trusted key (source.verify.allowedSignersFile or \
             keyringFile) and push it",
            revision.id
        );
        if invalid.as_deref() != Some(revision.id.as_str()) {
            tracing::error!(revision = %revision, signer = ?refusal.signer().map(ToString::to_string), "{message}");
            self.report_refused_revision(revision, &message, ReconcileResult::Unverified);
            *invalid = Some(revision.id.clone());
        } else if current.is_some() {
            return Ok(Refresh::Unchanged);
        }
        match current {
            Some(_) => Ok(Refresh::Invalid(message)),
            None => Err(message),
        }
    }

    /// One reconcile through [`crate::reconcile::run_once`], then metrics and readiness from
    /// its outcome; `Ok` carries what to do next and the summary line.
    async fn reconcile(
        &mut self,
        loaded: &Loaded,
        shutdown: &CancellationToken,
        report: &mut Option<(Answer, ReconcileReport)>,
    ) -> Result<(Action, String), ReconcileError> {
        let ctx = crate::reconcile::Context {
            tenant: &self.tenant,
            portal: &self.portal,
            settings: &self.settings.reconcile,
        };
        let mode = crate::reconcile::Mode::Apply {
            store: &mut self.store,
            progress: None,
        };
        let outcome = match crate::reconcile::run_once(&ctx, loaded, mode, shutdown).await {
            Ok(outcome) => outcome,
            Err(crate::reconcile::ReconcileError::Interrupted) => {
                return Err(ReconcileError::Interrupted);
            }
            Err(err) => return Err(err.into()),
        };
        self.record_outcome(&outcome);
        self.notifications
            .outcome(loaded, &outcome, (self.settings.reconcile.clock)());
        *report = Some(report_of(&outcome));
        let plan = &outcome.plan;
        if plan.is_refused() {
            let reasons: Vec<&str> = plan.refusals.iter().map(|r| r.message.as_str()).collect();
            return Err(ReconcileError::Refused(reasons.join("; ")));
        }
        if outcome.failed() > 0 {
            let first = outcome
                .report
                .iter()
                .flat_map(|r| r.outcomes.iter())
                .find(|o| o.is_failed())
                .map(ChangeOutcome::line)
                .unwrap_or_default();
            return Err(ReconcileError::ChangesFailed {
                failed: outcome.failed(),
                total: plan.changes.len(),
                first,
            });
        }
        if outcome.interrupted {
            return Err(ReconcileError::Interrupted);
        }
        let after = requeue_after(
            self.settings.resync_interval,
            outcome.unresolved,
            self.settings.reconcile.policy.replication_grace,
        );
        if after < self.settings.resync_interval {
            tracing::info!(
                unresolved = outcome.unresolved,
                after_secs = after.as_secs_f64(),
                "intents are open (an invitation may still be replicating); reconciling again soon"
            );
        }
        Ok((Action::requeue(after), outcome.summary()))
    }

    /// Metrics and readiness right after a reconcile: drift, refusals, changes, pending
    /// invitations (including the ones just sent).
    fn record_outcome(&self, outcome: &crate::reconcile::Outcome) {
        self.metrics.set_drift_from_plan(&outcome.plan);
        self.metrics.set_refused_changes(outcome.refused_changes());
        // `observe` logged the reason.
        if let crate::reconcile::TenantPicture::FullSync { .. } = outcome.tenant_picture {
            self.metrics.count_full_sync();
        }
        self.metrics
            .set_pending_invitations(outcome.pending.count, outcome.pending.oldest);
        let expiring = outcome.plan.notices.iter().filter(|n| n.code == "expiring");
        self.metrics.set_access_expiring(expiring.count());
        let refused: Vec<&str> = outcome
            .plan
            .refusals
            .iter()
            .map(|r| r.message.as_str())
            .collect();
        self.health
            .set_refused((!refused.is_empty()).then(|| refused.join("; ")).as_deref());
        for change in outcome.report.iter().flat_map(|r| r.outcomes.iter()) {
            let result = match &change.result {
                ChangeResult::Done { .. } => "success",
                ChangeResult::Failed { .. } => "error",
                ChangeResult::Skipped { .. } => "skipped",
            };
            self.metrics.record_change(
                crate::service::metrics::system_label(change.change.action.system()),
                change.change.action.name(),
                result,
            );
            self.metrics.record_fields_lost(&change.fields_lost);
        }
    }
}

/// The loop's state a control request may change.
struct Ctl<'a> {
    loaded: &'a mut Option<Loaded>,
    invalid: &'a mut Option<String>,
    waiters: &'a mut Vec<tokio::sync::oneshot::Sender<Response>>,
    reconcile_pending: &'a mut bool,
    refresh_now: &'a mut bool,
}

impl<S: DesiredSource, T: Tenant, P: Portal> Daemon<S, T, P> {
    /// Health, metrics and systemd status of the suspension in `state.json`.
    fn show_suspension(&self) {
        let suspended = self.store.state().suspended.as_ref();
        self.health.set_suspended(suspended);
        self.metrics.set_suspended(suspended.is_some());
    }

    /// Handles one control request between reconciles (module docs).
    async fn control(&mut self, request: ControlRequest, ctl: &mut Ctl<'_>, notifier: &Notifier) {
        let now = (self.settings.reconcile.clock)();
        let response = match &request.request {
            Request::Ping => {
                let mut message = format!(
                    "guestops daemon pid {}, enforcing {}",
                    std::process::id(),
                    ctl.loaded
                        .as_ref()
                        .map_or("nothing yet", |l| l.revision.short.as_str())
                );
                if let Some(s) = &self.store.state().suspended {
                    message.push_str(&format!("; {}", operator::describe_suspension(s)));
                }
                Response {
                    suspended: self.store.state().suspended.clone(),
                    ..Response::new(Answer::Ok, message)
                }
            }
            Request::Suspend { reason, by } => {
                let who = request.who(by);
                let mut state = self.store.state().clone();
                match operator::suspend(&mut state, reason.clone(), who, now) {
                    Err(already) => Response {
                        message: format!(
                            "already {}; nothing changed",
                            operator::describe_suspension(&already)
                        ),
                        suspended: Some(already),
                        ..Response::new(Answer::Ok, "")
                    },
                    Ok(suspension) => match self.save_state(state) {
                        Err(message) => Response::new(Answer::Error, message),
                        Ok(()) => {
                            let text = operator::describe_suspension(&suspension);
                            tracing::warn!("reconciles {text}");
                            let _ = notifier.status(&format!("{text}: not reconciling"));
                            // A `reconcile` still waiting will not run.
                            answer_all(
                                ctl.waiters,
                                &Response::new(
                                    Answer::Suspended,
                                    format!(
                                        "reconciles were {text} before this reconcile started; nothing was reconciled"
                                    ),
                                ),
                            );
                            *ctl.reconcile_pending = false;
                            Response {
                                message: format!(
                                    "{text}; the daemon reconciles nothing until `guestops resume` (a reconcile in progress, if any, has finished)"
                                ),
                                suspended: Some(suspension),
                                ..Response::new(Answer::Ok, "")
                            }
                        }
                    },
                }
            }
            Request::Resume { by } => {
                let who = request.who(by);
                let mut state = self.store.state().clone();
                match operator::resume(&mut state) {
                    None => Response::new(Answer::Ok, "not suspended; nothing changed"),
                    Some(lifted) => match self.save_state(state) {
                        Err(message) => Response::new(Answer::Error, message),
                        Ok(()) => {
                            tracing::info!(
                                "reconciles resumed by {who} (they were {}); reconciling now",
                                operator::describe_suspension(&lifted)
                            );
                            *ctl.reconcile_pending = true;
                            *ctl.refresh_now = true;
                            Response::new(
                                Answer::Ok,
                                format!(
                                    "resumed (reconciles were {}); reconciling now",
                                    operator::describe_suspension(&lifted)
                                ),
                            )
                        }
                    },
                }
            }
            Request::Reconcile => match &self.store.state().suspended {
                Some(s) => Response {
                    suspended: Some(s.clone()),
                    ..Response::new(
                        Answer::Suspended,
                        format!(
                            "the daemon is {}: nothing was reconciled; `guestops resume` reconciles at once",
                            operator::describe_suspension(s)
                        ),
                    )
                },
                None => {
                    tracing::info!("reconcile requested on the control socket");
                    ctl.waiters.push(request.reply);
                    *ctl.reconcile_pending = true;
                    *ctl.refresh_now = true;
                    return;
                }
            },
            Request::Forget { email, by } => {
                let who = request.who(by);
                self.forget(email, &who, now, ctl).await
            }
        };
        let _ = request.reply.send(response);
    }

    /// `forget`: re-reads the source (a new revision is taken up as at a poll), then drops
    /// the record unless the desired state being enforced lists the user.
    async fn forget(
        &mut self,
        email: &str,
        who: &str,
        now: chrono::DateTime<chrono::Utc>,
        ctl: &mut Ctl<'_>,
    ) -> Response {
        match self.refresh(ctl.loaded.as_ref(), ctl.invalid).await {
            Ok(Refresh::New(new)) => {
                *ctl.loaded = Some(new);
                *ctl.reconcile_pending = true;
            }
            Ok(Refresh::Unchanged | Refresh::Invalid(_)) => {}
            Err(message) if ctl.loaded.is_none() => {
                return Response::new(
                    Answer::Error,
                    format!(
                        "cannot tell whether {email} is still in users.yaml: {message}; nothing was forgotten"
                    ),
                );
            }
            // The source cannot be read now: the revision being enforced decides.
            Err(message) => tracing::warn!("{message}"),
        }
        let Some(desired) = ctl.loaded.as_ref() else {
            return Response::new(
                Answer::Error,
                format!(
                    "no valid users.yaml is loaded yet: cannot tell whether {email} is still listed; nothing was forgotten"
                ),
            );
        };
        let mut state = self.store.state().clone();
        match operator::forget(&mut state, email, desired) {
            Err(err) => Response::new(Answer::Rejected, err.to_string()),
            Ok(record) => {
                let audit = operator::forget_audit(&record, &desired.revision.id, who, now);
                if let Err(message) = self.save_state(state) {
                    return Response::new(Answer::Error, message);
                }
                if let Err(err) = self.store.append_audit(&audit) {
                    tracing::error!(error = %err, "forget: the audit line could not be written");
                    return Response::new(
                        Answer::Error,
                        format!(
                            "{} was forgotten, but its audit line could not be written: {err}",
                            record.email
                        ),
                    );
                }
                tracing::info!(user = %record.email, by = %who, "ownership forgotten");
                Response::new(
                    Answer::Ok,
                    format!(
                        "forgot {}: {}",
                        record.email,
                        audit.detail.unwrap_or_default()
                    ),
                )
            }
        }
    }

    /// Replaces the state by `state` and saves it; on failure the previous state stays in
    /// memory (as on disk) and the message says why.
    fn save_state(&mut self, state: crate::reconcile::state::State) -> Result<(), String> {
        let previous = std::mem::replace(self.store.state_mut(), state);
        match self.store.save() {
            Ok(()) => {
                self.show_suspension();
                Ok(())
            }
            Err(err) => {
                *self.store.state_mut() = previous;
                tracing::error!(error = %err, "a control request could not be saved");
                Err(format!("nothing changed: {}", crate::error::chain(&err)))
            }
        }
    }
}

/// What a reconcile asked for on the control socket answers: the verdict as `apply`'s exit
/// code, the summary, the failures and the refusals.
fn report_of(outcome: &crate::reconcile::Outcome) -> (Answer, ReconcileReport) {
    use crate::reconcile::Verdict;
    let answer = match outcome.verdict() {
        Verdict::Failed => Answer::Failed,
        Verdict::Refused => Answer::Refused,
        Verdict::Changes | Verdict::InSync => Answer::Ok,
    };
    let failures = outcome
        .report
        .iter()
        .flat_map(|r| r.outcomes.iter())
        .filter(|o| o.is_failed())
        .map(ChangeOutcome::line)
        .collect();
    let refusals = outcome
        .plan
        .refusals
        .iter()
        .map(|r| r.message.clone())
        .collect();
    let mut summary = outcome.summary();
    if outcome.interrupted {
        summary.push_str(" (interrupted by shutdown)");
    }
    (
        answer,
        ReconcileReport {
            revision: outcome.revision.id.clone(),
            summary,
            failures,
            refusals,
        },
    )
}

/// Sends `response` to every waiter (a gone client is ignored).
fn answer_all(waiters: &mut Vec<tokio::sync::oneshot::Sender<Response>>, response: &Response) {
    for waiter in waiters.drain(..) {
        let _ = waiter.send(response.clone());
    }
}

/// Runs `work`, pinging the watchdog meanwhile for at most `max_time`.
async fn with_watchdog<F: Future>(notifier: &Notifier, max_time: Duration, work: F) -> F::Output {
    let Some(ping) = notifier.watchdog_ping_interval() else {
        return work.await;
    };
    let deadline = Instant::now() + max_time;
    tokio::pin!(work);
    loop {
        tokio::select! {
            output = &mut work => return output,
            () = tokio::time::sleep(ping) => {
                if Instant::now() < deadline {
                    let _ = notifier.watchdog();
                }
            }
        }
    }
}

/// The next message; never resolves once every sender is gone (`open == false`).
async fn recv_while_open<M>(triggers: &mut mpsc::Receiver<M>, open: bool) -> Option<M> {
    if open {
        triggers.recv().await
    } else {
        std::future::pending().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_intents_requeue_soon_within_bounds() {
        let resync = Duration::from_secs(600);
        let minute = Duration::from_secs(60);
        assert_eq!(requeue_after(resync, 0, minute * 15), resync);
        assert_eq!(
            requeue_after(resync, 2, minute * 15),
            minute,
            "capped at 60 s"
        );
        assert_eq!(
            requeue_after(resync, 1, Duration::from_secs(30)),
            Duration::from_secs(3)
        );
        assert_eq!(
            requeue_after(resync, 1, Duration::from_secs(2)),
            Duration::from_secs(1),
            "at least 1 s"
        );
        assert_eq!(
            requeue_after(Duration::from_millis(500), 1, minute),
            Duration::from_millis(500),
            "never later than the resync"
        );
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(600);
        assert_eq!(
            backoff_delay(1, base, max, None, 0.5),
            Duration::from_secs(10)
        );
        assert_eq!(
            backoff_delay(3, base, max, None, 0.5),
            Duration::from_secs(40)
        );
        assert_eq!(backoff_delay(30, base, max, None, 0.5), max);
        assert!(backoff_delay(1, base, max, None, 0.0) >= Duration::from_secs(8));
        assert!(backoff_delay(1, base, max, None, 1.0) <= Duration::from_secs(12));
        assert_eq!(
            backoff_delay(1, base, max, Some(Duration::from_secs(120)), 0.5),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn the_portals_retry_after_reaches_the_backoff_too() {
        use crate::remote::graph::GraphError;
        use crate::remote::portal::PortalError;
        let portal = ReconcileError::Reconcile(crate::reconcile::ReconcileError::Observe(
            ObserveError::Portal(PortalError::Throttled {
                operation: "GET /api/user page 1".into(),
                user: None,
                retry_after: Some(Duration::from_secs(42)),
            }),
        ));
        assert_eq!(portal.retry_after(), Some(Duration::from_secs(42)));
        let graph = ReconcileError::Reconcile(crate::reconcile::ReconcileError::Observe(
            ObserveError::Tenant(GraphError::Throttled {
                operation: "list the tenant's guests".into(),
                retry_after: Some(Duration::from_secs(7)),
                request_id: None,
            }),
        ));
        assert_eq!(graph.retry_after(), Some(Duration::from_secs(7)));
        let other = ReconcileError::Reconcile(crate::reconcile::ReconcileError::Observe(
            ObserveError::Portal(PortalError::Throttled {
                operation: "GET /api/user page 1".into(),
                user: None,
                retry_after: None,
            }),
        ));
        assert_eq!(other.retry_after(), None);
    }

    #[test]
    fn the_error_policy_backs_off_and_holds_for_either_services_retry_after() {
        use crate::remote::portal::PortalError;
        let settings = Settings {
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(600),
            ..Settings::default()
        };
        let throttled = |retry_after| {
            ReconcileError::Reconcile(crate::reconcile::ReconcileError::Observe(
                ObserveError::Portal(PortalError::Throttled {
                    operation: "GET /api/user page 1".into(),
                    user: None,
                    retry_after,
                }),
            ))
        };
        // A long Retry-After from the portal: the next reconcile waits for it, even on a trigger.
        let action = error_policy(
            &throttled(Some(Duration::from_secs(300))),
            1,
            &settings,
            0.5,
        );
        assert_eq!(action.requeue_after, Duration::from_secs(300));
        assert_eq!(action.not_before, Some(Duration::from_secs(300)));
        // Without one: plain exponential backoff, and a trigger may retry earlier.
        let action = error_policy(&throttled(None), 3, &settings, 0.5);
        assert_eq!(action, Action::requeue(Duration::from_secs(40)));
        // A refused plan backs off like any failure.
        let refused = ReconcileError::Refused("7 removals".into());
        assert_eq!(
            error_policy(&refused, 1, &settings, 0.5),
            Action::requeue(Duration::from_secs(10))
        );
    }

    /// Issue 10: "1 of 1 changes failed" read wrong.
    #[test]
    fn failed_changes_are_counted_with_their_noun() {
        let one = ReconcileError::ChangesFailed {
            failed: 1,
            total: 1,
            first: "invite a@b.example".into(),
        };
        assert_eq!(
            one.to_string(),
            "1 of 1 change failed (first: invite a@b.example)"
        );
        let two = ReconcileError::ChangesFailed {
            failed: 1,
            total: 2,
            first: "x".into(),
        };
        assert_eq!(two.to_string(), "1 of 2 changes failed (first: x)");
    }

    fn timers(now: Instant) -> Timers {
        Timers {
            next_poll: now + Duration::from_secs(300),
            next_resync: Some(now + Duration::from_secs(10)),
            retry_at: None,
            hold_until: None,
            next_ping: None,
            paused: false,
        }
    }

    #[test]
    fn while_failing_the_retry_replaces_the_resync() {
        let now = Instant::now();
        let mut t = timers(now);
        assert_eq!(t.wake(false), now + Duration::from_secs(10));
        t.retry_at = Some(now + Duration::from_secs(40));
        assert_eq!(
            t.wake(false),
            now + Duration::from_secs(40),
            "a resync must not retry before the backoff delay"
        );
    }

    #[test]
    fn a_suspended_loop_wakes_only_to_poll_and_ping() {
        let now = Instant::now();
        let mut t = timers(now);
        t.next_resync = Some(now);
        t.retry_at = Some(now + Duration::from_secs(1));
        t.hold_until = Some(now + Duration::from_secs(2));
        t.paused = true;
        assert_eq!(
            t.wake(true),
            now + Duration::from_secs(300),
            "an overdue resync must not spin a suspended loop"
        );
        t.next_ping = Some(now + Duration::from_secs(5));
        assert_eq!(t.wake(true), now + Duration::from_secs(5));
        t.paused = false;
        assert_eq!(t.wake(false), now + Duration::from_secs(1));
    }

    #[test]
    fn retry_after_only_delays_a_pending_reconcile() {
        let now = Instant::now();
        let mut t = timers(now);
        t.next_resync = None;
        t.retry_at = Some(now + Duration::from_secs(200));
        t.hold_until = Some(now + Duration::from_secs(120));
        assert_eq!(t.wake(false), now + Duration::from_secs(200));
        assert_eq!(t.wake(true), now + Duration::from_secs(120));
        t.next_ping = Some(now + Duration::from_secs(5));
        assert_eq!(t.wake(true), now + Duration::from_secs(5));
    }
}
