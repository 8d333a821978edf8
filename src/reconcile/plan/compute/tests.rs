//! Unit tests of the plan rules (design §7), one behaviour each.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};

use super::*;
use crate::desired::spec::{Email, Role};
use crate::remote::graph::ObjectIdentity;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0)
        .single()
        .expect("valid date")
}

fn hours_ago(h: i64) -> DateTime<Utc> {
    now() - TimeDelta::hours(h)
}

fn user(email: &str, name: &str, role: Role) -> DesiredUser {
    DesiredUser {
        email: Email::new(email),
        name: name.to_owned(),
        role,
        expires: None,
        reason: None,
        line: 0,
    }
}

fn desired(users: Vec<DesiredUser>) -> DesiredState {
    DesiredState {
        users: users
            .into_iter()
            .map(|u| (u.email.normalized().to_owned(), u))
            .collect(),
        invitation: Default::default(),
    }
}

fn guest(id: &str, mail: &str) -> DirectoryUser {
    DirectoryUser {
        id: id.to_owned(),
        mail: Some(mail.to_owned()),
        user_type: Some("Guest".to_owned()),
        external_user_state: Some("Accepted".to_owned()),
        account_enabled: Some(true),
        ..Default::default()
    }
}

fn bare_guest(id: &str) -> DirectoryUser {
    DirectoryUser {
        id: id.to_owned(),
        user_type: Some("Guest".to_owned()),
        external_user_state: Some("Accepted".to_owned()),
        account_enabled: Some(true),
        ..Default::default()
    }
}

fn member(id: &str, mail: &str) -> DirectoryUser {
    DirectoryUser {
        user_type: Some("Member".to_owned()),
        external_user_state: None,
        ..guest(id, mail)
    }
}

fn pending(mut g: DirectoryUser, since: DateTime<Utc>) -> DirectoryUser {
    g.external_user_state = Some("PendingAcceptance".to_owned());
    g.external_user_state_change_date_time = Some(since);
    g
}

fn portal_user(id: &str, email: &str, name: &str, role: Option<Role>) -> PortalUser {
    PortalUser {
        id: id.to_owned(),
        email: email.to_owned(),
        name: name.to_owned(),
        role_code: role
            .map(|r| crate::remote::portal::RoleCodes::default().code(r))
            .or(Some(99)),
        role,
    }
}

fn owned(email: &str, guest_id: Option<&str>, portal_id: Option<&str>) -> (String, UserRecord) {
    (
        email.to_lowercase(),
        UserRecord {
            email: email.to_owned(),
            guest_id: guest_id.map(str::to_owned),
            guest_owned: guest_id.is_some(),
            invited_at: Some(hours_ago(24 * 30)),
            last_invitation_at: Some(hours_ago(24 * 30)),
            portal_id: portal_id.map(str::to_owned),
            portal_owned: portal_id.is_some(),
            ..Default::default()
        },
    )
}

fn state(records: Vec<(String, UserRecord)>) -> State {
    State {
        users: records.into_iter().collect(),
        ..State::default()
    }
}

fn observed(guests: Vec<DirectoryUser>, portal: Vec<PortalUser>) -> Observed {
    Observed {
        guests,
        lookups: Vec::new(),
        deleted: Vec::new(),
        portal_users: portal,
    }
}

fn prune() -> Policy {
    Policy {
        prune: true,
        ..Policy::default()
    }
}

fn actions(p: &Plan) -> Vec<(String, &'static str)> {
    p.changes
        .iter()
        .map(|c| (c.key.clone(), c.action.name()))
        .collect()
}

fn codes(p: &Plan) -> Vec<&str> {
    p.notices.iter().map(|n| n.code.as_str()).collect()
}

fn refusal_codes(p: &Plan) -> Vec<&str> {
    p.refusals.iter().map(|r| r.code.as_str()).collect()
}

const ANA: &str = "ana.silva@partner.example";

fn ana() -> DesiredUser {
    user(ANA, "Ana Silva", Role::Administrator)
}

fn ana_portal() -> PortalUser {
    portal_user("p-ana", ANA, "Ana Silva", Some(Role::Administrator))
}

// ---- tenant matching ----

#[test]
fn unknown_user_is_invited_and_registered() {
    let p = plan(
        &desired(vec![ana()]),
        &Observed::default(),
        &State::default(),
        &Policy::default(),
        now(),
    );
    assert_eq!(
        actions(&p),
        vec![(ANA.to_owned(), "invite"), (ANA.to_owned(), "register")]
    );
    assert_eq!(
        p.changes[0].action,
        Action::Invite {
            display_name: "Ana Silva".to_owned(),
            send_email: true,
            message: None
        }
    );
    assert_eq!(p.in_sync, 0);
    assert_eq!(p.desired_users, 1);
}

#[test]
fn guest_matched_by_mail_is_adopted_not_invited() {
    let obs = observed(vec![guest("g1", ANA)], vec![ana_portal()]);
    let p = plan(
        &desired(vec![ana()]),
        &obs,
        &State::default(),
        &Policy::default(),
        now(),
    );
    assert_eq!(
        p.changes.iter().map(|c| &c.action).collect::<Vec<_>>(),
        vec![
            &Action::AdoptGuest {
                guest_id: "g1".to_owned()
            },
            &Action::AdoptPortal {
                portal_id: "p-ana".to_owned()
            }
        ]
    );
}

#[test]
fn guest_matched_by_other_mails_only_is_adopted() {
    let mut g = bare_guest("g1");
    g.other_mails = vec!["someone@else.example".to_owned(), ANA.to_owned()];
    let p = plan(
        &desired(vec![ana()]),
        &observed(vec![g], vec![]),
        &State::default(),
        &Policy::default(),
        now(),
    );
    assert_eq!(
        p.changes[0].action,
        Action::AdoptGuest {
            guest_id: "g1".to_owned()
        }
    );
    assert!(!actions(&p).iter().any(|(_, a)| *a == "invite"));
}

