//! `apply` against the in-memory fakes: what a user of `guestops apply` would notice in the
//! tenant, the portal, `state.json` and `audit.jsonl`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use guestops::desired::spec::Role;
use guestops::reconcile::apply::{ApplyError, ApplyOptions, ApplyReport, ChangeResult, apply};
use guestops::reconcile::plan::{Action, Change, Plan, Refusal};
use guestops::reconcile::state::{self, AuditResult, State, StateStore, UserRecord};
use guestops::remote::graph::fake::{FakeTenant, Fault, TenantOp};
use guestops::remote::portal::fake::{FakePortal, PortalFault, PortalOp};
use tokio_util::sync::CancellationToken;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0)
        .single()
        .unwrap_or_default()
}

fn options() -> ApplyOptions {
    ApplyOptions {
        revision: Some("rev-1".to_owned()),
        author: Some("Reviewer <r@contoso.example>".to_owned()),
        clock: now,
        ..ApplyOptions::default()
    }
}

fn change(email: &str, action: Action) -> Change {
    Change {
        key: email.to_lowercase(),
        email: email.to_owned(),
        action,
        reason: None,
    }
}

fn invite(email: &str) -> Change {
    change(
        email,
        Action::Invite {
            display_name: format!("Name of {email}"),
            send_email: true,
            message: None,
        },
    )
}

fn register(email: &str) -> Change {
    change(
        email,
        Action::Register {
            name: format!("Name of {email}"),
            role: Role::Administrator,
        },
    )
}

fn resend(email: &str, guest_id: &str) -> Change {
    change(
        email,
        Action::ResendInvitation {
            guest_id: guest_id.to_owned(),
            display_name: "X".into(),
            message: None,
            pending_since: None,
        },
    )
}

fn plan(mut changes: Vec<Change>) -> Plan {
    // The plan groups changes by user (sorted by key), tenant before portal.
    changes.sort_by(|a, b| a.key.cmp(&b.key));
    Plan {
        generated_at: now(),
        desired_users: changes.len(),
        in_sync: 0,
        changes,
        refused_changes: Vec::new(),
        refusals: Vec::new(),
        notices: Vec::new(),
    }
}

struct World {
    tenant: FakeTenant,
    portal: FakePortal,
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        Self {
            tenant: FakeTenant::new(),
            portal: FakePortal::new(),
            dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    async fn apply(&self, plan: &Plan, opts: &ApplyOptions) -> Result<ApplyReport, ApplyError> {
        let mut store = StateStore::open(self.dir.path()).expect("the state dir opens");
        let cancel = CancellationToken::new();
        apply(plan, &self.tenant, &self.portal, &mut store, opts, &cancel).await
    }

    /// The state as saved on disk.
    fn state(&self) -> State {
        StateStore::read_only(self.dir.path()).expect("state.json is readable")
    }

    fn record(&self, key: &str) -> UserRecord {
        self.state()
            .users
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("no state record for {key}"))
    }

    fn audit(&self) -> Vec<state::AuditRecord> {
        state::read_audit(self.dir.path()).expect("audit.jsonl is readable")
    }
}

#[tokio::test]
async fn happy_path_invites_registers_and_records_state_and_audit() {
    let world = World::new();
    let plan = plan(vec![
        invite("Ana.Silva@partner.example"),
        register("Ana.Silva@partner.example"),
        invite("bob@vendor.example"),
    ]);

    let report = world.apply(&plan, &options()).await.unwrap();

    assert_eq!(
        (report.succeeded(), report.failed(), report.writes()),
        (3, 0, 3)
    );
    assert_eq!(report.outcomes.len(), 3);
    assert_eq!(
        report
            .outcomes
            .iter()
            .map(|o| &o.change)
            .collect::<Vec<_>>(),
        plan.changes.iter().collect::<Vec<_>>(),
        "outcomes come back in plan order"
    );

    let guest = world
        .tenant
        .users()
        .into_iter()
        .find(|u| u.mail.as_deref() == Some("Ana.Silva@partner.example"))
        .expect("Ana was invited");
    world
        .portal
        .user("ana.silva@partner.example")
        .expect("Ana was registered");

    // Whether the revision is fully applied is run_once's to record (src/reconcile/mod.rs tests).
    let ana = world.record("ana.silva@partner.example");
    assert_eq!(ana.email, "Ana.Silva@partner.example");
    assert_eq!(ana.guest_id.as_deref(), Some(guest.id.as_str()));
    assert!(ana.guest_owned && ana.portal_owned);
    assert_eq!(ana.invited_at, Some(now()));
    assert_eq!(ana.last_invitation_at, Some(now()));
    // The portal's POST returns no id and nothing is read back: the next listing tells it
    // (run_once test `a_registration_is_one_post_and_the_next_listing_tells_its_id`).
    assert_eq!(ana.portal_id, None);
    assert_eq!(world.portal.calls(PortalOp::CreateUser), 1);
    assert!(world.record("bob@vendor.example").guest_owned);

    let audit = world.audit();
    assert_eq!(audit.len(), 3, "{audit:#?}");
    assert!(audit.iter().all(|a| a.result == AuditResult::Ok));
    assert!(audit.iter().all(|a| a.revision.as_deref() == Some("rev-1")));
    let ana_invite = audit
        .iter()
        .find(|a| a.user == "Ana.Silva@partner.example" && a.action == "invite")
        .expect("an audit line for Ana's invitation");
    assert!(ana_invite.request_id.is_some(), "{ana_invite:?}");
    assert_eq!(
        ana_invite.author.as_deref(),
        Some("Reviewer <r@contoso.example>")
    );
    assert!(!world.dir.path().join(state::STATE_TMP_FILE).exists());
}

