//! Executing a plan (design §7, §8; style §11, §12): change by change, recording every result in
//! `state.json` and `audit.jsonl`. Chooses nothing: what to do is the plan's business.
//!
//! - A refused plan writes nothing ([`ApplyError::Refused`]).
//! - Users run concurrently; one user's changes run in plan order, and after one of them fails
//!   the rest of that user's changes are skipped (the next reconcile retries them). One user's
//!   failure never stops the others.
//! - At most [`ApplyOptions::tenant_concurrency`] tenant changes and
//!   [`ApplyOptions::portal_concurrency`] portal changes are in flight at once.
//! - `register` is one `POST`: the plan comes from this reconcile's complete portal listing,
//!   so it neither looks the user up first nor reads it back (the portal's `POST` returns no
//!   id; the next listing tells it, [`crate::reconcile::plan::State::learn_portal_ids`]).
//!   `invite` is one `POST` too: the same reconcile's observation looked the address up (the
//!   directory picture, or a batched look-up of every address it does not hold). After an
//!   ambiguous failure (timeout, 5xx) both look again and never re-POST blindly.
//! - Crash safety: before an invitation or a registration its intent is journaled and
//!   fsync'd ([`journal`]); after every change an audit line and the user's record are
//!   appended (one journal line, O(1)), before that user's next change starts; the journal is
//!   compacted into `state.json` once, at the end. Whatever point a crash happens at, the next
//!   reconcile re-observes and converges without duplicates: an open intent is resolved by
//!   observation within `tenant.replicationGrace` (adopted when the guest is visible, sent
//!   once more after the grace), a registration by the portal listing (a `POST` answered
//!   "already exists" is adopted).
//! - Cancellation: once the token fires no new change starts; changes in flight finish and are
//!   recorded; the rest are reported as skipped.
//!
//! State-only changes (`adopt-guest`, `adopt-portal`, `release-guest`) write no remote system
//! but change what guestops owns, which an auditor cares about: they get an audit line too, with
//! system `state`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::error::chain;
use crate::reconcile::journal::{self, Entry};
use crate::reconcile::plan::{Action, Change, Plan, RefusalScope, System};
use crate::reconcile::state::{
    AuditRecord, AuditResult, StateError, StateStore, UserRecord, append_audit_line, write_snapshot,
};
use crate::remote::graph::{GraphError, Invitation, Tenant};
use crate::remote::portal::{NewPortalUser, Portal, PortalError};

/// Called once per finished change (done, failed or skipped), e.g. to draw a progress bar.
pub type Progress = Arc<dyn Fn(&ChangeOutcome) + Send + Sync>;

/// How to execute a plan.
#[derive(Clone)]
pub struct ApplyOptions {
    /// Tenant changes in flight at most (`tenant.concurrency`); `0` is treated as `1`.
    pub tenant_concurrency: usize,
    /// Portal changes in flight at most (`portal.concurrency`); `0` is treated as `1`.
    pub portal_concurrency: usize,
    /// The desired-state revision being applied, for the audit log.
    pub revision: Option<String>,
    /// Author of that revision (commit author), for the audit log.
    pub author: Option<String>,
    /// The clock used for timestamps in state and audit.
    pub clock: fn() -> DateTime<Utc>,
    /// Called once per finished change.
    pub progress: Option<Progress>,
}

impl Default for ApplyOptions {
    /// The defaults of the host configuration: 8 tenant and 2 portal changes in flight.
    fn default() -> Self {
        Self {
            tenant_concurrency: 8,
            portal_concurrency: 2,
            revision: None,
            author: None,
            clock: Utc::now,
            progress: None,
        }
    }
}

impl fmt::Debug for ApplyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplyOptions")
            .field("tenant_concurrency", &self.tenant_concurrency)
            .field("portal_concurrency", &self.portal_concurrency)
            .field("revision", &self.revision)
            .field("author", &self.author)
            .field("progress", &self.progress.is_some())
            .finish_non_exhaustive()
    }
}

/// What became of one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeResult {
    /// The change's goal is reached.
    Done {
        /// The remote request id (Graph `request-id`), when one was returned.
        request_id: Option<String>,
        /// Whether a remote write happened (`false`: state only, or re-observation found the
        /// work already done).
        remote_write: bool,
        /// What re-observation found, when it changed the course (e.g. "adopted").
        detail: Option<String>,
    },
    /// The change failed; the next reconcile retries it.
    Failed {
        /// What went wrong and what to do.
        error: String,
    },
    /// The change was not executed.
    Skipped {
        /// Why.
        why: String,
    },
}

/// One change and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeOutcome {
    /// The change from the plan.
    pub change: Change,
    /// What became of it.
    pub result: ChangeResult,
    /// The portal fields an `update-portal` lost (the read after its `PUT` found them
    /// changed, e.g. `groups`); empty otherwise. The change then failed.
    pub fields_lost: Vec<String>,
}

impl ChangeOutcome {
    /// Whether the change failed.
    pub fn is_failed(&self) -> bool {
        matches!(self.result, ChangeResult::Failed { .. })
    }

    /// `action user: detail`, e.g. `invite ana@partner.example: …` (a failure's line).
    pub fn line(&self) -> String {
        format!(
            "{} {}: {}",
            self.change.action.name(),
            self.change.email,
            self.detail()
        )
    }

    /// One line for people: the error, the reason for skipping, or what re-observation found.
    pub fn detail(&self) -> String {
        match &self.result {
            ChangeResult::Done { detail, .. } => detail.clone().unwrap_or_else(|| "done".into()),
            ChangeResult::Failed { error } => error.clone(),
            ChangeResult::Skipped { why } => why.clone(),
        }
    }
}

/// The outcome of every change of a plan, in plan order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// One per change of the plan, in plan order.
    pub outcomes: Vec<ChangeOutcome>,
}

impl ApplyReport {
    /// Changes whose goal is reached.
    pub fn succeeded(&self) -> usize {
        self.count(|r| matches!(r, ChangeResult::Done { .. }))
    }

    /// Changes that failed.
    pub fn failed(&self) -> usize {
        self.count(|r| matches!(r, ChangeResult::Failed { .. }))
    }

    /// Changes not executed (cancelled, or after a failure of the same user).
    pub fn skipped(&self) -> usize {
        self.count(|r| matches!(r, ChangeResult::Skipped { .. }))
    }

    /// Remote writes that took effect.
    pub fn writes(&self) -> usize {
        self.count(|r| {
            matches!(
                r,
                ChangeResult::Done {
                    remote_write: true,
                    ..
                }
            )
        })
    }

    /// Whether every change reached its goal.
    pub fn is_complete(&self) -> bool {
        self.succeeded() == self.outcomes.len()
    }