#[test]
fn guest_matched_by_identity_is_adopted() {
    let mut g = bare_guest("g1");
    g.identities = vec![ObjectIdentity {
        sign_in_type: Some("federated".to_owned()),
        issuer: Some("google.com".to_owned()),
        issuer_assigned_id: Some("Ana.Silva@Partner.Example".to_owned()),
    }];
    let p = plan(
        &desired(vec![ana()]),
        &observed(vec![g], vec![]),
        &State::default(),
        &Policy::default(),
        now(),
    );
    assert_eq!(
        p.changes[0].action,
        Action::AdoptGuest {
            guest_id: "g1".to_owned()
        }
    );
}

#[test]
fn guest_matched_in_different_case_is_adopted() {
    let g = guest("g1", "ANA.Silva@PARTNER.example");
    let d = desired(vec![user(
        "Ana.Silva@partner.EXAMPLE",
        "Ana Silva",
        Role::Administrator,
    )]);
    let p = plan(
        &d,
        &observed(vec![g], vec![]),
        &State::default(),
        &Policy::default(),
        now(),
    );
    assert_eq!(
        p.changes[0].action,
        Action::AdoptGuest {
            guest_id: "g1".to_owned()
        }
    );
    assert_eq!(
        p.changes[0].email, "Ana.Silva@partner.EXAMPLE",
        "display keeps the file's spelling"
    );
}

#[test]
fn guest_matched_by_ext_upn_form_is_adopted() {
    let mut g = bare_guest("g1");
    g.user_principal_name =
        Some("Ana.Silva_Partner.Example#ext#@contoso.onmicrosoft.com".to_owned());
    let p = plan(
        &desired(vec![ana()]),
        &observed(vec![g], vec![]),
        &State::default(),
        &Policy::default(),
        now(),
    );
    assert_eq!(
        p.changes[0].action,
        Action::AdoptGuest {
            guest_id: "g1".to_owned()
        }
    );
}

#[test]
fn upn_of_another_address_does_not_match() {
    let mut g = bare_guest("g1");
    g.user_principal_name = Some("ana.silva_other.example#EXT#@contoso.onmicrosoft.com".to_owned());
    let p = plan(
        &desired(vec![ana()]),
        &observed(vec![g], vec![]),
        &State::default(),
        &Policy::default(),
        now(),
    );
    assert_eq!(p.changes[0].action.name(), "invite");
}

#[test]
fn guest_found_only_by_state_id_is_not_reinvited() {
    // The address changed at the guest (mail gone) but state knows its id.
    let st = state(vec![owned(ANA, Some("g1"), Some("p-ana"))]);
    let obs = Observed {
        lookups: vec![bare_guest("g1")],
        ..observed(vec![], vec![ana_portal()])
    };
    let p = plan(&desired(vec![ana()]), &obs, &st, &Policy::default(), now());
    assert!(p.changes.is_empty(), "{:?}", p.changes);
    assert_eq!(p.in_sync, 1);
}

#[test]
fn member_is_not_invited() {
    let obs = Observed {
        lookups: vec![member("m1", ANA)],
        ..observed(vec![], vec![ana_portal()])
    };
    let p = plan(
        &desired(vec![ana()]),
        &obs,
        &State::default(),
        &Policy::default(),
        now(),
    );
    assert_eq!(actions(&p), vec![(ANA.to_owned(), "adopt-portal")]);
    assert_eq!(codes(&p), vec!["member"]);
}

#[test]
fn owned_guest_and_portal_user_in_sync() {
    let st = state(vec![owned(ANA, Some("g1"), Some("p-ana"))]);
    let obs = observed(vec![guest("g1", ANA)], vec![ana_portal()]);
    let p = plan(&desired(vec![ana()]), &obs, &st, &Policy::default(), now());
    assert!(p.is_empty());
    assert_eq!(p.in_sync, 1);
}

#[test]
fn several_guests_prefer_state_id_then_smallest() {
    let guests = vec![guest("g3", ANA), guest("g2", ANA), guest("g9", ANA)];
    let p = plan(
        &desired(vec![ana()]),
        &observed(guests.clone(), vec![]),
        &State::default(),
        &Policy::default(),
        now(),
    );
    assert_eq!(
        p.changes[0].action,
        Action::AdoptGuest {
            guest_id: "g2".to_owned()
        }
    );
    assert!(codes(&p).contains(&"ambiguous-guest"));

    let st = state(vec![owned(ANA, Some("g9"), None)]);
    let p = plan(
        &desired(vec![ana()]),
        &observed(guests, vec![]),
        &st,
        &Policy::default(),
        now(),
    );
    assert!(!p.changes.iter().any(|c| c.action.name() == "adopt-guest"));
    assert!(codes(&p).contains(&"ambiguous-guest"));
}

#[test]
fn recent_invitation_waits_for_replication() {
    let mut rec = owned(ANA, Some("g-new"), None);
    rec.1.invited_at = Some(now() - TimeDelta::minutes(5));
    rec.1.last_invitation_at = rec.1.invited_at;
    let p = plan(
        &desired(vec![ana()]),
        &Observed::default(),
        &state(vec![rec.clone()]),
        &Policy::default(),
        now(),
    );
    assert!(!actions(&p).iter().any(|(_, a)| *a == "invite"));
    assert_eq!(codes(&p), vec!["awaiting-replication"]);

    // After the grace period the guest is considered gone: invite again.
    let later = now()
        + TimeDelta::from_std(crate::reconcile::plan::DEFAULT_REPLICATION_GRACE).expect("small");
    let p = plan(
        &desired(vec![ana()]),
        &Observed::default(),
        &state(vec![rec]),
        &Policy::default(),
        later,
    );
    assert_eq!(p.changes[0].action.name(), "invite");
}

