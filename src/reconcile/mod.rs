//! One reconcile: observe both systems completely ([`observe()`]), compute the pure plan
//! ([`plan`]), execute it ([`apply`]) and record the result ([`state`]: `state.json`,
//! `audit.jsonl`, the instance lock). [`status`] and [`import`] are read-only views built
//! from the same observation; [`history`] reads the audit log back; [`saved`] is the saved
//! plan (`plan --out`, `apply FILE`); [`operator`] holds the operator's own edits of the state
//! (suspend, resume, forget) and the view of what guestops owns.
//!
//! [`run_once`] is the only place these steps are chained: `guestops plan`, `apply`, `status`
//! (a dry run, whose `Outcome::observed` it renders), the demo and the daemon call it and
//! re-implement none of them. Its guarantees:
//!
//! - an incomplete read fails before any write ([`ObserveError`]);
//! - a dry run ([`Mode::DryRun`]) reads a snapshot of the state and writes nothing, so it works
//!   while a daemon holds the lock; it plans exactly as an apply would (the guests seen are
//!   noted in the snapshot's copy, as an apply notes them in the state);
//! - a plan refused as a whole (the mass-removal guards) writes nothing; a per-user refusal
//!   (`allowedDomains`) leaves that user's changes out and applies the others;
//! - the applied revision is recorded in `state.json` only when every change succeeded and
//!   nothing was refused;
//! - every change's result is in the [`Outcome`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::desired::source::Revision;
use crate::desired::spec::DesiredState;
use crate::remote::graph::Tenant;
use crate::remote::portal::Portal;

pub mod apply;
pub mod directory;
pub mod history;
pub mod import;
pub mod journal;
pub mod observe;
pub mod operator;
pub mod plan;
pub mod saved;
pub mod state;
pub mod status;

pub use observe::{DeltaSettings, ObserveError, TenantPicture, TenantRead, observe};

use apply::{ApplyError, ApplyOptions, ApplyReport, Progress};
use plan::{Observed, Plan, PlanRevision, Policy};
use state::{AppliedRevision, State, StateError, StateStore};

/// What a reconcile needs besides the desired state: the two systems and the settings.
pub struct Context<'a, T, P> {
    /// Microsoft Graph.
    pub tenant: &'a T,
    /// The Power Embedded portal.
    pub portal: &'a P,
    /// Policy and concurrency.
    pub settings: &'a Settings,
}

/// The policy, the concurrency bounds and the clock of a reconcile, built from the host
/// configuration in one place ([`Settings::from_config`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The plan's policy.
    pub policy: Policy,
    /// Graph requests in flight at most (also bounds the targeted lookups).
    pub tenant_concurrency: usize,
    /// Portal requests in flight at most.
    pub portal_concurrency: usize,
    /// The wall clock: the plan's `now`, the timestamps of state and audit.
    pub clock: fn() -> DateTime<Utc>,
    /// Read the tenant through delta queries and this directory cache; `None`: the guest
    /// listing every reconcile.
    pub delta: Option<DeltaSettings>,
    /// Whether a dry run digests what it observed per user ([`Outcome::facts`], for a saved
    /// plan); an apply of a saved plan always does.
    pub facts: bool,
}

impl Default for Settings {
    /// The defaults of the host configuration.
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            tenant_concurrency: 8,
            portal_concurrency: 2,
            clock: Utc::now,
            delta: None,
            facts: false,
        }
    }
}

impl Settings {
    /// `policy.*`, `tenant.concurrency`, `portal.concurrency`, `tenant.deltaQuery` and
    /// `tenant.fullResyncInterval` of `config` (the directory cache lives in `state.dir`), and
    /// the portal probe's facts in `state.dir` if any (for the plan's `write-only-flags` note);
    /// `force` lifts the mass-removal guards (never the domain policy).
    pub fn from_config(config: &crate::config::Config, force: bool) -> Self {
        let tenant = &config.tenant;
        let mut policy = config.policy(force);
        // What `guestops probe portal` observed, for the plan's note (read once, here).
        policy.hidden_fields.probed_put =
            crate::preflight::probe::read_put_facts(&config.state.dir, &config.portal.base_url);
        Self {
            policy,
            tenant_concurrency: tenant.concurrency,
            portal_concurrency: config.portal.concurrency,
            clock: Utc::now,
            delta: tenant.delta_query.then(|| DeltaSettings {
                cache: config.state.dir.join(directory::CACHE_FILE),
                scope: directory::Scope {
                    tenant_id: tenant.tenant_id.clone(),
                    graph_root: tenant.graph_endpoint.to_string(),
                    select: crate::remote::graph::USER_SELECT.to_owned(),
                },
                full_resync_interval: tenant.full_resync_interval,
            }),
            facts: false,
        }
    }

