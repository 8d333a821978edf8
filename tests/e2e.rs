//! End-to-end runs of the real `guestops` binary against the simulator: what an operator would
//! notice on the terminal (exit code, plan, refusals, errors) and in the tenant and the portal
//! afterwards (invitations and registrations per address, stored portal objects, writes).

mod common;
#[path = "e2e/fail_closed.rs"]
mod fail_closed;
#[path = "e2e/kill.rs"]
mod kill;
#[path = "e2e/plans.rs"]
mod plans;
#[path = "e2e/portal_fields.rs"]
mod portal_fields;
#[path = "e2e/restore.rs"]
mod restore;
#[path = "e2e/retry_after.rs"]
mod retry_after;
#[path = "e2e/sign_in.rs"]
mod sign_in;

use std::time::Duration;

use common::{Harness, role_code};
use guestops::sim::graph::SimUser;
use guestops::sim::{FailRule, Faults, seed};
use serde_json::json;

const DOMAIN: &str = seed::TENANT_DOMAIN;

/// Ten new administrators (invited and registered by the first apply).
fn new_users(prefix: &str, n: usize) -> Vec<(String, String, String)> {
    let roles = [
        "administrator",
        "contributor",
        "viewer",
        "workspace-contributor",
    ];
    (0..n)
        .map(|i| {
            (
                format!("{prefix}{i:02}@partner.example"),
                format!("{prefix} {i:02}"),
                roles[i % roles.len()].to_owned(),
            )
        })
        .collect()
}

fn as_refs(users: &[(String, String, String)]) -> Vec<(&str, &str, &str)> {
    users
        .iter()
        .map(|(e, n, r)| (e.as_str(), n.as_str(), r.as_str()))
        .collect()
}

fn fail(
    method: &str,
    path: &str,
    query: Option<&str>,
    status: u16,
    times: Option<u32>,
) -> FailRule {
    FailRule {
        method: Some(method.to_owned()),
        path_prefix: path.to_owned(),
        query_contains: query.map(str::to_owned),
        status,
        times,
        after_processing: false,
    }
}

/// A second apply reads everything again and finds nothing to do: no write at all.
#[track_caller]
fn assert_second_apply_clean(h: &Harness) {
    let writes = h.writes();
    let second = h.apply(&[]);
    second.expect_code(0);
    assert!(
        second.stdout.contains("No changes"),
        "the second apply must say there is nothing to do:\n{}",
        second.stdout
    );
    assert_eq!(h.writes(), writes, "the second apply must not write");
}

#[test]
fn thousands_of_guests_converge_in_one_apply_and_the_second_apply_writes_nothing() {
    let h = Harness::new();
    seed::unrelated(&h.sim, 2500, 300);
    // An existing guest that is not registered yet, and an existing portal viewer that is not
    // a guest yet: both are adopted on the side where they exist.
    let guest = "guest01234@supplier10.example";
    let viewer = "viewer0123@customer3.example";
    let mut users = new_users("newadmin", 10);
    users.push((guest.into(), "Guest 01234".into(), "contributor".into()));
    users.push((viewer.into(), "Viewer 0123".into(), "administrator".into()));
    h.write_users(&as_refs(&users));

    let before = h.counters();
    let plan = h.plan(&["--detailed-exitcode"]);
    plan.expect_code(2);
    assert!(plan.stdout.contains("11 to invite"), "{}", plan.stdout);
    assert!(plan.stdout.contains("11 to register"), "{}", plan.stdout);
    let read = h.counters();
    assert_eq!(read.writes, 0, "plan must not write");
    assert!(
        read.graph_requests - before.graph_requests >= 3,
        "2,500 guests are read in pages of at most 999: {read:?}"
    );
    assert!(
        read.portal_requests - before.portal_requests >= 12,
        "300 portal users are read in pages of 25: {read:?}"
    );

    let first = h.apply(&[]);
    first.expect_code(0);
    assert!(
        first.stdout.contains("0 failed"),
        "the first apply reports no failure:\n{}",
        first.stdout
    );
    h.assert_converged_new(&as_refs(&users[..10]));
    assert_eq!(
        h.invitations(guest),
        0,
        "an existing guest is not re-invited"
    );
    assert_eq!(h.creates(guest), 1);
    assert_eq!(h.portal_role(guest), Some(role_code("contributor")));
    assert_eq!(h.invitations(viewer), 1);
    assert_eq!(
        h.creates(viewer),
        0,
        "an existing portal user is not re-registered"
    );
    assert_eq!(h.portal_role(viewer), Some(role_code("administrator")));
    {
        let state = h.state();
        assert_eq!(state.portal.len(), 300 + 11, "no duplicate portal user");
        assert_eq!(state.graph.users().len(), 2500 + 11, "no duplicate guest");
    }

    assert_second_apply_clean(&h);
    let writes = h.writes();
    h.plan(&["--detailed-exitcode"]).expect_code(0);
    assert_eq!(h.writes(), writes);

    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(h.state_dir().join("state.json")).expect("state.json exists"),
    )
    .expect("state.json is JSON");
    assert_eq!(
        state["users"].as_object().map(serde_json::Map::len),
        Some(12),
        "state.json records every managed user: {state}"
    );
    let audit =
        guestops::reconcile::state::read_audit(&h.state_dir()).expect("audit.jsonl is readable");
    assert!(
        audit.len() >= 22,
        "every remote write is audited: {} records",
        audit.len()
    );
}