// `apply` trusts the observation its plan was made from (`run_once` observes first; its tests
// cover members, adoption after lost state and the ambiguous invitation that replicates late:
// `reconcile::tests`). A plan gone stale in between (someone invited the address a
// moment ago) still makes no second guest: Graph answers with the existing one.
#[tokio::test]
async fn a_stale_invitation_is_one_post_and_graph_reuses_the_guest_that_appeared() {
    let world = World::new();
    let existing = world.tenant.add_guest("ana@partner.example", "Ana");

    let report = world
        .apply(&plan(vec![invite("ANA@partner.example")]), &options())
        .await
        .unwrap();

    assert_eq!(world.tenant.calls(TenantOp::Invite), 1, "one POST");
    assert_eq!(
        world.tenant.calls(TenantOp::FindByEmail),
        0,
        "no look-up first"
    );
    assert_eq!((report.succeeded(), report.writes()), (1, 1));
    assert_eq!(world.tenant.users().len(), 1, "no second guest");
    let ana = world.record("ana@partner.example");
    assert_eq!(ana.guest_id.as_deref(), Some(existing.as_str()));
    assert!(ana.guest_owned);
}

#[tokio::test]
async fn ambiguous_invite_failure_is_not_re_posted_and_records_the_guest() {
    let world = World::new();
    world
        .tenant
        .inject(Fault::new(TenantOp::Invite, 504).after_applying());

    let report = world
        .apply(&plan(vec![invite("ana@partner.example")]), &options())
        .await
        .unwrap();

    assert_eq!(world.tenant.calls(TenantOp::Invite), 1, "exactly one POST");
    assert_eq!(world.tenant.users().len(), 1, "one guest, no duplicate");
    assert_eq!(report.succeeded(), 1, "{report:#?}");
    let guest_id = world.tenant.users()[0].id.clone();
    let ana = world.record("ana@partner.example");
    assert_eq!(ana.guest_id, Some(guest_id));
    assert!(ana.guest_owned);
    assert_eq!(ana.invited_at, Some(now()));
}

#[tokio::test]
async fn ambiguous_invite_failure_without_a_guest_is_reported_not_re_posted() {
    let world = World::new();
    world.tenant.inject(Fault::new(TenantOp::Invite, 503));

    let report = world
        .apply(
            &plan(vec![
                invite("ana@partner.example"),
                register("ana@partner.example"),
            ]),
            &options(),
        )
        .await
        .unwrap();

    assert_eq!(world.tenant.calls(TenantOp::Invite), 1);
    assert!(world.tenant.users().is_empty());
    assert!(matches!(
        &report.outcomes[0].result,
        ChangeResult::Failed { error } if error.contains("not re-sent")
    ));
    assert!(
        matches!(report.outcomes[1].result, ChangeResult::Skipped { .. }),
        "the user's later change waits for the next reconcile"
    );
    assert_eq!(world.portal.total_calls(), 0);
    // Nothing is owned, but the possible invitation is remembered so that the next plan waits
    // for replication instead of inviting again.
    let record = &world.state().users["ana@partner.example"];
    assert!(!record.guest_owned && !record.portal_owned && record.guest_id.is_none());
    assert_eq!(record.invitation_unconfirmed_at, Some(now()));
    assert_eq!(
        world.state().revision,
        None,
        "an incomplete apply does not claim the revision"
    );
    let audit = world.audit();
    assert_eq!(audit.len(), 1, "{audit:#?}");
    assert_eq!(audit[0].result, AuditResult::Error);
}

