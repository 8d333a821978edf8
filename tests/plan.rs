//! Plan invariants (proptest) and snapshots of the renderings (insta).
//!
//! The invariants use a small pure model of the executor, [`apply_model`], that performs each
//! action of a plan on in-memory observed data and state.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, TimeZone, Utc};
use proptest::prelude::*;

use guestops::desired::spec::{DesiredState, DesiredUser, Email, InvitationDefaults, Role};
use guestops::reconcile::plan::{
    Action, GuestOnRemoval, Observed, Plan, PlanFormat, Policy, RenderOptions, plan, render,
    render_with,
};
use guestops::reconcile::state::{State, UserRecord};
use guestops::remote::graph::{DirectoryUser, ObjectIdentity};
use guestops::remote::portal::{PortalUser, RoleCodes};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0)
        .single()
        .expect("valid date")
}

// ---------------------------------------------------------------------------------------------
// The executor model
// ---------------------------------------------------------------------------------------------

fn record<'s>(state: &'s mut State, key: &str, email: &str) -> &'s mut UserRecord {
    let rec = state.users.entry(key.to_owned()).or_default();
    rec.email = email.to_owned();
    rec
}

fn guests_mut<'o>(
    observed: &'o mut Observed,
    id: &str,
) -> impl Iterator<Item = &'o mut DirectoryUser> {
    let id = id.to_owned();
    observed
        .guests
        .iter_mut()
        .chain(observed.lookups.iter_mut())
        .filter(move |g| g.id == id)
}

/// Performs every action of `plan` on in-memory copies of `observed` and `state`, as a correct
/// executor would.
fn apply_model(
    plan: &Plan,
    observed: &Observed,
    state: &State,
    now: DateTime<Utc>,
) -> (Observed, State) {
    let mut obs = observed.clone();
    let mut st = state.clone();
    for (n, change) in plan.changes.iter().enumerate() {
        let key = change.key.as_str();
        let email = change.email.as_str();
        match &change.action {
            Action::AdoptGuest { guest_id } => {
                let rec = record(&mut st, key, email);
                if rec.guest_id.as_deref() != Some(guest_id) {
                    // Progress recorded for another guest does not apply to this one.
                    rec.invited_at = None;
                    rec.last_invitation_at = None;
                    rec.resend_count = 0;
                }
                rec.guest_id = Some(guest_id.clone());
                rec.guest_owned = true;
                rec.guest_disabled = false;
            }
            Action::EnableGuest { guest_id } => {
                for g in guests_mut(&mut obs, guest_id) {
                    g.account_enabled = Some(true);
                }
                let rec = record(&mut st, key, email);
                rec.guest_owned = true;
                rec.guest_disabled = false;
            }
            Action::RestoreGuest { guest_id } => {
                // The deleted guest comes back with its id, and guestops owns it.
                let at = obs.deleted.iter().position(|u| &u.id == guest_id);
                let restored = obs.deleted.remove(at.expect("restores a deleted guest"));
                obs.guests.push(restored);
                let rec = record(&mut st, key, email);
                if rec.guest_id.as_deref() != Some(guest_id) {
                    rec.invited_at = None;
                    rec.last_invitation_at = None;
                    rec.resend_count = 0;
                }
                rec.guest_id = Some(guest_id.clone());
                rec.guest_owned = true;
            }
            Action::Invite { display_name, .. } => {
                let id = format!("new-guest-{n}");
                obs.guests.push(DirectoryUser {
                    id: id.clone(),
                    display_name: Some(display_name.clone()),
                    mail: Some(email.to_owned()),
                    user_type: Some("Guest".to_owned()),
                    external_user_state: Some("PendingAcceptance".to_owned()),
                    external_user_state_change_date_time: Some(now),
                    account_enabled: Some(true),
                    ..Default::default()
                });
                let rec = record(&mut st, key, email);
                rec.guest_id = Some(id);
                rec.guest_owned = true;
                rec.invited_at = Some(now);
                rec.last_invitation_at = Some(now);
                rec.resend_count = 0;
            }
            Action::ResendInvitation { .. } => {
                let rec = record(&mut st, key, email);
                rec.last_invitation_at = Some(now);
                rec.resend_count += 1;
            }
            Action::AdoptPortal { portal_id } => {
                let rec = record(&mut st, key, email);
                rec.portal_id = Some(portal_id.clone());
                rec.portal_owned = true;
            }
            Action::Register { name, role } => {
                let id = format!("new-portal-{n}");
                obs.portal_users.push(PortalUser {
                    id: id.clone(),
                    email: email.to_owned(),
                    name: name.clone(),
                    role_code: Some(RoleCodes::default().code(*role)),
                    role: Some(*role),
                });
                let rec = record(&mut st, key, email);
                rec.portal_id = Some(id);
                rec.portal_owned = true;
            }
            Action::UpdatePortal {
                portal_id,
                to_name,
                to_role,
                ..
            } => {
                for p in obs.portal_users.iter_mut().filter(|p| &p.id == portal_id) {
                    p.name = to_name.clone();
                    p.role = Some(*to_role);
                    p.role_code = Some(RoleCodes::default().code(*to_role));
                }
            }
            Action::Unregister { portal_id } => {
                obs.portal_users.retain(|p| &p.id != portal_id);
                let rec = record(&mut st, key, email);
                rec.portal_owned = false;
                rec.portal_id = None;
            }
            Action::DisableGuest { guest_id } => {
                for g in guests_mut(&mut obs, guest_id) {
                    g.account_enabled = Some(false);
                }
                let rec = record(&mut st, key, email);
                rec.guest_owned = false;
                rec.guest_disabled = true;
            }
            Action::DeleteGuest { guest_id } => {
                obs.guests.retain(|g| &g.id != guest_id);
                obs.lookups.retain(|g| &g.id != guest_id);
                let rec = record(&mut st, key, email);
                rec.guest_owned = false;
                rec.guest_disabled = false;
                rec.guest_id = None;
            }
            Action::ReleaseGuest { .. } => {
                let rec = record(&mut st, key, email);
                rec.guest_owned = false;
                rec.guest_disabled = false;
            }
        }
    }
    (obs, st)
}

