//! Issue 10 items 1, 2 and 5 through the binary against the simulator: saved plans
//! (`plan --out`, `apply FILE`), `apply` without a terminal, `--only`, and `history` from the
//! audit log a real apply wrote.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::common::{Harness, Run, role_code};
use guestops::sim::seed;

const ANA: &str = "ana@partner.example";
const BO: &str = "bo@partner.example";
const CARL: &str = "carl@partner.example";

fn two_users(h: &Harness) {
    h.write_users(&[(ANA, "Ana", "administrator"), (BO, "Bo", "contributor")]);
}

fn plan_file(h: &Harness) -> PathBuf {
    h.dir.path().join("reviewed.plan.json")
}

fn save_plan(h: &Harness, extra: &[&str]) -> serde_json::Value {
    let file = plan_file(h);
    let mut args = vec!["--out", file.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    let run = h.plan(&args);
    run.expect_code(0);
    assert!(run.stderr.contains("Saved the plan to"), "{}", run.stderr);
    serde_json::from_slice(&std::fs::read(&file).expect("the plan file exists"))
        .expect("the plan file is JSON")
}

fn apply_file(h: &Harness, file: &Path) -> Run {
    h.apply(&[file.to_str().expect("utf-8 path")])
}

#[track_caller]
fn assert_stale(run: &Run, phrase: &str) {
    run.expect_code(1);
    assert!(
        run.stderr.contains("error: ") && run.stderr.contains(phrase),
        "expected `{phrase}`:\n{}",
        run.stderr
    );
}

#[test]
fn a_saved_plan_is_private_without_secrets_and_applied_exactly_once() {
    let h = Harness::new();
    two_users(&h);
    let doc = save_plan(&h, &[]);
    assert_eq!(h.writes(), 0, "plan --out writes nothing remote");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(plan_file(&h))
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "it names users");
    }
    let text = std::fs::read_to_string(plan_file(&h)).expect("text");
    for secret in [seed::CLIENT_SECRET, seed::API_KEY] {
        assert!(!text.contains(secret), "a secret in the plan file");
    }
    assert_eq!(doc["kind"], "guestops-plan");
    assert_eq!(doc["version"], 1);
    assert_eq!(
        doc["target"]["tenantId"],
        h.config.tenant.tenant_id.as_str()
    );
    assert_eq!(
        doc["target"]["clientId"],
        h.config.tenant.client_id.as_str()
    );
    assert_eq!(
        doc["target"]["portalUrl"],
        h.config.portal.base_url.as_str()
    );
    assert!(
        doc["policyHash"]
            .as_str()
            .is_some_and(|s| s.starts_with("sha256:"))
    );
    assert!(
        doc["revision"]["id"]
            .as_str()
            .is_some_and(|s| s.starts_with("sha256:"))
    );
    assert_eq!(doc["only"], serde_json::Value::Null);
    assert_eq!(doc["plan"]["summary"]["invite"], 2);
    assert!(doc["facts"][ANA]["tenant"].is_string(), "{}", doc["facts"]);

    let applied = apply_file(&h, &plan_file(&h));
    applied.expect_code(0);
    assert!(applied.stdout.contains("2 to invite"), "{}", applied.stdout);
    assert!(applied.stdout.contains("0 failed"), "{}", applied.stdout);
    h.assert_converged_new(&[(ANA, "Ana", "administrator"), (BO, "Bo", "contributor")]);

    // Applied once: the same file again would now plan nothing, so it is stale.
    let writes = h.writes();
    let again = apply_file(&h, &plan_file(&h));
    assert_stale(&again, "the plan is stale: ");
    assert!(again.stderr.contains("plan again"), "{}", again.stderr);
    assert!(
        again
            .stderr
            .contains("ana@partner.example: planned invite, register, now nothing"),
        "{}",
        again.stderr
    );
    assert_eq!(h.writes(), writes, "a stale plan writes nothing");
}