    /// How a reconcile that writes (`write`) or not reads the tenant.
    fn tenant_read(&self, write: bool) -> TenantRead<'_> {
        match &self.delta {
            Some(settings) => TenantRead::Delta {
                settings,
                write,
                now: (self.clock)(),
            },
            None => TenantRead::Listing,
        }
    }
}

/// A valid desired state and where it was read.
#[derive(Debug, Clone)]
pub struct Desired {
    /// The users.
    pub state: DesiredState,
    /// The revision it was read at (a commit, or a file's content hash).
    pub revision: Revision,
    /// The branch followed, when it came from git.
    pub branch: Option<String>,
}

impl Desired {
    /// How plans name this revision.
    pub fn plan_revision(&self) -> PlanRevision {
        PlanRevision {
            id: self.revision.id.clone(),
            short: self.revision.short.clone(),
            branch: self.branch.clone(),
            subject: Some(self.revision.subject.clone()).filter(|s| !s.is_empty()),
        }
    }
}

/// Whether a reconcile writes.
pub enum Mode<'a> {
    /// Plan only, against this snapshot of the state (`plan`, `status`, `apply --dry-run`).
    DryRun(State),
    /// Plan, then apply and record in this store (holding the instance lock).
    Apply {
        /// The state, locked.
        store: &'a mut StateStore,
        /// Called once per finished change.
        progress: Option<Progress>,
    },
    /// Apply a saved plan (`guestops apply FILE`, or the plan confirmed at a terminal):
    /// observe as a dry run does, plan, and apply only when the fresh plan equals `saved`
    /// ([`saved::SavedPlan::check_fresh`]); else [`ReconcileError::Stale`] and nothing is
    /// written, not even the guests seen.
    ApplySaved {
        /// The state, locked.
        store: &'a mut StateStore,
        /// Called once per finished change.
        progress: Option<Progress>,
        /// The plan to apply.
        saved: &'a saved::SavedPlan,
    },
}

/// Pending invitations of owned guests right after a reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// Owned guests that have not redeemed their invitation (including the ones invited just
    /// now and not visible yet).
    pub count: usize,
    /// Age of the oldest.
    pub oldest: Option<Duration>,
    /// Each of them, by normalized address.
    pub invitations: Vec<PendingInvitation>,
}

/// One owned guest that has not redeemed its invitation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingInvitation {
    /// Normalized address.
    pub key: String,
    /// The address as recorded.
    pub email: String,
    /// Since when it is pending (the guest's state change, its creation, or the invitation).
    pub since: DateTime<Utc>,
}

/// What one reconcile did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The plan.
    pub plan: Plan,
    /// How the plan names its revision.
    pub revision: PlanRevision,
    /// What became of each change; `None` for a dry run, a plan refused as a whole, or a plan
    /// with nothing to do.
    pub report: Option<ApplyReport>,
    /// Pending invitations after the reconcile.
    pub pending: Pending,
    /// Users with a write-ahead intent (or an ambiguous or not yet visible invitation) still
    /// open after the reconcile, younger than `tenant.replicationGrace`: the next reconcile
    /// resolves them by observation (the daemon requeues itself soon for them).
    pub unresolved: usize,
    /// What was read (`status` builds its rows from it).
    pub observed: Observed,
    /// How the tenant was read (listing, delta round, full sync and why).
    pub tenant_picture: TenantPicture,
    /// How long it took.
    pub duration: Duration,
    /// Whether cancellation stopped changes from starting.
    pub interrupted: bool,
    /// What the plan depended on, per user ([`saved::facts`]): with [`Settings::facts`], and
    /// for an apply of a saved plan.
    pub facts: Option<saved::Facts>,
}

/// How a reconcile ended, in the order of the exit codes' precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A change failed, or the apply was interrupted (exit 1).
    Failed,
    /// Policy refused the plan or some users' changes (exit 3).
    Refused,
    /// Changes are pending: a dry run with changes (exit 2 with `--detailed-exitcode`).
    Changes,
    /// Nothing left to do (exit 0).
    InSync,
}

impl Outcome {
    /// Changes that failed.
    pub fn failed(&self) -> usize {
        self.report.as_ref().map_or(0, ApplyReport::failed)
    }

    /// Refused changes (those of per-user refusals, or every change of a refused plan).
    pub fn refused_changes(&self) -> usize {
        if self.plan.is_refused() {
            self.plan.changes.len() + self.plan.refused_changes.len()
        } else {
            self.plan.refused_changes.len()
        }
    }

