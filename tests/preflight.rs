//! `guestops doctor` and `guestops probe portal`, run as the real binary against the
//! simulator: what the operator reads (one line per check, the exit code, the facts file) and
//! what the simulator saw (no write by the doctor; the probe's writes, and its cleanup).

mod common;
mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use common::{Harness, Run};
use guestops::sim::FailRule;
use serde_json::Value;

const ADMIN: &str = "known.admin@contoso.example";
const TEST: &str = "probe.throwaway@contoso.example";
const GROUP: &str = "5d0b6c52-8f5c-4e36-9b0c-1f7f3cbb2a10";

/// A simulator with a known administrator, the config naming them, fast portal writes, and
/// secret files only their owner may read.
fn harness() -> Harness {
    let mut h = Harness::new();
    {
        let mut state = h.sim.state();
        state.portal.add_user(ADMIN, "Known Admin", 1);
        // What the doctor reads the tenant's invitation setting with.
        state.graph.grant_permission("Policy.Read.All");
    }
    h.configure(|c| {
        c.portal.known_admin = Some(ADMIN.to_owned());
        c.portal.max_writes_per_second = 1000.0;
    });
    for file in ["graph-secret", "portal-api-key"] {
        chmod(&h.dir.path().join(file), 0o600);
    }
    h
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn doctor(h: &Harness, extra: &[&str]) -> Run {
    let output = h
        .cmd()
        .arg("doctor")
        .arg("--config")
        .arg(h.config_path())
        .args(extra)
        .output()
        .expect("guestops runs");
    Run::from(output)
}

/// The line of check `name`: `(symbol, rest of the line)`, with the hint line if any.
#[track_caller]
fn line<'a>(run: &'a Run, name: &str) -> (&'a str, String) {
    let lines: Vec<&str> = run.stdout.lines().collect();
    let index = lines
        .iter()
        .position(|l| {
            l.split_once(' ')
                .is_some_and(|(_, rest)| rest.starts_with(&format!("{name}: ")))
        })
        .unwrap_or_else(|| panic!("no line for {name}:\n{}", run.stdout));
    let (symbol, _) = lines[index].split_once(' ').expect("a symbol");
    let mut text = lines[index].to_owned();
    if let Some(next) = lines.get(index + 1)
        && next.starts_with("    → ")
    {
        text.push('\n');
        text.push_str(next);
    }
    (symbol, text)
}

#[test]
fn doctor_on_a_well_set_simulator_passes_and_writes_nothing() {
    let h = harness();
    let run = doctor(&h, &[]);
    run.expect_code(0);
    for name in [
        "config",
        "secret.graph",
        "secret.portal",
        "graph.token",
        "graph.permissions",
        "graph.read",
        "graph.invitations",
        "portal.key",
        "portal.roleCodes",
        "source",
        "state",
        "clock",
    ] {
        let (symbol, text) = line(&run, name);
        assert_eq!(symbol, "✓", "{text}\n{}", run.stdout);
    }
    assert!(
        line(&run, "secret.graph").1.contains("graph-secret"),
        "the doctor says where the secret comes from:\n{}",
        run.stdout
    );
    for secret in [
        guestops::sim::seed::CLIENT_SECRET,
        guestops::sim::seed::API_KEY,
    ] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "a secret value is printed:\n{}",
            run.stdout
        );
    }
    assert!(
        !run.stdout.contains("\n! ") && !run.stdout.contains("\n✗ "),
        "every check passes:\n{}",
        run.stdout
    );
    assert_eq!(h.writes(), 0, "the doctor writes nothing");
    assert!(
        !h.state_dir().join("portal-facts.json").exists(),
        "the doctor records nothing"
    );
}