#[test]
fn a_recently_invited_guest_that_was_seen_and_is_gone_is_invited_again_at_once() {
    // Invited five minutes ago, then visible to a read (guest_seen), now missing: deleted
    // behind guestops' back, not replicating.
    let mut rec = owned(ANA, Some("g-new"), None);
    rec.1.invited_at = Some(now() - TimeDelta::minutes(5));
    rec.1.last_invitation_at = rec.1.invited_at;
    rec.1.guest_seen = true;
    let p = plan(
        &desired(vec![ana()]),
        &Observed::default(),
        &state(vec![rec]),
        &Policy::default(),
        now(),
    );
    assert_eq!(p.changes[0].action.name(), "invite");
    assert!(!codes(&p).contains(&"awaiting-replication"));
}

// ---- invitation lifecycle ----

#[test]
fn pending_owned_guest_is_resent_after_resend_after() {
    let st = state(vec![owned(ANA, Some("g1"), Some("p-ana"))]);
    let g = pending(guest("g1", ANA), hours_ago(24 * 30));
    let p = plan(
        &desired(vec![ana()]),
        &observed(vec![g], vec![ana_portal()]),
        &st,
        &Policy::default(),
        now(),
    );
    assert_eq!(
        p.changes.iter().map(|c| &c.action).collect::<Vec<_>>(),
        vec![&Action::ResendInvitation {
            guest_id: "g1".to_owned(),
            display_name: "Ana Silva".to_owned(),
            message: None,
            pending_since: Some(hours_ago(24 * 30)),
        }]
    );
}

#[test]
fn recent_resend_is_not_repeated() {
    let mut rec = owned(ANA, Some("g1"), Some("p-ana"));
    rec.1.last_invitation_at = Some(hours_ago(24));
    rec.1.resend_count = 1;
    let g = pending(guest("g1", ANA), hours_ago(24 * 30));
    let p = plan(
        &desired(vec![ana()]),
        &observed(vec![g], vec![ana_portal()]),
        &state(vec![rec]),
        &Policy::default(),
        now(),
    );
    assert!(p.is_empty(), "{:?}", p.changes);
}

#[test]
fn a_reminder_with_an_unknown_outcome_counts_as_sent() {
    // The intent of a re-sent invitation, open since an hour (killed, or a timeout).
    let mut rec = owned(ANA, Some("g1"), Some("p-ana"));
    rec.1.resend_unconfirmed_at = Some(hours_ago(1));
    let g = pending(guest("g1", ANA), hours_ago(24 * 30));
    let p = plan(
        &desired(vec![ana()]),
        &observed(vec![g.clone()], vec![ana_portal()]),
        &state(vec![rec.clone()]),
        &Policy::default(),
        now(),
    );
    assert!(p.is_empty(), "not mailed twice: {:?}", p.changes);
    // It counts toward the limit too.
    rec.1.resend_count = MAX_RESENDS - 1;
    rec.1.resend_unconfirmed_at = Some(hours_ago(24 * 30));
    let p = plan(
        &desired(vec![ana()]),
        &observed(vec![g], vec![ana_portal()]),
        &state(vec![rec]),
        &Policy::default(),
        now(),
    );
    assert!(p.is_empty());
    assert_eq!(codes(&p), vec!["invitation-pending"]);
}

#[test]
fn resend_is_bounded() {
    let mut rec = owned(ANA, Some("g1"), Some("p-ana"));
    rec.1.resend_count = MAX_RESENDS;
    let g = pending(guest("g1", ANA), hours_ago(24 * 30));
    let p = plan(
        &desired(vec![ana()]),
        &observed(vec![g], vec![ana_portal()]),
        &state(vec![rec]),
        &Policy::default(),
        now(),
    );
    assert!(p.is_empty());
    assert_eq!(codes(&p), vec!["invitation-pending"]);
}

#[test]
fn resend_disabled_by_policy_or_by_send_email() {
    let st = state(vec![owned(ANA, Some("g1"), Some("p-ana"))]);
    let obs = observed(
        vec![pending(guest("g1", ANA), hours_ago(24 * 30))],
        vec![ana_portal()],
    );
    let never = Policy {
        resend_after: None,
        ..Policy::default()
    };
    assert!(plan(&desired(vec![ana()]), &obs, &st, &never, now()).is_empty());
    let zero = Policy {
        resend_after: Some(Duration::ZERO),
        ..Policy::default()
    };
    assert!(plan(&desired(vec![ana()]), &obs, &st, &zero, now()).is_empty());
    let mut quiet = desired(vec![ana()]);
    quiet.invitation.send_email = false;
    assert!(plan(&quiet, &obs, &st, &Policy::default(), now()).is_empty());
}

// ---- portal ----

#[test]
fn portal_role_change_is_an_update_never_delete_and_recreate() {
    let st = state(vec![owned(ANA, Some("g1"), Some("p-ana"))]);
    let pu = portal_user("p-ana", ANA, "Ana Silva", Some(Role::Contributor));
    let p = plan(
        &desired(vec![ana()]),
        &observed(vec![guest("g1", ANA)], vec![pu]),
        &st,
        &prune(),
        now(),
    );
    assert_eq!(
        p.changes.iter().map(|c| &c.action).collect::<Vec<_>>(),
        vec![&Action::UpdatePortal {
            portal_id: "p-ana".to_owned(),
            from_name: "Ana Silva".to_owned(),
            to_name: "Ana Silva".to_owned(),
            from_role: Some(Role::Contributor),
            to_role: Role::Administrator,
        }]
    );
}

#[test]
fn unknown_role_code_is_an_update() {
    let st = state(vec![owned(ANA, Some("g1"), Some("p-ana"))]);
    let pu = portal_user("p-ana", ANA, "Ana Silva", None);
    let p = plan(
        &desired(vec![ana()]),
        &observed(vec![guest("g1", ANA)], vec![pu]),
        &st,
        &prune(),
        now(),
    );
    assert_eq!(actions(&p), vec![(ANA.to_owned(), "update-portal")]);
}