    /// A failed change 1, else a refusal 3, else pending changes 2, else 0.
    pub fn verdict(&self) -> Verdict {
        if self.failed() > 0 || self.interrupted {
            Verdict::Failed
        } else if self.plan.has_refusals() {
            Verdict::Refused
        } else if self.report.is_none() && !self.plan.is_empty() {
            Verdict::Changes
        } else {
            Verdict::InSync
        }
    }

    /// One line for logs: `3 changes applied (1 failed), 1 refused; 4 in sync; 1.2s`.
    pub fn summary(&self) -> String {
        let mut s = match &self.report {
            Some(r) => {
                let mut s = format!("{} applied", crate::markup::count(r.succeeded(), "change"));
                if r.failed() > 0 {
                    s.push_str(&format!(", {} failed", r.failed()));
                }
                if r.skipped() > 0 {
                    s.push_str(&format!(", {} skipped", r.skipped()));
                }
                s
            }
            None if self.plan.is_refused() => {
                format!(
                    "plan refused ({} not made)",
                    crate::markup::count(self.refused_changes(), "change")
                )
            }
            None if self.plan.is_empty() => "in sync".to_owned(),
            None => format!(
                "{} planned",
                crate::markup::count(self.plan.changes.len(), "change")
            ),
        };
        if !self.plan.is_refused() && !self.plan.refused_changes.is_empty() {
            s.push_str(&format!(
                ", {} refused by policy",
                self.plan.refused_changes.len()
            ));
        }
        s.push_str(&format!(
            "; {} of {} in sync",
            self.plan.in_sync,
            crate::markup::count(self.plan.desired_users, "user")
        ));
        s
    }
}

/// Why a reconcile failed as a whole. Nothing remote was written after the failure.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The read was incomplete; nothing was written.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// The state could not be saved: no further change was started.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// `state.json` could not be written (noting seen guests, or the applied revision).
    #[error("could not record the reconcile in the state directory")]
    State(#[from] StateError),
    /// Cancelled while reading, before any write.
    #[error("interrupted before any change was made")]
    Interrupted,
    /// A saved plan no longer holds (another revision, or the fresh plan differs); nothing
    /// was written.
    #[error(transparent)]
    Stale(#[from] saved::StalePlan),
}

impl ReconcileError {
    /// Whether the state directory cannot be written: going on would make changes that are
    /// not recorded.
    pub fn is_state_unwritable(&self) -> bool {
        matches!(
            self,
            ReconcileError::Apply(ApplyError::State { .. }) | ReconcileError::State(_)
        )
    }
}

/// observe → note seen guests → plan → guard → apply (unless a dry run) → record, once.
///
/// `cancel` stops the read (then [`ReconcileError::Interrupted`]) or the start of new changes
/// (then [`Outcome::interrupted`]); changes in flight finish and are recorded.
pub async fn run_once<T: Tenant, P: Portal>(
    ctx: &Context<'_, T, P>,
    desired: &Desired,
    mode: Mode<'_>,
    cancel: &CancellationToken,
) -> Result<Outcome, ReconcileError> {
    let started = tokio::time::Instant::now();
    match mode {
        Mode::DryRun(mut state) => {
            let (observed, picture) =
                observe_cancellable(ctx, desired, &state, false, cancel).await?;
            // As an apply would note them, in the snapshot only.
            state.note_seen_guests(&observed);
            state.learn_portal_ids(&observed);
            let plan = plan_now(ctx, desired, &observed, &state);
            let mut outcome = Outcome::planned(plan, desired);
            if ctx.settings.facts {
                outcome.facts = Some(saved::facts(
                    &desired.state,
                    &observed,
                    &state,
                    &ctx.settings.policy,
                ));
            }
            Ok(outcome.finish(
                observed,
                picture,
                &state,
                (ctx.settings.clock)(),
                ctx.settings.policy.replication_grace,
                started,
            ))
        }
        Mode::Apply { store, progress } => {
            let (observed, picture) =
                observe_cancellable(ctx, desired, store.state(), true, cancel).await?;
            let state = store.state_mut();
            let seen = state.note_seen_guests(&observed);
            if state.learn_portal_ids(&observed) || seen {
                store.save()?;
            }
            let plan = plan_now(ctx, desired, &observed, store.state());
            let outcome = apply_and_record(ctx, desired, plan, store, progress, cancel).await?;
            Ok(outcome.finish(
                observed,
                picture,
                store.state(),
                (ctx.settings.clock)(),
                ctx.settings.policy.replication_grace,
                started,
            ))
        }
        Mode::ApplySaved {
            store,
            progress,
            saved,
        } => {
            // Read as the dry run that made the plan read, so that the two compare.
            let (observed, picture) =
                observe_cancellable(ctx, desired, store.state(), false, cancel).await?;
            let mut state = store.state().clone();
            let seen = state.note_seen_guests(&observed);
            let learned = state.learn_portal_ids(&observed);
            let facts = saved::facts(&desired.state, &observed, &state, &ctx.settings.policy);
            let plan = plan_now(ctx, desired, &observed, &state);
            saved.check_fresh(desired, &plan, &facts)?;
            if seen || learned {
                *store.state_mut() = state;
                store.save()?;
            }
            let mut outcome = apply_and_record(ctx, desired, plan, store, progress, cancel).await?;
            outcome.facts = Some(facts);
            Ok(outcome.finish(
                observed,
                picture,
                store.state(),
                (ctx.settings.clock)(),
                ctx.settings.policy.replication_grace,
                started,
            ))
        }
    }
}

fn plan_now<T, P>(
    ctx: &Context<'_, T, P>,
    desired: &Desired,
    observed: &Observed,
    state: &State,
) -> Plan {
    plan::plan(
        &desired.state,
        observed,
        state,
        &ctx.settings.policy,
        (ctx.settings.clock)(),
    )
}

impl Outcome {
    /// The outcome of a plan before anything is applied or measured.
    fn planned(plan: Plan, desired: &Desired) -> Self {
        Self {
            plan,
            revision: desired.plan_revision(),
            report: None,
            pending: Pending::default(),
            unresolved: 0,
            observed: Observed::default(),
            tenant_picture: TenantPicture::default(),
            duration: Duration::ZERO,
            interrupted: false,
            facts: None,
        }
    }

    /// Fills in what is measured after the reconcile.
    fn finish(
        mut self,
        observed: Observed,
        picture: TenantPicture,
        state: &State,
        now: DateTime<Utc>,
        grace: Duration,
        started: tokio::time::Instant,
    ) -> Self {
        self.pending = pending_invitations(&observed, state, now);
        self.unresolved = unresolved_intents(state, grace, now);
        self.observed = observed;
        self.tenant_picture = picture;
        self.duration = started.elapsed();
        self
    }
}

async fn observe_cancellable<T: Tenant, P: Portal>(
    ctx: &Context<'_, T, P>,
    desired: &Desired,
    state: &State,
    write: bool,
    cancel: &CancellationToken,
) -> Result<(Observed, TenantPicture), ReconcileError> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(ReconcileError::Interrupted),
        observed = observe(
            &desired.state,
            state,
            ctx.tenant,
            ctx.portal,
            ctx.settings.tenant_concurrency,
            ctx.settings.tenant_read(write),
        ) => Ok(observed?),
    }
}

