//! The example GitHub workflow (`deploy/github/pr-check.yml`) only calls guestops the way the
//! binary accepts: every `guestops` invocation in a `run:` script names an existing subcommand
//! and only flags that subcommand lists in its `--help`, with values it accepts.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const WORKFLOW: &str = "deploy/github/pr-check.yml";

fn workflow() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(WORKFLOW);
    let text = std::fs::read_to_string(&path).expect("read the workflow");
    serde_saphyr::from_str(&text).expect("the workflow is valid YAML")
}

/// Every step of every job, in order.
fn steps(workflow: &Value) -> Vec<&Value> {
    let jobs = workflow["jobs"].as_object().expect("a `jobs` mapping");
    jobs.values()
        .flat_map(|job| job["steps"].as_array().expect("steps").iter())
        .collect()
}

/// Splits a shell line into words: quotes grouped and removed, `#` comments dropped, shell
/// operators (`|`, `||`, `&&`, `;`, `>`, `>>`, `<`, `(`, `)`, `$(`) as words of their own.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            } else {
                word.push(c);
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                in_word = true;
            }
            '#' if !in_word => break,
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '|' | '&' | ';' | '>' | '<' | '(' | ')' => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
                let mut op = c.to_string();
                if chars
                    .peek()
                    .is_some_and(|n| *n == c && c != '(' && c != ')')
                {
                    op.push(c);
                    chars.next();
                }
                out.push(op);
            }
            '$' if chars.peek() == Some(&'(') => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
                chars.next();
                out.push("$(".to_owned());
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

fn is_operator(word: &str) -> bool {
    matches!(
        word,
        "|" | "||" | "&" | "&&" | ";" | ";;" | ">" | ">>" | "<" | "<<" | "(" | ")" | "$("
    )
}

/// Every invocation of `guestops` in a script, as its arguments: a `guestops` word in command
/// position (first of a line or after an operator), up to the next operator.
fn invocations(script: &str) -> Vec<Vec<String>> {
    let joined = script.replace("\\\n", " ");
    let mut found = Vec::new();
    for line in joined.lines() {
        let words = words(line);
        for (i, word) in words.iter().enumerate() {
            let command_position = i == 0 || is_operator(&words[i - 1]);
            if word == "guestops" && command_position {
                let args = words[i + 1..]
                    .iter()
                    .take_while(|w| !is_operator(w))
                    .cloned()
                    .collect();
                found.push(args);
            }
        }
    }
    found
}