#[test]
fn name_change_is_an_update() {
    let st = state(vec![owned(ANA, Some("g1"), Some("p-ana"))]);
    let pu = portal_user(
        "p-ana",
        "ANA.SILVA@partner.example",
        "Ana S.",
        Some(Role::Administrator),
    );
    let p = plan(
        &desired(vec![ana()]),
        &observed(vec![guest("g1", ANA)], vec![pu]),
        &st,
        &prune(),
        now(),
    );
    assert_eq!(actions(&p), vec![(ANA.to_owned(), "update-portal")]);
    assert!(!p.changes.iter().any(|c| matches!(
        c.action,
        Action::Register { .. } | Action::Unregister { .. }
    )));
}

#[test]
fn portal_match_is_exact_not_contains() {
    let pu = portal_user("p-x", "xana.silva@partner.example", "X", Some(Role::Viewer));
    let p = plan(
        &desired(vec![ana()]),
        &observed(vec![guest("g1", ANA)], vec![pu]),
        &State::default(),
        &Policy::default(),
        now(),
    );
    assert!(actions(&p).contains(&(ANA.to_owned(), "register")));
}

#[test]
fn duplicate_portal_users_pick_smallest_id_with_notice() {
    let a = portal_user("p-b", ANA, "Ana Silva", Some(Role::Administrator));
    let b = portal_user("p-a", ANA, "Ana Silva", Some(Role::Administrator));
    let p = plan(
        &desired(vec![ana()]),
        &observed(vec![guest("g1", ANA)], vec![a, b]),
        &State::default(),
        &Policy::default(),
        now(),
    );
    assert!(p.changes.iter().any(|c| c.action
        == Action::AdoptPortal {
            portal_id: "p-a".to_owned()
        }));
    assert!(codes(&p).contains(&"ambiguous-portal"));
}

// ---- removals ----

fn bob_removed_setup() -> (DesiredState, Observed, State) {
    let bob = "bob@vendor.example";
    let d = desired(vec![ana()]);
    let obs = observed(
        vec![guest("g1", ANA), guest("g-bob", bob)],
        vec![
            ana_portal(),
            portal_user("p-bob", bob, "Bob", Some(Role::Contributor)),
        ],
    );
    let st = state(vec![
        owned(ANA, Some("g1"), Some("p-ana")),
        owned(bob, Some("g-bob"), Some("p-bob")),
    ]);
    (d, obs, st)
}

#[test]
fn removal_without_prune_is_only_a_notice() {
    let (d, obs, st) = bob_removed_setup();
    let p = plan(&d, &obs, &st, &Policy::default(), now());
    assert!(p.is_empty());
    assert_eq!(codes(&p), vec!["prune-disabled"]);
    assert_eq!(p.notices[0].key.as_deref(), Some("bob@vendor.example"));
}

#[test]
fn removal_with_prune_unregisters_and_treats_guest_per_policy() {
    let (d, obs, st) = bob_removed_setup();
    let bob = "bob@vendor.example".to_owned();
    let keep = plan(&d, &obs, &st, &prune(), now());
    assert_eq!(
        actions(&keep),
        vec![(bob.clone(), "unregister"), (bob.clone(), "release-guest")]
    );
    assert_eq!(
        keep.changes[0].reason.as_deref(),
        Some("removed from users.yaml")
    );

    let disable = Policy {
        guest_on_removal: GuestOnRemoval::Disable,
        ..prune()
    };
    let p = plan(&d, &obs, &st, &disable, now());
    assert_eq!(
        actions(&p),
        vec![(bob.clone(), "disable-guest"), (bob.clone(), "unregister")]
    );

    let delete = Policy {
        guest_on_removal: GuestOnRemoval::Delete,
        ..prune()
    };
    let p = plan(&d, &obs, &st, &delete, now());
    assert_eq!(
        actions(&p),
        vec![(bob.clone(), "delete-guest"), (bob, "unregister")]
    );
    assert_eq!(p.removals(), 2);
    assert_eq!(p.removed_users(), 1);
    assert!(!p.is_refused(), "one removed user is within maxDeletions");
}

#[test]
fn already_disabled_guest_is_not_disabled_again() {
    let (d, mut obs, st) = bob_removed_setup();
    obs.guests[1].account_enabled = Some(false);
    let disable = Policy {
        guest_on_removal: GuestOnRemoval::Disable,
        ..prune()
    };
    let p = plan(&d, &obs, &st, &disable, now());
    assert_eq!(
        actions(&p),
        vec![("bob@vendor.example".to_owned(), "unregister")]
    );
}

#[test]
fn an_owned_account_that_is_a_member_is_only_released_never_disabled_or_deleted() {
    let (d, mut obs, st) = bob_removed_setup();
    obs.guests[1].user_type = Some("Member".to_owned());
    for how in [GuestOnRemoval::Disable, GuestOnRemoval::Delete] {
        let policy = Policy {
            guest_on_removal: how,
            ..prune()
        };
        let p = plan(&d, &obs, &st, &policy, now());
        assert_eq!(
            actions(&p),
            vec![
                ("bob@vendor.example".to_owned(), "unregister"),
                ("bob@vendor.example".to_owned(), "release-guest")
            ],
            "{how:?}"
        );
        assert!(codes(&p).contains(&"not-a-guest"));
    }
}

#[test]
fn users_not_owned_are_never_removed() {
    let (d, obs, _) = bob_removed_setup();
    let st = state(vec![owned(ANA, Some("g1"), Some("p-ana"))]);
    let delete = Policy {
        guest_on_removal: GuestOnRemoval::Delete,
        ..prune()
    };
    let p = plan(&d, &obs, &st, &delete, now());
    assert!(p.is_empty(), "{:?}", p.changes);
}