/// Applies `plan` unless it is refused as a whole or empty, then records the revision when
/// everything succeeded and nothing was refused.
async fn apply_and_record<T: Tenant, P: Portal>(
    ctx: &Context<'_, T, P>,
    desired: &Desired,
    plan: Plan,
    store: &mut StateStore,
    progress: Option<Progress>,
    cancel: &CancellationToken,
) -> Result<Outcome, ReconcileError> {
    let settings = ctx.settings;
    let mut outcome = Outcome::planned(plan, desired);
    if !outcome.plan.is_refused() && !outcome.plan.is_empty() {
        let options = ApplyOptions {
            tenant_concurrency: settings.tenant_concurrency,
            portal_concurrency: settings.portal_concurrency,
            revision: Some(desired.revision.id.clone()),
            author: Some(desired.revision.author.clone()).filter(|a| !a.is_empty()),
            progress,
            clock: settings.clock,
        };
        let report = apply::apply(
            &outcome.plan,
            ctx.tenant,
            ctx.portal,
            store,
            &options,
            cancel,
        )
        .await?;
        outcome.interrupted = cancel.is_cancelled() && !report.is_complete();
        outcome.report = Some(report);
    }
    let complete = !outcome.plan.has_refusals()
        && outcome.report.as_ref().is_none_or(ApplyReport::is_complete);
    if complete {
        record_revision(store, &desired.revision)?;
    }
    Ok(outcome)
}

/// Records in `state.json` that `revision` is fully applied (id, author, time, subject).
fn record_revision(store: &mut StateStore, revision: &Revision) -> Result<(), StateError> {
    let applied = AppliedRevision {
        id: revision.id.clone(),
        author: revision.author.clone(),
        time: revision.time,
        subject: revision.subject.clone(),
    };
    let state = store.state();
    if state.revision.as_deref() == Some(applied.id.as_str())
        && state.revision_info.as_ref() == Some(&applied)
    {
        return Ok(());
    }
    store.update(|state| {
        state.revision = Some(applied.id.clone());
        state.revision_info = Some(applied);
    })
}