    fn count(&self, f: impl Fn(&ChangeResult) -> bool) -> usize {
        self.outcomes.iter().filter(|o| f(&o.result)).count()
    }
}

/// Why a plan could not be applied as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The plan has policy refusals: nothing was written.
    #[error(
        "the plan is refused by policy ({count} refusal(s), first: {first}); nothing was applied: fix users.yaml or the policy, or force the plan"
    )]
    Refused {
        /// Number of refusals.
        count: usize,
        /// The first refusal's message.
        first: String,
    },
    /// Progress could not be recorded: no further change was started.
    #[error("could not record progress in the state directory, so no further change was started")]
    State {
        /// The state error (its message says what to fix).
        #[source]
        source: StateError,
        /// What happened before and during the failure.
        report: ApplyReport,
    },
}

/// Executes `plan` against `tenant` and `portal`, recording progress in `store`.
///
/// Returns one [`ChangeOutcome`] per change, in plan order. Failed changes are reported, not
/// returned as errors: the error cases are a refused plan (nothing written) and a state
/// directory that cannot be written (nothing more started). `opts.revision` goes into the audit
/// lines; whether the revision is fully applied is [`crate::reconcile::run_once`]'s to record.
///
/// `cancel` stops the start of new changes; changes in flight finish and are recorded.
///
/// ```
/// use guestops::reconcile::apply::{apply, ApplyOptions};
/// use guestops::remote::graph::fake::FakeTenant;
/// use guestops::reconcile::plan::{Action, Change, Plan};
/// use guestops::remote::portal::fake::FakePortal;
/// use guestops::reconcile::state::StateStore;
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let mut store = StateStore::open(dir.path())?;
/// let plan = Plan {
///     generated_at: chrono::Utc::now(),
///     desired_users: 1,
///     in_sync: 0,
///     changes: vec![Change {
///         key: "ana@partner.example".into(),
///         email: "Ana@partner.example".into(),
///         action: Action::Invite { display_name: "Ana".into(), send_email: true, message: None },
///         reason: None,
///     }],
///     refused_changes: vec![],
///     refusals: vec![],
///     notices: vec![],
/// };
/// let (tenant, portal) = (FakeTenant::new(), FakePortal::new());
/// let opts = ApplyOptions::default();
/// let report = apply(&plan, &tenant, &portal, &mut store, &opts, &CancellationToken::new()).await?;
/// assert_eq!(report.writes(), 1);
/// assert!(store.state().users["ana@partner.example"].guest_owned);
/// # Ok(())
/// # }
/// ```
pub async fn apply<T: Tenant, P: Portal>(
    plan: &Plan,
    tenant: &T,
    portal: &P,
    store: &mut StateStore,
    opts: &ApplyOptions,
    cancel: &CancellationToken,
) -> Result<ApplyReport, ApplyError> {
    if plan.is_refused() {
        let plan_wide = plan
            .refusals
            .iter()
            .filter(|r| r.scope == RefusalScope::Plan);
        return Err(ApplyError::Refused {
            count: plan_wide.clone().count(),
            first: plan_wide
                .map(|r| r.message.clone())
                .next()
                .unwrap_or_default(),
        });
    }

    // Changes grouped by user, each group in plan order.
    let mut groups: BTreeMap<&str, Vec<(usize, &Change)>> = BTreeMap::new();
    for (i, change) in plan.changes.iter().enumerate() {
        groups.entry(&change.key).or_default().push((i, change));
    }

    let executor = Executor {
        tenant,
        portal,
        tenant_slots: Semaphore::new(opts.tenant_concurrency.max(1)),
        portal_slots: Semaphore::new(opts.portal_concurrency.max(1)),
        opts,
        cancel,
        stop: cancel.child_token(),
        recorder: Recorder::new(store, opts.revision.clone()),
    };
    let per_user =
        futures::future::join_all(groups.into_values().map(|items| executor.run_user(items))).await;

    let mut outcomes: Vec<Option<ChangeOutcome>> = vec![None; plan.changes.len()];
    for (i, outcome) in per_user.into_iter().flatten() {
        outcomes[i] = Some(outcome);
    }
    let report = ApplyReport {
        outcomes: outcomes.into_iter().flatten().collect(),
    };

    let Executor { recorder, .. } = executor;
    if let Some(source) = recorder.take_error() {
        return Err(ApplyError::State { source, report });
    }
    if let Err(source) = recorder.flush().await {
        return Err(ApplyError::State { source, report });
    }
    Ok(report)
}

/// `guestops apply --format json`: one document, the plan (`docs/plan-json.md`) with an
/// `applied` member holding the result of every change (`null` when nothing was applied: a
/// dry run, a plan refused as a whole, or nothing to do).
pub fn write_json(
    plan: &Plan,
    revision: Option<&crate::reconcile::plan::PlanRevision>,
    report: Option<&ApplyReport>,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    #[derive(serde::Serialize)]
    struct Document<'a> {
        #[serde(flatten)]
        plan: crate::reconcile::plan::JsonPlan<'a>,
        applied: Option<Applied<'a>>,
    }
    #[derive(serde::Serialize)]
    struct Applied<'a> {
        done: usize,
        failed: usize,
        skipped: usize,
        results: Vec<JsonResult<'a>>,
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct JsonResult<'a> {
        user: &'a str,
        key: &'a str,
        system: System,
        action: &'static str,
        result: &'static str,
        remote_write: bool,
        request_id: Option<&'a str>,
        detail: Option<String>,
    }
    let applied = report.map(|report| Applied {
        done: report.succeeded(),
        failed: report.failed(),
        skipped: report.skipped(),
        results: report
            .outcomes
            .iter()
            .map(|o| {
                let (result, remote_write, request_id, detail) = match &o.result {
                    ChangeResult::Done {
                        request_id,
                        remote_write,
                        detail,
                    } => ("done", *remote_write, request_id.as_deref(), detail.clone()),
                    ChangeResult::Failed { error } => ("failed", false, None, Some(error.clone())),
                    ChangeResult::Skipped { why } => ("skipped", false, None, Some(why.clone())),
                };
                JsonResult {
                    user: &o.change.email,
                    key: &o.change.key,
                    system: o.change.action.system(),
                    action: o.change.action.name(),
                    result,
                    remote_write,
                    request_id,
                    detail,
                }
            })
            .collect(),
    });
    let document = Document {
        plan: crate::reconcile::plan::json_document(plan, revision),
        applied,
    };
    serde_json::to_writer_pretty(&mut *out, &document).map_err(std::io::Error::other)?;
    out.write_all(b"\n")
}

/// One apply run: the clients, the concurrency bounds and the recorder.
struct Executor<'a, T, P> {
    tenant: &'a T,
    portal: &'a P,
    tenant_slots: Semaphore,
    portal_slots: Semaphore,
    opts: &'a ApplyOptions,
    /// The caller's token.
    cancel: &'a CancellationToken,
    /// Fires with `cancel`, or when the state cannot be saved.
    stop: CancellationToken,
    recorder: Recorder<'a>,
}

