//! `guestops diff` end to end: a git repository made at test time, the real binary, every
//! output format snapshotted, exit codes, diagnostics of an invalid revision, and a huge diff
//! that must still fit in a pull-request comment.

use std::path::Path;

use assert_cmd::cargo::cargo_bin_cmd;
use git2::{Repository, Signature, Time};

const INITIAL: &str = "\
apiVersion: guestops/v1
defaults:
  role: administrator
users:
  - email: ana.silva@partner.example
    name: Ana Silva
  - email: Bob.Stone@vendor.example
    name: Bob Stone
    role: contributor
    expires: 2099-03-31
    reason: \"CHG-1234 migration support\"
  - email: carla@partner.example
    name: Carla Mendes
";

/// Adds Dan, removes Carla, makes Bob an administrator and extends Ana's access.
const SECOND: &str = "\
apiVersion: guestops/v1
defaults:
  role: administrator
users:
  - email: ana.silva@partner.example
    name: Ana Silva
    expires: 2099-06-30
  - email: Bob.Stone@vendor.example
    name: Bob Stone
    role: administrator
    expires: 2099-03-31
    reason: \"CHG-1301 takes over the tenant settings\"
  - email: dan@partner.example
    name: Dan <Ops> @platform
    role: workspace-contributor
    reason: \"CHG-1302 report migration\"
";

/// Invalid: a misspelled key and no `name`.
const INVALID: &str = "\
apiVersion: guestops/v1
users:
  - email: ana.silva@partner.example
    nmae: Ana Silva
";

/// A repository whose history is one commit per entry of `files` (users.yaml contents), with
/// fixed author and dates; returns the commit ids, oldest first.
fn repository(dir: &Path, files: &[&str]) -> Vec<String> {
    let repo = Repository::init(dir).expect("init a repository in a temp dir");
    let mut parent: Option<git2::Oid> = None;
    let mut ids = Vec::new();
    for (i, content) in files.iter().enumerate() {
        std::fs::write(dir.join("users.yaml"), content).expect("write users.yaml");
        let mut index = repo.index().expect("index");
        index
            .add_path(Path::new("users.yaml"))
            .expect("stage users.yaml");
        index.write().expect("write index");
        let tree = repo
            .find_tree(index.write_tree().expect("write tree"))
            .expect("tree");
        let seconds = 1_767_225_600 + 3600 * i64::try_from(i).unwrap_or(0);
        let who = Signature::new(
            "Requester",
            "requester@contoso.example",
            &Time::new(seconds, 0),
        )
        .expect("signature");
        let parents: Vec<git2::Commit<'_>> = parent
            .map(|p| repo.find_commit(p).expect("parent commit"))
            .into_iter()
            .collect();
        let parent_refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
        let id = repo
            .commit(
                Some("HEAD"),
                &who,
                &who,
                &format!("users.yaml change {}", i + 1),
                &tree,
                &parent_refs,
            )
            .expect("commit");
        parent = Some(id);
        ids.push(id.to_string());
    }
    ids
}

struct Fixture {
    dir: tempfile::TempDir,
    ids: Vec<String>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = repository(dir.path(), &[INITIAL, SECOND, INVALID]);
    Fixture { dir, ids }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn diff(repo: &Path, args: &[&str]) -> Run {
    let output = cargo_bin_cmd!("guestops")
        .arg("diff")
        .arg("--repo")
        .arg(repo)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run guestops");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl Fixture {
    /// Replaces the commit ids (full and abbreviated) by `[commit N]`, N counted from 1.
    fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (i, id) in self.ids.iter().enumerate() {
            text = text.replace(id, &format!("[commit {}]", i + 1));
            text = text.replace(&id[..12], &format!("[commit {}]", i + 1));
        }
        text
    }
}