#[test]
fn a_saved_plan_is_refused_when_the_portal_users_yaml_the_policy_or_the_target_changed() {
    let mut h = Harness::new();
    two_users(&h);
    save_plan(&h, &[]);
    // Someone registers Ana by hand meanwhile.
    h.state()
        .portal
        .add_user(ANA, "Ana", role_code("administrator"));
    let stale = apply_file(&h, &plan_file(&h));
    assert_stale(&stale, "the plan is stale: ");
    assert!(
        stale.stderr.contains("ana@partner.example: planned invite, register, now invite, adopt-portal (its portal user changed since the plan)"),
        "{}",
        stale.stderr
    );
    assert_eq!(h.writes(), 0, "nothing written");
    assert_eq!(h.invitations(ANA) + h.invitations(BO), 0);

    // users.yaml moved on.
    save_plan(&h, &[]);
    h.write_users(&[
        (ANA, "Ana", "administrator"),
        (BO, "Bo", "contributor"),
        (CARL, "Carl", "viewer"),
    ]);
    assert_stale(
        &apply_file(&h, &plan_file(&h)),
        "the plan is stale: users.yaml is at revision",
    );
    two_users(&h);

    // Another policy.
    save_plan(&h, &[]);
    let before = h.requests();
    h.configure(|c| c.policy.max_deletions = 1);
    let refused = apply_file(&h, &plan_file(&h));
    refused.expect_code(1);
    assert!(
        refused
            .stderr
            .contains("the plan was made under another policy")
            && refused
                .stderr
                .contains("maxDeletions is 1 here, 5 in the plan"),
        "{}",
        refused.stderr
    );
    h.configure(|c| c.policy.max_deletions = 5);

    // Another app registration (the target).
    h.configure(|c| c.tenant.client_id = "11111111-2222-3333-4444-555555555555".into());
    let refused = apply_file(&h, &plan_file(&h));
    refused.expect_code(1);
    assert!(
        refused
            .stderr
            .contains("the plan was made for another target")
            && refused
                .stderr
                .contains("tenant.clientId is 11111111-2222-3333-4444-555555555555 here"),
        "{}",
        refused.stderr
    );
    assert_eq!(h.requests(), before, "refused before anything is read");
    assert_eq!(h.writes(), 0);

    // A file that is no plan.
    std::fs::write(plan_file(&h), h.users_path().to_str().expect("utf-8")).expect("write");
    let junk = apply_file(&h, &plan_file(&h));
    junk.expect_code(1);
    assert!(
        junk.stderr.contains("is not a guestops plan file"),
        "{}",
        junk.stderr
    );
}

#[test]
fn a_saved_plan_takes_no_force_only_or_dry_run_of_its_own() {
    let h = Harness::new();
    two_users(&h);
    save_plan(&h, &[]);
    let file = plan_file(&h);
    for flag in [&["--force"][..], &["--dry-run"], &["--only", ANA]] {
        let mut args = vec![file.to_str().expect("utf-8")];
        args.extend_from_slice(flag);
        let run = h.apply(&args);
        run.expect_code(1);
        assert!(
            run.stderr.contains("cannot be used with"),
            "{flag:?}: {}",
            run.stderr
        );
    }
    assert_eq!(h.writes(), 0);
}

#[test]
fn apply_without_a_terminal_does_not_ask() {
    let h = Harness::new();
    two_users(&h);
    // A "no" waiting on stdin must not matter: stdin is not a terminal.
    let output = h
        .cmd()
        .args(["apply", "--config"])
        .arg(h.config_path())
        .arg("--desired")
        .arg(h.users_path())
        .write_stdin("no\n")
        .output()
        .expect("guestops runs");
    let run = Run::from(output);
    run.expect_code(0);
    assert!(!run.stderr.contains("Only 'yes'"), "{}", run.stderr);
    assert!(!run.stderr.contains("cancelled"), "{}", run.stderr);
    h.assert_converged_new(&[(ANA, "Ana", "administrator"), (BO, "Bo", "contributor")]);
}