/// What executing one change produced, before it is recorded.
struct Step {
    result: ChangeResult,
    effect: Effect,
    audit: Option<(AuditResult, Option<String>, Option<String>)>,
    /// Portal fields an update lost.
    fields_lost: Vec<String>,
}

impl Step {
    fn done(effect: Effect, request_id: Option<String>, remote_write: bool) -> Self {
        let audit_result = if remote_write {
            AuditResult::Ok
        } else {
            AuditResult::Skipped
        };
        Self {
            result: ChangeResult::Done {
                request_id: request_id.clone(),
                remote_write,
                detail: None,
            },
            effect,
            audit: Some((audit_result, None, request_id)),
            fields_lost: Vec::new(),
        }
    }

    /// A change that only touched guestops' state.
    fn state_only(effect: Effect) -> Self {
        let mut step = Self::done(effect, None, false);
        step.audit = Some((AuditResult::Ok, None, None));
        step
    }

    fn with_detail(mut self, detail: String) -> Self {
        if let ChangeResult::Done { detail: d, .. } = &mut self.result {
            *d = Some(detail.clone());
        }
        if let Some((_, d, _)) = &mut self.audit {
            *d = Some(detail);
        }
        self
    }

    fn failed(error: String, request_id: Option<String>, effect: Effect) -> Self {
        Self {
            result: ChangeResult::Failed {
                error: error.clone(),
            },
            effect,
            audit: Some((AuditResult::Error, Some(error), request_id)),
            fields_lost: Vec::new(),
        }
    }

    fn skipped(why: String) -> Self {
        Self {
            result: ChangeResult::Skipped { why: why.clone() },
            effect: Effect::None,
            audit: Some((AuditResult::Skipped, Some(why), None)),
            fields_lost: Vec::new(),
        }
    }
}

/// How a change modifies the user's record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
    /// Nothing to record.
    None,
    /// guestops owns this guest; `invited` when guestops posted the invitation.
    GuestOwned { guest_id: String, invited: bool },
    /// An invitation was re-sent.
    Resent { guest_id: String },
    /// guestops owns this portal user (id when known).
    PortalOwned { portal_id: Option<String> },
    /// The portal user was updated (ownership unchanged).
    PortalUpdated { portal_id: String },
    /// The portal registration is gone.
    PortalGone,
    /// guestops no longer owns the guest; `gone` when it was deleted.
    GuestReleased { gone: bool },
    /// guestops disabled the guest at a removal and no longer owns it (it enables it again
    /// if the user is granted again: [`UserRecord::guest_disabled`]).
    GuestDisabled,
    /// A removal failed: remember since when it is pending.
    RemovalFailed,
    /// An invitation may have been made (ambiguous error, no guest visible yet).
    InvitationUnconfirmed,
    /// A registration may have been made (ambiguous error, the user not visible afterwards).
    RegistrationUnconfirmed,
    /// A re-sent invitation may have been sent (ambiguous error): its intent stays open.
    ResendUnconfirmed,
    /// The write announced by an intent certainly did not happen (a definitive error).
    IntentVoid(Intent),
}

/// A write whose intent is journaled before it is sent (design §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    /// `POST /invitations`.
    Invite,
    /// `POST /api/user`.
    Register,
    /// `POST /invitations` re-sending a pending invitation (at most once: an open intent
    /// counts as sent, [`UserRecord::resend_unconfirmed_at`]).
    Resend,
}

impl Intent {
    fn of(action: &Action) -> Option<Intent> {
        match action {
            Action::Invite { .. } => Some(Intent::Invite),
            Action::Register { .. } => Some(Intent::Register),
            Action::ResendInvitation { .. } => Some(Intent::Resend),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Intent::Invite => "invite",
            Intent::Register => "register",
            Intent::Resend => "resend-invitation",
        }
    }

    /// Marks the intent open in `record` since `now`.
    fn open(self, record: &mut UserRecord, now: DateTime<Utc>) {
        match self {
            Intent::Invite => record.invitation_unconfirmed_at = Some(now),
            Intent::Register => record.registration_unconfirmed_at = Some(now),
            Intent::Resend => record.resend_unconfirmed_at = Some(now),
        }
    }
}

impl<'a, T: Tenant, P: Portal> Executor<'a, T, P> {
    /// Runs one user's changes in order; returns `(plan index, outcome)` pairs.
    async fn run_user(&self, items: Vec<(usize, &Change)>) -> Vec<(usize, ChangeOutcome)> {
        let mut out = Vec::with_capacity(items.len());
        let mut failed = false;
        for (i, change) in items {
            let result = if failed {
                let why = "an earlier change for this user failed; the next reconcile retries";
                (
                    ChangeResult::Skipped {
                        why: why.to_owned(),
                    },
                    Vec::new(),
                )
            } else {
                self.run_change(change).await
            };
            let (result, fields_lost) = result;
            failed |= matches!(result, ChangeResult::Failed { .. });
            let outcome = ChangeOutcome {
                change: change.clone(),
                result,
                fields_lost,
            };
            if let Some(progress) = &self.opts.progress {
                progress(&outcome);
            }
            out.push((i, outcome));
        }
        out
    }

    fn stopped_why(&self) -> String {
        if self.cancel.is_cancelled() {
            "apply was cancelled before this change started".to_owned()
        } else {
            "the state could not be saved, so no further change was started".to_owned()
        }
    }

    /// Waits for a slot of `system` (none for state-only changes), executes the change and
    /// records it while still holding the slot. Returns the result and the portal fields the
    /// change lost.
    async fn run_change(&self, change: &Change) -> (ChangeResult, Vec<String>) {
        let slots = match change.action.system() {
            System::Tenant => Some(&self.tenant_slots),
            System::Portal => Some(&self.portal_slots),
            System::State => None,
        };
        let _permit: Option<SemaphorePermit<'_>> = match slots {
            Some(slots) => tokio::select! {
                biased;
                () = self.stop.cancelled() => None,
                permit = slots.acquire() => permit.ok(),
            },
            None => None,
        };
        if self.stop.is_cancelled() {
            let why = self.stopped_why();
            return (ChangeResult::Skipped { why }, Vec::new());
        }