#[test]
fn existing_guests_members_and_portal_users_are_adopted_not_duplicated() {
    let h = Harness::new();
    seed::unrelated(&h.sim, 40, 30);
    {
        let mut state = h.state();
        // Matched by mail.
        let mut by_mail = SimUser::guest("mia.mail@partner.example", "Mia Mail", DOMAIN);
        by_mail.external_user_state = Some("Accepted".into());
        state.graph.insert_user(by_mail);
        // Matched by otherMails only: mail and UPN are another address.
        let mut by_other = SimUser::guest("omar@omar-private.example", "Omar Other", DOMAIN);
        by_other.other_mails = vec![
            "omar@omar-private.example".into(),
            "Omar.Other@partner.example".into(),
        ];
        state.graph.insert_user(by_other);
        // Invited with another letter case.
        state.graph.insert_user(SimUser::guest(
            "CASE.Carl@Partner.Example",
            "Carl Case",
            DOMAIN,
        ));
        // An internal member with the address: never invited.
        state.graph.insert_user(SimUser::member(
            "mo.member@contoso.example",
            Some("mo.member@contoso.example"),
            "Mo Member",
        ));
        // A portal user registered in another letter case.
        state
            .portal
            .add_user("PIA.PORTAL@Partner.example", "Pia Portal", 1);
    }
    let users = [
        ("mia.mail@partner.example", "Mia Mail", "administrator"),
        ("omar.other@partner.example", "Omar Other", "administrator"),
        ("case.carl@partner.example", "Carl Case", "administrator"),
        ("mo.member@contoso.example", "Mo Member", "administrator"),
        ("pia.portal@partner.example", "Pia Portal", "administrator"),
    ];
    h.write_users(&users);

    let plan = h.plan(&[]);
    plan.expect_code(0);
    let line_of = |email: &str, what: &str| {
        plan.stdout
            .lines()
            .any(|l| l.contains("adopt") && l.contains(email) && l.contains(what))
    };
    for email in [
        "mia.mail@partner.example",
        "omar.other@partner.example",
        "case.carl@partner.example",
    ] {
        assert!(
            line_of(email, "guest"),
            "the plan shows that the guest of {email} is adopted:\n{}",
            plan.stdout
        );
    }
    assert!(
        line_of("pia.portal@partner.example", "portal user"),
        "the plan shows that the portal user is adopted:\n{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .lines()
            .any(|l| l.starts_with("note [member]") && l.contains("mo.member@contoso.example")),
        "the plan notes the member:\n{}",
        plan.stdout
    );
    assert!(
        !plan
            .stdout
            .lines()
            .any(|l| l.starts_with("+ invite") && !l.contains("pia.portal")),
        "only Pia (portal-only) is to be invited:\n{}",
        plan.stdout
    );

    h.apply(&[]).expect_code(0);
    for (email, _, _) in &users[..4] {
        assert_eq!(h.invitations(email), 0, "{email} must not be invited");
        assert_eq!(h.creates(email), 1, "{email} is registered once");
    }
    assert_eq!(h.invitations("pia.portal@partner.example"), 1);
    assert_eq!(
        h.creates("pia.portal@partner.example"),
        0,
        "a portal user in another letter case is not registered again"
    );
    assert_eq!(
        h.state()
            .graph
            .find_by_email("case.carl@partner.example")
            .len(),
        1
    );
    assert_second_apply_clean(&h);
}

#[test]
fn an_apostrophe_in_the_address_works_end_to_end() {
    let h = Harness::new();
    seed::unrelated(&h.sim, 20, 30);
    let users = [
        (
            "o'brien@partner.example",
            "Liam O'Brien",
            "workspace-contributor",
        ),
        ("d'arcy.o'neil@partner.example", "D'Arcy O'Neil", "viewer"),
    ];
    h.write_users(&users);
    h.plan(&["--detailed-exitcode"]).expect_code(2);
    let first = h.apply(&[]);
    first.expect_code(0);
    assert!(
        first.stdout.contains("o'brien@partner.example"),
        "{}",
        first.stdout
    );
    h.assert_converged_new(&users);
    assert_eq!(
        h.portal_user("o'brien@partner.example")
            .and_then(|u| u.get("email").cloned()),
        Some(json!("o'brien@partner.example")),
        "the address is stored as written"
    );
    assert_second_apply_clean(&h);
    h.plan(&["--detailed-exitcode"]).expect_code(0);
    h.assert_converged_new(&users);
}

