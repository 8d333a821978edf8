//! Targeted look-ups fail closed (issue 9 item 6): the look-ups of addresses the directory
//! picture does not hold (20 to a `$batch`), of recorded guest ids, and of deleted items are
//! reads like the listings. One that fails, inside a `$batch` or as the whole batch, aborts the
//! reconcile before any write: an internal member that only a look-up recognises is never
//! invited, and no new administrator is invited or registered on an incomplete picture.

use guestops::sim::FailRule;

use super::common::Harness;
use super::{as_refs, assert_incomplete_read_aborts, assert_second_apply_clean, fail, new_users};

/// The inner requests of a `$batch` that look live users up by address (`mail eq …`), not the
/// guest listing (`userType eq 'Guest'`) nor deleted items.
fn address_lookups(status: u16) -> FailRule {
    fail("GET", "/v1.0/users", Some("mail%20eq%20"), status, None)
}

/// A tenant read through the guest listing, where members are known only through the
/// look-ups; a member of the tenant and two new administrators are desired.
fn listing_with_a_member(h: &mut Harness) -> Vec<(String, String, String)> {
    h.configure(|c| c.tenant.delta_query = false);
    h.state().graph.add_member(
        "intern@sim.onmicrosoft.com",
        Some("intern@partner.example"),
        "Intern",
    );
    let mut users = vec![(
        "intern@partner.example".to_owned(),
        "Intern".to_owned(),
        "viewer".to_owned(),
    )];
    users.extend(new_users("closed", 2));
    h.write_users(&as_refs(&users));
    users
}

#[test]
fn a_failing_inner_address_lookup_aborts_before_any_write_and_the_member_is_not_invited() {
    // Refused (a permission revoked mid-reconcile) and throttled past the retry budget.
    for status in [403, 429] {
        let mut h = Harness::new();
        let users = listing_with_a_member(&mut h);
        {
            let mut state = h.state();
            state.graph_faults.retry_after = Some("0".into());
            state.graph_faults.fail = vec![address_lookups(status)];
        }
        assert_incomplete_read_aborts(&h, &users, "tenant");
        assert!(h.counters().graph_batches > 0, "the look-ups were batched");

        // Once the look-ups answer, the member is recognised and not invited.
        h.state().graph_faults.fail.clear();
        h.apply(&[]).expect_code(0);
        assert_eq!(h.invitations("intern@partner.example"), 0, "a member");
        h.assert_converged_new(&as_refs(&users[1..]));
        assert_second_apply_clean(&h);
    }
}

#[test]
fn a_failing_batch_aborts_before_any_write() {
    let mut h = Harness::new();
    let users = listing_with_a_member(&mut h);
    {
        let mut state = h.state();
        state.graph_faults.retry_after = Some("0".into());
        state.graph_faults.fail = vec![fail("POST", "/v1.0/$batch", None, 429, None)];
    }
    assert_incomplete_read_aborts(&h, &users, "tenant");
    assert_eq!(
        h.counters().graph_batch_inner_requests,
        0,
        "no batch got through"
    );
}

#[test]
fn a_failing_read_of_a_recorded_guest_aborts_before_any_write() {
    let h = Harness::new();
    let users = new_users("recorded", 2);
    h.write_users(&as_refs(&users));
    h.apply(&[]).expect_code(0);
    assert_second_apply_clean(&h);
    // The guest guestops recorded leaves the picture (soft-deleted): its id is read again.
    let id = h.state().graph.find_by_email(&users[0].0)[0].id.clone();
    assert!(h.state().graph.delete_user(&id));
    let newcomers = new_users("newcomer", 2);
    let mut all = users.clone();
    all.extend(newcomers.clone());
    h.write_users(&as_refs(&all));
    h.state().graph_faults.fail = vec![fail("GET", &format!("/v1.0/users/{id}"), None, 403, None)];

    let writes = h.writes();
    let run = h.apply(&[]);
    run.expect_code(1);
    assert!(h.counters().injected_failures > 0, "the read was requested");
    assert_eq!(h.writes(), writes, "no restore, invitation or registration");
    for (email, _, _) in &newcomers {
        assert_eq!(h.invitations(email), 0);
        assert_eq!(h.creates(email), 0);
    }
    assert!(
        run.stderr.contains("could not read the tenant completely"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_failing_lookup_of_deleted_items_aborts_before_any_write() {
    let h = Harness::new();
    let users = new_users("undeleted", 3);
    h.write_users(&as_refs(&users));
    h.state().graph_faults.fail =
        vec![fail("GET", "/v1.0/directory/deletedItems", None, 403, None)];
    assert_incomplete_read_aborts(&h, &users, "tenant");
}
