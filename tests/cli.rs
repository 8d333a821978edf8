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

const SUBCOMMANDS: [&str; 18] = [
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
    "completions",
    "man",
    "history",
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
        ("history", &["0 the history was printed", "1 error"][..]),
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
    // Every command lists its exit codes, not only the ones above.
    for sub in SUBCOMMANDS.iter().map(|s| vec![*s]).chain([
        vec!["probe", "portal"],
        vec!["state", "list"],
        vec!["state", "show"],
        vec!["state", "forget"],
    ]) {
        let mut args = sub.clone();
        args.push("--help");
        let help = run_in(dir.path(), &args);
        help.expect_code(0);
        let codes = help.stdout.split("Exit codes: ").nth(1).unwrap_or_else(|| {
            panic!(
                "`{} --help` has no `Exit codes: `:\n{}",
                sub.join(" "),
                help.stdout
            )
        });
        assert!(
            codes.starts_with("0 ") && codes.contains(", 1 "),
            "`{} --help` says what 0 and 1 mean:\n{}",
            sub.join(" "),
            help.stdout
        );
    }
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

/// Every `users.yaml` under `examples/` is valid under the example host configuration (its
/// `allowedDomains` included), as the README's "check and preview" step runs them.
#[test]
fn every_example_is_valid_under_the_example_config() {
    let dir = tempdir();
    let config = repo_file("examples/config.yaml").display().to_string();
    let mut checked = 0;
    for entry in std::fs::read_dir(repo_file("examples")).expect("examples/") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.lines().any(|l| l.starts_with("apiVersion: guestops/")) {
            continue;
        }
        let file = path.display().to_string();
        let run = run_in(dir.path(), &["validate", "--config", &config, &file]);
        assert_eq!(
            run.code,
            Some(0),
            "{file} is valid under examples/config.yaml:\n{}{}",
            run.stdout,
            run.stderr
        );
        checked += 1;
    }
    assert!(checked >= 1, "no users.yaml example found");
}

/// Issue 10: "valid, 1 users" and "(1 errors": counts agree with their noun.
#[test]
fn validate_counts_agree_with_their_noun() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("one.yaml"),
        "apiVersion: guestops/v1\nusers:\n  - email: ana@partner.example\n    name: Ana\n",
    )
    .expect("write");
    let run = run_in(dir.path(), &["validate", "one.yaml"]);
    run.expect_code(0);
    assert_eq!(run.stdout, "one.yaml: valid, 1 user\n");
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: guestops/v1\nusers:\n  - email: ana@partner.example\n",
    )
    .expect("write");
    let run = run_in(dir.path(), &["validate", "bad.yaml"]);
    run.expect_code(1);
    assert!(
        run.stdout.contains("bad.yaml is invalid: 1 error\n"),
        "{}",
        run.stdout
    );
}

