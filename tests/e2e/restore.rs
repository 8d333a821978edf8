//! Soft-deleted guests (design §7, issue 9 item 4): an address held by a guest in deleted
//! items cannot be invited; guestops restores that guest (same object id, no invitation, no
//! email) and owns it, or, without the permission to restore, fails for that user only and
//! says how to fix it.

use guestops::reconcile::state::{AuditResult, read_audit};

use super::common::Harness;
use super::{as_refs, assert_second_apply_clean, new_users};

/// Two administrators invited, registered and seen by a second reconcile; the guest of the
/// first is then soft-deleted behind guestops' back. Returns the users and that guest's id.
fn with_a_deleted_guest(h: &Harness, prefix: &str) -> (Vec<(String, String, String)>, String) {
    let users = new_users(prefix, 2);
    h.write_users(&as_refs(&users));
    h.apply(&[]).expect_code(0);
    assert_second_apply_clean(h);
    let id = h.state().graph.find_by_email(&users[0].0)[0].id.clone();
    assert!(h.state().graph.delete_user(&id), "deleted in the simulator");
    (users, id)
}

#[test]
fn a_soft_deleted_guest_is_restored_with_its_id_and_not_invited() {
    let h = Harness::new();
    let (users, id) = with_a_deleted_guest(&h, "restored");
    let victim = users[0].0.as_str();

    // The plan says what will happen: a restore, not an invitation.
    let plan = h.plan(&["--detailed-exitcode"]);
    plan.expect_code(2);
    assert!(
        plan.stdout.contains("restore") && plan.stdout.contains(&id),
        "{}",
        plan.stdout
    );
    assert!(!plan.stdout.contains("to invite"), "{}", plan.stdout);
    let json = h.plan(&["--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("plan JSON");
    let changes = doc["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 1, "{doc}");
    assert_eq!(changes[0]["action"], "restore-guest");
    assert_eq!(changes[0]["system"], "tenant");
    assert_eq!(changes[0]["details"]["guestId"], id.as_str());
    assert_eq!(doc["summary"]["restore"], 1);

    let before = h.counters();
    let run = h.apply(&[]);
    run.expect_code(0);
    let after = h.counters();
    assert_eq!(after.writes - before.writes, 1, "one restore, nothing else");
    // The address's live lookup and the read of the recorded id, then the deleted-items
    // lookup for the address they did not find.
    assert_eq!(after.graph_batches - before.graph_batches, 3, "{after:?}");
    {
        let state = h.state();
        assert!(state.graph.user(&id).is_some(), "restored with its id");
        assert!(state.graph.deleted_users().is_empty());
    }
    assert_eq!(h.invitations(victim), 1, "no second invitation");
    assert_eq!(h.invitations(&users[1].0), 1);

    let audit = read_audit(&h.state_dir()).expect("audit.jsonl");
    let line = audit
        .iter()
        .find(|r| r.action == "restore-guest")
        .expect("the restore is audited");
    assert_eq!(line.user, victim);
    assert_eq!(line.result, AuditResult::Ok);
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(h.state_dir().join("state.json")).expect("state.json"),
    )
    .expect("state.json is JSON");
    assert_eq!(state["users"][victim]["guestId"], id.as_str(), "{state}");

    // Restored and owned: the next reconcile has nothing to do and looks nothing up.
    let before = h.counters();
    assert_second_apply_clean(&h);
    assert_eq!(h.counters().graph_batches, before.graph_batches);
}

#[test]
fn without_the_permission_the_restore_fails_for_that_user_only_with_the_fix() {
    let h = Harness::new();
    let (mut users, id) = with_a_deleted_guest(&h, "forbidden");
    let victim = users[0].0.clone();
    h.state().graph.revoke_permission("User.DeleteRestore.All");
    // Another administrator arrives in the same revision: unaffected.
    users.extend(new_users("newcomer", 1));
    h.write_users(&as_refs(&users));

    let blocked = h.apply(&[]);
    blocked.expect_code(1);
    assert!(
        blocked.stdout.contains(&id) && blocked.stdout.contains("User.DeleteRestore.All"),
        "names the deleted guest and the permission: {}",
        blocked.stdout
    );
    assert!(
        blocked.stdout.contains("Deleted users"),
        "and the manual way: {}",
        blocked.stdout
    );
    assert_eq!(h.invitations(&victim), 1, "no invitation was attempted");
    assert_eq!(h.state().graph.deleted_users().len(), 1, "still deleted");
    h.assert_converged_new(&as_refs(&users[2..]));
    let audit = read_audit(&h.state_dir()).expect("audit.jsonl");
    assert!(
        audit
            .iter()
            .any(|r| r.action == "restore-guest" && r.result == AuditResult::Error),
        "the failed restore is audited"
    );

    // Purged from deleted items: the address is free and is invited at once.
    h.state().graph.purge_deleted();
    let third = h.apply(&[]);
    third.expect_code(0);
    assert_eq!(h.invitations(&victim), 2, "{victim} invited again");
    assert_second_apply_clean(&h);
}