/// Users whose open intent ([`plan::UserRecord::open_intent_since`]) is younger than `grace`.
pub fn unresolved_intents(state: &State, grace: Duration, now: DateTime<Utc>) -> usize {
    let grace = chrono::TimeDelta::from_std(grace).unwrap_or(chrono::TimeDelta::MAX);
    state
        .users
        .values()
        .filter_map(plan::UserRecord::open_intent_since)
        .filter(|at| now.signed_duration_since(*at) < grace)
        .count()
}

/// Owned guests whose invitation is not redeemed, from `observed` and `state` as they are
/// after the reconcile: a guest guestops invited that is not visible yet (replication) counts
/// as pending since its invitation.
pub fn pending_invitations(observed: &Observed, state: &State, now: DateTime<Utc>) -> Pending {
    let seen: std::collections::HashMap<&str, &crate::remote::graph::DirectoryUser> = observed
        .guests
        .iter()
        .chain(observed.lookups.iter())
        .map(|g| (g.id.as_str(), g))
        .collect();
    let invitations: Vec<PendingInvitation> = state
        .users
        .iter()
        .filter(|(_, r)| r.guest_owned)
        .filter_map(|(key, r)| {
            let id = r.guest_id.as_deref()?;
            let since = match seen.get(id) {
                Some(g) if g.is_pending() => Some(
                    g.external_user_state_change_date_time
                        .or(g.created_date_time)
                        .or(r.invited_at)
                        .unwrap_or(now),
                ),
                Some(_) => None,
                None if !r.guest_seen => r.invited_at,
                None => None,
            }?;
            Some(PendingInvitation {
                key: key.clone(),
                email: if r.email.is_empty() {
                    key.clone()
                } else {
                    r.email.clone()
                },
                since,
            })
        })
        .collect();
    Pending {
        count: invitations.len(),
        oldest: invitations
            .iter()
            .map(|p| p.since)
            .min()
            .and_then(|t| (now - t).to_std().ok()),
        invitations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::spec::{self, SpecPolicy};
    use crate::remote::graph::fake::{FakeTenant, TenantOp};
    use crate::remote::portal::fake::{FakePortal, PortalOp};

    fn desired(yaml_users: &str) -> Desired {
        let text = format!("apiVersion: guestops/v1\nusers:\n{yaml_users}");
        let parsed = spec::parse(text.as_bytes(), &SpecPolicy::default());
        assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
        Desired {
            state: parsed.desired.expect("valid"),
            revision: Revision {
                id: "c0ffee".into(),
                short: "c0ffee".into(),
                author: "Reviewer <r@contoso.example>".into(),
                time: Utc::now(),
                subject: "add admins".into(),
            },
            branch: Some("main".into()),
        }
    }

    const ANA_AND_EVE: &str = "  - email: ana@partner.example\n    name: Ana\n  - email: eve@elsewhere.example\n    name: Eve\n";

    async fn apply_once(
        tenant: &FakeTenant,
        portal: &FakePortal,
        settings: &Settings,
        desired: &Desired,
        store: &mut StateStore,
    ) -> Outcome {
        let ctx = Context {
            tenant,
            portal,
            settings,
        };
        let mode = Mode::Apply {
            store,
            progress: None,
        };
        run_once(&ctx, desired, mode, &CancellationToken::new())
            .await
            .expect("reconcile")
    }

    #[tokio::test]
    async fn a_complete_reconcile_records_its_revision_and_a_refusal_does_not() {
        let (tenant, portal) = (FakeTenant::new(), FakePortal::new());
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = StateStore::open(dir.path()).expect("state");
        let d = desired(ANA_AND_EVE);

        let mut refusing = Settings::default();
        refusing.policy.allowed_domains = vec!["partner.example".into()];
        let refused = apply_once(&tenant, &portal, &refusing, &d, &mut store).await;
        assert_eq!(refused.verdict(), Verdict::Refused);
        assert_eq!(refused.failed(), 0);
        assert!(portal.user("ana@partner.example").is_some(), "Ana proceeds");
        assert!(
            portal.user("eve@elsewhere.example").is_none(),
            "Eve is refused"
        );
        assert_eq!(
            store.state().revision,
            None,
            "a refusal leaves the revision unclaimed"
        );

        let done = apply_once(&tenant, &portal, &Settings::default(), &d, &mut store).await;
        assert_eq!(done.verdict(), Verdict::InSync, "{:?}", done.report);
        assert_eq!(store.state().revision.as_deref(), Some("c0ffee"));
        let info = store.state().revision_info.clone().expect("revision info");
        assert_eq!(info.subject, "add admins");
        assert_eq!(info.author, "Reviewer <r@contoso.example>");
    }

    #[tokio::test]
    async fn a_failed_change_leaves_the_revision_unclaimed() {
        use crate::remote::portal::fake::PortalFault;
        let (tenant, portal) = (FakeTenant::new(), FakePortal::new());
        portal.inject(PortalFault::new(PortalOp::CreateUser, 400));
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = StateStore::open(dir.path()).expect("state");
        let d = desired("  - email: ana@partner.example\n    name: Ana\n");
        let outcome = apply_once(&tenant, &portal, &Settings::default(), &d, &mut store).await;
        assert_eq!(outcome.verdict(), Verdict::Failed);
        assert_eq!(store.state().revision, None);
    }

    #[tokio::test]
    async fn a_registration_is_one_post_and_the_next_listing_tells_its_id() {
        let (tenant, portal) = (FakeTenant::new(), FakePortal::new());
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = StateStore::open(dir.path()).expect("state");
        let d = desired("  - email: ana@partner.example\n    name: Ana\n");
        apply_once(&tenant, &portal, &Settings::default(), &d, &mut store).await;
        assert_eq!(portal.calls(PortalOp::CreateUser), 1);
        assert_eq!(
            portal.calls(PortalOp::FindUser),
            0,
            "no look-up, no read-back"
        );
        assert_eq!(portal.calls(PortalOp::ListUsers), 1);
        assert_eq!(store.state().users["ana@partner.example"].portal_id, None);

        let again = apply_once(&tenant, &portal, &Settings::default(), &d, &mut store).await;
        assert!(again.plan.is_empty(), "{:?}", again.plan.changes);
        let id = portal.user("ana@partner.example").expect("registered").id;
        assert_eq!(
            store.state().users["ana@partner.example"]
                .portal_id
                .as_deref(),
            Some(id.as_str())
        );
        assert_eq!(portal.calls(PortalOp::CreateUser), 1);
    }

    /// Settings that read the tenant through delta queries with a cache in `dir`.
    fn with_delta(dir: &std::path::Path) -> Settings {
        Settings {
            delta: Some(DeltaSettings {
                cache: dir.join(directory::CACHE_FILE),
                scope: directory::Scope {
                    tenant_id: "contoso.onmicrosoft.com".into(),
                    graph_root: "https://graph.microsoft.com/".into(),
                    select: crate::remote::graph::USER_SELECT.into(),
                },
                full_resync_interval: Duration::from_secs(24 * 3600),
            }),
            ..Settings::default()
        }
    }

    // Issue 7: the observation of the reconcile is the invitation's look-up, with the guest
    // listing (a batched lookup) and with delta (the picture holds the member).
    #[tokio::test]
    async fn an_invitation_is_one_post_and_a_member_is_never_invited() {
        let d = desired(
            "  - email: ana@partner.example\n    name: Ana\n  - email: carol@contoso.example\n    name: Carol\n",
        );
        for delta in [false, true] {
            let (tenant, portal) = (FakeTenant::new(), FakePortal::new());
            let member = tenant.add_member("carol@contoso.example", "Carol");
            let dir = tempfile::tempdir().expect("temp dir");
            let mut store = StateStore::open(dir.path()).expect("state");
            let settings = if delta {
                with_delta(dir.path())
            } else {
                Settings::default()
            };
            let outcome = apply_once(&tenant, &portal, &settings, &d, &mut store).await;
            assert_eq!(outcome.failed(), 0, "{:?}", outcome.report);
            assert_eq!(
                tenant.calls(TenantOp::Invite),
                1,
                "Ana only (delta {delta})"
            );
            assert_eq!(tenant.invitations()[0].email, "ana@partner.example");
            assert_eq!(
                tenant.calls(TenantOp::FindByEmail),
                0,
                "no look-up per invitation"
            );
            // The listing needs one batch for the two addresses it does not show; delta
            // shows Carol, so only Ana's address is looked up.
            assert_eq!(tenant.calls(TenantOp::FindByEmails), 1);
            assert_eq!(tenant.calls(TenantOp::Delta), usize::from(delta));
            assert!(
                outcome
                    .plan
                    .notices
                    .iter()
                    .any(|n| n.code == "member" && n.message.contains(member.as_str()))
            );
            let again = apply_once(&tenant, &portal, &settings, &d, &mut store).await;
            assert!(again.plan.is_empty(), "{:?}", again.plan.changes);
            assert_eq!(tenant.calls(TenantOp::Invite), 1);
        }
    }

    // An ambiguous invitation (the guest was made, the answer lost, and it is not visible
    // yet) waits for replication and is adopted: no second POST.
    #[tokio::test]
    async fn an_ambiguous_invitation_is_adopted_once_visible_never_posted_twice() {
        use crate::remote::graph::fake::Fault;
        let d = desired("  - email: ana@partner.example\n    name: Ana\n");
        for delta in [false, true] {
            let (tenant, portal) = (FakeTenant::new(), FakePortal::new());
            tenant.set_replication_lag(1);
            tenant.inject(Fault::new(TenantOp::Invite, 504).after_applying());
            let dir = tempfile::tempdir().expect("temp dir");
            let mut store = StateStore::open(dir.path()).expect("state");
            let settings = if delta {
                with_delta(dir.path())
            } else {
                Settings::default()
            };
            let first = apply_once(&tenant, &portal, &settings, &d, &mut store).await;
            assert_eq!(first.failed(), 1, "reported (delta {delta})");
            let second = apply_once(&tenant, &portal, &settings, &d, &mut store).await;
            assert_eq!(second.failed(), 0, "{:?}", second.report);
            assert_eq!(
                tenant.calls(TenantOp::Invite),
                1,
                "never re-posted (delta {delta})"
            );
            let guest = tenant.users()[0].id.clone();
            let ana = &store.state().users["ana@partner.example"];
            assert_eq!(ana.guest_id.as_deref(), Some(guest.as_str()));
            assert!(ana.guest_owned);
        }
    }

    // Issue 9: an invitation intent without an outcome (killed after Graph made the guest,
    // before the record) waits for the guest, looked up on every reconcile, and adopts it;
    // an intent older than the grace with no guest is invited once more.
    #[tokio::test]
    async fn an_open_invitation_intent_is_resolved_by_observation_within_the_grace() {
        use crate::remote::graph::Invitation;
        let d = desired("  - email: ana@partner.example\n    name: Ana\n");
        let (tenant, portal) = (FakeTenant::new(), FakePortal::new());
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = StateStore::open(dir.path()).expect("state");
        let intent = |at| plan::UserRecord {
            email: "ana@partner.example".into(),
            invitation_unconfirmed_at: Some(at),
            ..plan::UserRecord::default()
        };
        store
            .update(|s| {
                s.users
                    .insert("ana@partner.example".into(), intent(Utc::now()));
            })
            .expect("save");
        let settings = Settings::default();
        let first = apply_once(&tenant, &portal, &settings, &d, &mut store).await;
        assert!(
            first
                .plan
                .notices
                .iter()
                .any(|n| n.code == "awaiting-replication"),
            "{:?}",
            first.plan
        );
        assert_eq!(first.unresolved, 1, "the daemon requeues soon");
        assert_eq!(tenant.calls(TenantOp::Invite), 0, "not invited again");
        // The crashed run's invitation replicates.
        tenant
            .invite(&Invitation {
                email: "ana@partner.example".into(),
                display_name: "Ana".into(),
                send_email: true,
                message: None,
            })
            .await
            .expect("invite");
        let second = apply_once(&tenant, &portal, &settings, &d, &mut store).await;
        assert_eq!(second.failed(), 0, "{:?}", second.report);
        assert_eq!(tenant.calls(TenantOp::Invite), 1, "adopted, not invited");
        let ana = &store.state().users["ana@partner.example"];
        assert!(
            ana.guest_owned && ana.invitation_unconfirmed_at.is_none(),
            "{ana:?}"
        );
        assert!(
            ana.invited_at.is_some(),
            "guestops' own invitation: {ana:?}"
        );
        assert_eq!(second.unresolved, 0);

        // An intent whose request never reached Graph: after the grace, one invitation.
        let (tenant, portal) = (FakeTenant::new(), FakePortal::new());
        let mut short = Settings::default();
        short.policy.replication_grace = Duration::from_secs(5);
        for (age, invites) in [(1, 0), (6, 1)] {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut store = StateStore::open(dir.path()).expect("state");
            let at = Utc::now() - chrono::TimeDelta::seconds(age);
            store
                .update(|s| {
                    s.users.insert("ana@partner.example".into(), intent(at));
                })
                .expect("save");
            apply_once(&tenant, &portal, &short, &d, &mut store).await;
            assert_eq!(tenant.calls(TenantOp::Invite), invites, "intent {age}s old");
        }
    }

    #[tokio::test]
    async fn a_reconcile_after_lost_state_adopts_instead_of_duplicating() {
        let (tenant, portal) = (FakeTenant::new(), FakePortal::new());
        let d = desired("  - email: ana@partner.example\n    name: Ana\n");
        let first = tempfile::tempdir().expect("temp dir");
        let mut store = StateStore::open(first.path()).expect("state");
        apply_once(&tenant, &portal, &Settings::default(), &d, &mut store).await;
        drop(store);
        // state.json lost: a fresh state directory.
        let second = tempfile::tempdir().expect("temp dir");
        let mut store = StateStore::open(second.path()).expect("state");
        let outcome = apply_once(&tenant, &portal, &Settings::default(), &d, &mut store).await;
        assert_eq!(outcome.report.as_ref().map(ApplyReport::writes), Some(0));
        assert_eq!(tenant.calls(TenantOp::Invite), 1);
        assert_eq!(portal.calls(PortalOp::CreateUser), 1);
        let ana = &store.state().users["ana@partner.example"];
        assert!(ana.guest_owned && ana.portal_owned);
    }

    #[tokio::test]
    async fn a_dry_run_writes_nothing_and_plans_what_an_apply_would() {
        let (tenant, portal) = (FakeTenant::new(), FakePortal::new());
        let d = desired(ANA_AND_EVE);
        let ctx = Context {
            tenant: &tenant,
            portal: &portal,
            settings: &Settings::default(),
        };
        let dry = run_once(
            &ctx,
            &d,
            Mode::DryRun(State::default()),
            &CancellationToken::new(),
        )
        .await
        .expect("dry run");
        assert_eq!(dry.verdict(), Verdict::Changes);
        assert!(dry.report.is_none());
        assert_eq!(tenant.calls(TenantOp::Invite), 0);
        assert_eq!(portal.calls(PortalOp::CreateUser), 0);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = StateStore::open(dir.path()).expect("state");
        let applied = apply_once(&tenant, &portal, &Settings::default(), &d, &mut store).await;
        assert_eq!(applied.plan.changes, dry.plan.changes);
    }

    // Issue 10 item 1: a saved plan is applied only while the fresh plan equals it; a stale
    // one writes nothing, remote or local.
    #[tokio::test]
    async fn a_saved_plan_is_applied_only_while_fresh_and_a_stale_one_writes_nothing() {
        use crate::desired::spec::Role;
        let (tenant, portal) = (FakeTenant::new(), FakePortal::new());
        let d = desired(ANA_AND_EVE);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = StateStore::open(dir.path()).expect("state");
        let settings = Settings {
            facts: true,
            ..Settings::default()
        };
        let ctx = Context {
            tenant: &tenant,
            portal: &portal,
            settings: &settings,
        };
        let save = |outcome: &Outcome| {
            saved::SavedPlan::new(
                saved::Target {
                    tenant_id: "t".into(),
                    client_id: "c".into(),
                    portal_url: "https://portal.example/".into(),
                },
                &settings.policy,
                &d,
                &outcome.plan,
                outcome.facts.clone().expect("facts asked for"),
                Utc::now(),
            )
        };
        let cancel = CancellationToken::new();
        let dry = run_once(&ctx, &d, Mode::DryRun(store.state().clone()), &cancel)
            .await
            .expect("dry run");
        let reviewed = save(&dry);

        // Someone registers Eve by hand: the saved plan no longer holds.
        portal.add_user("eve@elsewhere.example", "Eve", Role::Viewer);
        let mode = Mode::ApplySaved {
            store: &mut store,
            progress: None,
            saved: &reviewed,
        };
        let err = run_once(&ctx, &d, mode, &cancel).await.unwrap_err();
        let ReconcileError::Stale(stale) = err else {
            panic!("stale expected: {err:?}");
        };
        assert!(
            stale.to_string().contains(
                "eve@elsewhere.example: planned invite, register, now invite, adopt-portal"
            ),
            "{stale}"
        );
        assert_eq!(tenant.calls(TenantOp::Invite), 0, "nothing written");
        assert_eq!(portal.calls(PortalOp::CreateUser), 0);
        assert!(
            !dir.path().join(state::STATE_FILE).exists(),
            "no state saved"
        );

        // Planned again, it holds and is applied exactly.
        let dry = run_once(&ctx, &d, Mode::DryRun(store.state().clone()), &cancel)
            .await
            .expect("dry run");
        let reviewed = save(&dry);
        let mode = Mode::ApplySaved {
            store: &mut store,
            progress: None,
            saved: &reviewed,
        };
        let applied = run_once(&ctx, &d, mode, &cancel).await.expect("fresh");
        assert_eq!(applied.verdict(), Verdict::InSync, "{:?}", applied.report);
        assert_eq!(applied.plan.changes, dry.plan.changes);
        assert_eq!(tenant.calls(TenantOp::Invite), 2);
        assert_eq!(
            portal.calls(PortalOp::CreateUser),
            1,
            "Eve was adopted, not registered"
        );
    }
}