#[test]
fn portal_user_recreated_by_someone_else_is_not_removed() {
    let (d, mut obs, st) = bob_removed_setup();
    obs.portal_users[1].id = "p-other".to_owned();
    let p = plan(&d, &obs, &st, &prune(), now());
    assert!(!actions(&p).iter().any(|(_, a)| *a == "unregister"));
    assert!(codes(&p).contains(&"not-owned"));
}

#[test]
fn expired_user_is_a_removal_with_reason() {
    let (_, obs, st) = bob_removed_setup();
    let mut bob = user("Bob@Vendor.example", "Bob", Role::Contributor);
    bob.expires = NaiveDate::from_ymd_opt(2026, 3, 9);
    let d = desired(vec![ana(), bob]);
    let p = plan(&d, &obs, &st, &prune(), now());
    assert_eq!(
        actions(&p),
        vec![
            ("bob@vendor.example".to_owned(), "unregister"),
            ("bob@vendor.example".to_owned(), "release-guest")
        ]
    );
    assert_eq!(
        p.changes[0].reason.as_deref(),
        Some("expired on 2026-03-09")
    );
    assert_eq!(p.changes[0].email, "Bob@Vendor.example");
    assert_eq!(p.in_sync, 1, "the expired user is not counted in sync");
    assert_eq!(p.desired_users, 2);
}

#[test]
fn user_expiring_today_keeps_access() {
    let (_, obs, st) = bob_removed_setup();
    let mut bob = user("bob@vendor.example", "Bob", Role::Contributor);
    bob.expires = NaiveDate::from_ymd_opt(2026, 3, 10);
    let p = plan(&desired(vec![ana(), bob]), &obs, &st, &prune(), now());
    assert!(p.is_empty(), "{:?}", p.changes);
    assert_eq!(p.in_sync, 2);
}

#[test]
fn expired_user_not_owned_gets_a_notice_only() {
    let (_, obs, _) = bob_removed_setup();
    let mut bob = user("bob@vendor.example", "Bob", Role::Contributor);
    bob.expires = NaiveDate::from_ymd_opt(2020, 1, 1);
    let st = state(vec![owned(ANA, Some("g1"), Some("p-ana"))]);
    let p = plan(&desired(vec![ana(), bob]), &obs, &st, &prune(), now());
    assert!(p.is_empty());
    assert_eq!(codes(&p), vec!["not-owned"]);
}

#[test]
fn guest_shared_with_a_desired_user_is_only_released() {
    // Bob's owned guest also lists Ana's address: deleting it would lock Ana out.
    let bob = "bob@vendor.example";
    let mut g = guest("g-shared", bob);
    g.other_mails = vec![ANA.to_owned()];
    let obs = observed(vec![g], vec![ana_portal()]);
    let st = state(vec![
        owned(ANA, Some("g-shared"), Some("p-ana")),
        owned(bob, Some("g-shared"), None),
    ]);
    let delete = Policy {
        guest_on_removal: GuestOnRemoval::Delete,
        ..prune()
    };
    let p = plan(&desired(vec![ana()]), &obs, &st, &delete, now());
    assert_eq!(actions(&p), vec![(bob.to_owned(), "release-guest")]);
    assert!(codes(&p).contains(&"guest-shared"));
}

// ---- refusals ----

#[test]
fn domain_outside_allowed_domains_is_refused_even_forced() {
    let d = desired(vec![
        ana(),
        user("eve@evil.example", "Eve", Role::Administrator),
    ]);
    let policy = Policy {
        allowed_domains: vec!["partner.example".to_owned()],
        force: true,
        ..Policy::default()
    };
    let p = plan(&d, &Observed::default(), &State::default(), &policy, now());
    assert_eq!(refusal_codes(&p), vec!["domain-not-allowed"]);
    assert_eq!(p.refusals[0].email.as_deref(), Some("eve@evil.example"));
    assert!(p.refusals[0].help.contains("allowedDomains"));
    assert_eq!(
        p.refusals[0].scope,
        crate::reconcile::plan::RefusalScope::User
    );
    // Refused for Eve only: her changes are shown to the reviewer but never made; Ana proceeds.
    assert!(!actions(&p).iter().any(|(e, _)| e == "eve@evil.example"));
    assert!(
        p.refused_changes
            .iter()
            .any(|c| c.key == "eve@evil.example" && c.action.name() == "invite")
    );
    assert!(
        actions(&p)
            .iter()
            .any(|(e, a)| e.starts_with("ana") && *a == "invite")
    );
    assert!(!p.is_refused());
    assert!(p.has_refusals());
}

#[test]
fn a_refused_user_in_sync_is_still_reported_and_not_counted_in_sync() {
    let d = desired(vec![user("eve@evil.example", "Eve", Role::Administrator)]);
    let policy = Policy {
        allowed_domains: vec!["partner.example".to_owned()],
        ..Policy::default()
    };
    // Eve is fully in place already (owned guest, owned portal admin): nothing to change.
    let o = observed(
        vec![guest("g-eve", "eve@evil.example")],
        vec![portal_user(
            "p-eve",
            "eve@evil.example",
            "Eve",
            Some(Role::Administrator),
        )],
    );
    let s = state(vec![owned(
        "eve@evil.example",
        Some("g-eve"),
        Some("p-eve"),
    )]);
    let without_policy = plan(&d, &o, &s, &Policy::default(), now());
    assert!(
        without_policy.changes.is_empty(),
        "{:?}",
        without_policy.changes
    );
    assert_eq!(without_policy.in_sync, 1);

    let p = plan(&d, &o, &s, &policy, now());
    assert_eq!(refusal_codes(&p), vec!["domain-not-allowed"]);
    assert!(p.changes.is_empty() && p.refused_changes.is_empty());
    assert_eq!(p.in_sync, 0);
}

