//! `guestops status` end to end: the simulator on loopback, a config and secret files as an
//! operator writes them, `guestops apply`, changes made behind guestops' back (an accepted
//! invitation, a role changed by hand in the portal, a user added to users.yaml but not applied
//! yet), then `guestops status` in both formats.

mod support;
use support::{guestops, write_sim_config};

use guestops::sim::graph::SIM_CLIENT_SECRET;
use guestops::sim::portal::SIM_API_KEY;

use std::net::SocketAddr;

use chrono::{TimeZone, Utc};
use guestops::sim::Sim;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const APPLIED: &str = "\
apiVersion: guestops/v1
users:
  - email: ana.silva@partner.example
    name: Ana Silva
  - email: Bob.Stone@vendor.example
    name: Bob Stone
    role: contributor
  - email: dana.ops@contoso.example
    name: Dana Ops
  - email: erin@partner.example
    name: Erin Costa
    role: contributor
";

/// APPLIED plus a user nobody applied yet.
const EDITED: &str = "\
apiVersion: guestops/v1
users:
  - email: ana.silva@partner.example
    name: Ana Silva
  - email: Bob.Stone@vendor.example
    name: Bob Stone
    role: contributor
  - email: dana.ops@contoso.example
    name: Dana Ops
  - email: erin@partner.example
    name: Erin Costa
    role: contributor
  - email: frank@vendor.example
    name: Frank Lima
";

