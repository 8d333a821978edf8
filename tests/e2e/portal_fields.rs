//! The portal's hidden fields end to end (design §7, `docs/specs/power-embedded.md` §1.5, §4):
//! the write-only flags `bypassFirewall` and `canExportReportOtherPages`, which the portal
//! accepts but never returns, and the read after each update that catches a `PUT` losing what
//! it was sent back. The simulator stores the write-only flags where only the test can read
//! them (`PortalDb::write_only_flags`), so the tests see what guestops really sent.

use guestops::reconcile::state::{AuditResult, read_audit};
use guestops::remote::portal::WriteOnlyFlags;
use guestops::sim::graph::SimUser;
use guestops::sim::seed;
use serde_json::json;

use super::common::Harness;

const RITA: &str = "rita.role@partner.example";
const OTTO: &str = "otto.other@partner.example";
const NOTE: &str = "write-only-flags";

/// An accepted guest and a portal viewer with groups, reports, companies and visible flags, and
/// `bypassFirewall` switched on by hand in the portal.
fn seed_viewer(h: &Harness, email: &str, name: &str) {
    let mut state = h.state();
    let mut guest = SimUser::guest(email, name, seed::TENANT_DOMAIN);
    guest.external_user_state = Some("Accepted".into());
    state.graph.insert_user(guest);
    state
        .portal
        .insert_user(json!({
            "email": email,
            "name": name,
            "role": 3,
            "groups": ["7d1f3a52-0c2b-4bfa-9a57-1f5e0c9b2a10"],
            "reports": ["4e1c9f0a-8d2b-4c3e-9f1a-2b3c4d5e6f70"],
            "companies": ["c0c0c0c0-1111-4222-8333-944455556666"],
            "canExportReport": true,
            "bypassFirewall": true,
        }))
        .expect("a JSON object is a portal user");
}

/// `(bypassFirewall, canExportReportOtherPages)` as the simulator stores them for `email`.
fn flags(h: &Harness, email: &str) -> (bool, bool) {
    let flags = h
        .state()
        .portal
        .write_only_flags(email)
        .expect("registered");
    (flags["bypassFirewall"], flags["canExportReportOtherPages"])
}

fn note_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.contains(NOTE)).collect()
}

/// Unstated flags: two role changes get one note, and the strict portal's `PUT` really resets
/// the flag set by hand (what the note warns about).
#[test]
fn role_changes_with_unstated_flags_get_one_note_and_the_put_resets_them() {
    let h = Harness::new();
    seed_viewer(&h, RITA, "Rita Role");
    seed_viewer(&h, OTTO, "Otto Other");
    h.write_users(&[
        (RITA, "Rita Role", "contributor"),
        (OTTO, "Otto Other", "administrator"),
    ]);

    let plan = h.plan(&[]);
    plan.expect_code(0);
    let notes = note_lines(&plan.stdout);
    assert_eq!(notes.len(), 1, "one note for two updates:\n{}", plan.stdout);
    assert!(
        notes[0].contains(
            "bypassFirewall and canExportReportOtherPages are not stated in portal.writeOnlyFlags: \
             the portal does not return them, so guestops does not send them, and the PUT of the 2 \
             portal updates in this plan may reset them"
        ) && notes[0].contains("guestops probe portal observes it"),
        "{}",
        notes[0]
    );

    h.apply(&[]).expect_code(0);
    assert_eq!(h.portal_role(RITA), Some(2));
    assert_eq!(
        flags(&h, RITA),
        (false, false),
        "the simulated PUT reset the flag guestops could not send"
    );
    // Nothing left to update: no note.
    let again = h.plan(&[]);
    again.expect_code(0);
    assert!(note_lines(&again.stdout).is_empty(), "{}", again.stdout);
}