#[test]
fn a_role_change_keeps_groups_reports_flags_and_unknown_fields() {
    let h = Harness::new();
    seed::unrelated(&h.sim, 20, 40);
    let email = "rita.role@partner.example";
    {
        let mut state = h.state();
        let mut guest = SimUser::guest(email, "Rita Role", DOMAIN);
        guest.external_user_state = Some("Accepted".into());
        state.graph.insert_user(guest);
        state
            .portal
            .insert_user(json!({
                "email": email,
                "name": "Rita Role",
                "role": 3,
                "groups": ["7d1f3a52-0c2b-4bfa-9a57-1f5e0c9b2a10"],
                "reports": [
                    "4e1c9f0a-8d2b-4c3e-9f1a-2b3c4d5e6f70",
                    "5f2d0a1b-9e3c-4d4f-8a2b-3c4d5e6f7081"
                ],
                "companies": ["c0c0c0c0-1111-4222-8333-944455556666"],
                "department": "Finance ",
                "canExportReport": true,
                "canEditReport": true,
                "favoriteTheme": { "name": "dark", "contrast": [1, 2] },
                "legacyCode": 42
            }))
            .expect("a JSON object is a portal user");
    }
    let before = h.portal_user(email).expect("seeded");
    h.write_users(&[(email, "Rita Role", "contributor")]);

    let plan = h.plan(&[]);
    plan.expect_code(0);
    assert!(
        plan.stdout.lines().any(|l| l.contains("update")
            && l.contains(email)
            && l.contains("viewer → contributor")),
        "the plan shows the role change:\n{}",
        plan.stdout
    );
    h.apply(&[]).expect_code(0);

    let after = h.portal_user(email).expect("still registered");
    assert_eq!(after.get("role"), Some(&json!(2)), "the role changed");
    let differing: std::collections::BTreeSet<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert_eq!(
        differing.into_iter().collect::<Vec<_>>(),
        vec!["role"],
        "only the role may differ\nbefore: {before:?}\nafter:  {after:?}"
    );
    assert_eq!(h.creates(email), 0);
    assert_eq!(h.invitations(email), 0);
    assert_eq!(
        h.state().portal.writes().updates,
        1,
        "one read-modify-write"
    );
    assert_second_apply_clean(&h);
}

#[test]
fn a_429_storm_is_ridden_out() {
    let h = Harness::new();
    seed::unrelated(&h.sim, 1200, 80);
    let storm = Faults {
        throttle_every: Some(3),
        retry_after: Some("0".into()),
        ..Faults::default()
    };
    {
        let mut state = h.state();
        state.graph_faults = storm.clone();
        state.portal_faults = storm;
    }
    let users = new_users("storm", 6);
    h.write_users(&as_refs(&users));
    let first = h.apply(&[]);
    first.expect_code(0);
    assert!(first.stdout.contains("0 failed"), "{}", first.stdout);
    h.assert_converged_new(&as_refs(&users));
    assert!(
        h.counters().throttled >= 5,
        "the storm happened: {:?}",
        h.counters()
    );
    assert_second_apply_clean(&h);
    h.assert_converged_new(&as_refs(&users));
}

#[test]
fn transient_5xx_on_the_listings_are_retried() {
    let h = Harness::new();
    seed::unrelated(&h.sim, 1200, 60);
    {
        let mut state = h.state();
        state.graph_faults.fail = vec![fail("GET", "/v1.0/users", None, 503, Some(2))];
        state.portal_faults.fail = vec![
            fail("GET", "/api/user", None, 503, Some(1)),
            fail("GET", "/api/user", None, 500, Some(1)),
        ];
    }
    let users = new_users("flaky", 4);
    h.write_users(&as_refs(&users));
    h.apply(&[]).expect_code(0);
    h.assert_converged_new(&as_refs(&users));
    assert_eq!(
        h.counters().injected_failures,
        4,
        "every injected failure was met"
    );
    assert_second_apply_clean(&h);
}

/// A listing page that keeps failing: nothing is written and the user is told why.
#[track_caller]
fn assert_incomplete_read_aborts(h: &Harness, users: &[(String, String, String)], system: &str) {
    let run = h.apply(&[]);
    run.expect_code(1);
    let counters = h.counters();
    assert!(
        counters.injected_failures + counters.throttled > 0,
        "the failing read was requested"
    );
    assert_eq!(
        h.writes(),
        0,
        "nothing may be written after an incomplete read"
    );
    for (email, _, _) in users {
        assert_eq!(h.invitations(email), 0);
        assert_eq!(h.creates(email), 0);
    }
    let said = run.stderr.to_lowercase();
    assert!(
        said.contains(&format!("could not read the {system} completely"))
            && said.contains("nothing was changed"),
        "stderr says the read was incomplete:\n{}",
        run.stderr
    );
}

#[test]
fn a_graph_page_that_keeps_failing_aborts_before_any_write() {
    let h = Harness::new();
    seed::unrelated(&h.sim, 1200, 10);
    {
        let mut state = h.state();
        state.graph_faults.retry_after = Some("0".into());
        state.graph_faults.fail = vec![fail("GET", "/v1.0/users", Some("$skiptoken"), 503, None)];
    }
    let users = new_users("blocked", 3);
    h.write_users(&as_refs(&users));
    assert_incomplete_read_aborts(&h, &users, "tenant");
}

#[test]
fn a_portal_page_that_keeps_failing_aborts_before_any_write() {
    let h = Harness::new();
    seed::unrelated(&h.sim, 10, 60);
    {
        let mut state = h.state();
        state.portal_faults.retry_after = Some("0".into());
        state.portal_faults.fail = vec![fail("GET", "/api/user", Some("pageNumber=2"), 503, None)];
    }
    let users = new_users("blocked", 3);
    h.write_users(&as_refs(&users));
    assert_incomplete_read_aborts(&h, &users, "portal");
}