// ---------------------------------------------------------------------------------------------
// Scenario generation
// ---------------------------------------------------------------------------------------------

const EMAILS: [&str; 5] = [
    "ana.silva@partner.example",
    "bob@vendor.example",
    "cy@partner.example",
    "dee@vendor.example",
    "eve@other.example",
];
const NAMES: [&str; 3] = ["Ana Silva", "Bob Stone", "Someone Else"];

/// Everything about one address of the universe.
#[derive(Debug, Clone)]
struct Slot {
    /// (name index, role, expiry: 0 none / 1 past / 2 future, upper-case spelling)
    desired: Option<(usize, Role, u8, bool)>,
    /// 0 none, 1 guest by mail, 2 by otherMails, 3 by #EXT# UPN, 4 member (lookup), 5 two guests,
    /// 6 by identity
    tenant: u8,
    guest_in_lookups: bool,
    pending: bool,
    pending_hours: i64,
    enabled: bool,
    /// 0 none, 1 one, 2 two
    portal: u8,
    portal_name: usize,
    portal_role: Option<Role>,
    /// 0 no record, 1 owns the first guest, 2 owns a missing guest, 3 record without ownership
    state_guest: u8,
    invited_hours: i64,
    resend_count: u32,
    /// 0 not owned, 1 owns the first portal user, 2 owns another id
    state_portal: u8,
}

fn role() -> impl Strategy<Value = Role> {
    prop::sample::select(Role::ALL.to_vec())
}

fn slot() -> impl Strategy<Value = Slot> {
    (
        prop::option::weighted(0.7, (0..NAMES.len(), role(), 0u8..3, any::<bool>())),
        (
            0u8..7,
            any::<bool>(),
            any::<bool>(),
            0i64..2000,
            prop::bool::weighted(0.9),
        ),
        (0u8..3, 0..NAMES.len(), prop::option::weighted(0.85, role())),
        (0u8..4, 0i64..2000, 0u32..5, 0u8..3),
    )
        .prop_map(
            |(
                desired,
                (tenant, in_lookups, pending, pending_hours, enabled),
                (portal, pn, pr),
                (sg, ih, rc, sp),
            )| Slot {
                desired,
                tenant,
                guest_in_lookups: in_lookups,
                pending,
                pending_hours,
                enabled,
                portal,
                portal_name: pn,
                portal_role: pr,
                state_guest: sg,
                invited_hours: ih,
                resend_count: rc,
                state_portal: sp,
            },
        )
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        any::<bool>(),
        prop::sample::select(vec![
            GuestOnRemoval::Keep,
            GuestOnRemoval::Disable,
            GuestOnRemoval::Delete,
        ]),
        0usize..4,
        prop::sample::select(vec![
            None,
            Some(Duration::ZERO),
            Some(Duration::from_secs(7 * 24 * 3600)),
        ]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(prune, guest_on_removal, max_deletions, resend_after, force, restrict)| Policy {
                allowed_domains: if restrict {
                    vec!["partner.example".to_owned(), "vendor.example".to_owned()]
                } else {
                    Vec::new()
                },
                prune,
                guest_on_removal,
                max_deletions,
                resend_after,
                force,
                ..Policy::default()
            },
        )
}

