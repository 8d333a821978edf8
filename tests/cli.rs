//! The `guestops` command line as a user meets it: help texts (snapshotted), `validate` in its
//! three formats, junk inputs, wrong host configurations and the demo.

mod common;

use std::path::{Path, PathBuf};

use common::{Run, guestops};

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `guestops args...` in `dir` with a clean environment.
fn run_in(dir: &Path, args: &[&str]) -> Run {
    Run::from(
        guestops(dir)
            .current_dir(dir)
            .args(args)
            .output()
            .expect("guestops runs"),
    )
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("guestops-cli-")
        .tempdir()
        .expect("a temporary directory")
}

// ---------------------------------------------------------------------------------------------
// Help

const SUBCOMMANDS: [&str; 15] = [
    "validate",
    "plan",
    "apply",
    "run",
    "status",
    "diff",
    "import",
    "doctor",
    "probe",
    "demo",
    "sim",
    "suspend",
    "resume",
    "reconcile",
    "state",
];

#[test]
fn help_texts() {
    let dir = tempdir();
    let top = run_in(dir.path(), &["--help"]);
    top.expect_code(0);
    for sub in SUBCOMMANDS {
        assert!(top.stdout.contains(sub), "--help lists `{sub}`");
    }
    insta::assert_snapshot!("help", top.stdout);
    for sub in SUBCOMMANDS {
        let help = run_in(dir.path(), &[sub, "--help"]);
        help.expect_code(0);
        insta::assert_snapshot!(format!("help-{sub}"), help.stdout);
    }
    let help = run_in(dir.path(), &["probe", "portal", "--help"]);
    help.expect_code(0);
    insta::assert_snapshot!("help-probe-portal", help.stdout);
    for sub in ["list", "show", "forget"] {
        let help = run_in(dir.path(), &["state", sub, "--help"]);
        help.expect_code(0);
        insta::assert_snapshot!(format!("help-state-{sub}"), help.stdout);
    }
}

#[test]
fn help_documents_the_exit_codes() {
    let dir = tempdir();
    let top = run_in(dir.path(), &["--help"]);
    for code in [
        "0  success",
        "1  error",
        "2  changes pending",
        "3  refused by policy",
    ] {
        assert!(top.stdout.contains(code), "--help explains `{code}`");
    }
    let expect = [
        ("validate", &["0 the file is valid", "1 it is invalid"][..]),
        (
            "plan",
            &["0 ok", "1 error", "3 refused", "2 changes pending"][..],
        ),
        (
            "apply",
            &["0 every change done", "1 error", "3 refused"][..],
        ),
        ("import", &["0 written", "1 error"][..]),
        ("doctor", &["0 no check failed", "1 a check failed"][..]),
        ("suspend", &["0 suspended", "1 error"][..]),
        ("resume", &["0 resumed", "1 error"][..]),
        (
            "reconcile",
            &["0 every change done", "1 a change failed", "3 refused"][..],
        ),
    ];
    let state_expect = [
        ("state list", &["0 listed", "1 error"][..]),
        ("state show", &["0 shown", "1 guestops has no record"][..]),
        ("state forget", &["0 forgotten", "1 refused"][..]),
    ];
    for (sub, phrases) in expect.into_iter().chain(state_expect) {
        let args: Vec<&str> = sub.split(' ').chain(["--help"]).collect();
        let help = run_in(dir.path(), &args);
        help.expect_code(0);
        assert!(help.stdout.contains("Exit codes"), "{sub} --help");
        for phrase in phrases {
            assert!(
                help.stdout.contains(phrase),
                "`{sub} --help` mentions `{phrase}`:\n{}",
                help.stdout
            );
        }
    }
}