/// Stated flags are sent on the registration and on every update; no note then.
#[test]
fn stated_flags_are_sent_on_registration_and_on_every_update() {
    let mut h = Harness::new();
    h.configure(|c| {
        c.portal.write_only_flags = WriteOnlyFlags {
            bypass_firewall: Some(true),
            can_export_report_other_pages: Some(false),
        };
    });
    let new = "nina.new@partner.example";
    seed_viewer(&h, RITA, "Rita Role");
    h.state()
        .portal
        .set_write_only_flag(RITA, "canExportReportOtherPages", true);
    h.write_users(&[
        (RITA, "Rita Role", "administrator"),
        (new, "Nina New", "contributor"),
    ]);

    let plan = h.plan(&[]);
    plan.expect_code(0);
    assert!(note_lines(&plan.stdout).is_empty(), "{}", plan.stdout);
    h.apply(&[]).expect_code(0);
    assert_eq!(h.creates(new), 1);
    assert_eq!(flags(&h, new), (true, false), "sent with the registration");
    assert_eq!(h.portal_role(RITA), Some(1));
    assert_eq!(flags(&h, RITA), (true, false), "sent with the update");
}

/// With one flag stated and a probe that saw a `PUT` keep what it was not sent, the note names
/// the unstated flag only and says what the probe saw.
#[test]
fn the_note_says_what_the_portal_probe_observed() {
    let mut h = Harness::new();
    h.configure(|c| {
        c.portal.write_only_flags.bypass_firewall = Some(false);
    });
    std::fs::create_dir_all(h.state_dir()).expect("state dir");
    let facts = json!({
        "time": "2026-11-30T09:00:00Z",
        "portalBaseUrl": h.config.portal.base_url.as_str(),
        "testEmail": "probe@customer.example",
        "complete": true,
        "put": { "status": 200, "keepsGroups": true, "keepsFlags": true, "keepsNullableFields": true },
    });
    std::fs::write(
        h.state_dir().join("portal-facts.json"),
        serde_json::to_vec_pretty(&facts).expect("JSON"),
    )
    .expect("write facts");
    seed_viewer(&h, RITA, "Rita Role");
    h.write_users(&[(RITA, "Rita Role", "contributor")]);

    let plan = h.plan(&["--format", "json"]);
    plan.expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(&plan.stdout).expect("one JSON document");
    let notes: Vec<&serde_json::Value> = doc["notices"]
        .as_array()
        .expect("notices")
        .iter()
        .filter(|n| n["code"] == NOTE)
        .collect();
    assert_eq!(notes.len(), 1, "{:#}", doc["notices"]);
    assert_eq!(notes[0]["key"], serde_json::Value::Null, "plan-wide");
    let message = notes[0]["message"].as_str().expect("a message");
    assert!(
        message.starts_with("canExportReportOtherPages is not stated")
            && message.contains("the PUT of the 1 portal update in this plan may reset it")
            && message.contains(
                "guestops probe portal (2026-11-30) observed that a PUT keeps the flags it is not sent (put.keepsFlags: true), so it probably stays"
            ),
        "{message}"
    );
}

/// A portal whose `PUT` drops the groups although they are sent back: the update fails, the
/// output and the audit line say what was lost, before and after.
#[test]
fn a_role_change_that_loses_groups_fails_loudly_and_is_audited() {
    let h = Harness::new();
    seed_viewer(&h, RITA, "Rita Role");
    h.state().portal.put_resets = ["groups".to_owned()].into_iter().collect();
    h.write_users(&[(RITA, "Rita Role", "contributor")]);

    let apply = h.apply(&[]);
    apply.expect_code(1);
    let output = format!("{}\n{}", apply.stdout, apply.stderr);
    let expected = format!(
        "the PUT /api/user of {RITA} changed 1 field(s) it was sent unchanged: groups: [\"7d1f3a52-0c2b-4bfa-9a57-1f5e0c9b2a10\"] → []"
    );
    assert!(output.contains(&expected), "{output}");
    assert_eq!(h.portal_role(RITA), Some(2), "the role itself changed");

    let audit = read_audit(&h.state_dir()).expect("audit.jsonl is readable");
    let line = audit
        .iter()
        .find(|r| r.action == "update-portal")
        .expect("an audit line for the update");
    assert_eq!(line.result, AuditResult::Error);
    assert!(
        line.detail
            .as_deref()
            .is_some_and(|d| d.contains(&expected)),
        "{line:?}"
    );
    // Reported once: the role is right now, so nothing is retried or re-written.
    let writes = h.writes();
    h.apply(&[]).expect_code(0);
    assert_eq!(h.writes(), writes);
}