#[test]
fn more_removed_users_than_max_deletions_is_refused_unless_forced() {
    let mut records = Vec::new();
    let mut portal = Vec::new();
    for i in 0..3 {
        let e = format!("u{i}@vendor.example");
        portal.push(portal_user(
            &format!("p{i}"),
            &e,
            "U",
            Some(Role::Administrator),
        ));
        records.push(owned(&e, None, Some(&format!("p{i}"))));
    }
    records.push(owned(ANA, None, Some("p-ana")));
    portal.push(ana_portal());
    let st = state(records);
    let obs = observed(vec![guest("g1", ANA)], portal);
    let policy = Policy {
        max_deletions: 2,
        ..prune()
    };
    let p = plan(&desired(vec![ana()]), &obs, &st, &policy, now());
    assert_eq!(refusal_codes(&p), vec!["max-deletions"]);
    assert!(p.refusals[0].message.contains("3 users"));
    assert_eq!(p.removals(), 3, "refused removals stay in the plan");
    assert_eq!(p.removed_users(), 3);

    let forced = Policy {
        force: true,
        ..policy.clone()
    };
    assert!(!plan(&desired(vec![ana()]), &obs, &st, &forced, now()).is_refused());
    let enough = Policy {
        max_deletions: 3,
        ..policy
    };
    assert!(!plan(&desired(vec![ana()]), &obs, &st, &enough, now()).is_refused());
}

#[test]
fn empty_desired_with_owned_users_is_refused_unless_forced() {
    let (_, obs, st) = bob_removed_setup();
    let policy = Policy {
        max_deletions: 100,
        ..prune()
    };
    let p = plan(&DesiredState::default(), &obs, &st, &policy, now());
    assert_eq!(refusal_codes(&p), vec!["empty-desired"]);
    let forced = Policy {
        force: true,
        ..policy.clone()
    };
    assert!(!plan(&DesiredState::default(), &obs, &st, &forced, now()).is_refused());
    // Without prune nothing would be removed: no refusal.
    assert!(
        !plan(
            &DesiredState::default(),
            &obs,
            &st,
            &Policy::default(),
            now()
        )
        .is_refused()
    );
}

// ---- order and index ----

#[test]
fn changes_are_grouped_by_key_in_documented_order() {
    let bob = user("bob@vendor.example", "Bob", Role::Contributor);
    let d = desired(vec![bob, ana()]);
    let obs = observed(
        vec![guest("g1", ANA)],
        vec![portal_user("p-ana", ANA, "Old", Some(Role::Viewer))],
    );
    let p = plan(&d, &obs, &State::default(), &Policy::default(), now());
    assert_eq!(
        actions(&p),
        vec![
            (ANA.to_owned(), "adopt-guest"),
            (ANA.to_owned(), "adopt-portal"),
            (ANA.to_owned(), "update-portal"),
            ("bob@vendor.example".to_owned(), "invite"),
            ("bob@vendor.example".to_owned(), "register"),
        ]
    );
}

#[test]
fn guest_index_deduplicates_by_id_and_sorts() {
    let a = guest("g2", ANA);
    let b = guest("g1", ANA);
    let index = GuestIndex::new([&a, &b, &a]);
    assert_eq!(index.len(), 2);
    let ids: Vec<&str> = index
        .find(ANA, None)
        .iter()
        .map(|u| u.id.as_str())
        .collect();
    assert_eq!(ids, vec!["g1", "g2"]);
    assert!(index.find("nobody@x.example", None).is_empty());
    assert_eq!(index.find("nobody@x.example", Some("g2")).len(), 1);
}

#[test]
fn non_ascii_addresses_match_case_insensitively() {
    let d = desired(vec![user("Åsa@Nordic.example", "Åsa", Role::Administrator)]);
    let obs = observed(
        vec![guest("g1", " ÅSA@NORDIC.EXAMPLE ")],
        vec![portal_user(
            "p1",
            "åsa@nordic.example",
            "Åsa",
            Some(Role::Administrator),
        )],
    );
    let p = plan(&d, &obs, &State::default(), &Policy::default(), now());
    assert_eq!(
        actions(&p),
        vec![
            ("åsa@nordic.example".to_owned(), "adopt-guest"),
            ("åsa@nordic.example".to_owned(), "adopt-portal")
        ]
    );
}

#[test]
fn unrelated_tenant_and_portal_users_are_ignored() {
    let obs = observed(
        vec![guest("g-x", "x@elsewhere.example"), guest("g1", ANA)],
        vec![
            portal_user("p-x", "x@elsewhere.example", "X", Some(Role::Administrator)),
            ana_portal(),
        ],
    );
    let st = state(vec![owned(ANA, Some("g1"), Some("p-ana"))]);
    let p = plan(&desired(vec![ana()]), &obs, &st, &prune(), now());
    assert!(p.is_empty());
    assert!(p.notices.is_empty(), "{:?}", p.notices);
}