#[derive(Debug, Clone)]
struct Scenario {
    desired: DesiredState,
    observed: Observed,
    state: State,
}

fn hours_ago(h: i64) -> DateTime<Utc> {
    now() - TimeDelta::hours(h)
}

fn build(slots: &[Slot], send_email: bool) -> Scenario {
    let mut desired = DesiredState {
        users: BTreeMap::new(),
        invitation: InvitationDefaults {
            send_email,
            message: Some("Welcome".to_owned()),
        },
    };
    let mut observed = Observed::default();
    let mut state = State::default();
    for (i, (s, email)) in slots.iter().zip(EMAILS).enumerate() {
        if let Some((name, role, expiry, upper)) = s.desired {
            let spelled = if upper {
                email.to_uppercase()
            } else {
                email.to_owned()
            };
            let expires = match expiry {
                1 => NaiveDate::from_ymd_opt(2026, 1, 1),
                2 => NaiveDate::from_ymd_opt(2027, 1, 1),
                _ => None,
            };
            desired.users.insert(
                email.to_owned(),
                DesiredUser {
                    email: Email::new(&spelled),
                    name: NAMES[name].to_owned(),
                    role,
                    expires,
                    reason: Some(format!("ticket {i}")),
                    line: 0,
                },
            );
        }
        let mut g = DirectoryUser {
            id: format!("g{i}a"),
            user_type: Some("Guest".to_owned()),
            external_user_state: Some(
                if s.pending {
                    "PendingAcceptance"
                } else {
                    "Accepted"
                }
                .to_owned(),
            ),
            external_user_state_change_date_time: Some(hours_ago(s.pending_hours)),
            account_enabled: Some(s.enabled),
            ..Default::default()
        };
        let mut guests = Vec::new();
        match s.tenant {
            1 => {
                g.mail = Some(email.to_uppercase());
                guests.push(g);
            }
            2 => {
                g.mail = Some(format!("alias{i}@elsewhere.example"));
                g.other_mails = vec![email.to_owned()];
                guests.push(g);
            }
            3 => {
                g.user_principal_name = Some(format!(
                    "{}#EXT#@contoso.onmicrosoft.com",
                    email.replace('@', "_")
                ));
                guests.push(g);
            }
            4 => {
                g.user_type = Some("Member".to_owned());
                g.external_user_state = None;
                g.mail = Some(email.to_owned());
                observed.lookups.push(g);
            }
            5 => {
                g.mail = Some(email.to_owned());
                let mut second = g.clone();
                second.id = format!("g{i}b");
                guests.push(second);
                guests.push(g);
            }
            6 => {
                g.identities = vec![ObjectIdentity {
                    sign_in_type: Some("federated".to_owned()),
                    issuer: Some("mail".to_owned()),
                    issuer_assigned_id: Some(email.to_owned()),
                }];
                guests.push(g);
            }
            _ => {}
        }
        for g in guests {
            if s.guest_in_lookups {
                observed.lookups.push(g.clone());
            }
            observed.guests.push(g);
        }
        for k in 0..s.portal {
            observed.portal_users.push(PortalUser {
                id: format!("p{i}{}", if k == 0 { 'a' } else { 'b' }),
                email: if k == 0 {
                    email.to_owned()
                } else {
                    email.to_uppercase()
                },
                name: NAMES[s.portal_name].to_owned(),
                role_code: Some(s.portal_role.map_or(99, |r| RoleCodes::default().code(r))),
                role: s.portal_role,
            });
        }
        if s.state_guest != 0 || s.state_portal != 0 {
            let rec = UserRecord {
                email: email.to_owned(),
                guest_id: match s.state_guest {
                    1 | 3 => Some(format!("g{i}a")),
                    2 => Some(format!("gone{i}")),
                    _ => None,
                },
                guest_owned: matches!(s.state_guest, 1 | 2),
                invited_at: Some(hours_ago(s.invited_hours)),
                last_invitation_at: Some(hours_ago(s.invited_hours)),
                resend_count: s.resend_count,
                portal_id: match s.state_portal {
                    1 => Some(format!("p{i}a")),
                    2 => Some(format!("other{i}")),
                    _ => None,
                },
                portal_owned: s.state_portal != 0,
                ..Default::default()
            };
            state.users.insert(email.to_owned(), rec);
        }
    }
    Scenario {
        desired,
        observed,
        state,
    }
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec(slot(), EMAILS.len()),
        prop::bool::weighted(0.8),
    )
        .prop_map(|(slots, send_email)| build(&slots, send_email))
}