        // Write-ahead intent (invitation, registration): journaled and fsync'd before the
        // request leaves, so a crash after it is resolved by observation, never repeated
        // blindly (design §8).
        let intent = Intent::of(&change.action);
        if let Some(intent) = intent {
            let now = (self.opts.clock)();
            if let Err(err) = self.recorder.intent(change, intent, now).await {
                tracing::error!(user = %change.email, error = %err, "could not record an intent; the change was not started");
                self.stop.cancel();
                return (
                    ChangeResult::Failed {
                        error: format!(
                            "the intent could not be recorded, so the request was not sent: {}",
                            chain(&err)
                        ),
                    },
                    Vec::new(),
                );
            }
        }
        journal::failpoint(&format!("before-{}", change.action.name()));
        let mut step = self.execute(change).await;
        journal::failpoint(&format!("after-{}", change.action.name()));
        if let (Some(intent), Effect::None) = (intent, &step.effect) {
            // A definitive answer: nothing happened, the intent is void.
            step.effect = Effect::IntentVoid(intent);
        }
        // One line per change, at the daemon's default level.
        let (action, user) = (change.action.name(), change.email.as_str());
        match &step.result {
            ChangeResult::Done { detail, .. } => tracing::info!(
                user,
                action,
                result = "done",
                "{action} {user}: done{}",
                detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
            ChangeResult::Failed { error } => {
                tracing::warn!(
                    user,
                    action,
                    result = "failed",
                    "{action} {user} failed: {error}"
                )
            }
            ChangeResult::Skipped { why } => {
                tracing::info!(
                    user,
                    action,
                    result = "skipped",
                    "{action} {user} skipped: {why}"
                )
            }
        }

        let now = (self.opts.clock)();
        let audit = step.audit.map(|(result, detail, request_id)| AuditRecord {
            time: now,
            revision: self.opts.revision.clone(),
            author: self.opts.author.clone(),
            action: change.action.name().to_owned(),
            system: change.action.system(),
            user: change.email.clone(),
            result,
            detail,
            request_id,
        });
        if let Err(err) = self.recorder.record(change, step.effect, audit, now).await {
            tracing::error!(user = %change.email, error = %err, "could not record a change");
            self.stop.cancel();
        }
        (step.result, step.fields_lost)
    }

    /// Executes one change against the remote systems.
    async fn execute(&self, change: &Change) -> Step {
        let email = change.email.as_str();
        match &change.action {
            Action::AdoptGuest { guest_id } => Step::state_only(Effect::GuestOwned {
                guest_id: guest_id.clone(),
                invited: false,
            }),
            Action::AdoptPortal { portal_id } => Step::state_only(Effect::PortalOwned {
                portal_id: Some(portal_id.clone()),
            }),
            Action::ReleaseGuest { .. } => Step::state_only(Effect::GuestReleased { gone: false }),
            Action::RestoreGuest { guest_id } => self.restore(email, guest_id).await,
            Action::EnableGuest { guest_id } => {
                match self.tenant.set_account_enabled(guest_id, true).await {
                    Ok(()) => Step::done(
                        Effect::GuestOwned {
                            guest_id: guest_id.clone(),
                            invited: false,
                        },
                        None,
                        true,
                    ),
                    Err(err) => Step::failed(
                        chain(&err),
                        err.request_id().map(str::to_owned),
                        Effect::None,
                    ),
                }
            }
            Action::Invite {
                display_name,
                send_email,
                message,
            } => {
                let invitation = Invitation {
                    email: email.to_owned(),
                    display_name: display_name.clone(),
                    send_email: *send_email,
                    message: message.clone(),
                };
                self.invite(&invitation).await
            }
            Action::ResendInvitation {
                guest_id,
                display_name,
                message,
                ..
            } => {
                let invitation = Invitation {
                    email: email.to_owned(),
                    display_name: display_name.clone(),
                    send_email: true,
                    message: message.clone(),
                };
                self.resend(guest_id, &invitation).await
            }
            Action::Register { name, role } => {
                let user = NewPortalUser {
                    email: email.to_owned(),
                    name: name.clone(),
                    role: *role,
                };
                self.register(&user).await
            }
            Action::UpdatePortal {
                portal_id,
                to_name,
                to_role,
                ..
            } => {
                let updated = Effect::PortalUpdated {
                    portal_id: portal_id.clone(),
                };
                match self.portal.update_user(email, to_name, *to_role).await {
                    Ok(()) => Step::done(updated, None, true),
                    // The PUT took effect, but fields it was sent back were lost (or could not
                    // be checked): the change fails, loudly, and its audit line says what.
                    Err(err) => {
                        let lost: Vec<String> = match &err {
                            PortalError::FieldsLost { fields, .. } => {
                                fields.iter().map(|f| f.field.clone()).collect()
                            }
                            _ => Vec::new(),
                        };
                        let wrote = matches!(
                            err,
                            PortalError::FieldsLost { .. } | PortalError::Unverified { .. }
                        );
                        if !lost.is_empty() {
                            tracing::error!(user = email, fields = ?lost, "{err}");
                        }
                        let effect = if wrote { updated } else { Effect::None };
                        let mut step = Step::failed(chain(&err), None, effect);
                        step.fields_lost = lost;
                        step
                    }
                }
            }
            Action::Unregister { .. } => match self.portal.delete_user(email).await {
                Ok(true) => Step::done(Effect::PortalGone, None, true),
                Ok(false) => Step::done(Effect::PortalGone, None, false)
                    .with_detail("the portal user was already gone".to_owned()),
                Err(err) => Step::failed(chain(&err), None, Effect::RemovalFailed),
            },
            Action::DisableGuest { guest_id } => {
                match self.tenant.set_account_enabled(guest_id, false).await {
                    Ok(()) => Step::done(Effect::GuestDisabled, None, true),
                    Err(err) => Step::failed(
                        chain(&err),
                        err.request_id().map(str::to_owned),
                        Effect::RemovalFailed,
                    ),
                }
            }
            Action::DeleteGuest { guest_id } => match self.tenant.delete_user(guest_id).await {
                Ok(true) => Step::done(Effect::GuestReleased { gone: true }, None, true),
                Ok(false) => Step::done(Effect::GuestReleased { gone: true }, None, false)
                    .with_detail("the guest was already gone".to_owned()),
                Err(err) => Step::failed(
                    chain(&err),
                    err.request_id().map(str::to_owned),
                    Effect::RemovalFailed,
                ),
            },
        }
    }

    /// `POST /directory/deletedItems/{id}/restore` of the soft-deleted guest holding the
    /// address, then guestops owns it like an adopted guest (no invitation, no email). Not
    /// retried: after any failure the next reconcile observes where the guest is (restored:
    /// adopted; still deleted: restored again). A `403` is the missing permission: the failure
    /// says how to fix it, for this user only.
    async fn restore(&self, email: &str, guest_id: &str) -> Step {
        match self.tenant.restore_user(guest_id).await {
            Ok(restored) => Step::done(
                Effect::GuestOwned {
                    guest_id: restored.user_id,
                    invited: false,
                },
                restored.request_id,
                true,
            )
            .with_detail("restored from deleted items".to_owned()),
            Err(err) if err.status() == Some(403) => Step::failed(
                format!(
                    "{email} is held by the soft-deleted guest {guest_id}, which cannot be invited again, and guestops may not restore it ({err}); grant the application permission User.DeleteRestore.All (with admin consent) so that guestops restores it, or restore it yourself in the Entra admin center (Users > Deleted users), or delete it permanently so that the address can be invited",
                    err = chain(&err)
                ),
                err.request_id().map(str::to_owned),
                Effect::None,
            ),
            Err(err) => Step::failed(
                format!(
                    "could not restore the soft-deleted guest {guest_id} of {email}: {err}",
                    err = chain(&err)
                ),
                err.request_id().map(str::to_owned),
                Effect::None,
            ),
        }
    }