fn guestops(args: &[String]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_guestops"))
        .args(args)
        .env_remove("GUESTOPS_CONFIG")
        .output()
        .expect("run guestops");
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Checks one invocation against the binary; returns what is wrong with it.
fn check(args: &[String]) -> Result<(), String> {
    let subcommand: Vec<String> = args
        .first()
        .filter(|a| !a.starts_with('-'))
        .cloned()
        .into_iter()
        .collect();
    let mut help_args = subcommand.clone();
    help_args.push("--help".to_owned());
    let (code, help) = guestops(&help_args);
    if code != 0 {
        return Err(format!(
            "`guestops {}` is not a subcommand: {help}",
            subcommand.join(" ")
        ));
    }
    for arg in args.iter().skip(subcommand.len()) {
        if let Some(flag) = arg.strip_prefix("--") {
            let flag = format!("--{}", flag.split('=').next().unwrap_or(flag));
            let listed = help
                .split(|c: char| !(c.is_alphanumeric() || c == '-'))
                .any(|w| w == flag);
            if !listed {
                return Err(format!(
                    "`guestops {}` does not list {flag} in its --help",
                    subcommand.join(" ")
                ));
            }
        }
    }
    // The same words followed by --help: clap rejects an unknown flag or a bad value (such as
    // `--format html`) before it reaches --help.
    let mut with_help = args.to_vec();
    with_help.push("--help".to_owned());
    let (code, output) = guestops(&with_help);
    if code != 0 {
        return Err(format!(
            "`guestops {}` is rejected: {output}",
            args.join(" ")
        ));
    }
    Ok(())
}

fn run_scripts(workflow: &Value) -> Vec<String> {
    steps(workflow)
        .into_iter()
        .filter_map(|s| s["run"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn every_guestops_invocation_is_accepted_by_the_binary() {
    let workflow = workflow();
    let calls: Vec<Vec<String>> = run_scripts(&workflow)
        .iter()
        .flat_map(|s| invocations(s))
        .collect();
    let subcommands: Vec<&str> = calls
        .iter()
        .filter_map(|c| c.first().map(String::as_str))
        .collect();
    for expected in ["validate", "diff", "plan"] {
        assert!(
            subcommands.contains(&expected),
            "the workflow runs guestops {expected}: found {subcommands:?}"
        );
    }
    let problems: Vec<String> = calls.iter().filter_map(|c| check(c).err()).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_flag_the_binary_does_not_have_is_caught() {
    let bad = invocations("guestops diff --repo . --from a --to b --no-such-flag > diff.md");
    assert_eq!(bad.len(), 1);
    let err = check(&bad[0]).expect_err("an unknown flag must fail the check");
    assert!(err.contains("--no-such-flag"), "{err}");
    let bad_value = invocations("guestops plan --desired users.yaml --format html");
    assert!(check(&bad_value[0]).is_err(), "an unknown format must fail");
    let bad_subcommand = invocations("x=$(guestops difff --from a)");
    assert_eq!(bad_subcommand[0][0], "difff");
    assert!(check(&bad_subcommand[0]).is_err());
    let good = invocations(
        "if ! command -v guestops; then\n  guestops validate users.yaml --format github\nfi",
    );
    assert_eq!(good, [vec!["validate", "users.yaml", "--format", "github"]]);
    assert!(check(&good[0]).is_ok());
}

#[test]
fn words_and_invocations_follow_the_shell() {
    assert_eq!(
        words(r#"guestops diff --from "origin/$BASE_REF" --to HEAD > diff.md # note"#),
        [
            "guestops",
            "diff",
            "--from",
            "origin/$BASE_REF",
            "--to",
            "HEAD",
            ">",
            "diff.md"
        ]
    );
    // An argument of another command is not an invocation.
    assert!(invocations("cargo install --git https://example/guestops guestops").is_empty());
    // Continuation lines are joined.
    assert_eq!(
        invocations("guestops plan \\\n  --format markdown | tee plan.md"),
        [vec!["plan", "--format", "markdown"]]
    );
}

#[test]
fn runs_on_pull_requests_touching_users_yaml_with_full_history() {
    let workflow = workflow();
    let paths = workflow["on"]["pull_request"]["paths"]
        .as_array()
        .expect("on.pull_request.paths");
    assert!(paths.iter().any(|p| p == "users.yaml"), "{paths:?}");
    let checkout = steps(&workflow)
        .into_iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("actions/checkout@"))
        })
        .expect("a checkout step");
    assert_eq!(
        checkout["with"]["fetch-depth"], 0,
        "diff needs the base branch's history"
    );
}

#[test]
fn the_plan_runs_only_with_credentials() {
    let workflow = workflow();
    let plan_step = steps(&workflow)
        .into_iter()
        .find(|s| {
            s["run"]
                .as_str()
                .is_some_and(|r| invocations(r).iter().any(|c| c[0] == "plan"))
        })
        .expect("a plan step");
    let condition = plan_step["if"].as_str().unwrap_or_default();
    assert!(
        condition.contains("env.PORTAL_KEY != ''") && condition.contains("fork"),
        "the plan step is skipped without the portal key and for forks: if = {condition:?}"
    );
    // Entra: the job's OIDC token, no stored Entra secret.
    assert_eq!(
        plan_step["env"]["GUESTOPS_TENANT_CREDENTIAL_KIND"], "githubActions",
        "{plan_step:?}"
    );
    assert_eq!(workflow["permissions"]["id-token"], "write");
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(WORKFLOW))
        .expect("read the workflow");
    assert!(
        !text.contains("GRAPH_SECRET") && !text.contains("CLIENT_SECRET"),
        "no Entra secret in the workflow"
    );
    // No secret on a command line.
    for script in run_scripts(&workflow) {
        assert!(!script.contains("secrets."), "{script}");
    }
}