fn guest_id(sim: &Sim, email: &str) -> String {
    let found = sim.state().graph.find_by_email(email);
    assert_eq!(found.len(), 1, "one tenant user holds {email}: {found:?}");
    found[0].id.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_each_desired_user_across_tenant_portal_and_state() {
    let sim = Sim::new();
    {
        let mut state = sim.state();
        // Dana is an internal member: no invitation, only a portal registration.
        state.graph.add_member(
            "dana.ops@sim.onmicrosoft.com",
            Some("dana.ops@contoso.example"),
            "Dana Ops",
        );
        // Erin already has a portal registration (a viewer) that guestops adopts and updates.
        state
            .portal
            .add_user("erin@partner.example", "Erin Costa", 3);
    }
    let shutdown = CancellationToken::new();
    let base = sim
        .spawn(SocketAddr::from(([127, 0, 0, 1], 0)), shutdown.clone())
        .await
        .expect("simulator on loopback");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_sim_config(dir.path(), &base);
    let config = config.to_str().expect("UTF-8 temp path");
    let users = dir.path().join("users.yaml");
    let users = users.to_str().expect("UTF-8 temp path");
    std::fs::write(users, APPLIED).expect("write users.yaml");

    let apply = guestops(&["apply", "--config", config, "--desired", users]).await;
    assert_eq!(apply.code, 0, "apply: {}\n{}", apply.stdout, apply.stderr);
    let applied_on = Utc::now().format("%Y-%m-%d").to_string();

    // Behind guestops' back: Bob redeems his invitation, Ana's has been pending since a known
    // day, someone demotes Erin by hand in the portal, and a PR adds Frank (not applied).
    let bob = guest_id(&sim, "bob.stone@vendor.example");
    let ana = guest_id(&sim, "ana.silva@partner.example");
    {
        let mut state = sim.state();
        assert!(state.graph.accept_invitation(&bob));
        let pending_since = Utc.with_ymd_and_hms(2025, 11, 3, 10, 0, 0).single();
        state
            .graph
            .user_mut(&ana)
            .expect("Ana's guest")
            .external_user_state_change_date_time = pending_since;
        let mut erin = state
            .portal
            .find("erin@partner.example")
            .expect("Erin is registered")
            .clone();
        assert_eq!(erin["role"], 2, "apply made Erin a contributor");
        erin.insert("role".into(), 3.into());
        state.portal.remove("erin@partner.example");
        state
            .portal
            .insert_user(Value::Object(erin))
            .expect("re-insert Erin");
    }
    std::fs::write(users, EDITED).expect("write users.yaml");
    let writes_before = sim.state().counters.writes;

    let text = guestops(&["status", "--config", config, "--desired", users]).await;
    assert_eq!(text.code, 0, "status: {}", text.stderr);
    let today = Utc::now().format("%Y-%m-%d").to_string();
    let redacted = text
        .stdout
        .replace(&applied_on, "YYYY-MM-DD")
        .replace(&today, "YYYY-MM-DD");
    insta::assert_snapshot!("text", redacted);

    let json = guestops(&[
        "status",
        "--config",
        config,
        "--desired",
        users,
        "--format",
        "json",
    ])
    .await;
    assert_eq!(json.code, 0, "status --format json: {}", json.stderr);
    let rows: Vec<Value> = serde_json::from_str(&json.stdout).expect("a JSON array");
    let row = |email: &str| {
        rows.iter()
            .find(|r| r["email"] == email)
            .unwrap_or_else(|| panic!("a row for {email} in {rows:?}"))
            .clone()
    };
    let ana = row("ana.silva@partner.example");
    assert_eq!(ana["guest"], "pending");
    assert_eq!(ana["guestSince"], "2025-11-03T10:00:00Z");
    assert_eq!(ana["registered"], true);
    assert_eq!(ana["portalRole"], "administrator");
    assert_eq!(ana["owned"], true);
    assert_eq!(ana["inSync"], true);
    let bob = row("Bob.Stone@vendor.example");
    assert_eq!(bob["guest"], "accepted");
    assert_eq!(bob["portalRole"], "contributor");
    assert_eq!(bob["inSync"], true);
    let dana = row("dana.ops@contoso.example");
    assert_eq!(dana["guest"], "member");
    assert_eq!(dana["registered"], true);
    let erin = row("erin@partner.example");
    assert_eq!(erin["desiredRole"], "contributor");
    assert_eq!(erin["portalRole"], "viewer");
    assert_eq!(erin["inSync"], false);
    let frank = row("frank@vendor.example");
    assert_eq!(frank["guest"], "missing");
    assert_eq!(frank["registered"], false);
    assert_eq!(frank["owned"], false);
    assert_eq!(frank["lastChange"], Value::Null);

    // status is read-only.
    assert_eq!(sim.state().counters.writes, writes_before);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_fails_when_the_portal_key_is_wrong() {
    let sim = Sim::new();
    let shutdown = CancellationToken::new();
    let base = sim
        .spawn(SocketAddr::from(([127, 0, 0, 1], 0)), shutdown.clone())
        .await
        .expect("simulator on loopback");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_sim_config(dir.path(), &base);
    std::fs::write(dir.path().join("secrets/portal-api-key"), "wrong-key").expect("write key");
    let users = dir.path().join("users.yaml");
    std::fs::write(&users, APPLIED).expect("write users.yaml");
    let run = guestops(&[
        "status",
        "--config",
        config.to_str().expect("UTF-8 temp path"),
        "--desired",
        users.to_str().expect("UTF-8 temp path"),
    ])
    .await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stdout.is_empty(), "no partial table: {}", run.stdout);
    assert!(run.stderr.contains("error:"), "{}", run.stderr);
    shutdown.cancel();
}

/// What `deploy/github/pr-check.yml` does for the plan: the daemon's config names secret files
/// that do not exist on a CI runner; overrides set to "" reset those keys, and the secrets come
/// from environment variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_file_overrides_let_ci_read_secrets_from_the_environment() {
    let sim = Sim::new();
    let shutdown = CancellationToken::new();
    let base = sim
        .spawn(SocketAddr::from(([127, 0, 0, 1], 0)), shutdown.clone())
        .await
        .expect("simulator on loopback");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_sim_config(dir.path(), &base);
    std::fs::remove_dir_all(dir.path().join("secrets")).expect("remove the secret files");
    let users = dir.path().join("users.yaml");
    std::fs::write(&users, APPLIED).expect("write users.yaml");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_guestops"))
        .args(["status", "--config"])
        .arg(&config)
        .arg("--desired")
        .arg(&users)
        .env_remove("RUST_LOG")
        .env_remove("GUESTOPS_CONFIG")
        .env("GUESTOPS_TENANT_CREDENTIAL_SECRET_FILE", "")
        .env("GUESTOPS_PORTAL_API_KEY_FILE", "")
        .env("GUESTOPS_TENANT_CLIENT_SECRET", SIM_CLIENT_SECRET)
        .env("GUESTOPS_PORTAL_API_KEY", SIM_API_KEY)
        .output()
        .await
        .expect("run guestops");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("0 of 4 users in sync."), "{stdout}");
    shutdown.cancel();
}