#[tokio::test]
async fn one_users_failure_does_not_stop_the_others() {
    let world = World::new();
    world
        .tenant
        .inject(Fault::new(TenantOp::Invite, 400).for_target("b@vendor.example"));
    let changes = ["a@vendor.example", "b@vendor.example", "c@vendor.example"]
        .into_iter()
        .flat_map(|e| [invite(e), register(e)])
        .collect();

    let report = world.apply(&plan(changes), &options()).await.unwrap();

    assert_eq!(
        (report.succeeded(), report.failed(), report.skipped()),
        (4, 1, 1)
    );
    assert!(world.portal.user("a@vendor.example").is_some());
    assert!(world.portal.user("c@vendor.example").is_some());
    assert!(world.portal.user("b@vendor.example").is_none());
    let state = world.state();
    assert!(state.users["a@vendor.example"].portal_owned);
    assert!(state.users["c@vendor.example"].portal_owned);
    assert!(!state.users.contains_key("b@vendor.example"));
    let failures: Vec<_> = world
        .audit()
        .into_iter()
        .filter(|a| a.result == AuditResult::Error)
        .collect();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].user, "b@vendor.example");
    assert!(failures[0].detail.as_deref().unwrap_or("").contains("400"));
}

#[tokio::test]
async fn concurrency_bounds_are_respected() {
    let world = World::new();
    // Latency keeps calls in flight long enough to overlap, well above the fsync of each
    // write-ahead intent on a loaded machine; no timing is asserted.
    world.tenant.set_latency(Duration::from_millis(100));
    world.portal.set_latency(Duration::from_millis(20));
    let changes = (0..8)
        .map(|i| format!("user{i}@vendor.example"))
        .flat_map(|e| [invite(&e), register(&e)])
        .collect();
    let opts = ApplyOptions {
        tenant_concurrency: 3,
        portal_concurrency: 1,
        ..options()
    };

    let report = world.apply(&plan(changes), &opts).await.unwrap();

    assert_eq!(report.succeeded(), 16);
    assert_eq!(
        world.tenant.max_in_flight(),
        3,
        "users ran concurrently, up to the bound"
    );
    assert_eq!(world.portal.max_in_flight(), 1);
    assert_eq!(world.state().users.len(), 8);
}