    /// One `POST /invitations`: this reconcile's observation already looked the address up
    /// (it is in neither the directory picture nor a batched lookup), as Microsoft's guidance
    /// asks. After an ambiguous failure the address is looked up instead of posting again.
    async fn invite(&self, invitation: &Invitation) -> Step {
        let email = invitation.email.as_str();
        match self.tenant.invite(invitation).await {
            Ok(invited) => Step::done(
                Effect::GuestOwned {
                    guest_id: invited.user_id,
                    invited: true,
                },
                invited.request_id,
                true,
            ),
            Err(err) if err.is_ambiguous() => {
                let request_id = err.request_id().map(str::to_owned);
                match self.tenant.find_by_email(email).await {
                    Ok(found) => match found.iter().find(|u| u.is_guest()) {
                        Some(guest) => Step::done(
                            Effect::GuestOwned {
                                guest_id: guest.id.clone(),
                                invited: true,
                            },
                            request_id,
                            true,
                        )
                        .with_detail(format!(
                            "the invitation answered an error ({err}) but the guest exists: recorded as invited"
                        , err = chain(&err))),
                        None => Step::failed(
                            format!(
                                "the invitation of {email} may or may not have happened ({err}) and no guest is visible yet; it was not re-sent, the next reconcile looks again"
                            , err = chain(&err)),
                            request_id,
                            Effect::InvitationUnconfirmed,
                        ),
                    },
                    Err(lookup) => Step::failed(
                        format!(
                            "the invitation of {email} may or may not have happened ({err}) and the look-up afterwards failed ({lookup}); it was not re-sent, the next reconcile looks again"
                        , err = chain(&err), lookup = chain(&lookup)),
                        request_id,
                        Effect::InvitationUnconfirmed,
                    ),
                }
            }
            Err(err) => Step::failed(
                format!(
                    "could not invite {email}: {}{}",
                    chain(&err),
                    invite_hint(&err)
                ),
                err.request_id().map(str::to_owned),
                Effect::None,
            ),
        }
    }

    /// Re-sends a pending invitation, unless it was accepted meanwhile.
    async fn resend(&self, guest_id: &str, invitation: &Invitation) -> Step {
        let email = invitation.email.as_str();
        match self.tenant.get_user(guest_id).await {
            Ok(Some(user)) if !user.is_pending() => {
                return Step::skipped(format!(
                    "the guest {guest_id} is no longer pending acceptance; no invitation re-sent"
                ));
            }
            // Not visible (replication) or still pending: re-sending is what is wanted; Graph
            // answers an existing address with the existing guest.
            Ok(_) => {}
            Err(err) => {
                return Step::failed(
                    format!(
                        "could not read guest {guest_id} before re-sending the invitation of {email}: {err}",
                        err = chain(&err)
                    ),
                    err.request_id().map(str::to_owned),
                    Effect::None,
                );
            }
        }
        match self.tenant.invite(invitation).await {
            Ok(invited) => Step::done(
                Effect::Resent {
                    guest_id: invited.user_id,
                },
                invited.request_id,
                true,
            ),
            Err(err) => Step::failed(
                format!(
                    "could not re-send the invitation of {email}{}: {}",
                    if err.is_ambiguous() {
                        " (it may have been sent; not repeated)"
                    } else {
                        ""
                    },
                    chain(&err)
                ),
                err.request_id().map(str::to_owned),
                if err.is_ambiguous() {
                    Effect::ResendUnconfirmed
                } else {
                    Effect::None
                },
            ),
        }
    }

    /// Re-observes, then registers; after an ambiguous failure looks again.
    /// One `POST`: this reconcile's complete portal listing showed the address missing. The
    /// portal's `POST` returns no id; the next listing tells it. After an ambiguous answer the
    /// user is looked up instead of posting again.
    async fn register(&self, user: &NewPortalUser) -> Step {
        let email = user.email.as_str();
        match self.portal.create_user(user).await {
            Ok(()) => Step::done(Effect::PortalOwned { portal_id: None }, None, true),
            Err(err) if err.is_ambiguous() => match self.portal.find_user(email).await {
                Ok(Some(found)) => Step::done(
                    Effect::PortalOwned {
                        portal_id: Some(found.id),
                    },
                    None,
                    true,
                )
                .with_detail(format!(
                    "the registration answered an error ({err}) but the user exists: recorded as registered"
                , err = chain(&err))),
                Ok(None) => Step::failed(
                    format!("the registration of {email} may or may not have happened ({err}) and the user is not visible; it was not repeated, the next reconcile looks again", err = chain(&err)),
                    None,
                    Effect::RegistrationUnconfirmed,
                ),
                Err(lookup) => Step::failed(
                    format!("the registration of {email} may or may not have happened ({err}) and the look-up afterwards failed ({lookup}); it was not repeated, the next reconcile looks again", err = chain(&err), lookup = chain(&lookup)),
                    None,
                    Effect::RegistrationUnconfirmed,
                ),
            },
            // The portal already holds the address (a registration of a crashed run, or one
            // the listing did not show yet): registered, adopted after a re-read.
            Err(err) if already_exists(&err) => {
                let found = self.portal.find_user(email).await;
                let portal_id = found.as_ref().ok().and_then(|f| f.as_ref()).map(|f| f.id.clone());
                let detail = match (&found, &portal_id) {
                    (_, Some(id)) => format!("the portal answered that {email} exists already ({err}): adopted as registered (portal id {id})", err = chain(&err)),
                    (Ok(_), None) => format!("the portal answered that {email} exists already ({err}) but a re-read does not show it yet: recorded as registered, the next listing tells its id", err = chain(&err)),
                    (Err(lookup), None) => format!("the portal answered that {email} exists already ({err}); the re-read failed ({lookup}): recorded as registered, the next listing tells its id", err = chain(&err), lookup = chain(lookup)),
                };
                Step::done(Effect::PortalOwned { portal_id }, None, false).with_detail(detail)
            }
            Err(err) => Step::failed(format!("could not register {email}: {err}", err = chain(&err)), None, Effect::None),
        }
    }
}