#[test]
fn doctor_fails_on_a_portal_key_without_the_user_endpoints() {
    let h = harness();
    h.sim.state().portal.add_limited_key("limited-key", &[]);
    std::fs::write(h.dir.path().join("portal-api-key"), "limited-key\n").expect("write key");
    let run = doctor(&h, &[]);
    run.expect_code(1);
    let (symbol, text) = line(&run, "portal.key");
    assert_eq!(symbol, "✗", "{text}");
    assert!(text.contains("403"), "{text}");
    let (symbol, text) = line(&run, "portal.roleCodes");
    assert_eq!(symbol, "!", "{text}");
    assert!(text.contains("skipped"), "{text}");
}

#[test]
fn doctor_fails_when_the_portal_reports_the_known_admin_with_another_code() {
    let h = harness();
    h.sim.state().portal.reversed_role_codes = true;
    let run = doctor(&h, &[]);
    run.expect_code(1);
    let (symbol, text) = line(&run, "portal.roleCodes");
    assert_eq!(symbol, "✗", "{text}");
    assert!(
        text.contains(&format!(
            "the portal reports {ADMIN} as role 3; roleCodes.administrator is 1: the mapping is wrong"
        )),
        "{text}"
    );
}

#[test]
fn doctor_fails_when_the_known_admin_is_not_listed() {
    let h = harness();
    h.sim.state().portal.remove(ADMIN);
    let run = doctor(&h, &[]);
    run.expect_code(1);
    let (symbol, text) = line(&run, "portal.roleCodes");
    assert_eq!(symbol, "✗", "{text}");
    assert!(text.contains("does not list"), "{text}");
}

#[test]
fn doctor_warns_when_no_known_admin_is_set() {
    let mut h = harness();
    h.configure(|c| c.portal.known_admin = None);
    let run = doctor(&h, &[]);
    let (symbol, text) = line(&run, "portal.roleCodes");
    assert_eq!(symbol, "!", "{text}");
    assert!(text.contains("portal.knownAdmin"), "{text}");
    assert!(!run.stdout.contains("✗"), "{}", run.stdout);
    run.expect_code(0);
}

#[test]
fn doctor_warns_about_a_secret_file_others_may_read() {
    let h = harness();
    let key = h.dir.path().join("portal-api-key");
    chmod(&key, 0o644);
    let run = doctor(&h, &[]);
    let (symbol, text) = line(&run, "secret.portal");
    assert_eq!(symbol, "!", "{text}");
    assert!(text.contains("0644"), "{text}");
    assert!(
        text.contains(&format!("chmod 600 {}", key.display())),
        "{text}"
    );
    let (symbol, _) = line(&run, "secret.graph");
    assert_eq!(symbol, "✓", "{}", run.stdout);
}

#[test]
fn doctor_fails_on_an_unreadable_secret_and_skips_what_needs_it() {
    let h = harness();
    std::fs::remove_file(h.dir.path().join("graph-secret")).expect("remove");
    let run = doctor(&h, &[]);
    run.expect_code(1);
    let (symbol, text) = line(&run, "secret.graph");
    assert_eq!(symbol, "✗", "{text}");
    assert!(text.contains("graph-secret"), "{text}");
    let (symbol, text) = line(&run, "graph.token");
    assert_eq!(symbol, "!", "{text}");
    assert!(text.contains("skipped"), "{text}");
    let (symbol, _) = line(&run, "portal.key");
    assert_eq!(
        symbol, "✓",
        "the portal is checked on its own:\n{}",
        run.stdout
    );
}

#[test]
fn doctor_reports_a_config_that_does_not_load_verbatim() {
    let h = harness();
    std::fs::write(h.config_path(), "tenant:\n  tenantId: x\n  bogusKey: 1\n").expect("write");
    let run = doctor(&h, &[]);
    run.expect_code(1);
    let (symbol, text) = line(&run, "config");
    assert_eq!(symbol, "✗", "{text}");
    assert!(text.contains("does not load"), "{text}");
    assert!(
        run.stdout.contains("bogusKey"),
        "the loader's problem is shown:\n{}",
        run.stdout
    );
    assert!(line(&run, "portal.key").1.contains("skipped"));
}

