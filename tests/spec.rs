//! `users.yaml` parsing, validation and diagnostics, driven by the fixtures in
//! `tests/fixtures/specs/`.
//!
//! Every fixture starts with a comment `# expect: valid` or `# expect: CODE@LINE ...` listing
//! every diagnostic it must produce, and may say `# allowed-domains: a.example b.example` to
//! set the host's domain policy. Each fixture's human rendering is snapshotted.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use guestops::desired::spec::{
    Diagnostic, MAX_FILE_SIZE, OutputFormat, Parsed, Role, Severity, SpecPolicy, codes, parse,
    render,
};
use proptest::prelude::*;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/specs")
}

fn fixtures() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(fixture_dir())
        .expect("tests/fixtures/specs exists")
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
}

fn read_fixture(name: &str) -> Vec<u8> {
    fs::read(fixture_dir().join(name)).expect("fixture exists")
}

/// What a fixture's header comments promise.
struct Header {
    /// `(code, line)` of every diagnostic, or empty for a valid file.
    expected: Vec<(String, u32)>,
    valid: bool,
    policy: SpecPolicy,
}

fn header(name: &str, bytes: &[u8]) -> Header {
    let text = String::from_utf8_lossy(bytes);
    let mut expected = Vec::new();
    let mut valid = false;
    let mut seen_expect = false;
    let mut policy = SpecPolicy::default();
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        if let Some(rest) = line.strip_prefix("# expect:") {
            seen_expect = true;
            for item in rest.split_whitespace() {
                if item == "valid" {
                    valid = true;
                    continue;
                }
                let (code, line) = item
                    .split_once('@')
                    .unwrap_or_else(|| panic!("{name}: bad expectation {item:?}"));
                let line = line
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: bad line in {item:?}"));
                expected.push((code.to_owned(), line));
            }
        } else if let Some(rest) = line.strip_prefix("# allowed-domains:") {
            policy.allowed_domains = rest.split_whitespace().map(str::to_owned).collect();
        }
    }
    assert!(
        seen_expect,
        "{name}: every fixture starts with `# expect: valid` or `# expect: CODE@LINE ...`"
    );
    Header {
        expected,
        valid,
        policy,
    }
}

fn human(parsed: &Parsed, bytes: &[u8], file: &str) -> String {
    let mut out = Vec::new();
    render(
        &parsed.diagnostics,
        bytes,
        file,
        OutputFormat::Human,
        &mut out,
    )
    .expect("render");
    String::from_utf8(out).expect("human output is UTF-8")
}

/// The desired state in a form a reviewer can read in a snapshot.
fn summary(parsed: &Parsed) -> String {
    let mut out = String::new();
    match &parsed.desired {
        None => out.push_str("desired state: none (invalid)\n"),
        Some(desired) => {
            let _ = writeln!(
                out,
                "desired state: {} user(s); invitation sendEmail={} message={:?}",
                desired.users.len(),
                desired.invitation.send_email,
                desired.invitation.message
            );
            for (key, user) in &desired.users {
                let _ = writeln!(
                    out,
                    "  {key}: email={:?} name={:?} role={} expires={} reason={:?} line={}",
                    user.email.as_str(),
                    user.name,
                    user.role,
                    user.expires.map_or("-".to_owned(), |d| d.to_string()),
                    user.reason,
                    user.line
                );
            }
        }
    }
    out
}

