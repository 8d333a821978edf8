//! A long `Retry-After` is honoured (issue 9 item 6): after a `429` with `Retry-After: 2` (Graph)
//! or `3` (the portal), no request reaches that service before the wait is over. Counted from
//! the simulator's request log (when each request arrived, when the `429` left), not from the
//! test's wall clock.

use std::time::Duration;

use guestops::sim::{LoggedRequest, SystemKind, seed};

use super::common::Harness;
use super::{as_refs, fail, new_users};

/// Exactly one request to `system` (the token endpoint aside) was throttled; none arrived
/// while its `Retry-After` of `wait` ran, and the read went on after it.
#[track_caller]
fn assert_waited(log: &[LoggedRequest], system: SystemKind, wait: Duration) {
    let service: Vec<&LoggedRequest> = log
        .iter()
        .filter(|r| r.system == system && !r.token)
        .collect();
    let throttled: Vec<&&LoggedRequest> = service.iter().filter(|r| r.status == 429).collect();
    assert_eq!(throttled.len(), 1, "one 429: {service:#?}");
    let until = throttled[0].answered + wait;
    let early = service
        .iter()
        .filter(|r| r.received > throttled[0].answered && r.received < until)
        .count();
    assert_eq!(early, 0, "requests during the Retry-After: {service:#?}");
    let later = service.iter().filter(|r| r.received >= until).count();
    assert!(
        later >= 1,
        "the throttled read was sent again: {service:#?}"
    );
}

#[test]
fn a_retry_after_of_two_seconds_from_graph_is_waited_for() {
    let h = Harness::new();
    seed::unrelated(&h.sim, 30, 5);
    h.write_users(&as_refs(&new_users("patient", 3)));
    {
        let mut state = h.state();
        state.graph_faults.retry_after = Some("2".into());
        // The first read of the tenant (the guest listing of a dry run without a cache).
        state.graph_faults.fail = vec![fail("GET", "/v1.0/users", None, 429, Some(1))];
    }
    let plan = h.plan(&["--detailed-exitcode"]);
    plan.expect_code(2);
    assert!(plan.stdout.contains("3 to invite"), "{}", plan.stdout);
    let log: Vec<LoggedRequest> = h.state().requests.iter().cloned().collect();
    assert_waited(&log, SystemKind::Graph, Duration::from_secs(2));
}

#[test]
fn a_retry_after_of_three_seconds_from_the_portal_is_waited_for() {
    let h = Harness::new();
    seed::unrelated(&h.sim, 5, 30);
    h.write_users(&as_refs(&new_users("patient", 3)));
    {
        let mut state = h.state();
        state.portal_faults.retry_after = Some("3".into());
        state.portal_faults.fail = vec![fail("GET", "/api/user", None, 429, Some(1))];
    }
    let plan = h.plan(&["--detailed-exitcode"]);
    plan.expect_code(2);
    assert!(plan.stdout.contains("3 to register"), "{}", plan.stdout);
    let log: Vec<LoggedRequest> = h.state().requests.iter().cloned().collect();
    assert_waited(&log, SystemKind::Portal, Duration::from_secs(3));
}