/// Deterministic Fisher–Yates driven by a seed (a tiny LCG).
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..items.len()).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = usize::try_from((x >> 33) % (i as u64 + 1)).unwrap_or(0);
        items.swap(i, j);
    }
}

fn is_removal_like(a: &Action) -> bool {
    a.is_removal() || matches!(a, Action::ReleaseGuest { .. })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// (a) Applying a plan then re-planning gives an empty plan.
    #[test]
    fn apply_then_replan_is_empty(sc in scenario(), mut pol in policy()) {
        // A refused plan is not applied; this invariant is about plans that are.
        pol.force = true;
        pol.allowed_domains.clear();
        let first = plan(&sc.desired, &sc.observed, &sc.state, &pol, now());
        prop_assert!(!first.is_refused());
        let (obs, st) = apply_model(&first, &sc.observed, &sc.state, now());
        let second = plan(&sc.desired, &obs, &st, &pol, now());
        prop_assert!(second.changes.is_empty(), "first: {:#?}\nsecond: {:#?}", first.changes, second.changes);
        prop_assert_eq!(second.in_sync, sc.desired.users.values().filter(|d| d.expires.is_none_or(|e| e >= now().date_naive())).count());

        // And what the file says now holds in the portal.
        for (key, d) in &sc.desired.users {
            if d.expires.is_some_and(|e| e < now().date_naive()) {
                continue;
            }
            let rec = st.users.get(key);
            let pid = rec.and_then(|r| r.portal_id.as_deref());
            prop_assert!(rec.is_some_and(|r| r.portal_owned), "{key} not owned in the portal");
            let p = obs.portal_users.iter().find(|p| Some(p.id.as_str()) == pid);
            prop_assert!(p.is_some_and(|p| p.name == d.name && p.role == Some(d.role)), "{key} portal user wrong: {p:?}");
        }
    }

    /// (b) No removal without prune.
    #[test]
    fn no_removal_without_prune(sc in scenario(), mut pol in policy()) {
        pol.prune = false;
        let p = plan(&sc.desired, &sc.observed, &sc.state, &pol, now());
        prop_assert!(!p.changes.iter().any(|c| is_removal_like(&c.action)), "{:#?}", p.changes);
        prop_assert!(!p.refusals.iter().any(|r| r.code == "max-deletions" || r.code == "empty-desired"));
    }

    /// (c) The order of guests, lookups and portal users does not change the plan.
    #[test]
    fn input_order_does_not_change_the_plan(sc in scenario(), pol in policy(), seed in any::<u64>()) {
        let p1 = plan(&sc.desired, &sc.observed, &sc.state, &pol, now());
        let mut shuffled = sc.observed.clone();
        shuffle(&mut shuffled.guests, seed);
        shuffle(&mut shuffled.lookups, seed.rotate_left(17));
        shuffle(&mut shuffled.portal_users, seed.rotate_left(31));
        let p2 = plan(&sc.desired, &shuffled, &sc.state, &pol, now());
        prop_assert_eq!(p1, p2);
    }

    /// (d) With prune, only owned users are ever removed.
    #[test]
    fn only_owned_users_are_removed(sc in scenario(), mut pol in policy()) {
        pol.prune = true;
        let p = plan(&sc.desired, &sc.observed, &sc.state, &pol, now());
        for c in p.changes.iter().filter(|c| is_removal_like(&c.action)) {
            let rec = sc.state.users.get(&c.key);
            prop_assert!(rec.is_some(), "{} removed without a state record", c.key);
            let rec = rec.expect("checked");
            match &c.action {
                Action::Unregister { portal_id } => {
                    prop_assert!(rec.portal_owned);
                    prop_assert!(rec.portal_id.as_deref().is_none_or(|id| id == portal_id));
                }
                Action::DisableGuest { guest_id } | Action::DeleteGuest { guest_id } | Action::ReleaseGuest { guest_id } => {
                    prop_assert!(rec.guest_owned);
                    prop_assert_eq!(rec.guest_id.as_deref(), Some(guest_id.as_str()));
                }
                _ => {}
            }
            // A removal is never for a user the file still wants.
            let still_wanted = sc.desired.users.get(&c.key).is_some_and(|d| d.expires.is_none_or(|e| e >= now().date_naive()));
            prop_assert!(!still_wanted, "{} is still desired but has a removal", c.key);
        }
    }

    /// `--only` (issue 10 item 5) keeps exactly the targeted users' changes of the whole plan,
    /// and never lifts a refusal of the whole plan.
    #[test]
    fn only_is_the_whole_plan_restricted(sc in scenario(), mut pol in policy(), mask in any::<u8>()) {
        let whole = plan(&sc.desired, &sc.observed, &sc.state, &pol, now());
        let targets: std::collections::BTreeSet<String> = EMAILS
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << (i % 8)) != 0)
            .map(|(_, e)| e.to_lowercase())
            .collect();
        pol.only = Some(targets.clone());
        let only = plan(&sc.desired, &sc.observed, &sc.state, &pol, now());
        let keep = |c: &&guestops::reconcile::plan::Change| targets.contains(&c.key);
        prop_assert_eq!(&only.changes, &whole.changes.iter().filter(keep).cloned().collect::<Vec<_>>());
        prop_assert_eq!(&only.refused_changes, &whole.refused_changes.iter().filter(keep).cloned().collect::<Vec<_>>());
        prop_assert_eq!(only.is_refused(), whole.is_refused());
        prop_assert!(only.in_sync <= whole.in_sync);
        prop_assert_eq!(only.desired_users, whole.desired_users);
    }

    /// No plan ever unregisters and registers the same user (no churn).
    #[test]
    fn never_delete_and_recreate(sc in scenario(), pol in policy()) {
        let p = plan(&sc.desired, &sc.observed, &sc.state, &pol, now());
        for key in sc.desired.users.keys() {
            let mine: Vec<&Action> = p.changes.iter().filter(|c| &c.key == key).map(|c| &c.action).collect();
            let unregisters = mine.iter().any(|a| matches!(a, Action::Unregister { .. }));
            let registers = mine.iter().any(|a| matches!(a, Action::Register { .. }));
            let deletes = mine.iter().any(|a| matches!(a, Action::DeleteGuest { .. }));
            let invites = mine.iter().any(|a| matches!(a, Action::Invite { .. }));
            prop_assert!(!(unregisters && registers || deletes && invites), "{key}: {mine:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Renderings
// ---------------------------------------------------------------------------------------------

fn desired_user(email: &str, name: &str, role: Role) -> DesiredUser {
    DesiredUser {
        email: Email::new(email),
        name: name.to_owned(),
        role,
        expires: None,
        reason: None,
        line: 0,
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

fn portal_user(id: &str, email: &str, name: &str, role: Option<Role>) -> PortalUser {
    PortalUser {
        id: id.to_owned(),
        email: email.to_owned(),
        name: name.to_owned(),
        role_code: Some(role.map_or(7, |r| RoleCodes::default().code(r))),
        role,
    }
}

/// One of everything: invite + register, adopt, update (role and name), resend, a removal,
/// a member, a refusal, a restore of a soft-deleted guest.
fn representative_plan() -> Plan {
    let mut users = vec![
        desired_user(
            "ana.silva@partner.example",
            "Ana Silva",
            Role::Administrator,
        ),
        desired_user("Bob.Stone@vendor.example", "Bob Stone", Role::Administrator),
        desired_user(
            "carla@partner.example",
            "Carla Diaz",
            Role::WorkspaceContributor,
        ),
        desired_user("dan@contoso.example", "Dan Internal", Role::Contributor),
        desired_user("eve@evil.example", "Eve | <b>@everyone</b>", Role::Viewer),
        desired_user("fay@partner.example", "Fay Ok", Role::Administrator),
        desired_user("ivy@partner.example", "Ivy Back", Role::Viewer),
    ];
    users[0].reason = Some("CHG-1234 migration support".to_owned());
    let mut expired = desired_user("gus@vendor.example", "Gus Gone", Role::Contributor);
    expired.expires = NaiveDate::from_ymd_opt(2026, 2, 28);
    users.push(expired);
    let desired = DesiredState {
        users: users
            .into_iter()
            .map(|u| (u.email.normalized().to_owned(), u))
            .collect(),
        invitation: InvitationDefaults {
            send_email: true,
            message: Some("You now administer the Contoso reporting portal.".to_owned()),
        },
    };
    let mut carla = guest("g-carla", "carla@partner.example");
    carla.external_user_state = Some("PendingAcceptance".to_owned());
    carla.external_user_state_change_date_time = Some(now() - TimeDelta::days(20));
    let mut dan = guest("m-dan", "dan@contoso.example");
    dan.user_type = Some("Member".to_owned());
    let observed = Observed {
        guests: vec![
            guest("g-bob", "bob.stone@vendor.example"),
            carla,
            guest("g-fay", "fay@partner.example"),
            guest("g-gus", "gus@vendor.example"),
            guest("g-hal", "hal@vendor.example"),
        ],
        lookups: vec![dan],
        deleted: vec![guest("g-ivy", "ivy@partner.example")],
        portal_users: vec![
            portal_user(
                "p-bob",
                "bob.stone@vendor.example",
                "Bob",
                Some(Role::Contributor),
            ),
            portal_user("p-carla", "carla@partner.example", "Carla Diaz", None),
            portal_user(
                "p-dan",
                "dan@contoso.example",
                "Dan Internal",
                Some(Role::Contributor),
            ),
            portal_user(
                "p-fay",
                "fay@partner.example",
                "Fay Ok",
                Some(Role::Administrator),
            ),
            portal_user(
                "p-gus",
                "gus@vendor.example",
                "Gus Gone",
                Some(Role::Contributor),
            ),
            portal_user(
                "p-hal",
                "hal@vendor.example",
                "Hal",
                Some(Role::Administrator),
            ),
            portal_user(
                "p-ivy",
                "ivy@partner.example",
                "Ivy Back",
                Some(Role::Viewer),
            ),
            portal_user(
                "p-viewer",
                "viewer@contoso.example",
                "Not Ours",
                Some(Role::Viewer),
            ),
        ],
    };
    let owned = |email: &str, g: &str, p: &str| UserRecord {
        email: email.to_owned(),
        guest_id: Some(g.to_owned()),
        guest_owned: true,
        invited_at: Some(now() - TimeDelta::days(20)),
        last_invitation_at: Some(now() - TimeDelta::days(20)),
        portal_id: Some(p.to_owned()),
        portal_owned: true,
        ..Default::default()
    };
    let state = State {
        users: [
            (
                "carla@partner.example".to_owned(),
                owned("carla@partner.example", "g-carla", "p-carla"),
            ),
            (
                "fay@partner.example".to_owned(),
                owned("fay@partner.example", "g-fay", "p-fay"),
            ),
            (
                "gus@vendor.example".to_owned(),
                owned("gus@vendor.example", "g-gus", "p-gus"),
            ),
            (
                "hal@vendor.example".to_owned(),
                owned("hal@vendor.example", "g-hal", "p-hal"),
            ),
            (
                "ivy@partner.example".to_owned(),
                owned("ivy@partner.example", "g-ivy", "p-ivy"),
            ),
        ]
        .into_iter()
        .collect(),
        ..State::default()
    };
    let policy = Policy {
        allowed_domains: vec![
            "partner.example".to_owned(),
            "vendor.example".to_owned(),
            "contoso.example".to_owned(),
        ],
        prune: true,
        guest_on_removal: GuestOnRemoval::Disable,
        max_deletions: 1,
        ..Policy::default()
    };
    plan(&desired, &observed, &state, &policy, now())
}

fn rendered(p: &Plan, format: PlanFormat, color: bool) -> String {
    let mut out = Vec::new();
    render(p, format, color, &mut out).expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("renderings are UTF-8")
}

#[test]
fn text_rendering() {
    let text = rendered(&representative_plan(), PlanFormat::Text, false);
    assert!(!text.contains('\x1b'), "no colour unless asked");
    insta::assert_snapshot!("text", text);
}

#[test]
fn text_rendering_in_colour_marks_creations_green_and_removals_red() {
    let text = rendered(&representative_plan(), PlanFormat::Text, true);
    assert!(text.lines().any(|l| l.starts_with("\x1b[32m+ invite")));
    assert!(text.lines().any(|l| l.starts_with("\x1b[31m- unregister")));
    assert!(text.lines().any(|l| l.starts_with("\x1b[33m~ update")));
}

#[test]
fn text_rendering_of_a_plan_in_sync() {
    let p = Plan {
        generated_at: now(),
        desired_users: 5,
        in_sync: 5,
        changes: Vec::new(),
        refused_changes: Vec::new(),
        refusals: Vec::new(),
        notices: Vec::new(),
    };
    assert_eq!(
        rendered(&p, PlanFormat::Text, false),
        "No changes: 5 users in sync.\n"
    );
}

#[test]
fn markdown_rendering() {
    let options = RenderOptions {
        revision: Some(guestops::reconcile::plan::PlanRevision {
            id: "3f2a9c1".to_owned(),
            short: "3f2a9c1".to_owned(),
            branch: None,
            subject: None,
        }),
        color: false,
    };
    let mut out = Vec::new();
    render_with(
        &representative_plan(),
        PlanFormat::Markdown,
        &options,
        &mut out,
    )
    .expect("vec");
    let md = String::from_utf8(out).expect("utf-8");
    // Outside code spans (where GitHub renders nothing), no HTML and no mention survives.
    let outside: String = md.split('`').step_by(2).collect();
    assert!(
        !outside.contains("<b>"),
        "HTML from a name must not reach the comment"
    );
    assert!(
        !outside.contains("@everyone"),
        "a name must not mention anyone"
    );
    assert!(
        md.contains("`Eve \\| <b>@everyone</b>`"),
        "the name is shown verbatim in a code span"
    );
    insta::assert_snapshot!("markdown", md);
}

#[test]
fn json_rendering() {
    let json = rendered(&representative_plan(), PlanFormat::Json, false);
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(value["version"], 2);
    assert_eq!(value["summary"]["refused"], true);
    assert_eq!(value["summary"]["refusedChanges"], 2);
    assert_eq!(value["refusals"][1]["scope"], "user");
    assert_eq!(value["refusedChanges"][0]["user"], "eve@evil.example");
    insta::assert_snapshot!("json", json);
}

#[test]
fn markdown_of_a_huge_plan_stays_under_the_github_comment_limit() {
    let desired = DesiredState {
        users: (0..10_000)
            .map(|i| {
                let u = desired_user(
                    &format!("user{i:05}@partner.example"),
                    &format!("User {i}"),
                    Role::Administrator,
                );
                (u.email.normalized().to_owned(), u)
            })
            .collect(),
        invitation: InvitationDefaults::default(),
    };
    let p = plan(
        &desired,
        &Observed::default(),
        &State::default(),
        &Policy::default(),
        now(),
    );
    assert_eq!(p.changes.len(), 20_000);
    let md = rendered(&p, PlanFormat::Markdown, false);
    assert!(
        md.chars().count() < 65_535,
        "{} characters",
        md.chars().count()
    );
    let rows = md.lines().filter(|l| l.starts_with("| `+` |")).count();
    let line = md
        .lines()
        .find(|l| l.contains("more changes not shown"))
        .expect("a visible truncation notice");
    assert_eq!(
        line,
        format!(
            "… {} more changes not shown; run `guestops plan` for all",
            20_000 - rows
        )
    );
    assert!(
        rows > 100,
        "the comment still shows a useful number of changes ({rows})"
    );
    // The summary counts everything, not only what is shown.
    assert!(md.contains("| invite | 10000 |"));
}