/// Two updates while both write-only flags are unstated: one note for the plan, not per user.
#[test]
fn updates_with_unstated_write_only_flags_get_one_plan_wide_note() {
    let bob = "bob@vendor.example";
    let st = state(vec![
        owned(ANA, Some("g1"), Some("p-ana")),
        owned(bob, Some("g2"), Some("p-bob")),
    ]);
    let observed = observed(
        vec![guest("g1", ANA), guest("g2", bob)],
        vec![
            portal_user("p-ana", ANA, "Ana Silva", Some(Role::Viewer)),
            portal_user("p-bob", bob, "Bob", Some(Role::Viewer)),
        ],
    );
    let d = desired(vec![ana(), user(bob, "Bob", Role::Contributor)]);
    let p = plan(&d, &observed, &st, &prune(), now());
    assert_eq!(actions(&p).len(), 2, "{:?}", actions(&p));
    let notes: Vec<&Notice> = p
        .notices
        .iter()
        .filter(|n| n.code == "write-only-flags")
        .collect();
    assert_eq!(notes.len(), 1, "{:?}", p.notices);
    assert_eq!(notes[0].key, None, "plan-wide");
    assert_eq!(
        notes[0].message,
        "bypassFirewall and canExportReportOtherPages are not stated in portal.writeOnlyFlags: \
         the portal does not return them, so guestops does not send them, and the PUT of the 2 \
         portal updates in this plan may reset them; whether this portal's PUT keeps what it is \
         not sent is unknown (guestops probe portal observes it); state their values in \
         portal.writeOnlyFlags to have them sent on every create and update"
    );

    // One flag stated, and the probe saw a PUT keep what it was not sent.
    let mut policy = prune();
    policy.hidden_fields = HiddenFields {
        unstated_flags: vec!["canExportReportOtherPages".to_owned()],
        probed_put: Some(super::super::ProbedPut {
            time: hours_ago(48),
            keeps_flags: Some(true),
            keeps_groups: Some(true),
            keeps_nullable_fields: Some(true),
        }),
    };
    let p = plan(&d, &observed, &st, &policy, now());
    let note = p
        .notices
        .iter()
        .find(|n| n.code == "write-only-flags")
        .expect("one flag is unstated");
    assert!(
        note.message.starts_with("canExportReportOtherPages is not stated")
            && note.message.contains(
                "guestops probe portal (2026-03-08) observed that a PUT keeps the flags it is not sent (put.keepsFlags: true), so it probably stays"
            ),
        "{}",
        note.message
    );

    // Every flag stated, or no update: no note.
    policy.hidden_fields.unstated_flags.clear();
    let p = plan(&d, &observed, &st, &policy, now());
    assert!(!p.notices.iter().any(|n| n.code == "write-only-flags"));
    let in_sync = desired(vec![
        user(ANA, "Ana Silva", Role::Viewer),
        user(bob, "Bob", Role::Viewer),
    ]);
    let p = plan(&in_sync, &observed, &st, &prune(), now());
    assert!(p.notices.is_empty(), "{:?}", p.notices);
}

#[test]
fn an_address_held_by_a_deleted_guest_is_restored_not_invited() {
    let obs = Observed {
        deleted: vec![guest("g-gone", ANA), member("m-gone", ANA)],
        ..observed(vec![], vec![ana_portal()])
    };
    let p = plan(
        &desired(vec![ana()]),
        &obs,
        &State::default(),
        &Policy::default(),
        now(),
    );
    assert_eq!(
        p.changes[0].action,
        Action::RestoreGuest {
            guest_id: "g-gone".to_owned()
        }
    );
    assert_eq!(
        actions(&p),
        vec![
            (ANA.to_owned(), "restore-guest"),
            (ANA.to_owned(), "adopt-portal")
        ]
    );
}

#[test]
fn of_several_deleted_guests_the_recorded_one_is_restored() {
    let st = state(vec![owned(ANA, Some("g-b"), Some("p-ana"))]);
    let obs = Observed {
        deleted: vec![guest("g-a", ANA), guest("g-b", ANA)],
        ..observed(vec![], vec![ana_portal()])
    };
    let p = plan(&desired(vec![ana()]), &obs, &st, &Policy::default(), now());
    assert_eq!(
        p.changes.iter().map(|c| &c.action).collect::<Vec<_>>(),
        vec![&Action::RestoreGuest {
            guest_id: "g-b".to_owned()
        }]
    );
}

#[test]
fn a_live_guest_wins_over_a_deleted_one_and_a_deleted_member_is_not_restored() {
    let live = Observed {
        deleted: vec![guest("g-gone", ANA)],
        ..observed(vec![guest("g1", ANA)], vec![ana_portal()])
    };
    let p = plan(
        &desired(vec![ana()]),
        &live,
        &State::default(),
        &Policy::default(),
        now(),
    );
    assert_eq!(
        actions(&p),
        vec![
            (ANA.to_owned(), "adopt-guest"),
            (ANA.to_owned(), "adopt-portal")
        ]
    );
    let only_a_member = Observed {
        deleted: vec![member("m-gone", ANA)],
        ..observed(vec![], vec![ana_portal()])
    };
    let p = plan(
        &desired(vec![ana()]),
        &only_a_member,
        &State::default(),
        &Policy::default(),
        now(),
    );
    assert_eq!(p.changes[0].action.name(), "invite");
}

#[test]
fn a_guest_guestops_disabled_is_enabled_when_granted_again_one_disabled_by_others_is_not() {
    let mut disabled = guest("g1", ANA);
    disabled.account_enabled = Some(false);
    let obs = observed(vec![disabled], vec![ana_portal()]);
    // guestops disabled g1 when Ana was removed (guestOnRemoval: disable).
    let mut record = owned(ANA, Some("g1"), None);
    record.1.guest_owned = false;
    record.1.portal_owned = false;
    record.1.guest_disabled = true;
    let p = plan(
        &desired(vec![ana()]),
        &obs,
        &state(vec![record.clone()]),
        &Policy::default(),
        now(),
    );
    assert_eq!(
        actions(&p),
        vec![
            (ANA.to_owned(), "enable-guest"),
            (ANA.to_owned(), "adopt-portal")
        ]
    );
    assert!(!p.notices.iter().any(|n| n.code == "guest-disabled"));

    // Disabled by someone else (no record, or a record of another guest): only a notice.
    for st in [State::default(), {
        let mut other = record;
        other.1.guest_id = Some("g-other".to_owned());
        state(vec![other])
    }] {
        let p = plan(&desired(vec![ana()]), &obs, &st, &Policy::default(), now());
        assert!(
            !actions(&p).iter().any(|(_, a)| *a == "enable-guest"),
            "{:?}",
            actions(&p)
        );
        assert!(p.notices.iter().any(|n| n.code == "guest-disabled"));
    }
}