#[test]
fn an_unknown_subcommand_or_flag_is_a_usage_error() {
    let dir = tempdir();
    let run = run_in(dir.path(), &["aplly"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("apply"),
        "suggests apply: {}",
        run.stderr
    );
    let run = run_in(dir.path(), &["plan", "--detailed-exit-code"]);
    assert_ne!(run.code, Some(0));
    assert!(run.stderr.contains("--detailed-exitcode"), "{}", run.stderr);
}

// ---------------------------------------------------------------------------------------------
// validate

const BAD: &str = "apiVersion: guestops/v1
users:
  - email: ana.silva@partner.example
    nmae: Ana
  - email: bob-at-vendor.example
    name: Bob
";

#[test]
fn validate_accepts_the_example() {
    let dir = tempdir();
    let example = repo_file("examples/users.yaml");
    let run = run_in(dir.path(), &["validate", &example.display().to_string()]);
    run.expect_code(0);
    assert!(run.stdout.contains("valid, 5 users"), "{}", run.stdout);
}

#[test]
fn validate_locates_every_problem_in_a_bad_file() {
    let dir = tempdir();
    std::fs::write(dir.path().join("bad.yaml"), BAD).expect("write");
    let run = run_in(dir.path(), &["validate", "bad.yaml"]);
    run.expect_code(1);
    assert!(run.stdout.contains("bad.yaml:4:5"), "{}", run.stdout);
    assert!(run.stdout.contains("bad.yaml:5:12"), "{}", run.stdout);
    assert!(run.stdout.contains("GO0102") && run.stdout.contains("GO0201"));
    assert!(
        run.stdout.contains("did you mean `name`?"),
        "{}",
        run.stdout
    );
}

#[test]
fn validate_defaults_to_users_yaml_in_the_current_directory() {
    let dir = tempdir();
    let missing = run_in(dir.path(), &["validate"]);
    missing.expect_code(1);
    assert!(missing.stderr.contains("users.yaml"), "{}", missing.stderr);
    std::fs::write(dir.path().join("users.yaml"), BAD).expect("write");
    let run = run_in(dir.path(), &["validate"]);
    run.expect_code(1);
    assert!(run.stdout.contains("users.yaml:4:5"), "{}", run.stdout);
}

#[test]
fn validate_github_format_emits_workflow_annotations() {
    let dir = tempdir();
    std::fs::write(dir.path().join("bad.yaml"), BAD).expect("write");
    let run = run_in(dir.path(), &["validate", "--format", "github", "bad.yaml"]);
    run.expect_code(1);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("::error file=bad.yaml,line=4,col=5")),
        "{}",
        run.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("::error file=bad.yaml,line=5,col=12")),
        "{}",
        run.stdout
    );
    assert!(
        lines.iter().all(|l| l.starts_with("::")),
        "only workflow commands: {}",
        run.stdout
    );
}