#[test]
fn only_shows_and_applies_the_targeted_user_and_refuses_an_unknown_address() {
    let mut h = Harness::new();
    two_users(&h);
    let plan = h.plan(&["--only", ANA, "--format", "json"]);
    plan.expect_code(0);
    let doc: serde_json::Value = serde_json::from_str(&plan.stdout).expect("JSON");
    let users: Vec<&str> = doc["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["key"].as_str())
        .collect();
    assert_eq!(users, vec![ANA, ANA], "{}", plan.stdout);

    let text = h.plan(&["--only", ANA]);
    assert!(
        text.stdout
            .contains("Limited by --only to ana@partner.example"),
        "{}",
        text.stdout
    );
    assert!(!text.stdout.contains(BO), "{}", text.stdout);

    let applied = h.apply(&["--only", "ANA@Partner.example"]);
    applied.expect_code(0);
    assert_eq!((h.invitations(ANA), h.creates(ANA)), (1, 1));
    assert_eq!(
        (h.invitations(BO), h.creates(BO)),
        (0, 0),
        "Bo was not targeted"
    );

    let requests = h.requests();
    let typo = h.plan(&["--only", "ana@partner.exmaple", "--only", ANA]);
    typo.expect_code(1);
    assert!(
        typo.stderr
            .contains("--only ana@partner.exmaple: neither in users.yaml nor owned by guestops"),
        "{}",
        typo.stderr
    );
    let typo = h.apply(&["--only", "bob@partner.example"]);
    typo.expect_code(1);
    assert!(
        typo.stderr.contains("bob@partner.example"),
        "{}",
        typo.stderr
    );
    assert_eq!(h.requests(), requests, "nothing was read");

    // Bo and Carl applied too, then both removed: two removals against maxDeletions 1.
    h.write_users(&[
        (ANA, "Ana", "administrator"),
        (BO, "Bo", "contributor"),
        (CARL, "Carl", "viewer"),
    ]);
    h.apply(&[]).expect_code(0);
    h.configure(|c| {
        c.policy.prune = true;
        c.policy.max_deletions = 1;
    });
    h.write_users(&[(ANA, "Ana", "viewer")]);
    let writes = h.writes();
    // A removed user that guestops owns can be targeted; the guard still counts both.
    let refused = h.apply(&["--only", BO]);
    refused.expect_code(3);
    assert!(
        refused.stdout.contains("refused [max-deletions]"),
        "{}",
        refused.stdout
    );
    assert!(
        refused.stdout.contains("nothing will be applied"),
        "{}",
        refused.stdout
    );
    let harmless = h.apply(&["--only", ANA]);
    harmless.expect_code(3);
    assert_eq!(
        h.writes(),
        writes,
        "a plan refused as a whole stays refused"
    );
    assert_eq!(h.portal_role(ANA), Some(role_code("administrator")));

    // The saved plan records --only, and applying it keeps to it.
    h.configure(|c| c.policy.max_deletions = 5);
    let doc = save_plan(&h, &["--only", ANA]);
    assert_eq!(doc["only"], serde_json::json!([ANA]));
    apply_file(&h, &plan_file(&h)).expect_code(0);
    assert_eq!(h.portal_role(ANA), Some(role_code("viewer")));
    assert!(h.portal_user(BO).is_some(), "Bo's removal was not targeted");
}

fn history(h: &Harness, extra: &[&str]) -> Run {
    Run::from(
        h.cmd()
            .arg("history")
            .arg("--config")
            .arg(h.config_path())
            .args(extra)
            .output()
            .expect("guestops runs"),
    )
}

fn records(run: &Run) -> Vec<serde_json::Value> {
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(
        doc["count"].as_u64(),
        doc["records"].as_array().map(|r| r.len() as u64)
    );
    doc["records"].as_array().cloned().unwrap_or_default()
}

#[test]
fn history_lists_the_writes_of_real_applies_filtered_by_user_revision_and_date() {
    let h = Harness::new();
    two_users(&h);
    h.apply(&[]).expect_code(0);
    h.write_users(&[(ANA, "Ana", "administrator"), (BO, "Bo", "viewer")]);
    h.apply(&[]).expect_code(0);

    let all = history(&h, &["--format", "json"]);
    all.expect_code(0);
    let rows = records(&all);
    let actions: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["user"].as_str().unwrap_or(""),
                r["action"].as_str().unwrap_or(""),
            )
        })
        .collect();
    for expected in [
        (ANA, "invite"),
        (ANA, "register"),
        (BO, "invite"),
        (BO, "register"),
        (BO, "update-portal"),
    ] {
        assert!(actions.contains(&expected), "{expected:?} in {actions:?}");
    }
    let invite = rows
        .iter()
        .find(|r| r["action"] == "invite")
        .expect("an invitation");
    assert_eq!(invite["result"], "ok");
    assert_eq!(invite["system"], "tenant");
    assert!(
        invite["requestId"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{invite}"
    );
    assert!(
        invite["revision"]
            .as_str()
            .is_some_and(|r| r.starts_with("sha256:")),
        "{invite}"
    );

    let bo = records(&history(
        &h,
        &["--format", "json", "--user", "BO@partner.example"],
    ));
    assert!(
        !bo.is_empty() && bo.iter().all(|r| r["user"] == BO),
        "{bo:?}"
    );

    let update = rows
        .iter()
        .find(|r| r["action"] == "update-portal")
        .expect("the role change");
    let second = update["revision"].as_str().expect("revision");
    let prefix = &second[..14];
    let by_revision = records(&history(&h, &["--format", "json", "--revision", prefix]));
    assert_eq!(
        by_revision.len(),
        1,
        "only the second apply wrote at {prefix}: {by_revision:?}"
    );
    assert_eq!(by_revision[0]["action"], "update-portal");

    let tomorrow = (chrono::Utc::now() + chrono::TimeDelta::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let none = history(&h, &["--since", &tomorrow]);
    none.expect_code(0);
    assert!(
        none.stdout.contains("No remote writes recorded that match"),
        "{}",
        none.stdout
    );
    let since = (chrono::Utc::now() - chrono::TimeDelta::hours(1)).to_rfc3339();
    assert_eq!(
        records(&history(&h, &["--format", "json", "--since", &since])).len(),
        rows.len()
    );
    let bad = history(&h, &["--since", "last week"]);
    bad.expect_code(1);
    assert!(bad.stderr.contains("RFC 3339"), "{}", bad.stderr);

    let text = history(&h, &["--user", ANA]);
    text.expect_code(0);
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("REQUEST ID"),
        "{}",
        text.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" invite ") && l.contains(ANA)),
        "{}",
        text.stdout
    );

    // A line being written is skipped with a warning; a bad line in the middle is an error.
    let audit = h.state_dir().join("audit.jsonl");
    let mut bytes = std::fs::read(&audit).expect("audit.jsonl");
    let lines_before = bytes.iter().filter(|b| **b == b'\n').count();
    bytes.extend_from_slice(b"{\"time\":\"2026-");
    std::fs::write(&audit, &bytes).expect("write");
    let torn = history(&h, &["--format", "json"]);
    torn.expect_code(0);
    assert_eq!(records(&torn).len(), rows.len());
    assert!(
        torn.stderr
            .contains(&format!("warning: line {} of", lines_before + 1))
            && torn.stderr.contains("skipped"),
        "{}",
        torn.stderr
    );
    bytes.extend_from_slice(b"\n{}\n");
    std::fs::write(&audit, &bytes).expect("write");
    let corrupt = history(&h, &[]);
    corrupt.expect_code(1);
    assert!(
        corrupt
            .stderr
            .contains(&format!("line {} of", lines_before + 1))
            && corrupt.stderr.contains("audit.jsonl"),
        "{}",
        corrupt.stderr
    );
}