/// Whether the portal refused a `POST /api/user` because the address is registered already
/// (the simulator answers 400 "already exists"; the real status is unknown, 409 is accepted
/// too: `docs/specs/power-embedded.md`).
fn already_exists(err: &crate::remote::portal::PortalError) -> bool {
    matches!(err.status(), Some(400 | 409)) && {
        let message = chain(err).to_lowercase();
        message.contains("already") || message.contains("exists")
    }
}

/// What to do about an invitation Graph refused, when the refusal is a known case.
fn invite_hint(err: &GraphError) -> &'static str {
    let message = chain(err).to_lowercase();
    if err.status() == Some(400) && message.contains("already exist") {
        // No visible account holds the address (it was looked up first): a soft-deleted one does.
        " — a deleted account still holds this address (deleted users are kept 30 days): \
         restore it (Entra admin center → Users → Deleted users) to keep its history, or delete \
         it permanently; the next reconcile then adopts or invites it"
    } else {
        ""
    }
}

/// Applies `effect` to the record of `change`'s user at `now`; drops a record left vacant.
fn apply_effect(
    users: &mut BTreeMap<String, UserRecord>,
    change: &Change,
    effect: Effect,
    now: DateTime<Utc>,
) -> bool {
    if effect == Effect::None {
        return false;
    }
    let record = users
        .entry(change.key.clone())
        .or_insert_with(|| UserRecord {
            email: change.email.clone(),
            ..UserRecord::default()
        });
    record.email.clone_from(&change.email);
    record.last_change = Some(now);
    match effect {
        Effect::None => {}
        Effect::GuestOwned { guest_id, invited } => {
            // An adopted guest while an invitation intent was open: guestops' own invitation,
            // resolved by observation.
            let intended = record.invitation_unconfirmed_at.filter(|_| !invited);
            // Another guest than the one recorded: its invitation history is not ours
            // (the plan's resend and replication rules read these fields).
            if record.guest_id.as_deref() != Some(guest_id.as_str()) && !invited {
                record.invited_at = None;
                record.last_invitation_at = None;
                record.resend_count = 0;
            }
            if record.guest_id.as_deref() != Some(guest_id.as_str()) {
                // A new invitation is not visible yet; an adopted guest was just read.
                record.guest_seen = !invited;
            } else if !invited {
                record.guest_seen = true;
            }
            record.guest_id = Some(guest_id);
            record.guest_owned = true;
            record.guest_disabled = false;
            record.invitation_unconfirmed_at = None;
            if invited {
                record.invited_at.get_or_insert(now);
                record.last_invitation_at = Some(now);
            } else if let Some(at) = intended {
                record.invited_at.get_or_insert(at);
                record.last_invitation_at.get_or_insert(at);
            }
        }
        Effect::Resent { guest_id } => {
            // guestops posted an invitation for this guest: it owns it (as after `invite`).
            record.guest_id = Some(guest_id);
            record.guest_owned = true;
            record.resend_count += 1;
            record.last_invitation_at = Some(now);
            record.resend_unconfirmed_at = None;
        }
        Effect::PortalOwned { portal_id } => {
            if portal_id.is_some() {
                record.portal_id = portal_id;
            }
            record.portal_owned = true;
            record.registration_unconfirmed_at = None;
        }
        Effect::PortalUpdated { portal_id } => {
            record.portal_id.get_or_insert(portal_id);
        }
        Effect::PortalGone => {
            record.portal_owned = false;
            record.portal_id = None;
        }
        Effect::GuestReleased { gone } => {
            record.guest_owned = false;
            record.guest_disabled = false;
            if gone {
                record.guest_id = None;
            }
        }
        Effect::GuestDisabled => {
            record.guest_owned = false;
            record.guest_disabled = true;
        }
        Effect::RemovalFailed => {
            record.removal_pending_since.get_or_insert(now);
        }
        Effect::InvitationUnconfirmed => {
            record.invitation_unconfirmed_at = Some(now);
        }
        Effect::RegistrationUnconfirmed => {
            record.registration_unconfirmed_at = Some(now);
        }
        Effect::IntentVoid(Intent::Invite) => record.invitation_unconfirmed_at = None,
        Effect::IntentVoid(Intent::Register) => record.registration_unconfirmed_at = None,
        Effect::IntentVoid(Intent::Resend) => record.resend_unconfirmed_at = None,
        // The reminder may have been sent: the intent stays, counted as sent.
        Effect::ResendUnconfirmed => {}
    }
    if !record.guest_owned && !record.portal_owned {
        // Nothing owned is left: no removal can be pending.
        record.removal_pending_since = None;
    }
    if record.is_vacant() {
        users.remove(&change.key);
    }
    true
}

/// Records how and when ownership was taken ([`UserRecord::guest_acquired`],
/// [`UserRecord::portal_acquired`]) when `change` made guestops own the guest or the portal
/// user it did not own before (`before`: the record before the change).
fn note_acquired(
    before: Option<&UserRecord>,
    record: &mut UserRecord,
    change: &Change,
    revision: Option<String>,
    now: DateTime<Utc>,
) {
    use crate::reconcile::plan::owned::{Acquired, Acquisition};
    let acquired = |how| Acquired {
        how,
        at: now,
        revision: revision.clone(),
    };
    let guest_before = before.filter(|b| b.guest_owned).map(|b| b.guest_id.clone());
    if record.guest_owned && guest_before.as_ref() != Some(&record.guest_id) {
        // An adoption that resolves guestops' own open invitation is that invitation.
        let intended = before.is_some_and(|b| b.invitation_unconfirmed_at.is_some());
        let how = match &change.action {
            Action::Invite { .. } | Action::ResendInvitation { .. } => Acquisition::Invited,
            Action::RestoreGuest { .. } => Acquisition::Restored,
            Action::EnableGuest { .. } => Acquisition::Enabled,
            _ if intended => Acquisition::Invited,
            _ => Acquisition::Adopted,
        };
        record.guest_acquired = Some(acquired(how));
    } else if !record.guest_owned {
        record.guest_acquired = None;
    }
    let portal_before = before.is_some_and(|b| b.portal_owned);
    if record.portal_owned && !portal_before {
        let intended = before.is_some_and(|b| b.registration_unconfirmed_at.is_some());
        let how = match &change.action {
            Action::Register { .. } => Acquisition::Registered,
            _ if intended => Acquisition::Registered,
            _ => Acquisition::Adopted,
        };
        record.portal_acquired = Some(acquired(how));
    } else if !record.portal_owned {
        record.portal_acquired = None;
    }
}

/// Serializes state changes and disk writes of concurrent users.
///
/// Each change is one journal line (the user's record after it, [`journal`]): O(1) per change
/// however many users the state holds. [`Recorder::flush`] compacts the journal into
/// `state.json` once, at the end of the apply.
struct Recorder<'s> {
    inner: Mutex<RecorderInner<'s>>,
    /// Held while writing to disk.
    io: tokio::sync::Mutex<()>,
}