#[test]
fn validate_json_format_parses() {
    let dir = tempdir();
    std::fs::write(dir.path().join("bad.yaml"), BAD).expect("write");
    let run = run_in(dir.path(), &["validate", "--format", "json", "bad.yaml"]);
    run.expect_code(1);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    assert_eq!(report["file"], "bad.yaml");
    assert_eq!(report["valid"], false);
    let diagnostics = report["diagnostics"].as_array().expect("diagnostics");
    let positions: Vec<(String, u64, u64)> = diagnostics
        .iter()
        .map(|d| {
            (
                d["code"].as_str().unwrap_or_default().to_owned(),
                d["line"].as_u64().unwrap_or_default(),
                d["column"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        positions.contains(&("GO0102".into(), 4, 5)),
        "{positions:?}"
    );
    assert!(
        positions.contains(&("GO0201".into(), 5, 12)),
        "{positions:?}"
    );

    let example = repo_file("examples/users.yaml");
    let valid = run_in(
        dir.path(),
        &[
            "validate",
            "--format",
            "json",
            &example.display().to_string(),
        ],
    );
    valid.expect_code(0);
    let report: serde_json::Value = serde_json::from_str(&valid.stdout).expect("JSON");
    assert_eq!(report["valid"], true);
}

#[test]
fn validate_with_a_config_enforces_the_allowed_domains() {
    let dir = tempdir();
    let config = guestops::config::Config::for_simulator(
        &url::Url::parse("http://127.0.0.1:9/").expect("url"),
        &dir.path().join("state"),
    );
    let mut config = config;
    config.policy.allowed_domains = vec!["partner.example".into()];
    std::fs::write(dir.path().join("config.yaml"), config.to_yaml()).expect("write");
    let example = repo_file("examples/users.yaml");
    let run = run_in(
        dir.path(),
        &[
            "validate",
            "--config",
            "config.yaml",
            &example.display().to_string(),
        ],
    );
    run.expect_code(1);
    assert!(
        run.stdout.contains("vendor.example") && run.stdout.contains("contoso.example"),
        "the addresses outside partner.example are reported:\n{}",
        run.stdout
    );
}

/// A junk input is refused with exit 1 and a diagnostic, never a panic.
#[track_caller]
fn assert_junk_refused(dir: &Path, name: &str, content: &[u8], code: &str) {
    std::fs::write(dir.join(name), content).expect("write");
    for format in ["human", "json", "github"] {
        let run = run_in(dir, &["validate", "--format", format, name]);
        run.expect_code(1);
        assert!(
            run.stdout.contains(code),
            "{name} ({format}): {code} expected:\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
}

#[test]
fn junk_inputs_are_refused_without_panic() {
    let dir = tempdir();
    assert_junk_refused(dir.path(), "empty.yaml", b"", "GO0");
    let binary: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    assert_junk_refused(dir.path(), "binary.yaml", &binary, "GO0002");
    let mut big = String::from("apiVersion: guestops/v1\nusers:\n");
    while big.len() < 2 * 1024 * 1024 {
        big.push_str("  - email: someone@partner.example\n    name: Some One\n");
    }
    assert_junk_refused(dir.path(), "big.yaml", big.as_bytes(), "GO0001");
    let bomb = std::fs::read(repo_file("tests/fixtures/specs/alias-bomb.yaml")).expect("fixture");
    assert_junk_refused(dir.path(), "bomb.yaml", &bomb, "GO0005");
    assert_junk_refused(
        dir.path(),
        "nul.yaml",
        b"apiVersion: guestops/v1\n\0\0\0",
        "GO0",
    );
    assert_junk_refused(
        dir.path(),
        "deep.yaml",
        "[".repeat(100_000).as_bytes(),
        "GO0",
    );
}

#[test]
fn a_directory_instead_of_a_file_is_an_error_not_a_panic() {
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("users.yaml")).expect("mkdir");
    let run = run_in(dir.path(), &["validate", "users.yaml"]);
    run.expect_code(1);
    assert!(run.stderr.contains("users.yaml"), "{}", run.stderr);
}

// ---------------------------------------------------------------------------------------------
// Host configuration

/// A config for a simulator that does not run: loading fails before any request.
fn sim_config(dir: &Path) -> String {
    guestops::config::Config::for_simulator(
        &url::Url::parse("http://127.0.0.1:9/").expect("url"),
        &dir.join("state"),
    )
    .to_yaml()
}

/// `plan` and `validate --config` with a broken config: exit 1, the key is named.
#[track_caller]
fn assert_config_refused(config: &str, key: &str) {
    let dir = tempdir();
    std::fs::write(dir.path().join("config.yaml"), config).expect("write");
    let example = repo_file("examples/users.yaml").display().to_string();
    for args in [
        &["plan", "--config", "config.yaml", "--desired", &example][..],
        &["apply", "--config", "config.yaml", "--desired", &example][..],
        &["validate", "--config", "config.yaml", &example][..],
    ] {
        let run = run_in(dir.path(), args);
        run.expect_code(1);
        assert!(
            run.stderr.contains(key),
            "`{}` names `{key}`:\n{}",
            args.join(" "),
            run.stderr
        );
    }
}

#[test]
fn a_config_with_an_unknown_key_is_refused_naming_it() {
    let dir = tempdir();
    let config = sim_config(dir.path()).replace("  prune: false", "  prune: false\n  pruen: true");
    assert!(config.contains("pruen"));
    assert_config_refused(&config, "policy.pruen");
}

#[test]
fn a_plain_http_endpoint_off_loopback_is_refused_naming_the_key() {
    let dir = tempdir();
    let config = sim_config(dir.path()).replace(
        "  baseUrl: http://127.0.0.1:9/",
        "  baseUrl: http://api.powerembedded.example/",
    );
    assert!(config.contains("api.powerembedded.example"));
    assert_config_refused(&config, "portal.baseUrl");
    let config = sim_config(dir.path()).replace(
        "  graphEndpoint: http://127.0.0.1:9/",
        "  graphEndpoint: http://graph.example/",
    );
    assert!(config.contains("graph.example"));
    assert_config_refused(&config, "tenant.graphEndpoint");
}

#[test]
fn a_missing_secret_is_an_error_naming_where_it_is_read_from() {
    let dir = tempdir();
    // The simulator config reads the secrets from the environment, which is empty here.
    std::fs::write(dir.path().join("config.yaml"), sim_config(dir.path())).expect("write");
    let example = repo_file("examples/users.yaml").display().to_string();
    let run = run_in(
        dir.path(),
        &["plan", "--config", "config.yaml", "--desired", &example],
    );
    run.expect_code(1);
    assert!(
        run.stderr.contains("GUESTOPS_TENANT_CLIENT_SECRET"),
        "{}",
        run.stderr
    );
}

#[test]
fn plan_without_desired_file_says_what_to_pass() {
    let dir = tempdir();
    std::fs::write(dir.path().join("config.yaml"), sim_config(dir.path())).expect("write");
    let run = run_in(dir.path(), &["plan", "--config", "config.yaml"]);
    run.expect_code(1);
    assert!(run.stderr.contains("--desired"), "{}", run.stderr);
}

// ---------------------------------------------------------------------------------------------
// demo

#[test]
fn demo_converges_and_ends_with_an_empty_plan() {
    let dir = tempdir();
    let run = run_in(dir.path(), &["demo"]);
    run.expect_code(0);
    let out = &run.stdout;
    let first = out
        .find("1. guestops plan")
        .expect("the demo shows the first plan");
    let second = out
        .find("3. guestops plan again")
        .expect("the demo shows the second plan");
    assert!(first < second);
    assert!(
        out[first..second].contains("to invite"),
        "the first plan has changes:\n{out}"
    );
    assert!(out[first..second].contains("0 failed"), "{out}");
    let after = &out[second..];
    let plan_line = after.lines().nth(1).unwrap_or_default();
    assert!(
        plan_line.starts_with("No changes"),
        "the second plan is empty, got `{plan_line}`:\n{out}"
    );
    assert!(
        !after.contains("\n+ ") && !after.contains("\n~ ") && !after.contains("\n- "),
        "no change after the apply:\n{after}"
    );
    assert!(
        !out.contains("\x1b["),
        "no colour when stdout is not a terminal"
    );
}

// ---------------------------------------------------------------------------------------------
// Exit codes of usage errors, closed pipes

/// Usage errors exit 1, never 2 (which means "changes pending") nor 0; `--help` and
/// `--version` exit 0 and print to stdout.
#[test]
fn usage_errors_exit_1_and_help_and_version_exit_0() {
    let dir = tempdir();
    for args in [
        &["plan", "--detailed-exitcod"][..],
        &["aplly"][..],
        &[][..],
        &["validate", "--no-such-flag"][..],
        &["diff", "--from", "HEAD"][..],
    ] {
        let run = run_in(dir.path(), args);
        run.expect_code(1);
        assert!(
            run.stderr.contains("Usage:"),
            "`guestops {}` explains the usage on stderr:\n{}",
            args.join(" "),
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{}", run.stdout);
    }
    let run = run_in(dir.path(), &["plan", "--detailed-exitcod"]);
    assert!(run.stderr.contains("--detailed-exitcode"), "{}", run.stderr);

    let version = run_in(dir.path(), &["--version"]);
    version.expect_code(0);
    assert!(
        version.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        version.stdout
    );
    assert!(version.stderr.is_empty(), "{}", version.stderr);
    for args in [
        &["--help"][..],
        &["plan", "--help"][..],
        &["help", "apply"][..],
    ] {
        let help = run_in(dir.path(), args);
        help.expect_code(0);
        assert!(help.stdout.contains("Usage:"), "{}", help.stdout);
        assert!(help.stderr.is_empty(), "{}", help.stderr);
    }
}

/// A users.yaml with `n` users, each with a misspelled key: one diagnostic per user.
fn many_problems(n: usize) -> String {
    let mut yaml = String::from("apiVersion: guestops/v1\nusers:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  - email: user{i}@partner.example\n    nmae: User {i}\n"
        ));
    }
    yaml
}

/// `guestops … | head`: the reader goes away after a few bytes; guestops ends quietly with
/// exit 0 instead of "error: Broken pipe" and exit 1.
#[test]
fn a_closed_stdout_ends_quietly_with_exit_0() {
    use std::io::Read as _;
    use std::process::Stdio;

    let dir = tempdir();
    std::fs::write(dir.path().join("users.yaml"), many_problems(4000)).expect("write");
    for format in ["json", "human", "github"] {
        // The whole output is far larger than a pipe buffer (64 KiB), so guestops is still
        // writing when the reader goes away.
        let full = run_in(dir.path(), &["validate", "--format", format, "users.yaml"]);
        full.expect_code(1);
        assert!(
            full.stdout.len() > 256 * 1024,
            "--format {format} writes {} bytes",
            full.stdout.len()
        );

        let mut child = common::guestops_std(dir.path())
            .current_dir(dir.path())
            .args(["validate", "--format", format, "users.yaml"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("guestops starts");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut first = [0u8; 16];
        stdout.read_exact(&mut first).expect("guestops writes");
        drop(stdout);
        let output = child.wait_with_output().expect("guestops ends");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(0),
            "--format {format}: exit 0 on a closed stdout; stderr:\n{stderr}"
        );
        assert!(
            stderr.is_empty(),
            "--format {format}: quiet, got:\n{stderr}"
        );
    }
}

/// `validate` takes `-c` like the other commands that read the config.
#[test]
fn validate_takes_the_config_with_c() {
    let dir = tempdir();
    let mut config = guestops::config::Config::for_simulator(
        &url::Url::parse("http://127.0.0.1:9/").expect("url"),
        &dir.path().join("state"),
    );
    config.policy.allowed_domains = vec!["partner.example".into()];
    std::fs::write(dir.path().join("config.yaml"), config.to_yaml()).expect("write");
    let example = repo_file("examples/users.yaml").display().to_string();
    let without = run_in(dir.path(), &["validate", &example]);
    without.expect_code(0);
    let run = run_in(dir.path(), &["validate", "-c", "config.yaml", &example]);
    run.expect_code(1);
    assert!(run.stdout.contains("vendor.example"), "{}", run.stdout);
    let help = run_in(dir.path(), &["validate", "--help"]);
    assert!(help.stdout.contains("-c, --config"), "{}", help.stdout);
}

// ---------------------------------------------------------------------------------------------
// Booleans, the instance lock

#[test]
fn a_boolean_spelled_yes_on_or_true_capitalised_is_refused_at_its_line() {
    let dir = tempdir();
    let good = sim_config(dir.path());
    let line = good
        .lines()
        .position(|l| l == "  prune: false")
        .expect("the rendered config has prune")
        + 1;
    for spelling in ["yes", "y", "on", "True", "no", "off", "FALSE"] {
        let config = good.replace("  prune: false", &format!("  prune: {spelling}"));
        assert_config_refused(&config, "policy.prune");
        std::fs::write(dir.path().join("config.yaml"), &config).expect("write");
        let example = repo_file("examples/users.yaml").display().to_string();
        let run = run_in(dir.path(), &["validate", "-c", "config.yaml", &example]);
        assert!(
            run.stderr.contains(&format!(
                "line {line}, column 10: policy.prune: expected true or false, got `{spelling}`"
            )),
            "`prune: {spelling}` is refused at line {line}:\n{}",
            run.stderr
        );
    }
    for spelling in ["true", "false"] {
        let config = good.replace("  prune: false", &format!("  prune: {spelling}"));
        std::fs::write(dir.path().join("config.yaml"), &config).expect("write");
        let example = repo_file("examples/users.yaml").display().to_string();
        run_in(dir.path(), &["validate", "-c", "config.yaml", &example]).expect_code(0);
    }
}

#[test]
fn a_held_state_dir_names_the_holder_and_suggests_no_other_state_dir() {
    let dir = tempdir();
    std::fs::write(dir.path().join("config.yaml"), sim_config(dir.path())).expect("write");
    let held = guestops::reconcile::state::StateStore::open(&dir.path().join("state"))
        .expect("the test takes the lock");
    let example = repo_file("examples/users.yaml").display().to_string();
    let run = run_in(
        dir.path(),
        &["apply", "--config", "config.yaml", "--desired", &example],
    );
    run.expect_code(1);
    let error = run
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("an error line:\n{}", run.stderr));
    assert!(
        error.contains(&format!("pid {}", std::process::id())),
        "the holder (this test) is named: {error}"
    );
    assert!(error.contains("started "), "{error}");
    assert!(!error.contains("state.dir"), "{error}");
    assert!(!error.contains("another state"), "{error}");
    drop(held);
}

// ---------------------------------------------------------------------------------------------
// Relative paths of the config file

/// `state.dir: ./guestops-state` (what `guestops sim` prints) and relative secret files mean
/// the folder of the config file, wherever guestops runs; a missing state is warned about.
#[test]
fn relative_paths_of_the_config_resolve_against_its_folder_wherever_guestops_runs() {
    use guestops::config::SecretSource;

    let mut h = common::Harness::new();
    h.configure(|c| {
        c.state.dir = PathBuf::from("./guestops-state");
        c.tenant.client_secret = SecretSource::File(PathBuf::from("graph-secret"));
        c.portal.api_key = SecretSource::File(PathBuf::from("./portal-api-key"));
    });
    let config = std::fs::read_to_string(h.config_path()).expect("config written");
    assert!(config.contains("dir: \"./guestops-state\""), "{config}");
    h.write_users(&[("ana@partner.example", "Ana Silva", "administrator")]);
    let state_dir = h.dir.path().join("guestops-state");
    let elsewhere = tempdir();
    let run = |cwd: &Path, sub: &str, extra: &[&str]| {
        Run::from(
            guestops(cwd)
                .current_dir(cwd)
                .arg(sub)
                .arg("--config")
                .arg(h.config_path())
                .arg("--desired")
                .arg(h.users_path())
                .args(extra)
                .output()
                .expect("guestops runs"),
        )
    };

    let first = run(elsewhere.path(), "plan", &[]);
    first.expect_code(0);
    let warning = format!("warning: no state.json in {} yet", state_dir.display());
    assert!(first.stderr.contains(&warning), "{}", first.stderr);

    // Applied from the config's folder, planned from another one: the same state.
    run(h.dir.path(), "apply", &[]).expect_code(0);
    assert!(state_dir.join("state.json").is_file());
    let plan = run(elsewhere.path(), "plan", &["--detailed-exitcode"]);
    plan.expect_code(0);
    assert!(
        plan.stdout.lines().any(|l| l.starts_with("No changes")),
        "{}",
        plan.stdout
    );
    assert!(!plan.stderr.contains("warning"), "{}", plan.stderr);
    let status = run(elsewhere.path(), "status", &[]);
    status.expect_code(0);
    assert!(!status.stderr.contains("warning"), "{}", status.stderr);
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).expect("list").count(),
        0,
        "nothing is written in the working directory"
    );
}

/// An error's cause is printed once: a missing config file names the OS error one time.
#[test]
fn a_missing_config_file_prints_its_cause_once() {
    let dir = tempdir();
    let run = run_in(
        dir.path(),
        &["plan", "--config", "/nonexistent/guestops/config.yaml"],
    );
    run.expect_code(1);
    assert_eq!(
        run.stderr.matches("No such file or directory").count(),
        1,
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("/nonexistent/guestops/config.yaml"));
}