/// Runs `guestops apply …` at a terminal: under `script` (util-linux), which gives it a
/// pseudo-terminal and feeds it `input`. `None` when `script` is not installed.
fn apply_at_a_terminal(h: &Harness, input: &str) -> Option<Run> {
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    let line = format!(
        "{} apply --config {} --desired {}",
        quote(&crate::common::binary()),
        quote(&h.config_path()),
        quote(&h.users_path())
    );
    let mut child = std::process::Command::new("script")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", h.dir.path())
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .expect("write the answer");
    Some(Run::from(child.wait_with_output().expect("script runs")))
}

#[test]
fn apply_at_a_terminal_shows_the_plan_and_applies_it_only_after_yes() {
    let h = Harness::new();
    two_users(&h);
    let Some(declined) = apply_at_a_terminal(&h, "no\n") else {
        let _ = writeln!(
            std::io::stderr(),
            "`script` (util-linux) is not installed: the terminal case is covered by the unit tests of cli::apply only"
        );
        return;
    };
    declined.expect_code(1);
    assert!(
        declined.stdout.contains("invite"),
        "the plan is shown:\n{}",
        declined.stdout
    );
    assert!(
        declined
            .stdout
            .contains("Make these 4 changes? Only 'yes' is accepted")
            && declined
                .stdout
                .contains("Apply cancelled; nothing was changed."),
        "{}",
        declined.stdout
    );
    assert_eq!(h.writes(), 0, "declined: nothing written");

    let confirmed = apply_at_a_terminal(&h, "yes\n").expect("script ran before");
    confirmed.expect_code(0);
    assert!(
        confirmed.stdout.contains("Applied: 4 done, 0 failed"),
        "{}",
        confirmed.stdout
    );
    h.assert_converged_new(&[(ANA, "Ana", "administrator"), (BO, "Bo", "contributor")]);

    // Nothing to do: no question.
    let in_sync = apply_at_a_terminal(&h, "").expect("script ran before");
    in_sync.expect_code(0);
    assert!(!in_sync.stdout.contains("Only 'yes'"), "{}", in_sync.stdout);
}