struct RecorderInner<'s> {
    store: &'s mut StateStore,
    /// The revision being applied, recorded with each ownership taken.
    revision: Option<String>,
    /// Whether the journal holds lines `state.json` does not.
    journaled: bool,
    /// The first save failure.
    error: Option<StateError>,
}

impl<'s> Recorder<'s> {
    fn new(store: &'s mut StateStore, revision: Option<String>) -> Self {
        Self {
            inner: Mutex::new(RecorderInner {
                store,
                revision,
                journaled: false,
                error: None,
            }),
            io: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RecorderInner<'s>> {
        // Poisoning only follows a panic elsewhere; the state itself is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Journals the intent of `change` (its record with the intent open since `now`) and
    /// fsyncs it; the request may be sent once this returns `Ok`.
    async fn intent(
        &self,
        change: &Change,
        intent: Intent,
        now: DateTime<Utc>,
    ) -> Result<(), StateError> {
        let entry = {
            let mut inner = self.lock();
            let users = &mut inner.store.state_mut().users;
            let record = users
                .entry(change.key.clone())
                .or_insert_with(|| UserRecord {
                    email: change.email.clone(),
                    ..UserRecord::default()
                });
            intent.open(record, now);
            Entry {
                key: change.key.clone(),
                intent: Some(intent.name().to_owned()),
                record: Some(record.clone()),
            }
        };
        self.remember(self.write(None, Some(entry)).await)
    }

    /// Records `effect` and appends `audit`, then journals the user's record.
    async fn record(
        &self,
        change: &Change,
        effect: Effect,
        audit: Option<AuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<(), StateError> {
        let entry = {
            let mut inner = self.lock();
            let revision = inner.revision.clone();
            let users = &mut inner.store.state_mut().users;
            let before = users.get(&change.key).cloned();
            let changed = apply_effect(users, change, effect, now);
            if changed && let Some(record) = users.get_mut(&change.key) {
                note_acquired(before.as_ref(), record, change, revision, now);
            }
            changed.then(|| Entry {
                key: change.key.clone(),
                intent: None,
                record: users.get(&change.key).cloned(),
            })
        };
        self.remember(self.write(audit, entry).await)
    }

    /// Keeps the first failure for the final report.
    fn remember(&self, result: Result<(), StateError>) -> Result<(), StateError> {
        if let Err(err) = &result {
            let mut inner = self.lock();
            if inner.error.is_none() {
                inner.error = Some(clone_error(err));
            }
        }
        result
    }

    /// Appends `audit` (if any), then `entry` (if any) to the journal, each fsync'd.
    async fn write(
        &self,
        audit: Option<AuditRecord>,
        entry: Option<Entry>,
    ) -> Result<(), StateError> {
        let _io = self.io.lock().await;
        if let Some(record) = audit {
            let (dir, file) = {
                let mut inner = self.lock();
                (inner.store.dir().to_path_buf(), inner.store.audit_handle()?)
            };
            blocking(dir, move |dir| append_audit_line(dir, &file, &record)).await?;
        }
        if let Some(entry) = entry {
            let (dir, file) = {
                let mut inner = self.lock();
                inner.journaled = true;
                (
                    inner.store.dir().to_path_buf(),
                    inner.store.journal_handle()?,
                )
            };
            blocking(dir, move |dir| journal::append(dir, &file, &entry)).await?;
        }
        Ok(())
    }

    /// Compacts: writes the whole state to `state.json` and empties the journal, if the
    /// journal holds anything.
    async fn flush(&self) -> Result<(), StateError> {
        let _io = self.io.lock().await;
        let (dir, bytes, file) = {
            let mut inner = self.lock();
            if !inner.journaled {
                return Ok(());
            }
            (
                inner.store.dir().to_path_buf(),
                inner.store.snapshot()?,
                inner.store.journal_handle()?,
            )
        };
        blocking(dir, move |dir| {
            write_snapshot(dir, &bytes)?;
            journal::truncate(dir, &file)
        })
        .await?;
        self.lock().journaled = false;
        Ok(())
    }

    fn take_error(&self) -> Option<StateError> {
        self.lock().error.take()
    }
}

/// Runs a blocking file operation off the async worker threads.
async fn blocking(
    dir: PathBuf,
    f: impl FnOnce(&Path) -> Result<(), StateError> + Send + 'static,
) -> Result<(), StateError> {
    let path = dir.clone();
    match tokio::task::spawn_blocking(move || f(&dir)).await {
        Ok(result) => result,
        Err(join) => Err(StateError::Write {
            path,
            source: std::io::Error::other(join.to_string()),
        }),
    }
}

/// A copy of a state error for the final report (I/O errors are not `Clone`).
fn clone_error(err: &StateError) -> StateError {
    StateError::Write {
        path: match err {
            StateError::Write { path, .. }
            | StateError::Read { path, .. }
            | StateError::Lock { path, .. }
            | StateError::Corrupt { path, .. }
            | StateError::AuditLine { path, .. }
            | StateError::JournalLine { path, .. }
            | StateError::NewerVersion { path, .. } => path.clone(),
            StateError::CreateDir { dir, .. } | StateError::Locked { dir, .. } => dir.clone(),
        },
        source: std::io::Error::other(chain(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(action: Action) -> Change {
        Change {
            key: "ana@p.example".to_owned(),
            email: "Ana@p.example".to_owned(),
            action,
            reason: None,
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(s, 0).unwrap_or_default()
    }

    #[test]
    fn apply_future_is_send() {
        fn assert_send<F: std::future::Future + Send>(_: F) {}
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        let plan = Plan {
            generated_at: at(0),
            desired_users: 0,
            in_sync: 0,
            changes: Vec::new(),
            refused_changes: Vec::new(),
            refusals: Vec::new(),
            notices: Vec::new(),
        };
        let tenant = crate::remote::graph::fake::FakeTenant::new();
        let portal = crate::remote::portal::fake::FakePortal::new();
        let opts = ApplyOptions::default();
        let cancel = CancellationToken::new();
        // The daemon spawns apply on a multi-threaded runtime.
        assert_send(apply(&plan, &tenant, &portal, &mut store, &opts, &cancel));
    }

    // Issue 10: how and when ownership was taken, for `guestops state list`.
    #[test]
    fn ownership_records_how_when_and_the_revision() {
        use crate::reconcile::plan::owned::Acquisition;
        let rev = Some("r1".to_owned());
        // An adoption while guestops' own invitation was open is that invitation.
        let before = UserRecord {
            email: "Ana@p.example".into(),
            invitation_unconfirmed_at: Some(at(1)),
            ..UserRecord::default()
        };
        let mut record = UserRecord {
            guest_id: Some("g1".into()),
            guest_owned: true,
            ..before.clone()
        };
        let adopt = change(Action::AdoptGuest {
            guest_id: "g1".into(),
        });
        note_acquired(Some(&before), &mut record, &adopt, rev.clone(), at(5));
        let acquired = record.guest_acquired.clone().expect("recorded");
        assert_eq!(acquired.how, Acquisition::Invited);
        assert_eq!(
            (acquired.at, acquired.revision.as_deref()),
            (at(5), Some("r1"))
        );
        // A plain adoption; a later change of the same ownership keeps the first record.
        let mut fresh = UserRecord {
            portal_owned: true,
            ..UserRecord::default()
        };
        let adopt_portal = change(Action::AdoptPortal {
            portal_id: "p1".into(),
        });
        note_acquired(None, &mut fresh, &adopt_portal, rev.clone(), at(6));
        assert_eq!(
            fresh.portal_acquired.as_ref().map(|a| a.how),
            Some(Acquisition::Adopted)
        );
        let before = fresh.clone();
        let update = change(Action::UpdatePortal {
            portal_id: "p1".into(),
            from_name: "A".into(),
            to_name: "B".into(),
            from_role: None,
            to_role: crate::desired::spec::Role::Viewer,
        });
        note_acquired(Some(&before), &mut fresh, &update, Some("r2".into()), at(9));
        assert_eq!(fresh.portal_acquired, before.portal_acquired);
        // Ownership released: the record of how it was taken goes with it.
        fresh.portal_owned = false;
        let unregister = change(Action::Unregister {
            portal_id: "p1".into(),
        });
        note_acquired(Some(&before), &mut fresh, &unregister, rev, at(10));
        assert_eq!(fresh.portal_acquired, None);
    }

    #[test]
    fn invite_then_resend_track_times_and_count() {
        let mut users = BTreeMap::new();
        let invite = change(Action::Invite {
            display_name: "Ana".into(),
            send_email: true,
            message: None,
        });
        let effect = Effect::GuestOwned {
            guest_id: "g1".into(),
            invited: true,
        };
        apply_effect(&mut users, &invite, effect, at(10));
        let resend = change(Action::ResendInvitation {
            guest_id: "g1".into(),
            display_name: "Ana".into(),
            message: None,
            pending_since: None,
        });
        let effect = Effect::Resent {
            guest_id: "g1".into(),
        };
        apply_effect(&mut users, &resend, effect, at(20));
        let r = &users["ana@p.example"];
        assert_eq!(r.email, "Ana@p.example");
        assert!(r.guest_owned);
        assert_eq!(r.invited_at, Some(at(10)));
        assert_eq!(r.last_invitation_at, Some(at(20)));
        assert_eq!(r.resend_count, 1);
    }

    #[test]
    fn a_record_with_nothing_owned_is_removed() {
        let mut users = BTreeMap::new();
        users.insert(
            "ana@p.example".to_owned(),
            UserRecord {
                email: "Ana@p.example".into(),
                guest_id: Some("g1".into()),
                guest_owned: true,
                portal_owned: true,
                portal_id: Some("p1".into()),
                ..UserRecord::default()
            },
        );
        let unregister = change(Action::Unregister {
            portal_id: "p1".into(),
        });
        apply_effect(&mut users, &unregister, Effect::RemovalFailed, at(5));
        assert_eq!(users["ana@p.example"].removal_pending_since, Some(at(5)));
        apply_effect(&mut users, &unregister, Effect::PortalGone, at(6));
        assert!(
            users["ana@p.example"].guest_owned,
            "the guest is still owned"
        );
        let release = change(Action::DeleteGuest {
            guest_id: "g1".into(),
        });
        apply_effect(
            &mut users,
            &release,
            Effect::GuestReleased { gone: true },
            at(7),
        );
        assert!(users.is_empty(), "{users:?}");
    }
}

#[cfg(test)]
mod intent_tests {
    use super::*;
    use crate::desired::spec::Role;
    use crate::remote::portal::fake::{FakePortal, PortalOp};

    fn plan_of(change: Change) -> Plan {
        Plan {
            generated_at: Utc::now(),
            desired_users: 1,
            in_sync: 0,
            changes: vec![change],
            refused_changes: Vec::new(),
            refusals: Vec::new(),
            notices: Vec::new(),
        }
    }

    // Issue 9: a `POST /api/user` answered "already exists" is a registration, adopted after
    // a re-read, never a failure.
    #[tokio::test]
    async fn a_registration_answered_already_exists_is_adopted_after_a_re_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        let tenant = crate::remote::graph::fake::FakeTenant::new();
        let portal = FakePortal::new();
        let id = portal.add_user("ana@p.example", "Ana", Role::Administrator);
        let plan = plan_of(Change {
            key: "ana@p.example".into(),
            email: "ana@p.example".into(),
            action: Action::Register {
                name: "Ana".into(),
                role: Role::Administrator,
            },
            reason: None,
        });
        let opts = ApplyOptions::default();
        let report = apply(
            &plan,
            &tenant,
            &portal,
            &mut store,
            &opts,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(report.failed(), 0, "{report:?}");
        assert_eq!(portal.calls(PortalOp::CreateUser), 1);
        assert_eq!(portal.calls(PortalOp::FindUser), 1, "one re-read");
        let ana = &store.state().users["ana@p.example"];
        assert!(ana.portal_owned, "{ana:?}");
        assert_eq!(ana.portal_id.as_deref(), Some(id.as_str()));
        assert_eq!(ana.registration_unconfirmed_at, None, "intent resolved");
        // The journal was compacted into state.json at the end of the apply.
        assert_eq!(
            std::fs::metadata(dir.path().join(journal::JOURNAL_FILE))
                .unwrap()
                .len(),
            0
        );
        let saved = StateStore::read_only(dir.path()).unwrap();
        assert!(saved.users["ana@p.example"].portal_owned);
    }

    // A definitive refusal voids the intent: nothing lingers in the state.
    #[tokio::test]
    async fn a_definitive_failure_voids_the_intent() {
        use crate::remote::graph::fake::{FakeTenant, Fault, TenantOp};
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path()).unwrap();
        let tenant = FakeTenant::new();
        tenant.inject(Fault::new(TenantOp::Invite, 400));
        let plan = plan_of(Change {
            key: "ana@p.example".into(),
            email: "ana@p.example".into(),
            action: Action::Invite {
                display_name: "Ana".into(),
                send_email: true,
                message: None,
            },
            reason: None,
        });
        let opts = ApplyOptions::default();
        let report = apply(
            &plan,
            &tenant,
            &FakePortal::new(),
            &mut store,
            &opts,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(report.failed(), 1);
        assert!(store.state().users.is_empty(), "{:?}", store.state().users);
    }
}