#[test]
fn killed_mid_apply_the_next_apply_converges_without_duplicates() {
    let mut h = Harness::new();
    seed::unrelated(&h.sim, 30, 30);
    // An invitation killed before it reached Graph leaves an open intent: it is sent once
    // more only after the grace (seconds here).
    let grace = Duration::from_secs(2);
    h.configure(|c| {
        c.tenant.concurrency = 2;
        c.portal.concurrency = 1;
        c.tenant.replication_grace = grace;
    });
    {
        let mut state = h.state();
        state.graph_faults.latency = Duration::from_millis(250);
        state.portal_faults.latency = Duration::from_millis(250);
    }
    let users = new_users("crash", 8);
    h.write_users(&as_refs(&users));
    let total_writes = 2 * users.len() as u64;

    let mut child = common::guestops_std(h.dir.path())
        .arg("apply")
        .arg("--config")
        .arg(h.config_path())
        .arg("--desired")
        .arg(h.users_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("guestops starts");
    // Wait until some but not all writes happened (bounded, to fail rather than hang).
    let mut killed_at = None;
    for _ in 0..6000 {
        let writes = h.writes();
        if writes >= 3 {
            killed_at = Some(writes);
            break;
        }
        if child.try_wait().expect("child status").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("kill -9 guestops");
    let status = child.wait().expect("reap guestops");
    let killed_at = killed_at.expect("the first apply got to write before it was killed");
    assert!(
        status.code().is_none(),
        "guestops was killed, not finished ({status})"
    );
    assert!(
        killed_at < total_writes,
        "killed half-way: {killed_at} of {total_writes} writes"
    );
    // Let in-flight requests of the killed process finish in the simulator.
    {
        let mut state = h.state();
        state.graph_faults.latency = Duration::ZERO;
        state.portal_faults.latency = Duration::ZERO;
    }
    std::thread::sleep(Duration::from_millis(400));
    let after_kill = h.writes();
    assert!(after_kill < total_writes, "the killed run did not finish");

    h.apply(&[]).expect_code(0);
    std::thread::sleep(grace);
    let second = h.apply(&[]);
    second.expect_code(0);
    for (email, _, role) in &users {
        assert!(
            h.invitations(email) <= 1,
            "{email} invited {} times",
            h.invitations(email)
        );
        assert_eq!(h.creates(email), 1, "{email} registered once");
        assert_eq!(h.portal_role(email), Some(role_code(role)));
        assert_eq!(
            h.state().graph.find_by_email(email).len(),
            1,
            "{email} has one guest"
        );
    }
    assert_second_apply_clean(&h);
    // A registration learns its portal id at the next listing (the portal's POST returns none):
    // after the clean apply, state.json knows every guest and portal user.
    let state = guestops::reconcile::state::StateStore::read_only(&h.state_dir())
        .expect("state.json valid");
    assert_eq!(state.users.len(), users.len());
    assert!(
        state
            .users
            .values()
            .all(|u| u.guest_id.is_some() && u.portal_id.is_some()),
        "state.json knows every guest and portal user: {state:?}"
    );
}

/// Applies `users` once with prune on, so guestops owns them.
fn owned(users: &[(String, String, String)], max_deletions: usize) -> Harness {
    let mut h = Harness::new();
    seed::unrelated(&h.sim, 20, 30);
    h.configure(|c| {
        c.policy.prune = true;
        c.policy.max_deletions = max_deletions;
    });
    h.write_users(&as_refs(users));
    h.apply(&[]).expect_code(0);
    h.assert_converged_new(&as_refs(users));
    h
}

#[test]
fn too_many_deletions_are_refused_until_forced() {
    let users = new_users("leaving", 5);
    let h = owned(&users, 2);
    h.write_users(&as_refs(&users[..1]));
    let writes = h.writes();

    let refused = h.apply(&[]);
    refused.expect_code(3);
    assert!(
        refused.stdout.contains("refused [max-deletions]")
            && refused.stdout.contains("4 users would be removed"),
        "the refusal is printed:\n{}",
        refused.stdout
    );
    assert_eq!(h.writes(), writes, "a refused plan writes nothing");
    assert!(h.portal_user(&users[4].0).is_some());
    h.plan(&["--detailed-exitcode"]).expect_code(3);

    h.apply(&["--force"]).expect_code(0);
    for (email, _, _) in &users[1..] {
        assert!(
            h.portal_user(email).is_none(),
            "{email} is removed from the portal once forced"
        );
    }
    assert!(h.portal_user(&users[0].0).is_some(), "the kept user stays");
    assert_eq!(
        h.state().portal.len(),
        30 + 1,
        "unowned users are untouched"
    );
    assert_second_apply_clean(&h);
}

#[test]
fn an_empty_desired_state_is_refused() {
    let users = new_users("everyone", 2);
    let h = owned(&users, 5);
    h.write_users(&[]);
    let writes = h.writes();
    let refused = h.apply(&[]);
    refused.expect_code(3);
    assert!(
        refused.stdout.contains("refused [empty-desired]"),
        "the refusal is printed:\n{}",
        refused.stdout
    );
    assert_eq!(h.writes(), writes, "a refused plan writes nothing");
    for (email, _, _) in &users {
        assert!(
            h.portal_user(email).is_some(),
            "{email} is still registered"
        );
    }
}

#[test]
fn an_address_outside_the_allowed_domains_is_refused_for_that_user_only() {
    let mut h = Harness::new();
    seed::unrelated(&h.sim, 20, 30);
    h.configure(|c| c.policy.allowed_domains = vec!["partner.example".into()]);
    h.write_users(&[
        ("ana.silva@partner.example", "Ana Silva", "administrator"),
        ("eve@elsewhere.example", "Eve Elsewhere", "administrator"),
    ]);
    let refused = h.apply(&[]);
    refused.expect_code(3);
    assert!(
        refused.stdout.contains("refused [domain-not-allowed]")
            && refused.stdout.contains("eve@elsewhere.example"),
        "the refusal names the address:\n{}",
        refused.stdout
    );
    assert_eq!(
        h.invitations("eve@elsewhere.example"),
        0,
        "the refused user is not invited"
    );
    assert_eq!(h.creates("eve@elsewhere.example"), 0, "nor registered");
    assert_eq!(
        h.invitations("ana.silva@partner.example"),
        1,
        "the others proceed"
    );
    assert_eq!(h.creates("ana.silva@partner.example"), 1);
    // --force never overrides the domain policy, and the next apply repeats nothing for Ana.
    let writes = h.writes();
    h.apply(&["--force"]).expect_code(3);
    assert_eq!(h.invitations("eve@elsewhere.example"), 0);
    assert_eq!(h.creates("eve@elsewhere.example"), 0);
    assert_eq!(h.writes(), writes, "nothing else to do");
}

#[test]
fn an_invalid_users_yaml_is_reported_with_positions_and_nothing_is_requested() {
    let h = Harness::new();
    h.write_users_yaml(
        "apiVersion: guestops/v1\nusers:\n  - email: ana.silva@partner.example\n    nmae: Ana\n  - email: bob-at-vendor.example\n    name: Bob\n",
    );
    let users = h.users_path().display().to_string();
    for sub in ["plan", "apply"] {
        let run = h.run(sub, &[]);
        run.expect_code(1);
        assert!(
            run.stderr.contains(&format!("{users}:4:5")),
            "{sub}: the unknown key is located:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains(&format!("{users}:5:12")),
            "{sub}: the bad address is located:\n{}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{sub}: no plan is printed");
    }
    assert_eq!(h.requests(), 0, "no request reached the simulator");
}

#[test]
fn a_write_that_succeeded_behind_a_gateway_error_is_not_repeated() {
    let h = Harness::new();
    seed::unrelated(&h.sim, 20, 30);
    {
        let mut state = h.state();
        state.graph_faults.fail = vec![FailRule {
            after_processing: true,
            ..fail("POST", "/v1.0/invitations", None, 504, Some(1))
        }];
        state.portal_faults.fail = vec![FailRule {
            after_processing: true,
            ..fail("POST", "/api/user", None, 504, Some(1))
        }];
    }
    let users = new_users("gateway", 3);
    h.write_users(&as_refs(&users));
    let first = h.apply(&[]);
    assert_eq!(
        h.counters().injected_failures,
        2,
        "both gateway errors happened"
    );
    assert!(
        matches!(first.code, Some(0 | 1)),
        "apply ends normally: {first:?}"
    );
    // Whatever the first run concluded, the second converges without repeating a write.
    h.apply(&[]).expect_code(0);
    h.assert_converged_new(&as_refs(&users));
    assert_second_apply_clean(&h);
}

#[test]
fn one_failed_invitation_does_not_stop_the_others_and_is_retried_next_time() {
    let h = Harness::new();
    seed::unrelated(&h.sim, 20, 30);
    h.state().graph_faults.fail = vec![fail("POST", "/v1.0/invitations", None, 403, Some(1))];
    let users = new_users("partial", 4);
    h.write_users(&as_refs(&users));
    let first = h.apply(&[]);
    first.expect_code(1);
    assert!(
        first.stdout.contains("1 failed") && first.stdout.contains("failed: invite"),
        "the failure is reported:\n{}",
        first.stdout
    );
    let invited = users
        .iter()
        .filter(|(email, _, _)| h.invitations(email) == 1)
        .count();
    assert_eq!(invited, 3, "the other users were invited");
    h.apply(&[]).expect_code(0);
    h.assert_converged_new(&as_refs(&users));
    assert_second_apply_clean(&h);
}

#[test]
fn a_second_apply_during_replication_delay_does_not_invite_again() {
    let h = Harness::new();
    seed::unrelated(&h.sim, 20, 30);
    h.state()
        .graph
        .set_replication_delay(Duration::from_secs(3600));
    let users = new_users("replicating", 3);
    h.write_users(&as_refs(&users));
    h.apply(&[]).expect_code(0);
    h.assert_converged_new(&as_refs(&users));
    assert_second_apply_clean(&h);
    h.plan(&["--detailed-exitcode"]).expect_code(0);
    h.assert_converged_new(&as_refs(&users));
}

#[test]
fn a_guest_invited_seen_and_then_deleted_behind_guestops_back_is_invited_again_at_once() {
    let h = Harness::new();
    let users = new_users("deleted", 2);
    h.write_users(&as_refs(&users));
    h.apply(&[]).expect_code(0);
    // The next reconcile reads the new guests: they are no longer "replicating".
    assert_second_apply_clean(&h);
    let (victim, ..) = &users[0];
    let id = h.state().graph.find_by_email(victim)[0].id.clone();
    assert!(h.state().graph.delete_user(&id), "deleted in the simulator");
    // Purged from deleted items (a soft-deleted guest is restored: tests/e2e/restore.rs):
    // invited again at once, without the replication grace.
    h.state().graph.purge_deleted();
    let again = h.apply(&[]);
    again.expect_code(0);
    assert!(again.stdout.contains("invite"), "{}", again.stdout);
    assert_eq!(h.invitations(victim), 2, "{victim} invited again");
    assert_eq!(
        h.invitations(&users[1].0),
        1,
        "the other guest is left alone"
    );
    assert_second_apply_clean(&h);
}

#[test]
fn an_address_held_by_a_deleted_account_deleted_items_do_not_show_fails_with_what_to_do() {
    let h = Harness::new();
    // A deleted work account whose UPN is the address: the look-up of deleted items (by mail
    // and otherMails; a deleted user's UPN carries its id) does not find it, and it is no
    // guest to restore, but it still holds the address, so Graph refuses the invitation.
    let address = "kept@partner.example";
    let member = h.state().graph.add_member(address, None, "Kept");
    assert!(h.state().graph.delete_user(&member));
    let users = vec![(address.to_owned(), "Kept".to_owned(), "viewer".to_owned())];
    h.write_users(&as_refs(&users));
    let blocked = h.apply(&[]);
    blocked.expect_code(1);
    assert!(
        blocked.stdout.contains("deleted user"),
        "{}",
        blocked.stdout
    );
    assert!(
        blocked.stdout.contains("restore it (Entra admin center"),
        "says what to do: {}",
        blocked.stdout
    );
    assert_eq!(h.invitations(address), 1, "one invitation was tried");
}

#[test]
fn plan_json_is_one_document_listing_the_changes() {
    let h = Harness::new();
    seed::unrelated(&h.sim, 20, 30);
    h.write_users(&[("ana.silva@partner.example", "Ana Silva", "administrator")]);
    let run = h.plan(&["--format", "json"]);
    run.expect_code(0);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    let text = plan.to_string();
    assert!(text.contains("ana.silva@partner.example"), "{text}");
    assert!(
        text.contains("invite") && text.contains("register"),
        "{text}"
    );
    let markdown = h.plan(&["--format", "markdown"]);
    markdown.expect_code(0);
    assert!(markdown.stdout.contains("ana.silva@partner.example"));
    assert_eq!(h.writes(), 0);
}

#[test]
fn apply_json_is_one_document_with_the_result_of_every_change() {
    let h = Harness::new();
    seed::unrelated(&h.sim, 20, 30);
    h.write_users(&[("ana.silva@partner.example", "Ana Silva", "administrator")]);
    let run = h.apply(&["--format", "json"]);
    run.expect_code(0);
    let doc: serde_json::Value =
        serde_json::from_str(&run.stdout).expect("stdout is exactly one JSON document");
    assert_eq!(doc["version"], 2);
    let planned = doc["changes"].as_array().expect("changes").len();
    let results = doc["applied"]["results"]
        .as_array()
        .expect("applied.results");
    assert_eq!(results.len(), planned, "one result per change: {doc}");
    assert!(planned >= 2, "{doc}");
    for r in results {
        assert_eq!(r["result"], "done", "{r}");
        assert_eq!(r["user"], "ana.silva@partner.example");
    }
    assert_eq!(doc["applied"]["done"], planned);
    assert_eq!(doc["applied"]["failed"], 0);
    assert!(
        doc["revision"]
            .as_str()
            .is_some_and(|r| r.starts_with("sha256:"))
    );

    // Nothing left to do: the document says nothing was applied.
    let again = h.apply(&["--format", "json"]);
    again.expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(&again.stdout).expect("one document");
    assert!(doc["applied"].is_null(), "{doc}");
}

#[test]
fn a_second_instance_is_refused_while_one_applies() {
    let h = Harness::new();
    {
        let mut state = h.state();
        state.portal_faults.latency = Duration::from_millis(300);
        state.graph_faults.latency = Duration::from_millis(300);
    }
    let users = new_users("locked", 4);
    h.write_users(&as_refs(&users));
    let mut child = common::guestops_std(h.dir.path())
        .arg("apply")
        .arg("--config")
        .arg(h.config_path())
        .arg("--desired")
        .arg(h.users_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("guestops starts");
    // The first instance holds the lock once it made a request.
    for _ in 0..3000 {
        if h.requests() > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = h.apply(&[]);
    let first = child.wait().expect("the first apply ends");
    assert_eq!(first.code(), Some(0), "the first apply completes");
    second.expect_code(1);
    assert!(
        second.stderr.contains(&h.state_dir().display().to_string()),
        "the refusal names the state directory:\n{}",
        second.stderr
    );
    h.assert_converged_new(&as_refs(&users));
}

#[test]
fn secrets_and_overrides_come_from_the_environment() {
    let mut h = Harness::new();
    h.configure(|c| {
        c.tenant.client_secret =
            guestops::config::SecretSource::Env("GUESTOPS_TENANT_CLIENT_SECRET".into());
        c.portal.api_key = guestops::config::SecretSource::Env("GUESTOPS_PORTAL_API_KEY".into());
    });
    h.write_users(&[
        ("ana.silva@partner.example", "Ana Silva", "administrator"),
        ("eve@elsewhere.example", "Eve Elsewhere", "administrator"),
    ]);
    let run = h
        .cmd()
        .args(["apply", "--config"])
        .arg(h.config_path())
        .arg("--desired")
        .arg(h.users_path())
        .env("GUESTOPS_TENANT_CLIENT_SECRET", seed::CLIENT_SECRET)
        .env("GUESTOPS_PORTAL_API_KEY", seed::API_KEY)
        .env("GUESTOPS_POLICY_ALLOWED_DOMAINS", "partner.example")
        .output()
        .expect("guestops runs");
    let run = common::Run::from(run);
    run.expect_code(3);
    assert!(
        run.stdout.contains("eve@elsewhere.example"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains(seed::CLIENT_SECRET) && !run.stderr.contains(seed::CLIENT_SECRET),
        "the secret is never printed"
    );
    assert_eq!(h.invitations("eve@elsewhere.example"), 0);
    assert_eq!(h.creates("eve@elsewhere.example"), 0);
    assert_eq!(h.invitations("ana.silva@partner.example"), 1);
}

#[test]
fn an_ambiguous_invitation_is_not_repeated_while_the_guest_replicates() {
    let h = Harness::new();
    seed::unrelated(&h.sim, 20, 30);
    {
        let mut state = h.state();
        state.graph.set_replication_delay(Duration::from_secs(3600));
        // The invitation is made, but the client only sees a gateway timeout, and the new
        // guest is not visible to reads yet.
        state.graph_faults.fail = vec![FailRule {
            after_processing: true,
            ..fail("POST", "/v1.0/invitations", None, 504, Some(1))
        }];
    }
    let email = "una.certain@partner.example";
    h.write_users(&[(email, "Una Certain", "administrator")]);

    let first = h.apply(&[]);
    first.expect_code(1);
    assert!(first.stdout.contains("failed: invite"), "{}", first.stdout);
    assert_eq!(h.invitations(email), 1);

    // The next reconcile, seconds later: the guest is still replicating.
    let second = h.apply(&[]);
    second.expect_code(0);
    assert_eq!(
        h.invitations(email),
        1,
        "the invitation must not be posted again while the guest may be replicating:\n{}",
        second.stdout
    );
    assert!(
        second.stdout.contains("awaiting-replication"),
        "the plan says why it does not invite:\n{}",
        second.stdout
    );
    assert_eq!(
        h.creates(email),
        1,
        "the portal registration is not held up"
    );

    // Replication completes: the guest is adopted, nothing is posted again.
    {
        let mut state = h.state();
        let ids: Vec<String> = state
            .graph
            .find_by_email(email)
            .into_iter()
            .map(|u| u.id)
            .collect();
        assert_eq!(ids.len(), 1, "one guest");
        for id in ids {
            if let Some(user) = state.graph.user_mut(&id) {
                user.visible_at = None;
            }
        }
    }
    let third = h.apply(&[]);
    third.expect_code(0);
    assert!(third.stdout.contains("adopt"), "{}", third.stdout);
    assert_eq!(h.invitations(email), 1);
    assert_second_apply_clean(&h);
}

#[test]
fn removed_and_expired_users_are_removed_and_their_guests_disabled() {
    let mut h = Harness::new();
    seed::unrelated(&h.sim, 20, 30);
    h.configure(|c| {
        c.policy.prune = true;
        c.policy.guest_on_removal = guestops::reconcile::plan::GuestOnRemoval::Disable;
    });
    let users = new_users("leaver", 3);
    h.write_users(&as_refs(&users));
    h.apply(&[]).expect_code(0);
    h.assert_converged_new(&as_refs(&users));

    // leaver00 stays, leaver01 has expired, leaver02 is removed from the file.
    h.write_users_yaml(&format!(
        "apiVersion: guestops/v1\nusers:\n  - email: {}\n    name: {}\n    role: {}\n  - email: {}\n    name: {}\n    role: {}\n    expires: 2020-01-31\n",
        users[0].0, users[0].1, users[0].2, users[1].0, users[1].1, users[1].2
    ));
    let plan = h.plan(&["--detailed-exitcode"]);
    plan.expect_code(2);
    for email in [&users[1].0, &users[2].0] {
        assert!(
            plan.stdout
                .lines()
                .any(|l| l.starts_with('-') && l.contains(email.as_str())),
            "the plan shows the removal of {email}:\n{}",
            plan.stdout
        );
    }
    assert!(
        plan.stdout.contains("expired on 2020-01-31"),
        "{}",
        plan.stdout
    );
    h.apply(&[]).expect_code(0);

    assert!(h.portal_user(&users[0].0).is_some(), "the kept user stays");
    let state = h.state();
    for (email, _, _) in &users[1..] {
        assert!(state.portal.find(email).is_none(), "{email} unregistered");
        let guests = state.graph.find_by_email(email);
        assert_eq!(
            guests.len(),
            1,
            "{email}: the guest is kept (disabled), not deleted"
        );
        assert!(!guests[0].account_enabled, "{email}: the guest is disabled");
    }
    assert!(state.graph.find_by_email(&users[0].0)[0].account_enabled);
    assert_eq!(state.portal.len(), 30 + 1, "unowned users are untouched");
    drop(state);
    assert_second_apply_clean(&h);
}

#[test]
fn a_corrupt_state_json_is_reported_with_its_cause_once() {
    let h = Harness::new();
    h.write_users(&[("ana.silva@partner.example", "Ana Silva", "administrator")]);
    std::fs::create_dir_all(h.state_dir()).expect("state dir");
    std::fs::write(h.state_dir().join("state.json"), "not json").expect("write");
    let run = h.plan(&[]);
    run.expect_code(1);
    assert!(run.stderr.contains("is corrupt"), "{}", run.stderr);
    assert_eq!(
        run.stderr.matches("expected ").count(),
        1,
        "the JSON error appears once:\n{}",
        run.stderr
    );
    assert_eq!(h.writes(), 0);
}

/// Issue 7: the targeted lookups of unlisted addresses go 20 to a `$batch`, so a plan of 45 new
/// administrators costs the listing and three batches, not 45 more requests.
#[test]
fn lookups_of_unlisted_addresses_are_batched() {
    let h = Harness::new();
    let users = new_users("batched", 45);
    h.write_users(&as_refs(&users));

    let before = h.counters();
    let plan = h.plan(&["--detailed-exitcode"]);
    plan.expect_code(2);
    assert!(plan.stdout.contains("45 to invite"), "{}", plan.stdout);
    let read = h.counters();
    // Three batches of live look-ups, then three of deleted items for the 45 addresses no
    // live user holds (a deleted guest would be restored, not invited).
    assert_eq!(read.graph_batches - before.graph_batches, 3 + 3, "{read:?}");
    assert_eq!(
        read.graph_batch_inner_requests - before.graph_batch_inner_requests,
        45 + 45,
        "{read:?}"
    );
    assert_eq!(
        read.graph_requests - before.graph_requests,
        1 + 3 + 3,
        "one page of guests and six batches: {read:?}"
    );
}

// Issue 7, P1: with delta queries (the default), a reconcile with no drift costs one Graph
// request whatever the tenant's size, and a plan beside it reads the same cache.
#[test]
fn a_reconcile_with_no_drift_is_one_graph_request_through_delta() {
    let h = Harness::new();
    seed::unrelated(&h.sim, 2500, 30);
    let users = new_users("steady", 10);
    h.write_users(&as_refs(&users));

    let before = h.counters();
    h.apply(&[]).expect_code(0);
    let first = h.counters();
    // The first sync enumerates every user through /users/delta (2,500 guests in pages).
    assert!(
        first.graph_requests - before.graph_requests >= 3 + 10,
        "{first:?}"
    );
    assert!(h.state_dir().join("directory.sqlite").exists());
    h.assert_converged_new(&as_refs(&users));

    // Something changes behind guestops' back: it arrives as one delta entry.
    let outsider = h
        .state()
        .graph
        .add_guest("outsider@elsewhere.example", "Outsider");
    let before = h.counters();
    h.apply(&[]).expect_code(0);
    let steady = h.counters();
    assert_eq!(
        steady.graph_requests - before.graph_requests,
        1,
        "one delta round, no lookup, no listing: {steady:?}"
    );
    assert_eq!(
        steady.graph_batch_inner_requests,
        before.graph_batch_inner_requests
    );
    assert_eq!(steady.writes, before.writes);

    let plan = h.plan(&["--detailed-exitcode"]);
    plan.expect_code(0);
    assert_eq!(h.counters().graph_requests - steady.graph_requests, 1);
    assert!(h.state().graph.user(&outsider).is_some());

    // Graph forgets the sync state (7 days; here at once): the next apply enumerates again,
    // says why, and changes nothing.
    h.state().graph.expire_delta_tokens();
    let before = h.counters();
    let resync = h.apply(&[]);
    resync.expect_code(0);
    assert!(
        resync.stderr.contains("no longer knows the delta link"),
        "{}",
        resync.stderr
    );
    let after = h.counters();
    assert!(
        after.graph_requests - before.graph_requests > 3,
        "the refused link, then every page of 2,500+ users: {after:?}"
    );
    assert_eq!(after.writes, before.writes, "no write from the resync");
    let before = h.counters();
    h.apply(&[]).expect_code(0);
    assert_eq!(
        h.counters().graph_requests - before.graph_requests,
        1,
        "the new link was kept"
    );
}