#[test]
fn doctor_says_when_the_state_is_held_by_a_running_daemon() {
    let mut h = harness();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    h.configure(|c| c.server.listen = format!("127.0.0.1:{port}").parse().expect("address"));
    h.write_users(&[]);
    let mut daemon = common::guestops_std(h.dir.path())
        .arg("run")
        .arg("--config")
        .arg(h.config_path())
        .arg("--desired")
        .arg(h.users_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("guestops run starts");
    let lock = h.state_dir().join("lock");
    let pid = daemon.id();
    let mut held = false;
    for _ in 0..3000 {
        if std::fs::read_to_string(&lock).is_ok_and(|t| t.contains(&format!("pid={pid}"))) {
            held = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let run = doctor(&h, &[]);
    daemon.kill().expect("stop the daemon");
    daemon.wait().expect("reap the daemon");
    assert!(held, "the daemon took the lock");
    let (symbol, text) = line(&run, "state");
    assert_ne!(
        symbol, "✗",
        "the daemon holding the lock is expected: {text}"
    );
    assert!(text.contains(&format!("pid {pid}")), "{text}");
    assert!(text.contains("daemon"), "{text}");
}

#[test]
fn doctor_fails_when_another_command_holds_the_state() {
    let h = harness();
    // This process takes the lock as an apply would; the doctor sees a holder that is not
    // `guestops run`.
    let _held = guestops::reconcile::state::StateStore::open(&h.state_dir()).expect("lock");
    let run = doctor(&h, &[]);
    run.expect_code(1);
    let (symbol, text) = line(&run, "state");
    assert_eq!(symbol, "✗", "{text}");
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
}

#[test]
fn doctor_checks_the_git_source() {
    let mut h = harness();
    let repo = support::Repo::new();
    h.configure(|c| {
        c.source.repo = Some(repo.path().display().to_string());
        c.source.branch = "main".to_owned();
    });
    let run = doctor(&h, &[]);
    let (symbol, text) = line(&run, "source");
    assert_eq!(symbol, "✗", "an empty repository has no branch: {text}");

    repo.commit(
        &common::users_yaml(&[("ana@partner.example", "Ana", "administrator")]),
        "first",
    );
    let run = doctor(&h, &[]);
    let (symbol, text) = line(&run, "source");
    assert_eq!(symbol, "✓", "{text}");
    assert!(text.ends_with("lists 1 user"), "{text}");
    assert!(
        !h.state_dir().join("mirror").exists(),
        "the daemon's mirror is not touched"
    );

    repo.commit(&support::invalid_users_yaml(), "broken");
    let run = doctor(&h, &[]);
    run.expect_code(1);
    let (symbol, text) = line(&run, "source");
    assert_eq!(symbol, "✗", "{text}");
    assert!(text.contains("guestops validate"), "{text}");
}

#[test]
fn doctor_json_is_one_document_matching_the_text() {
    let mut h = harness();
    h.configure(|c| c.portal.known_admin = None);
    let text = doctor(&h, &[]);
    let json = doctor(&h, &["--format", "json"]);
    json.expect_code(0);
    let doc: Value = serde_json::from_str(&json.stdout).expect("one JSON document");
    assert_eq!(doc["ok"], Value::Bool(true));
    let checks = doc["checks"].as_array().expect("checks");
    let text_lines: Vec<&str> = text
        .stdout
        .lines()
        .filter(|l| ["✓ ", "✗ ", "! "].iter().any(|s| l.starts_with(s)))
        .collect();
    assert_eq!(checks.len(), text_lines.len(), "{}", json.stdout);
    for (check, line) in checks.iter().zip(text_lines) {
        let symbol = match check["status"].as_str() {
            Some("ok") => "✓",
            Some("failed") => "✗",
            Some("warning") => "!",
            other => panic!("bad status {other:?}"),
        };
        let name = check["name"].as_str().expect("name");
        let message = check["message"].as_str().expect("message");
        assert_eq!(line, format!("{symbol} {name}: {message}"));
        assert!(
            check["hint"].is_null() == (symbol == "✓"),
            "a hint exactly on ✗ and !: {check}"
        );
    }
    assert_eq!(
        checks
            .iter()
            .find(|c| c["name"] == "portal.roleCodes")
            .map(|c| c["status"].clone()),
        Some(Value::String("warning".into()))
    );
}

fn probe(h: &Harness, extra: &[&str]) -> Run {
    let output = h
        .cmd()
        .args(["probe", "portal", "--config"])
        .arg(h.config_path())
        .args(["--test-email", TEST])
        .args(extra)
        .output()
        .expect("guestops runs");
    Run::from(output)
}

fn facts(h: &Harness) -> Value {
    serde_json::from_slice(
        &std::fs::read(h.state_dir().join("portal-facts.json")).expect("portal-facts.json"),
    )
    .expect("facts are JSON")
}

fn posts(h: &Harness) -> usize {
    h.state()
        .portal
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST "))
        .count()
}

#[test]
fn probe_records_a_put_that_clears_what_it_is_not_sent_and_cleans_up() {
    let h = harness();
    h.sim.state().portal.add_group(GROUP);
    let run = probe(&h, &["--yes", "--test-group", GROUP]);
    run.expect_code(0);
    assert!(
        run.stderr.contains("bills"),
        "the billing is announced:\n{}",
        run.stderr
    );
    let facts = facts(&h);
    assert_eq!(facts["complete"], Value::Bool(true), "{facts:#}");
    assert_eq!(facts["pageSize"], 1, "one user on the only page: {facts:#}");
    assert_eq!(facts["pageSizeIsLowerBound"], true);
    assert_eq!(facts["emailFilter"]["contains"], true);
    assert_eq!(facts["emailFilter"]["caseInsensitive"], true);
    assert_eq!(facts["create"]["status"], 200);
    assert_eq!(facts["duplicateCreate"]["status"], 400);
    assert_eq!(facts["duplicateCreatesSecondUser"], false);
    assert_eq!(facts["linkGroups"]["status"], 200);
    assert_eq!(facts["put"]["status"], 200);
    assert_eq!(facts["put"]["nameChanged"], true);
    assert_eq!(
        facts["put"]["keepsGroups"], false,
        "the simulator clears: {facts:#}"
    );
    assert_eq!(facts["put"]["keepsFlags"], false);
    assert_eq!(facts["put"]["keepsNullableFields"], false);
    assert_eq!(facts["put"]["keepsReports"], Value::Null);
    assert_eq!(facts["delete"]["status"], 200);
    assert_eq!(facts["deleteAgain"]["status"], 404);
    assert_eq!(facts["cleanup"]["userRemoved"], true);
    assert!(
        facts["portalBaseUrl"].as_str() == Some(h.base.as_str()),
        "{facts:#}"
    );
    assert!(
        facts["notes"].to_string().contains("bypassFirewall"),
        "{facts:#}"
    );
    assert!(
        run.stdout.contains("keeps groups       no"),
        "{}",
        run.stdout
    );
    // What the simulator did.
    let state = h.state();
    assert!(
        state.portal.find(TEST).is_none(),
        "the throw-away user is gone"
    );
    assert_eq!(
        state.portal.creates_for(TEST),
        1,
        "the duplicate POST created nothing"
    );
    assert!(state.portal.find(ADMIN).is_some(), "nobody else is touched");
    assert_eq!(state.portal.len(), 1);
}

#[test]
fn probe_records_a_put_that_keeps_what_it_is_not_sent() {
    let h = harness();
    {
        let mut state = h.state();
        state.portal.add_group(GROUP);
        state.portal.put_keeps_missing = true;
        state.portal.duplicate_post_status = 409;
        state.portal.delete_missing_status = 400;
    }
    let run = probe(&h, &["--yes", "--test-group", GROUP]);
    run.expect_code(0);
    let facts = facts(&h);
    assert_eq!(facts["put"]["keepsGroups"], true, "{facts:#}");
    assert_eq!(facts["put"]["keepsFlags"], true);
    assert_eq!(facts["put"]["keepsNullableFields"], true);
    assert_eq!(facts["duplicateCreate"]["status"], 409);
    assert_eq!(facts["deleteAgain"]["status"], 400);
    assert!(h.state().portal.find(TEST).is_none());
}

#[test]
fn probe_stops_before_any_write_when_the_role_codes_are_wrong() {
    let h = harness();
    h.sim.state().portal.reversed_role_codes = true;
    let run = probe(&h, &["--yes"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("the mapping is wrong"),
        "{}",
        run.stderr
    );
    assert_eq!(posts(&h), 0, "no POST reached the portal");
    assert_eq!(h.writes(), 0);
    assert!(!h.state_dir().join("portal-facts.json").exists());
}

#[test]
fn probe_refuses_an_address_that_is_already_registered() {
    let h = harness();
    h.sim.state().portal.add_user(TEST, "Someone Real", 3);
    let run = probe(&h, &["--yes"]);
    run.expect_code(1);
    assert!(run.stderr.contains("already registered"), "{}", run.stderr);
    assert_eq!(posts(&h), 0);
    assert_eq!(h.writes(), 0);
    assert!(
        h.state().portal.find(TEST).is_some(),
        "the real user is kept"
    );
}

#[test]
fn probe_deletes_the_user_when_a_step_fails() {
    let h = harness();
    h.state().portal_faults.fail.push(FailRule {
        method: Some("PUT".into()),
        path_prefix: "/api/user".into(),
        query_contains: None,
        status: 400,
        times: None,
        after_processing: false,
    });
    let run = probe(&h, &["--yes"]);
    run.expect_code(1);
    let facts = facts(&h);
    assert_eq!(facts["complete"], false, "{facts:#}");
    assert!(
        facts["stopped"].as_str().is_some_and(|s| s.contains("PUT")),
        "{facts:#}"
    );
    assert_eq!(facts["cleanup"]["userRemoved"], true, "{facts:#}");
    assert!(run.stdout.contains("was deleted"), "{}", run.stdout);
    let state = h.state();
    assert_eq!(state.portal.creates_for(TEST), 1, "the user was created");
    assert!(state.portal.find(TEST).is_none(), "and deleted at the end");
}

#[test]
fn probe_refuses_what_is_not_an_address() {
    let h = harness();
    let output = h
        .cmd()
        .args(["probe", "portal", "--yes", "--config"])
        .arg(h.config_path())
        .args(["--test-email", "not an address"])
        .output()
        .expect("guestops runs");
    let run = Run::from(output);
    run.expect_code(1);
    assert!(
        run.stderr.contains("not an e-mail address"),
        "{}",
        run.stderr
    );
    assert_eq!(h.writes(), 0);
}

#[test]
fn probe_without_a_terminal_needs_yes() {
    let h = harness();
    let run = probe(&h, &[]);
    run.expect_code(1);
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);
    assert_eq!(
        h.counters().portal_requests,
        0,
        "nothing was asked of the portal"
    );
}

#[test]
fn doctor_fails_on_a_token_without_user_invite_all() {
    let h = harness();
    h.state().graph.revoke_permission("User.Invite.All");
    let run = doctor(&h, &[]);
    run.expect_code(1);
    let (symbol, text) = line(&run, "graph.permissions");
    assert_eq!(symbol, "✗", "{text}");
    assert!(text.contains("lacks User.Invite.All"), "{text}");
    assert!(
        text.contains(
            "grant the application permission User.Invite.All to the app and grant admin consent"
        ),
        "{text}"
    );
}

#[test]
fn doctor_warns_about_a_permission_broader_than_needed() {
    let h = harness();
    h.state().graph.grant_permission("User.ReadWrite.All");
    let run = doctor(&h, &[]);
    run.expect_code(0);
    let (symbol, text) = line(&run, "graph.permissions");
    assert_eq!(symbol, "!", "{text}");
    assert!(
        text.contains("User.ReadWrite.All, broader than needed"),
        "{text}"
    );
}

#[test]
fn doctor_cannot_read_the_invitation_setting_without_policy_read_all() {
    let h = harness();
    h.state().graph.revoke_permission("Policy.Read.All");
    let run = doctor(&h, &[]);
    run.expect_code(0);
    let (symbol, text) = line(&run, "graph.invitations");
    assert_eq!(symbol, "!", "{text}");
    assert!(
        text.contains("unknown") && text.contains("Policy.Read.All"),
        "{text}"
    );
}

#[test]
fn doctor_fails_when_nobody_may_invite() {
    let h = harness();
    h.state().graph.set_allow_invites_from("none");
    let run = doctor(&h, &[]);
    run.expect_code(1);
    let (symbol, text) = line(&run, "graph.invitations");
    assert_eq!(symbol, "✗", "{text}");
    assert!(text.contains("allowInvitesFrom is none"), "{text}");
}

#[test]
fn doctor_warns_when_only_guest_inviters_may_invite() {
    let h = harness();
    h.state()
        .graph
        .set_allow_invites_from("adminsAndGuestInviters");
    let run = doctor(&h, &[]);
    let (symbol, text) = line(&run, "graph.invitations");
    assert_eq!(symbol, "!", "{text}");
    assert!(text.contains("Guest Inviter"), "{text}");
}

#[test]
fn doctor_fails_when_graph_refuses_the_read() {
    let h = harness();
    h.state().graph.revoke_permission("User.Read.All");
    let run = doctor(&h, &[]);
    run.expect_code(1);
    let (symbol, text) = line(&run, "graph.read");
    assert_eq!(symbol, "✗", "{text}");
    assert!(
        text.contains("403") && text.contains("User.Read.All"),
        "{text}"
    );
}

#[test]
fn probe_refuses_without_a_known_admin_to_check_the_role_codes_with() {
    let mut h = harness();
    h.configure(|c| c.portal.known_admin = None);
    let run = probe(&h, &["--yes"]);
    run.expect_code(1);
    assert!(run.stderr.contains("portal.knownAdmin"), "{}", run.stderr);
    assert_eq!(posts(&h), 0, "no POST reached the portal");
    assert_eq!(h.writes(), 0);
}

#[test]
fn doctor_signs_in_with_a_certificate_and_checks_its_file() {
    let mut h = harness();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/credentials");
    let pem = h.dir.path().join("graph.pem");
    std::fs::copy(fixtures.join("app.pem"), &pem).expect("copy the certificate");
    chmod(&pem, 0o644);
    {
        let crt = std::fs::read_to_string(fixtures.join("app.crt")).expect("app.crt");
        let certificate =
            guestops::sim::entra::SimCertificate::from_pem(&crt).expect("a certificate");
        let mut state = h.state();
        let mut creds = state.graph.credentials().clone();
        creds.certificates = vec![certificate];
        state.graph.set_credentials(creds);
    }
    h.configure(|c| {
        c.tenant.credential = guestops::config::CredentialConfig::ClientCertificate {
            certificate_file: Some(pem.clone()),
            password: guestops::config::SecretSource::CredentialOrEnv {
                credential: "graph-certificate-password".into(),
                env: "GUESTOPS_TENANT_CERTIFICATE_PASSWORD".into(),
                file_key: "tenant.credential.passwordFile".into(),
            },
            send_chain: false,
            algorithm: Default::default(),
        };
    });
    let run = doctor(&h, &[]);
    let (symbol, text) = line(&run, "secret.graph");
    assert_eq!(symbol, "!", "the private key is readable by others: {text}");
    assert!(
        text.contains(&format!("chmod 600 {}", pem.display())),
        "{text}"
    );
    let (symbol, text) = line(&run, "graph.token");
    assert_eq!(symbol, "✓", "{text}");
    assert!(text.contains("clientCertificate"), "{text}");
    assert!(text.contains("tenant.credential.certificateFile"), "{text}");
    let (symbol, text) = line(&run, "graph.permissions");
    assert_eq!(symbol, "✓", "{text}");
}