#[test]
fn text_lists_granted_changed_and_revoked_users() {
    let f = fixture();
    let run = diff(f.dir.path(), &["--from", "HEAD~2", "--to", "HEAD~1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    insta::assert_snapshot!("text", f.redact(&run.stdout));
}

#[test]
fn markdown_is_a_pull_request_comment() {
    let f = fixture();
    let run = diff(
        f.dir.path(),
        &["--from", "HEAD~2", "--to", "HEAD~1", "--format", "markdown"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    // The name `Dan <Ops> @platform` must neither become HTML nor mention a team.
    assert!(!run.stdout.contains("<Ops>"), "{}", run.stdout);
    assert!(!run.stdout.contains("@platform"), "{}", run.stdout);
    insta::assert_snapshot!("markdown", f.redact(&run.stdout));
}

#[test]
fn json_is_machine_readable() {
    let f = fixture();
    let run = diff(
        f.dir.path(),
        &["--from", "HEAD~2", "--to", "HEAD~1", "--format", "json"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).expect("valid JSON");
    assert_eq!(value["from"]["commit"], f.ids[0].as_str());
    assert_eq!(value["to"]["commit"], f.ids[1].as_str());
    assert_eq!(value["added"][0]["email"], "dan@partner.example");
    assert_eq!(value["removed"][0]["email"], "carla@partner.example");
    insta::assert_snapshot!("json", f.redact(&run.stdout));
}

#[test]
fn detailed_exitcode_is_2_with_changes_and_0_without() {
    let f = fixture();
    let changes = diff(
        f.dir.path(),
        &["--from", "HEAD~2", "--to", "HEAD~1", "--detailed-exitcode"],
    );
    assert_eq!(changes.code, 2, "{}", changes.stderr);
    let same = diff(
        f.dir.path(),
        &["--from", "HEAD~1", "--to", "HEAD~1", "--detailed-exitcode"],
    );
    assert_eq!(same.code, 0, "{}", same.stderr);
    assert!(
        same.stdout.contains("no change in access"),
        "{}",
        same.stdout
    );
    // Without the flag, changes are still success.
    let plain = diff(f.dir.path(), &["--from", "HEAD~2", "--to", "HEAD~1"]);
    assert_eq!(plain.code, 0, "{}", plain.stderr);
}

#[test]
fn with_a_config_an_address_outside_allowed_domains_fails_the_diff() {
    let f = fixture();
    let config = f.dir.path().join("host.yaml");
    std::fs::write(
        &config,
        "tenant:\n  tenantId: contoso.onmicrosoft.com\n  clientId: 00000000-0000-0000-0000-000000000001\n\
portal:\n  baseUrl: https://portal.example/api/\n\
policy:\n  allowedDomains: [partner.example]\n",
    )
    .expect("config");
    let config = config.display().to_string();
    // HEAD~2 → HEAD~1 adds dan@partner.example and keeps Bob of vendor.example.
    let run = diff(
        f.dir.path(),
        &["--from", "HEAD~2", "--to", "HEAD~1", "--config", &config],
    );
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("GO0301"), "{}", run.stderr);
    assert!(run.stderr.contains("HEAD~1:users.yaml"), "{}", run.stderr);
    assert!(
        run.stderr.contains("Bob.Stone@vendor.example"),
        "{}",
        run.stderr
    );
    // Without the config the same diff is fine.
    let run = diff(f.dir.path(), &["--from", "HEAD~2", "--to", "HEAD~1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn invalid_file_at_the_new_revision_fails_with_positions() {
    let f = fixture();
    let run = diff(f.dir.path(), &["--from", "HEAD~1", "--to", "HEAD"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stdout.is_empty(),
        "nothing printed on stdout: {}",
        run.stdout
    );
    // rustc-style locations: revision:path:line:column. The misspelled `nmae` is one error
    // (read as `name`), not also a missing `name`.
    assert!(run.stderr.contains("HEAD:users.yaml:4:5"), "{}", run.stderr);
    assert!(run.stderr.contains("unknown key `nmae`"), "{}", run.stderr);
    assert!(!run.stderr.contains("GO0103"), "{}", run.stderr);
}

#[test]
fn invalid_file_at_the_old_revision_fails_naming_it() {
    let f = fixture();
    let run = diff(f.dir.path(), &["--from", "HEAD", "--to", "HEAD~2"]);
    assert_eq!(run.code, 1);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(run.stderr.contains("HEAD:users.yaml:4:5"), "{}", run.stderr);
    assert!(!run.stderr.contains("HEAD~2:users.yaml"), "{}", run.stderr);
}

#[test]
fn unknown_revision_is_a_clear_error() {
    let f = fixture();
    let run = diff(f.dir.path(), &["--from", "no-such-branch", "--to", "HEAD"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("revision `no-such-branch` does not name a commit"),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_file_names_the_path_and_revision() {
    let f = fixture();
    let run = diff(
        f.dir.path(),
        &[
            "--from",
            "HEAD~2",
            "--to",
            "HEAD~1",
            "--path",
            "admins.yaml",
        ],
    );
    assert_eq!(run.code, 1);
    // Missing at both revisions: a wrong --path, named as the option diff takes (not the
    // daemon's source.path).
    assert!(
        run.stderr
            .contains("`admins.yaml` does not exist at either HEAD~2 or HEAD~1"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("check --path"), "{}", run.stderr);
    assert!(!run.stderr.contains("source.path"), "{}", run.stderr);
}

/// Commits `files` (path, content) on top of HEAD (or as the first commit) in `dir`.
fn commit(dir: &Path, files: &[(&str, &str)], message: &str) -> String {
    let repo = Repository::open(dir)
        .or_else(|_| Repository::init(dir))
        .expect("repository");
    let mut index = repo.index().expect("index");
    for (path, content) in files {
        std::fs::write(dir.join(path), content).expect("write");
        index.add_path(Path::new(path)).expect("stage");
    }
    index.write().expect("write index");
    let tree = repo
        .find_tree(index.write_tree().expect("write tree"))
        .expect("tree");
    let who = Signature::new(
        "Requester",
        "requester@contoso.example",
        &Time::new(1_767_225_600, 0),
    )
    .expect("signature");
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    repo.commit(Some("HEAD"), &who, &who, message, &tree, &parents)
        .expect("commit")
        .to_string()
}

/// Issue 10: the pull request that adds users.yaml is diffed against an empty file: every
/// user is an addition.
#[test]
fn a_change_that_adds_the_file_grants_every_user() {
    let dir = tempfile::tempdir().expect("temp dir");
    commit(dir.path(), &[("README.md", "admins\n")], "start");
    commit(dir.path(), &[("users.yaml", INITIAL)], "add users.yaml");
    let run = diff(
        dir.path(),
        &["--from", "HEAD~1", "--to", "HEAD", "--detailed-exitcode"],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with("users.yaml HEAD~1 (no file) → HEAD "),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(": 3 added, 0 removed, 0 changed\n"),
        "{}",
        run.stdout
    );
    assert_eq!(
        run.stdout.lines().filter(|l| l.starts_with("+ ")).count(),
        3
    );
    let md = diff(
        dir.path(),
        &["--from", "HEAD~1", "--to", "HEAD", "--format", "markdown"],
    );
    assert_eq!(md.code, 0, "{}", md.stderr);
    assert_eq!(
        md.stdout.matches("| ➕ granted |").count(),
        3,
        "{}",
        md.stdout
    );
    let json = diff(
        dir.path(),
        &["--from", "HEAD~1", "--to", "HEAD", "--format", "json"],
    );
    let value: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(value["from"]["absent"], true);
    assert_eq!(value["added"].as_array().map(Vec::len), Some(3));

    // The file missing at the newer revision is still an error, naming --path.
    let run = diff(dir.path(), &["--from", "HEAD", "--to", "HEAD~1"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("`users.yaml` does not exist at revision HEAD~1"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("check --path"), "{}", run.stderr);
}

/// Issue 10: a removal says what will really happen: with `policy.prune: false` nothing is
/// revoked (left in place); with `true` it is; without --config the comment says it depends.
#[test]
fn a_removal_says_what_pruning_does_with_it() {
    let f = fixture();
    let args = ["--from", "HEAD~2", "--to", "HEAD~1", "--format", "markdown"];
    let plain = diff(f.dir.path(), &args);
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    assert!(
        plain.stdout.contains(
            "| ➖ removed | `carla@partner.example` | administrator | Carla Mendes | revoked only if the host has policy.prune on"
        ),
        "{}",
        plain.stdout
    );
    for (prune, row) in [
        (
            "false",
            "| ➖ removed | `carla@partner.example` | administrator | Carla Mendes | left in place: policy.prune is off |",
        ),
        (
            "true",
            "| ➖ revoked | `carla@partner.example` | administrator | Carla Mendes | removed by guestops",
        ),
    ] {
        let config = f.dir.path().join("host.yaml");
        std::fs::write(
            &config,
            format!(
                "tenant:\n  tenantId: contoso.onmicrosoft.com\n  clientId: 00000000-0000-0000-0000-000000000001\n\
portal:\n  baseUrl: https://portal.example/api/\n\
policy:\n  prune: {prune}\n"
            ),
        )
        .expect("config");
        let mut with_config = args.to_vec();
        let config = config.display().to_string();
        with_config.extend(["--config", &config]);
        let run = diff(f.dir.path(), &with_config);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(run.stdout.contains(row), "prune {prune}:\n{}", run.stdout);
        if prune == "false" {
            assert!(!run.stdout.contains("revoked"), "{}", run.stdout);
        }
    }
}

#[test]
fn not_a_repository_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = diff(dir.path(), &["--from", "HEAD~1", "--to", "HEAD"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("is not a git repository"),
        "{}",
        run.stderr
    );
}

#[test]
fn huge_markdown_diff_fits_in_a_comment_and_says_what_is_missing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut big = String::from(INITIAL);
    for i in 0..5000 {
        big.push_str(&format!(
            "  - email: partner.admin.{i:04}@partner.example\n    name: Partner Admin {i:04}\n"
        ));
    }
    // Also revoke Carla: a revocation must not be hidden behind 5,000 grants.
    let big = big.replace(
        "  - email: carla@partner.example\n    name: Carla Mendes\n",
        "",
    );
    repository(dir.path(), &[INITIAL, &big]);
    let run = diff(
        dir.path(),
        &["--from", "HEAD~1", "--to", "HEAD", "--format", "markdown"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let md = run.stdout;
    assert!(
        md.chars().count() < 65_535,
        "{} characters",
        md.chars().count()
    );
    assert!(
        md.contains("**5000 added, 1 removed, 0 changed**"),
        "the summary counts everything"
    );
    assert!(md.contains("| ➖ removed | `carla@partner.example` |"));
    let shown = md.matches("| ➕ granted |").count();
    assert!(shown > 100 && shown < 5000, "{shown} granted rows shown");
    assert!(
        md.contains(&format!("{} more granted not shown", 5000 - shown)),
        "{}",
        md.lines().last().unwrap_or_default()
    );
    // The text format is not truncated.
    let text = diff(dir.path(), &["--from", "HEAD~1", "--to", "HEAD"]);
    assert_eq!(
        text.stdout.lines().filter(|l| l.starts_with("+ ")).count(),
        5000
    );
}