/// Issue 10: a file over the limit is reported in human units with the limit, with its real
/// size when it is known (a file) and as "larger" when only the first part was read (stdin).
#[test]
fn a_file_over_the_limit_is_reported_in_human_units() {
    let dir = tempdir();
    let mut big = String::from("apiVersion: guestops/v1\nusers: []\n");
    big.push_str(&"#".repeat(2 * 1024 * 1024 - big.len()));
    std::fs::write(dir.path().join("big.yaml"), &big).expect("write");
    let run = run_in(dir.path(), &["validate", "big.yaml"]);
    run.expect_code(1);
    assert!(
        run.stdout
            .contains("error[GO0001]: the file is 2 MiB; the limit is 1 MiB\n"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("1048577"), "{}", run.stdout);

    let stdin = Run::from(
        guestops(dir.path())
            .current_dir(dir.path())
            .args(["validate", "-"])
            .write_stdin(big)
            .output()
            .expect("guestops runs"),
    );
    stdin.expect_code(1);
    assert!(
        stdin
            .stdout
            .contains("error[GO0001]: the file is larger than the limit of 1 MiB\n"),
        "{}",
        stdin.stdout
    );
}

/// Issue 10: `validate -` reads users.yaml from stdin.
#[test]
fn validate_reads_stdin_for_a_dash() {
    let dir = tempdir();
    let run = Run::from(
        guestops(dir.path())
            .current_dir(dir.path())
            .args(["validate", "-"])
            .write_stdin(std::fs::read(repo_file("examples/users.yaml")).expect("example"))
            .output()
            .expect("guestops runs"),
    );
    run.expect_code(0);
    assert_eq!(run.stdout, "stdin: valid, 5 users\n");
    let run = Run::from(
        guestops(dir.path())
            .current_dir(dir.path())
            .args(["validate", "--format", "github", "-"])
            .write_stdin(BAD)
            .output()
            .expect("guestops runs"),
    );
    run.expect_code(1);
    assert!(
        run.stdout.contains("::error file=stdin,line=4,col=5"),
        "{}",
        run.stdout
    );
}

/// Issue 10: a past `expires` is a warning at its line that says what happens: the file stays
/// valid; with --config the warning follows the host's `policy.prune`.
#[test]
fn a_past_expiry_is_a_warning_saying_what_happens() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("users.yaml"),
        "apiVersion: guestops/v1\nusers:\n  - email: ana@partner.example\n    name: Ana\n    expires: 2020-01-31\n",
    )
    .expect("write");
    let run = run_in(dir.path(), &["validate", "users.yaml"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains(
            "warning[GO0208]: the access of `ana@partner.example` expired on 2020-01-31: guestops does not invite or register this user"
        ),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("--> users.yaml:5:14"), "{}", run.stdout);
    assert!(
        run.stdout.ends_with("users.yaml: valid, 1 user\n"),
        "{}",
        run.stdout
    );

    let github = run_in(
        dir.path(),
        &["validate", "--format", "github", "users.yaml"],
    );
    github.expect_code(0);
    assert!(
        github
            .stdout
            .starts_with("::warning file=users.yaml,line=5,col=14,title=GO0208::"),
        "{}",
        github.stdout
    );

    for (prune, says) in [
        (
            false,
            "accounts that already exist are left in place because policy.prune is off",
        ),
        (
            true,
            "removes the accounts it owns for this user (policy.prune is on)",
        ),
    ] {
        let mut config = guestops::config::Config::for_simulator(
            &url::Url::parse("http://127.0.0.1:9/").expect("url"),
            &dir.path().join("state"),
        );
        config.policy.prune = prune;
        std::fs::write(dir.path().join("config.yaml"), config.to_yaml()).expect("write");
        let run = run_in(dir.path(), &["validate", "-c", "config.yaml", "users.yaml"]);
        run.expect_code(0);
        assert!(run.stdout.contains(says), "prune {prune}:\n{}", run.stdout);
    }

    // A date still to come (today included: access ends at the end of the day) is silent.
    std::fs::write(
        dir.path().join("users.yaml"),
        format!(
            "apiVersion: guestops/v1\nusers:\n  - email: ana@partner.example\n    name: Ana\n    expires: {}\n",
            chrono::Utc::now().date_naive()
        ),
    )
    .expect("write");
    let run = run_in(dir.path(), &["validate", "users.yaml"]);
    run.expect_code(0);
    assert!(!run.stdout.contains("GO0208"), "{}", run.stdout);
}

/// Issue 10: with --format json or github, a file that cannot be read is reported in that
/// format (a machine reads stdout), exit 1.
#[test]
fn an_unreadable_file_is_reported_in_the_requested_format() {
    let dir = tempdir();
    let json = run_in(
        dir.path(),
        &["validate", "--format", "json", "missing.yaml"],
    );
    json.expect_code(1);
    let report: serde_json::Value = serde_json::from_str(&json.stdout)
        .unwrap_or_else(|e| panic!("one JSON document ({e}):\n{}", json.stdout));
    assert_eq!(report["file"], "missing.yaml");
    assert_eq!(report["valid"], false);
    assert_eq!(report["diagnostics"], serde_json::json!([]));
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot read missing.yaml")),
        "{report}"
    );

    let github = run_in(
        dir.path(),
        &["validate", "--format", "github", "missing.yaml"],
    );
    github.expect_code(1);
    assert!(
        github.stdout.starts_with(
            "::error file=missing.yaml,title=guestops validate::cannot read missing.yaml"
        ),
        "{}",
        github.stdout
    );
    assert_eq!(github.stdout.lines().count(), 1, "{}", github.stdout);

    // A broken --config too.
    let json = run_in(
        dir.path(),
        &[
            "validate",
            "--format",
            "json",
            "-c",
            "nope.yaml",
            "missing.yaml",
        ],
    );
    json.expect_code(1);
    let report: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("nope.yaml")),
        "{report}"
    );

    // The human format keeps the error on stderr.
    let human = run_in(dir.path(), &["validate", "missing.yaml"]);
    human.expect_code(1);
    assert!(human.stdout.is_empty(), "{}", human.stdout);
    assert!(
        human.stderr.contains("cannot read missing.yaml"),
        "{}",
        human.stderr
    );
}