// ---- --only (issue 10 item 5) ----

fn only(keys: &[&str]) -> Option<std::collections::BTreeSet<String>> {
    Some(keys.iter().map(|k| (*k).to_owned()).collect())
}

#[test]
fn only_keeps_the_targeted_users_changes_and_counts_only_them_in_sync() {
    let carl = "carl@partner.example";
    let eve = "eve@evil.example";
    let d = desired(vec![
        ana(),
        user("bo@partner.example", "Bo", Role::Viewer),
        user(carl, "Carl", Role::Administrator),
        user(eve, "Eve", Role::Viewer),
    ]);
    // Carl is in sync; Ana and Bo are new; Eve is outside allowedDomains.
    let obs = observed(
        vec![guest("g-carl", carl)],
        vec![portal_user(
            "p-carl",
            carl,
            "Carl",
            Some(Role::Administrator),
        )],
    );
    let st = state(vec![owned(carl, Some("g-carl"), Some("p-carl"))]);
    let policy = Policy {
        allowed_domains: vec!["partner.example".to_owned()],
        ..Policy::default()
    };
    let full = plan(&d, &obs, &st, &policy, now());
    assert_eq!(full.in_sync, 1);
    assert_eq!(refusal_codes(&full), vec!["domain-not-allowed"]);

    let targeted = Policy {
        only: only(&[ANA, carl]),
        ..policy.clone()
    };
    let p = plan(&d, &obs, &st, &targeted, now());
    let keys: std::collections::BTreeSet<&str> = p.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, [ANA].into_iter().collect(), "{:?}", p.changes);
    assert_eq!(
        p.changes,
        full.changes
            .iter()
            .filter(|c| c.key == ANA)
            .cloned()
            .collect::<Vec<_>>(),
        "the targeted user's changes are those of the whole plan"
    );
    assert_eq!(p.in_sync, 1, "Carl, targeted and in sync");
    assert!(
        p.refusals.is_empty(),
        "Eve is not targeted: {:?}",
        p.refusals
    );
    assert!(p.refused_changes.is_empty());
    assert_eq!(p.desired_users, 4, "users.yaml is counted whole");

    // Targeting Eve keeps her refusal (the domain policy still applies).
    let eve_only = Policy {
        only: only(&[eve]),
        ..policy
    };
    let p = plan(&d, &obs, &st, &eve_only, now());
    assert!(p.changes.is_empty(), "{:?}", p.changes);
    assert_eq!(refusal_codes(&p), vec!["domain-not-allowed"]);
    assert!(!p.refused_changes.is_empty());
    assert_eq!(p.in_sync, 0);
}

#[test]
fn only_does_not_lift_a_refusal_of_the_whole_plan() {
    let mut records = Vec::new();
    let mut portal = Vec::new();
    for i in 0..3 {
        let e = format!("u{i}@vendor.example");
        portal.push(portal_user(&format!("p{i}"), &e, "U", Some(Role::Viewer)));
        records.push(owned(&e, None, Some(&format!("p{i}"))));
    }
    let d = desired(vec![ana()]);
    let obs = observed(vec![guest("g1", ANA)], portal);
    let st = state(records);
    let policy = Policy {
        max_deletions: 2,
        only: only(&["u0@vendor.example"]),
        ..prune()
    };
    let p = plan(&d, &obs, &st, &policy, now());
    assert!(p.is_refused(), "three removals in users.yaml as a whole");
    assert_eq!(refusal_codes(&p), vec!["max-deletions"]);
    assert!(
        p.changes.iter().all(|c| c.key == "u0@vendor.example"),
        "{:?}",
        p.changes
    );
    assert_eq!(p.removals(), 1);
}

#[test]
fn an_only_address_in_neither_users_yaml_nor_state_is_unknown() {
    let d = desired(vec![ana()]);
    let st = state(vec![
        owned("gone@vendor.example", None, Some("p-gone")),
        owned("released@vendor.example", None, None),
    ]);
    let keys = only(&[
        ANA,
        "gone@vendor.example",
        "released@vendor.example",
        "ana.silv@partner.example",
    ])
    .expect("some");
    assert_eq!(
        super::super::unknown_targets(&keys, &d, &st),
        vec!["ana.silv@partner.example", "released@vendor.example"],
        "a typo, and a record that owns nothing"
    );
}

// Issue 10 item 7: access ending within policy.expiryNoticeBefore is a notice, not a change.
#[test]
fn access_ending_within_the_notice_window_is_a_notice_expiring() {
    let mut soon = ana();
    soon.expires = NaiveDate::from_ymd_opt(2026, 3, 12);
    let mut later = user("bob@partner.example", "Bob", Role::Administrator);
    later.expires = NaiveDate::from_ymd_opt(2026, 4, 30);
    let d = desired(vec![soon, later]);
    let o = observed(vec![guest("g-ana", ANA)], vec![ana_portal()]);
    let s = state(vec![owned(ANA, Some("g-ana"), Some("p-ana"))]);
    let p = plan(&d, &o, &s, &Policy::default(), now());
    let expiring: Vec<&Notice> = p.notices.iter().filter(|n| n.code == "expiring").collect();
    assert_eq!(expiring.len(), 1, "{:?}", p.notices);
    assert_eq!(expiring[0].key.as_deref(), Some(ANA));
    assert!(
        expiring[0]
            .message
            .contains("ends with 2026-03-12 (UTC), in 2 days"),
        "{}",
        expiring[0].message
    );
    assert!(
        !p.changes.iter().any(|c| c.key == ANA),
        "a notice changes nothing: {:?}",
        p.changes
    );
    let off = Policy {
        expiry_notice_before: None,
        ..Policy::default()
    };
    let quiet = plan(&d, &o, &s, &off, now());
    assert!(!quiet.notices.iter().any(|n| n.code == "expiring"));
}
