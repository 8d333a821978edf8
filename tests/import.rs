//! `guestops import` end to end: the simulator on loopback holds portal admins (some with a
//! guest, one an internal member, one never invited) and a viewer; `import` writes a
//! users.yaml that validates, and `plan` with that file invites and registers nobody.

mod support;
use support::{guestops, write_sim_config};

use std::net::SocketAddr;

use guestops::sim::Sim;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_writes_a_file_whose_plan_invites_and_registers_nobody() {
    let sim = Sim::new();
    {
        let mut state = sim.state();
        state
            .graph
            .add_guest("ana.silva@partner.example", "Ana Silva");
        state
            .graph
            .add_guest("bob.stone@vendor.example", "Bob Stone");
        state.graph.add_member(
            "dana.ops@sim.onmicrosoft.com",
            Some("dana.ops@contoso.example"),
            "Dana Ops",
        );
        state.graph.add_guest("vera@partner.example", "Vera Viewer");
        state
            .portal
            .add_user("ana.silva@partner.example", "Ana Silva", 1);
        state
            .portal
            .add_user("Bob.Stone@vendor.example", "Bob Stone", 2);
        state
            .portal
            .add_user("dana.ops@contoso.example", "Dana Ops", 1);
        state
            .portal
            .add_user("carl@vendor.example", "Carl Neves", 4);
        state
            .portal
            .add_user("vera@partner.example", "Vera Viewer", 3);
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
    let writes_before = sim.state().counters.writes;

    let import = guestops(&["import", "--config", config, "--output", users]).await;
    assert_eq!(import.code, 0, "import: {}", import.stderr);
    assert!(import.stdout.is_empty(), "the file goes to --output");
    assert!(
        import
            .stderr
            .contains("3 admin(s) written, 1 commented out"),
        "{}",
        import.stderr
    );
    let written = std::fs::read_to_string(users).expect("users.yaml written");
    assert!(
        written.contains(
            "- email: Bob.Stone@vendor.example\n    name: Bob Stone\n    role: contributor\n"
        ),
        "{written}"
    );
    assert!(
        written.contains("  # - email: carl@vendor.example"),
        "{written}"
    );
    assert!(
        !written.contains("vera"),
        "viewers are not admins: {written}"
    );

    let validate = guestops(&["validate", users]).await;
    assert_eq!(validate.code, 0, "validate: {}", validate.stderr);

    let plan = guestops(&[
        "plan",
        "--config",
        config,
        "--desired",
        users,
        "--format",
        "json",
    ])
    .await;
    assert_eq!(plan.code, 0, "plan: {}", plan.stderr);
    let plan: Value = serde_json::from_str(&plan.stdout).expect("plan JSON");
    let changes = plan["changes"].as_array().expect("changes");
    for change in changes {
        assert_eq!(
            change["system"], "state",
            "importing then planning must only adopt (no invite, register or update): {change}"
        );
    }
    let adopted = |action: &str| -> Vec<&str> {
        changes
            .iter()
            .filter(|c| c["action"] == action)
            .filter_map(|c| c["key"].as_str())
            .collect()
    };
    assert_eq!(
        adopted("adopt-guest"),
        ["ana.silva@partner.example", "bob.stone@vendor.example"]
    );
    assert_eq!(
        adopted("adopt-portal"),
        [
            "ana.silva@partner.example",
            "bob.stone@vendor.example",
            "dana.ops@contoso.example"
        ]
    );
    assert_eq!(
        sim.state().counters.writes,
        writes_before,
        "import and plan are read-only"
    );

    // An existing file is not replaced without --overwrite (not --force, which means
    // "override the removal guards" in plan and apply, and is no option of import).
    let again = guestops(&["import", "--config", config, "--output", users]).await;
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("--overwrite"), "{}", again.stderr);
    let old_flag = guestops(&["import", "--config", config, "--output", users, "--force"]).await;
    assert_eq!(old_flag.code, 1, "{}", old_flag.stderr);
    assert!(
        old_flag.stderr.contains("unexpected argument '--force'"),
        "{}",
        old_flag.stderr
    );
    let forced = guestops(&[
        "import",
        "--config",
        config,
        "--output",
        users,
        "--overwrite",
        "--uninvited",
        "include",
    ])
    .await;
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    let written = std::fs::read_to_string(users).expect("users.yaml");
    assert!(
        written.contains("\n  - email: carl@vendor.example\n"),
        "{written}"
    );

    // To stdout without --output.
    let stdout = guestops(&["import", "--config", config, "--uninvited", "skip"]).await;
    assert_eq!(stdout.code, 0, "{}", stdout.stderr);
    assert!(stdout.stdout.starts_with("# Written by `guestops import`"));
    assert!(!stdout.stdout.contains("carl"));
    shutdown.cancel();
}