/// Issue 10: a key in the wrong letter case is one mistake and one error (unknown key, with
/// the suggestion), not also a missing `apiVersion`.
#[test]
fn a_key_in_the_wrong_case_is_one_error() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("users.yaml"),
        "apiversion: guestops/v1\nusers:\n  - email: ana@partner.example\n    name: Ana\n",
    )
    .expect("write");
    let run = run_in(dir.path(), &["validate", "--format", "json", "users.yaml"]);
    run.expect_code(1);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    let diagnostics = report["diagnostics"].as_array().expect("diagnostics");
    assert_eq!(diagnostics.len(), 1, "{report:#}");
    assert_eq!(diagnostics[0]["code"], "GO0102");
    assert_eq!(
        diagnostics[0]["message"],
        "unknown key `apiversion` in the top level"
    );
    assert_eq!(diagnostics[0]["help"], "did you mean `apiVersion`?");
    // The value is still checked as the apiVersion it was meant to be.
    std::fs::write(
        dir.path().join("users.yaml"),
        "apiversion: guestops/v2\nusers: []\n",
    )
    .expect("write");
    let run = run_in(dir.path(), &["validate", "users.yaml"]);
    run.expect_code(1);
    assert!(run.stdout.contains("GO0104"), "{}", run.stdout);
    assert!(!run.stdout.contains("GO0103"), "{}", run.stdout);
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
    // The delay in the config's duration syntax, as `sim --replication-delay` takes it.
    let run = run_in(dir.path(), &["demo", "--replication-delay", "3s"]);
    run.expect_code(0);
    let out = &run.stdout;
    assert!(
        out.contains("new guests stay invisible to reads for 3s"),
        "{out}"
    );
    // The role by its name (the config's roleCodes), not the portal's code.
    assert!(
        out.contains("Bob in the portal now: role contributor, groups 2, reports 3"),
        "{out}"
    );
    // apply's report names the actions as the plan and its JSON do.
    assert!(out.contains("adopt-guest"), "{out}");
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

// ---------------------------------------------------------------------------------------------
// One duration syntax, completions, man page

/// Issue 10: `demo` and `sim` take durations as the config writes them, through one parser:
/// the same refusal for a bare number in both.
#[test]
fn demo_and_sim_share_the_config_duration_syntax() {
    let dir = tempdir();
    for sub in ["demo", "sim"] {
        let run = run_in(dir.path(), &[sub, "--replication-delay", "3"]);
        run.expect_code(1);
        assert!(
            run.stderr
                .contains("`3` is not a duration; write a whole number and a unit, e.g. 30s, 5m, 2h, 7d (or 0)"),
            "{sub}: {}",
            run.stderr
        );
    }
}

#[test]
fn completions_cover_every_subcommand() {
    let dir = tempdir();
    let bash = run_in(dir.path(), &["completions", "bash"]);
    bash.expect_code(0);
    assert!(
        bash.stdout.contains("complete -F _guestops"),
        "{}",
        bash.stdout
    );
    for sub in SUBCOMMANDS {
        assert!(bash.stdout.contains(sub), "bash completion knows `{sub}`");
    }
    assert!(bash.stdout.contains("--detailed-exitcode"), "options too");
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        let run = run_in(dir.path(), &["completions", shell]);
        run.expect_code(0);
        assert!(run.stdout.contains("validate"), "{shell}: {}", run.stdout);
    }
    let unknown = run_in(dir.path(), &["completions", "tcsh"]);
    unknown.expect_code(1);
    assert!(unknown.stderr.contains("bash"), "{}", unknown.stderr);
}

#[test]
fn man_prints_a_roff_page() {
    let dir = tempdir();
    let man = run_in(dir.path(), &["man"]);
    man.expect_code(0);
    // The page starts with its `.TH` header, after clap_mangen's definition of the `Aq`
    // string (`.ie` / `.el`, two lines every roff page of clap_mangen begins with).
    let header = man
        .stdout
        .lines()
        .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "))
        .unwrap_or_default();
    assert!(
        header.starts_with(".TH guestops 1 "),
        "{}",
        &man.stdout[..man.stdout.len().min(300)]
    );
    assert!(
        man.stdout.lines().take(2).all(|l| l.starts_with('.')),
        "roff requests only before the header"
    );
    assert!(man.stdout.contains(".SH NAME"), "{}", man.stdout);
    assert!(man.stdout.contains("validate"), "{}", man.stdout);
    assert!(man.stdout.contains("Exit codes"), "{}", man.stdout);
}