#[test]
fn every_fixture_produces_exactly_its_expected_diagnostics() {
    let all = fixtures();
    assert!(all.len() >= 25, "fixtures are missing: {}", all.len());
    let mut failures = Vec::new();
    for path in all {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_owned();
        let bytes = fs::read(&path).expect("fixture readable");
        let header = header(&name, &bytes);
        let parsed = parse(&bytes, &header.policy);
        let got: Vec<(String, u32)> = parsed
            .diagnostics
            .iter()
            .map(|d| (d.code.to_owned(), d.line))
            .collect();
        let mut want = header.expected.clone();
        want.sort_by_key(|(_, line)| *line);
        if got != want {
            failures.push(format!("{name}: expected {want:?}, got {got:?}"));
        }
        let has_errors = parsed
            .diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error);
        if header.valid == has_errors || parsed.desired.is_some() == has_errors {
            failures.push(format!(
                "{name}: valid={} but errors={has_errors}, desired={}",
                header.valid,
                parsed.desired.is_some()
            ));
        }
        let named_valid = name.starts_with("valid-") || name.starts_with("warning-");
        if named_valid != header.valid {
            failures.push(format!(
                "{name}: exactly the `valid-*` and `warning-*` fixtures are valid"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_fixture_human_rendering_is_snapshotted() {
    for path in fixtures() {
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_owned();
        let bytes = fs::read(&path).expect("fixture readable");
        let header = header(&name, &bytes);
        let parsed = parse(&bytes, &header.policy);
        let mut output = human(&parsed, &bytes, "users.yaml");
        output.push_str("----\n");
        output.push_str(&summary(&parsed));
        insta::assert_snapshot!(format!("human-{name}"), output);
    }
}

#[test]
fn five_different_mistakes_give_five_diagnostics_at_once() {
    let bytes = read_fixture("five-errors.yaml");
    let parsed = parse(&bytes, &SpecPolicy::default());
    let mut found: Vec<&str> = parsed.diagnostics.iter().map(|d| d.code).collect();
    found.sort_unstable();
    found.dedup();
    assert_eq!(parsed.diagnostics.len(), 5, "{:#?}", parsed.diagnostics);
    assert_eq!(found.len(), 5, "five different codes: {found:?}");
    let text = human(&parsed, &bytes, "users.yaml");
    assert!(
        text.ends_with("error: users.yaml is invalid: 5 errors\n"),
        "{text}"
    );
}

#[test]
fn valid_full_example_from_the_design_is_understood() {
    let parsed = parse(&read_fixture("valid-full.yaml"), &SpecPolicy::default());
    assert!(parsed.diagnostics.is_empty(), "{:#?}", parsed.diagnostics);
    let desired = parsed.desired.expect("valid");
    let bob = &desired.users["bob.stone@vendor.example"];
    assert_eq!(bob.email.as_str(), "Bob.Stone@vendor.example");
    assert_eq!(bob.role, Role::Contributor);
    assert_eq!(
        bob.expires.map(|d| d.to_string()).as_deref(),
        Some("2027-03-31")
    );
    assert_eq!(bob.reason.as_deref(), Some("CHG-1234 migration support"));
    assert_eq!(bob.line, 11);
    let ana = &desired.users["ana.silva@partner.example"];
    assert_eq!(ana.role, Role::Administrator);
    assert_eq!(ana.line, 9);
    assert!(desired.invitation.send_email);
    assert_eq!(
        desired.invitation.message.as_deref(),
        Some("You now administer the Contoso reporting portal.")
    );
}

#[test]
fn role_falls_back_to_defaults_then_administrator() {
    let parsed = parse(
        &read_fixture("valid-defaults-role.yaml"),
        &SpecPolicy::default(),
    );
    let desired = parsed.desired.expect("valid");
    assert_eq!(
        desired.users["carla.diaz@partner.example"].role,
        Role::Viewer
    );
    assert_eq!(
        desired.users["dev@vendor.example"].role,
        Role::WorkspaceContributor
    );
    assert!(!desired.invitation.send_email);
    let padded = &desired.users["padded@vendor.example"];
    assert_eq!(padded.email.as_str(), "padded@vendor.example");
    assert_eq!(padded.name, "Padded Name");

    let minimal = parse(&read_fixture("valid-minimal.yaml"), &SpecPolicy::default());
    let desired = minimal.desired.expect("valid");
    assert_eq!(
        desired.users["ana.silva@partner.example"].role,
        Role::Administrator
    );
}

#[test]
fn duplicate_email_labels_both_occurrences() {
    let bytes = read_fixture("duplicate-email.yaml");
    let parsed = parse(&bytes, &SpecPolicy::default());
    let [diag] = parsed.diagnostics.as_slice() else {
        panic!("one diagnostic expected: {:#?}", parsed.diagnostics);
    };
    assert_eq!(diag.code, codes::DUPLICATE_EMAIL);
    let labels: Vec<(u32, &str)> = diag
        .labels
        .iter()
        .map(|l| (l.line, l.message.as_str()))
        .collect();
    assert_eq!(
        labels,
        [(8, "defined again here"), (4, "first defined here")]
    );
    let text = human(&parsed, &bytes, "users.yaml");
    assert!(text.contains("first defined here") && text.contains("defined again here"));
}

#[test]
fn unknown_keys_suggest_the_closest_known_key() {
    let parsed = parse(&read_fixture("unknown-keys.yaml"), &SpecPolicy::default());
    let helps: Vec<&str> = parsed
        .diagnostics
        .iter()
        .filter_map(|d| d.help.as_deref())
        .collect();
    assert!(helps.contains(&"did you mean `email`?"), "{helps:?}");
    assert!(helps.contains(&"did you mean `defaults`?"), "{helps:?}");
    assert!(helps.contains(&"did you mean `role`?"), "{helps:?}");
    assert!(helps.contains(&"did you mean `expires`?"), "{helps:?}");
}

#[test]
fn domain_policy_names_the_allowed_domains() {
    let bytes = read_fixture("domain-not-allowed.yaml");
    let policy = SpecPolicy {
        allowed_domains: vec!["partner.example".into(), "vendor.example".into()],
    };
    let parsed = parse(&bytes, &policy);
    let [diag] = parsed.diagnostics.as_slice() else {
        panic!("one diagnostic expected: {:#?}", parsed.diagnostics);
    };
    let help = diag.help.as_deref().unwrap_or_default();
    assert!(
        help.contains("partner.example") && help.contains("vendor.example"),
        "{help}"
    );
    // Without a policy, any domain is fine.
    assert!(parse(&bytes, &SpecPolicy::default()).desired.is_some());
}

#[test]
fn junk_input_gives_one_positioned_diagnostic() {
    let cases: Vec<(&str, Vec<u8>, &str, u32)> = vec![
        ("empty", Vec::new(), codes::EMPTY_FILE, 1),
        ("whitespace", b"   \n\n  \n".to_vec(), codes::EMPTY_FILE, 1),
        ("null document", b"~\n".to_vec(), codes::EMPTY_FILE, 1),
        (
            "binary",
            vec![0, 159, 146, 150, 255, 0, 1],
            codes::NOT_UTF8,
            1,
        ),
        ("utf-16", vec![0xFF, 0xFE, b'a', 0], codes::NOT_UTF8, 1),
        (
            "control chars",
            b"\x01\x02\x03".to_vec(),
            codes::YAML_SYNTAX,
            1,
        ),
        ("scalar", b"hello\n".to_vec(), codes::WRONG_TYPE, 1),
        ("number", b"42".to_vec(), codes::WRONG_TYPE, 1),
        (
            "unclosed quote",
            b"apiVersion: \"guestops/v1\nusers: []\n".to_vec(),
            codes::YAML_SYNTAX,
            1,
        ),
        (
            "recursive alias",
            b"a: &a [*a]\n".to_vec(),
            codes::YAML_LIMIT,
            1,
        ),
        (
            "unknown alias",
            b"a: *nope\n".to_vec(),
            codes::YAML_SYNTAX,
            1,
        ),
    ];
    for (what, bytes, code, line) in cases {
        let parsed = parse(&bytes, &SpecPolicy::default());
        let got: Vec<(&str, u32)> = parsed
            .diagnostics
            .iter()
            .map(|d| (d.code, d.line))
            .collect();
        assert_eq!(got, [(code, line)], "{what}: {:#?}", parsed.diagnostics);
        assert!(parsed.desired.is_none(), "{what}");
        for format in [
            OutputFormat::Human,
            OutputFormat::Github,
            OutputFormat::Json,
        ] {
            render(
                &parsed.diagnostics,
                &bytes,
                "users.yaml",
                format,
                &mut Vec::new(),
            )
            .expect("render");
        }
    }
}

#[test]
fn not_utf8_points_at_the_first_bad_byte() {
    let parsed = parse(&read_fixture("not-utf8.yaml"), &SpecPolicy::default());
    let [diag] = parsed.diagnostics.as_slice() else {
        panic!("{:#?}", parsed.diagnostics);
    };
    assert_eq!(
        (diag.code, diag.line, diag.column),
        (codes::NOT_UTF8, 4, 15)
    );
}

#[test]
fn tab_diagnostic_points_at_the_tab() {
    let parsed = parse(
        &read_fixture("tab-indentation.yaml"),
        &SpecPolicy::default(),
    );
    let [diag] = parsed.diagnostics.as_slice() else {
        panic!("{:#?}", parsed.diagnostics);
    };
    assert_eq!(
        (diag.code, diag.line, diag.column),
        (codes::TAB_INDENTATION, 5, 1)
    );
}

#[test]
fn oversized_file_is_refused_before_parsing() {
    let mut bytes = b"apiVersion: guestops/v1\nusers: []\n".to_vec();
    bytes.resize(MAX_FILE_SIZE + 1, b'#');
    let parsed = parse(&bytes, &SpecPolicy::default());
    let codes: Vec<&str> = parsed.diagnostics.iter().map(|d| d.code).collect();
    assert_eq!(codes, [codes::FILE_TOO_LARGE]);

    // Exactly at the limit is still read.
    bytes.truncate(MAX_FILE_SIZE);
    let parsed = parse(&bytes, &SpecPolicy::default());
    assert!(parsed.desired.is_some(), "{:#?}", parsed.diagnostics);
}

#[test]
fn many_users_parse() {
    let mut text = String::from("apiVersion: guestops/v1\nusers:\n");
    for i in 0..2000 {
        let _ = write!(
            text,
            "  - email: user{i}@partner.example\n    name: User {i}\n"
        );
    }
    let parsed = parse(text.as_bytes(), &SpecPolicy::default());
    assert_eq!(parsed.desired.expect("valid").users.len(), 2000);
}

#[test]
fn json_output_has_the_documented_shape() {
    let bytes = read_fixture("duplicate-email.yaml");
    let parsed = parse(&bytes, &SpecPolicy::default());
    let mut out = Vec::new();
    render(
        &parsed.diagnostics,
        &bytes,
        "users.yaml",
        OutputFormat::Json,
        &mut out,
    )
    .expect("render");
    let value: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
    assert_eq!(value["file"], "users.yaml");
    assert_eq!(value["valid"], false);
    let diag = &value["diagnostics"][0];
    assert_eq!(diag["code"], "GO0203");
    assert_eq!(diag["severity"], "error");
    assert_eq!(diag["line"], 8);
    assert_eq!(diag["column"], 12);
    assert_eq!(diag["labels"][1]["line"], 4);
    assert_eq!(diag["labels"][1]["message"], "first defined here");
    assert!(
        diag["message"]
            .as_str()
            .is_some_and(|m| m.contains("listed twice"))
    );
    assert!(diag["help"].is_string());

    let valid = read_fixture("valid-minimal.yaml");
    let parsed = parse(&valid, &SpecPolicy::default());
    let mut out = Vec::new();
    render(
        &parsed.diagnostics,
        &valid,
        "users.yaml",
        OutputFormat::Json,
        &mut out,
    )
    .expect("render");
    let value: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
    assert_eq!(value["valid"], true);
    assert_eq!(value["diagnostics"], serde_json::json!([]));
}

#[test]
fn github_output_is_one_escaped_workflow_command_per_diagnostic() {
    let bytes = read_fixture("five-errors.yaml");
    let parsed = parse(&bytes, &SpecPolicy::default());
    let mut out = Vec::new();
    render(
        &parsed.diagnostics,
        &bytes,
        "admins/users.yaml",
        OutputFormat::Github,
        &mut out,
    )
    .expect("render");
    let text = String::from_utf8(out).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(
        lines[0].starts_with("::error file=admins/users.yaml,line=2,col=13,title=GO0104::"),
        "{}",
        lines[0]
    );

    let tricky = Diagnostic::warning(codes::YAML_SYNTAX, "50% done\r\nnext", 3, 4, 1, "x")
        .with_help("a, b: c");
    let mut out = Vec::new();
    render(
        &[tricky],
        b"",
        "dir,a:b%.yaml",
        OutputFormat::Github,
        &mut out,
    )
    .expect("render");
    assert_eq!(
        String::from_utf8(out).expect("UTF-8"),
        "::warning file=dir%2Ca%3Ab%25.yaml,line=3,col=4,title=GO0003::50%25 done%0D%0Anext. a, b: c\n"
    );
}

#[test]
fn a_valid_file_renders_nothing_in_human_format() {
    let bytes = read_fixture("valid-full.yaml");
    let parsed = parse(&bytes, &SpecPolicy::default());
    assert_eq!(human(&parsed, &bytes, "users.yaml"), "");
}

#[test]
fn warnings_alone_keep_the_file_valid() {
    let bytes = read_fixture("warning-html-message.yaml");
    let parsed = parse(&bytes, &SpecPolicy::default());
    assert!(parsed.desired.is_some());
    assert!(!parsed.has_errors());
    let text = human(&parsed, &bytes, "users.yaml");
    assert!(text.starts_with("warning[GO0207]"), "{text}");
    assert!(!text.contains("is invalid"), "{text}");
}

#[test]
fn every_code_is_documented() {
    let doc = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/diagnostics.md"))
        .expect("docs/diagnostics.md exists");
    for code in [
        codes::FILE_TOO_LARGE,
        codes::NOT_UTF8,
        codes::YAML_SYNTAX,
        codes::TAB_INDENTATION,
        codes::YAML_LIMIT,
        codes::MULTIPLE_DOCUMENTS,
        codes::DUPLICATE_KEY,
        codes::EMPTY_FILE,
        codes::WRONG_TYPE,
        codes::UNKNOWN_KEY,
        codes::MISSING_KEY,
        codes::UNKNOWN_API_VERSION,
        codes::INVALID_EMAIL,
        codes::EMAIL_REJECTED_BY_ENTRA,
        codes::DUPLICATE_EMAIL,
        codes::INVALID_NAME,
        codes::UNKNOWN_ROLE,
        codes::INVALID_DATE,
        codes::HTML_MESSAGE,
        codes::DOMAIN_NOT_ALLOWED,
    ] {
        assert!(
            doc.contains(&format!("## {code}")),
            "{code} has no section in docs/diagnostics.md"
        );
    }
}

fn check_invariants(bytes: &[u8]) -> Result<(), TestCaseError> {
    let parsed = parse(bytes, &SpecPolicy::default());
    prop_assert_eq!(parsed.desired.is_some(), !parsed.has_errors());
    for d in &parsed.diagnostics {
        prop_assert!(d.line >= 1 && d.column >= 1, "{:?}", d);
        prop_assert!(!d.labels.is_empty());
        for l in &d.labels {
            prop_assert!(l.line >= 1 && l.column >= 1 && l.len >= 1, "{:?}", l);
        }
    }
    for format in [
        OutputFormat::Human,
        OutputFormat::Github,
        OutputFormat::Json,
    ] {
        prop_assert!(
            render(
                &parsed.diagnostics,
                bytes,
                "users.yaml",
                format,
                &mut Vec::new()
            )
            .is_ok()
        );
    }
    Ok(())
}

/// Pieces that combine into plausible, often broken, `users.yaml` text.
fn near_yaml() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("apiVersion: guestops/v1\n".to_owned()),
        Just("users:\n".to_owned()),
        Just("  - email: a@partner.example\n".to_owned()),
        Just("    name: A\n".to_owned()),
        Just("    role: viewer\n".to_owned()),
        Just("    expires: 2027-02-30\n".to_owned()),
        Just("defaults:\n  invitation:\n    sendEmail: true\n".to_owned()),
        Just("---\n".to_owned()),
        Just("&a ".to_owned()),
        Just("*a".to_owned()),
        Just("<<: *a\n".to_owned()),
        Just("\t".to_owned()),
        Just("[".to_owned()),
        Just("{".to_owned()),
        Just("? ".to_owned()),
        Just("\"".to_owned()),
        Just("|\n".to_owned()),
        "[ -~\\n\\t]{0,12}",
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_invariants(&bytes)?;
    }

    #[test]
    fn near_yaml_never_panics(text in near_yaml()) {
        check_invariants(text.as_bytes())?;
    }
}

#[test]
fn byte_order_mark_and_crlf_line_endings_are_accepted() {
    let text = "\u{FEFF}apiVersion: guestops/v1\r\nusers:\r\n  - email: ana.silva@partner.example\r\n    name: Ana Silva\r\n    role: viewr\r\n";
    let parsed = parse(text.as_bytes(), &SpecPolicy::default());
    let got: Vec<(&str, u32, u32)> = parsed
        .diagnostics
        .iter()
        .map(|d| (d.code, d.line, d.column))
        .collect();
    assert_eq!(got, [(codes::UNKNOWN_ROLE, 5, 11)]);
    let fixed = text.replace("viewr", "viewer");
    assert!(
        parse(fixed.as_bytes(), &SpecPolicy::default())
            .desired
            .is_some()
    );
}

#[test]
fn pathological_nesting_is_refused_without_crashing() {
    for (what, text) in [
        ("flow lists", "[".repeat(100_000)),
        ("flow maps", "{a: ".repeat(50_000)),
        ("block lists", "- ".repeat(20_000) + "x\n"),
        ("complex keys", "? ".repeat(20_000) + "x\n"),
    ] {
        let parsed = parse(text.as_bytes(), &SpecPolicy::default());
        let [diag] = parsed.diagnostics.as_slice() else {
            panic!("{what}: {:#?}", parsed.diagnostics);
        };
        assert!(
            [codes::YAML_LIMIT, codes::YAML_SYNTAX].contains(&diag.code),
            "{what}: {diag:?}"
        );
    }
}

#[test]
fn name_length_is_counted_in_characters_up_to_256() {
    let file = |name: &str| {
        format!(
            "apiVersion: guestops/v1\nusers:\n  - email: ana@partner.example\n    name: {name}\n"
        )
    };
    let at_limit = parse(file(&"é".repeat(256)).as_bytes(), &SpecPolicy::default());
    assert!(at_limit.desired.is_some(), "{:#?}", at_limit.diagnostics);
    let over = parse(file(&"é".repeat(257)).as_bytes(), &SpecPolicy::default());
    let codes: Vec<&str> = over.diagnostics.iter().map(|d| d.code).collect();
    assert_eq!(codes, [codes::INVALID_NAME]);
}

/// The short form of the fuzz targets (`fuzz/`, `docs/fuzzing.md`): their seed inputs hold
/// the same properties the targets check, on every `cargo test`.
#[test]
fn the_fuzz_seeds_hold_the_fuzz_properties() {
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let files = |target: &str| -> Vec<Vec<u8>> {
        let mut paths: Vec<_> = std::fs::read_dir(seeds.join(target))
            .expect("the seed folder")
            .map(|e| e.expect("an entry").path())
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| std::fs::read(p).expect("a seed"))
            .collect()
    };
    let users = files("users_yaml");
    assert!(users.len() > 10, "the users.yaml seeds are there");
    for data in &users {
        let parsed = guestops::desired::spec::parse(data, &SpecPolicy::default());
        assert_eq!(parsed.desired.is_some(), !parsed.has_errors());
        for format in [
            OutputFormat::Human,
            OutputFormat::Github,
            OutputFormat::Json,
        ] {
            let mut out = Vec::new();
            guestops::desired::spec::render(
                &parsed.diagnostics,
                data,
                "users.yaml",
                format,
                &mut out,
            )
            .expect("rendering into memory");
        }
    }
    let no_env = |_: &str| None;
    let mut loaded = 0;
    for data in files("host_config") {
        let text = String::from_utf8(data).expect("the config seeds are text");
        if let Ok(config) =
            guestops::config::Config::from_yaml_with_env(&text, "seed.yaml", &no_env)
        {
            let again = guestops::config::Config::from_yaml_with_env(
                &config.to_yaml(),
                "rendered.yaml",
                &no_env,
            )
            .expect("the rendering loads");
            assert_eq!(again, config);
            loaded += 1;
        }
    }
    assert!(loaded >= 3, "valid configs among the seeds");
    for data in files("webhook_body") {
        guestops::fuzzing::webhook_push(&data, false);
        guestops::fuzzing::webhook_push(&data, true);
    }
    for data in files("portal_page") {
        guestops::fuzzing::portal_page(&data);
    }
    for (target, check) in [
        ("graph_page", guestops::fuzzing::graph_page as fn(&[u8])),
        ("graph_delta_page", guestops::fuzzing::graph_delta_page),
        ("graph_batch", guestops::fuzzing::graph_batch),
        ("graph_error", guestops::fuzzing::graph_error),
        ("plan", guestops::fuzzing::plan),
    ] {
        let seeds = files(target);
        assert!(seeds.len() >= 5, "the {target} seeds are there");
        for data in &seeds {
            check(data);
        }
    }
    // The plan seeds reach the plans they are named after: the decoder is not degenerate.
    let mut actions = std::collections::BTreeSet::new();
    let mut refusals = std::collections::BTreeSet::new();
    for data in files("plan") {
        let input = guestops::fuzzing::decode_plan_input(&data);
        let plan = guestops::reconcile::plan::plan(
            &input.desired,
            &input.observed,
            &input.state,
            &input.policy,
            guestops::fuzzing::plan_now(),
        );
        actions.extend(plan.changes.iter().map(|c| c.action.name()));
        refusals.extend(plan.refusals.iter().map(|r| r.code.clone()));
    }
    for action in [
        "invite",
        "adopt-guest",
        "restore-guest",
        "resend-invitation",
        "register",
        "adopt-portal",
        "update-portal",
        "unregister",
        "delete-guest",
    ] {
        assert!(
            actions.contains(action),
            "no plan seed plans {action}: {actions:?}"
        );
    }
    for code in ["max-deletions", "empty-desired"] {
        assert!(
            refusals.contains(code),
            "no plan seed is refused by {code}: {refusals:?}"
        );
    }
}