#[tokio::test]
async fn refused_plan_writes_nothing() {
    let world = World::new();
    let mut refused = plan(vec![invite("a@vendor.example")]);
    refused.refusals.push(Refusal {
        code: "max-deletions".to_owned(),
        scope: guestops::reconcile::plan::RefusalScope::Plan,
        email: None,
        message: "7 removals exceed maxDeletions (5)".to_owned(),
        help: "raise policy.maxDeletions or force".to_owned(),
    });

    let err = world.apply(&refused, &options()).await.unwrap_err();

    assert!(
        matches!(err, ApplyError::Refused { count: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("maxDeletions"), "{err}");
    assert_eq!(world.tenant.total_calls() + world.portal.total_calls(), 0);
    assert!(!world.dir.path().join(state::STATE_FILE).exists());
    assert!(!world.dir.path().join(state::AUDIT_FILE).exists());
}

#[tokio::test]
async fn cancellation_stops_new_changes_and_keeps_finished_ones() {
    let world = World::new();
    let cancel = CancellationToken::new();
    let on_progress = cancel.clone();
    let opts = ApplyOptions {
        tenant_concurrency: 1,
        progress: Some(Arc::new(move |_| on_progress.cancel())),
        ..options()
    };
    let changes = (0..5)
        .map(|i| invite(&format!("user{i}@vendor.example")))
        .collect();
    let mut store = StateStore::open(world.dir.path()).unwrap();

    let report = apply(
        &plan(changes),
        &world.tenant,
        &world.portal,
        &mut store,
        &opts,
        &cancel,
    )
    .await
    .unwrap();
    drop(store);

    assert_eq!(
        (report.succeeded(), report.skipped()),
        (1, 4),
        "{report:#?}"
    );
    assert_eq!(world.tenant.calls(TenantOp::Invite), 1);
    assert!(report.outcomes.iter().any(|o| matches!(
        &o.result,
        ChangeResult::Skipped { why } if why.contains("cancelled")
    )));
    assert_eq!(world.state().users.len(), 1, "the finished change is saved");
    assert_eq!(world.state().revision, None);
}

#[tokio::test]
async fn ambiguous_registration_is_confirmed_by_a_look_up() {
    let world = World::new();
    world
        .portal
        .inject(PortalFault::new(PortalOp::CreateUser, 502).after_applying());

    let report = world
        .apply(&plan(vec![register("ana@partner.example")]), &options())
        .await
        .unwrap();

    assert_eq!(report.succeeded(), 1, "{report:#?}");
    assert_eq!(world.portal.calls(PortalOp::CreateUser), 1);
    let id = world.portal.user("ana@partner.example").unwrap().id;
    assert_eq!(world.record("ana@partner.example").portal_id, Some(id));
}

#[tokio::test]
async fn removal_unregisters_deletes_the_guest_and_forgets_the_user() {
    let world = World::new();
    let guest_id = world.tenant.add_guest("ana@partner.example", "Ana");
    let portal_id = world
        .portal
        .add_user("ana@partner.example", "Ana", Role::Administrator);
    let adopt = plan(vec![
        change(
            "ana@partner.example",
            Action::AdoptGuest {
                guest_id: guest_id.clone(),
            },
        ),
        change(
            "ana@partner.example",
            Action::AdoptPortal {
                portal_id: portal_id.clone(),
            },
        ),
    ]);
    world.apply(&adopt, &options()).await.unwrap();
    assert!(world.record("ana@partner.example").portal_owned);

    let removal = plan(vec![
        change("ana@partner.example", Action::Unregister { portal_id }),
        change("ana@partner.example", Action::DeleteGuest { guest_id }),
    ]);
    let report = world.apply(&removal, &options()).await.unwrap();

    assert_eq!(report.writes(), 2);
    assert!(world.portal.users().is_empty());
    assert!(world.tenant.users().is_empty());
    assert_eq!(world.tenant.deleted().len(), 1, "soft-deleted, restorable");
    assert!(!world.state().users.contains_key("ana@partner.example"));
}

#[tokio::test]
async fn failed_removal_is_remembered_as_pending() {
    let world = World::new();
    let portal_id = world
        .portal
        .add_user("ana@partner.example", "Ana", Role::Administrator);
    world
        .apply(
            &plan(vec![change(
                "ana@partner.example",
                Action::AdoptPortal {
                    portal_id: portal_id.clone(),
                },
            )]),
            &options(),
        )
        .await
        .unwrap();
    world
        .portal
        .inject(PortalFault::new(PortalOp::DeleteUser, 500));

    let report = world
        .apply(
            &plan(vec![change(
                "ana@partner.example",
                Action::Unregister { portal_id },
            )]),
            &options(),
        )
        .await
        .unwrap();

    assert_eq!(report.failed(), 1);
    let ana = world.record("ana@partner.example");
    assert!(ana.portal_owned);
    assert_eq!(ana.removal_pending_since, Some(now()));
}

#[tokio::test]
async fn update_portal_changes_role_and_keeps_unmanaged_fields() {
    let world = World::new();
    let portal_id =
        world
            .portal
            .add_user_with_groups("ana@partner.example", "Ana", Role::Viewer, &["finance"]);
    let update = change(
        "ana@partner.example",
        Action::UpdatePortal {
            portal_id,
            from_name: "Ana".into(),
            to_name: "Ana Silva".into(),
            from_role: Some(Role::Viewer),
            to_role: Role::Administrator,
        },
    );

    let report = world.apply(&plan(vec![update]), &options()).await.unwrap();

    assert_eq!(report.writes(), 1);
    let ana = world.portal.user("ana@partner.example").unwrap();
    assert_eq!(
        (ana.name.as_str(), ana.role),
        ("Ana Silva", Some(Role::Administrator))
    );
    assert_eq!(
        world.portal.groups("ana@partner.example").unwrap(),
        vec!["finance"]
    );
}

#[tokio::test]
async fn resend_bumps_the_count_and_skips_an_accepted_guest() {
    let world = World::new();
    let pending = world.tenant.add_guest("ana@partner.example", "Ana");
    let accepted = world.tenant.add_guest("bob@vendor.example", "Bob");
    assert!(world.tenant.modify_user(&accepted, |u| {
        u.external_user_state = Some("Accepted".into());
    }));
    let report = world
        .apply(
            &plan(vec![
                resend("ana@partner.example", &pending),
                resend("bob@vendor.example", &accepted),
            ]),
            &options(),
        )
        .await
        .unwrap();

    assert_eq!(
        world.tenant.calls(TenantOp::Invite),
        1,
        "only Ana is re-invited"
    );
    assert_eq!((report.succeeded(), report.skipped()), (1, 1));
    let ana = world.record("ana@partner.example");
    assert_eq!(ana.resend_count, 1);
    assert_eq!(ana.last_invitation_at, Some(now()));
    assert!(world.tenant.invitations()[0].send_email);
}

#[tokio::test]
async fn a_state_that_cannot_be_saved_stops_new_changes() {
    let world = World::new();
    let mut store = StateStore::open(world.dir.path()).unwrap();
    // A directory where the journal should be: the first intent cannot be recorded (even
    // for root), so its request is never sent.
    std::fs::create_dir(
        world
            .dir
            .path()
            .join(guestops::reconcile::journal::JOURNAL_FILE),
    )
    .unwrap();
    let opts = ApplyOptions {
        tenant_concurrency: 1,
        ..options()
    };
    let changes = (0..3)
        .map(|i| invite(&format!("user{i}@vendor.example")))
        .collect();

    let err = apply(
        &plan(changes),
        &world.tenant,
        &world.portal,
        &mut store,
        &opts,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();

    let ApplyError::State { report, .. } = &err else {
        panic!("expected a state error, got {err:?}");
    };
    // The message says its own part; the state error (naming the file) is its cause, and
    // the chain is what a person reads.
    let text = guestops::error::chain(&err);
    assert!(text.contains("journal.jsonl"), "{text}");
    assert_eq!(
        world.tenant.calls(TenantOp::Invite),
        0,
        "no request whose intent is not recorded"
    );
    assert_eq!((report.failed(), report.skipped()), (1, 2), "{report:#?}");
    assert!(world.audit().is_empty(), "nothing was written");
}

#[tokio::test]
async fn a_compaction_that_fails_is_an_error_and_loses_nothing() {
    let world = World::new();
    let mut store = StateStore::open(world.dir.path()).unwrap();
    // A directory where state.json should be: the changes are journaled, the compaction at
    // the end fails (the rename), and the journal still holds every change.
    std::fs::create_dir(world.dir.path().join(state::STATE_FILE)).unwrap();
    let changes = (0..3)
        .map(|i| invite(&format!("user{i}@vendor.example")))
        .collect();
    let err = apply(
        &plan(changes),
        &world.tenant,
        &world.portal,
        &mut store,
        &options(),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let ApplyError::State { report, .. } = &err else {
        panic!("expected a state error, got {err:?}");
    };
    assert_eq!(report.succeeded(), 3, "{report:#?}");
    assert!(!world.dir.path().join(state::STATE_TMP_FILE).exists());
    assert_eq!(world.audit().len(), 3, "every write is audited");
    drop(store);
    std::fs::remove_dir(world.dir.path().join(state::STATE_FILE)).unwrap();
    let state = StateStore::read_only(world.dir.path()).unwrap();
    assert_eq!(state.users.len(), 3, "the journal holds every change");
    assert!(state.users.values().all(|u| u.guest_owned));
}

#[tokio::test]
async fn a_resend_with_an_unknown_outcome_stays_counted_as_sent_a_refused_one_does_not() {
    let world = World::new();
    let ana = world.tenant.add_guest("ana@partner.example", "Ana");
    let bob = world.tenant.add_guest("bob@vendor.example", "Bob");
    // Ana's reminder may have left (a gateway timeout after Graph took it); Bob's was refused.
    world.tenant.inject(
        Fault::new(TenantOp::Invite, 504)
            .after_applying()
            .for_target("ana@partner.example"),
    );
    world
        .tenant
        .inject(Fault::new(TenantOp::Invite, 400).for_target("bob@vendor.example"));

    let report = world
        .apply(
            &plan(vec![
                resend("ana@partner.example", &ana),
                resend("bob@vendor.example", &bob),
            ]),
            &options(),
        )
        .await
        .unwrap();

    assert_eq!(report.failed(), 2, "{report:#?}");
    let state = world.state();
    // The write-ahead intent of Ana's reminder stays: the plan counts it as sent now, so the
    // next reconcile does not mail her again.
    let ana = &state.users["ana@partner.example"];
    assert_eq!(ana.resend_unconfirmed_at, Some(now()));
    assert_eq!(ana.resend_count, 0);
    // Bob's was certainly not sent: no intent is left, and no record at all.
    assert!(
        state
            .users
            .get("bob@vendor.example")
            .is_none_or(|b| b.resend_unconfirmed_at.is_none()),
        "{:?}",
        state.users.get("bob@vendor.example")
    );
}
