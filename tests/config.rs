//! Host configuration: loading, defaults, environment overrides, validation, secrets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guestops::config::{
    Cloud, Config, ConfigError, Problem, SecretOrigin, SecretSource, override_variables,
};
use guestops::reconcile::plan::GuestOnRemoval;
use guestops::remote::pace::WriteRate;
use guestops::remote::portal::{RoleCodes, WriteOnlyFlags};
use secrecy::ExposeSecret;

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name)).expect("fixture exists")
}

/// An injected environment made of `pairs`.
fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name: &str| map.get(name).cloned()
}

fn load(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_yaml_with_env(text, "config.yaml", &env_of(pairs))
}

fn problems(result: Result<Config, ConfigError>) -> Vec<Problem> {
    match result {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        Err(other) => panic!("expected Invalid, got {other}"),
        Ok(config) => panic!("expected problems, got {config:?}"),
    }
}

fn problem_for<'a>(problems: &'a [Problem], key: &str) -> &'a Problem {
    problems
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("no problem for {key} in {problems:#?}"))
}

const MINIMAL: &str = "tenant:\n  tenantId: contoso.onmicrosoft.com\n  clientId: 11111111-2222-3333-4444-555555555555\n";

#[test]
fn the_design_example_loads() {
    let config = load(&fixture("full.yaml"), &[]).expect("design §5 example is valid");
    assert_eq!(
        config.source.repo.as_deref(),
        Some("https://github.com/contoso/portal-admins.git")
    );
    assert_eq!(config.source.poll_interval, Duration::from_secs(300));
    assert_eq!(config.source.resync_interval, Duration::from_secs(600));
    assert_eq!(config.tenant.tenant_id, "contoso.onmicrosoft.com");
    assert_eq!(
        config.tenant.client_secret,
        SecretSource::File("/run/credentials/guestops.service/graph-secret".into())
    );
    assert_eq!(
        config.portal.api_key,
        SecretSource::File("/run/credentials/guestops.service/portal-api-key".into())
    );
    assert_eq!(
        config.server.webhook_secret,
        Some(SecretSource::File(
            "/run/credentials/guestops.service/webhook-secret".into()
        ))
    );
    assert_eq!(
        config.policy.allowed_domains,
        vec!["partner.example", "vendor.example"]
    );
    assert_eq!(config.portal.role_codes, RoleCodes::default());
    assert_eq!(
        config.policy.resend_after,
        Some(Duration::from_secs(7 * 86_400))
    );
    assert_eq!(
        config.tenant.scope(),
        "https://graph.microsoft.com/.default"
    );
}

#[test]
fn every_default() {
    let config = load(MINIMAL, &[]).expect("minimal config is valid");
    assert_eq!(config.source.repo, None);
    assert_eq!(config.source.branch, "main");
    assert_eq!(config.source.path, "users.yaml");
    assert_eq!(config.source.poll_interval, Duration::from_secs(5 * 60));
    assert_eq!(config.source.resync_interval, Duration::from_secs(10 * 60));
    assert_eq!(config.source.credential_file, None);
    assert_eq!(config.tenant.cloud, Cloud::Global);
    assert_eq!(
        config.tenant.authority_host.as_str(),
        "https://login.microsoftonline.com/"
    );
    assert_eq!(
        config.tenant.graph_endpoint.as_str(),
        "https://graph.microsoft.com/"
    );
    assert_eq!(
        config.tenant.invite_redirect_url,
        "https://admin.powerembedded.com.br"
    );
    assert_eq!(config.tenant.concurrency, 8);
    assert!(matches!(
        &config.tenant.client_secret,
        SecretSource::CredentialOrEnv { credential, env, .. }
            if credential == "graph-secret" && env == "GUESTOPS_TENANT_CLIENT_SECRET"
    ));
    assert_eq!(
        config.portal.base_url.as_str(),
        "https://api.powerembedded.com.br/"
    );
    assert_eq!(config.portal.concurrency, 2);
    assert_eq!(config.portal.max_writes_per_second, 2.0);
    let portal_rate = config.portal.portal_settings().write_rate;
    assert_eq!(portal_rate.interval(), Duration::from_millis(500));
    assert_eq!(portal_rate.burst(), 1, "portal writes go one at a time");
    assert_eq!(config.tenant.graph_settings().write_rate, WriteRate::GRAPH);
    assert_eq!(config.portal.role_codes, RoleCodes::default());
    assert!(matches!(
        &config.portal.api_key,
        SecretSource::CredentialOrEnv { credential, env, .. }
            if credential == "portal-api-key" && env == "GUESTOPS_PORTAL_API_KEY"
    ));
    assert!(config.policy.allowed_domains.is_empty());
    assert!(!config.policy.prune);
    assert_eq!(config.policy.guest_on_removal, GuestOnRemoval::Keep);
    assert_eq!(config.policy.max_deletions, 5);
    assert_eq!(
        config.policy.resend_after,
        Some(Duration::from_secs(7 * 86_400))
    );
    assert_eq!(
        config.policy.pending_alert_after,
        Some(Duration::from_secs(14 * 86_400))
    );
    assert_eq!(
        config.policy.expiry_notice_before,
        Some(Duration::from_secs(7 * 86_400))
    );
    assert_eq!(
        config.policy(false).expiry_notice_before,
        config.policy.expiry_notice_before
    );
    assert!(config.notify.is_empty(), "no notifications by default");
    assert_eq!(config.state.dir, PathBuf::from("/var/lib/guestops"));
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:9464");
    assert!(matches!(
        &config.server.webhook_secret,
        Some(SecretSource::CredentialOrEnv { credential, env, .. })
            if credential == "webhook-secret" && env == "GUESTOPS_SERVER_WEBHOOK_SECRET"
    ));
}

#[test]
fn cloud_selects_endpoints_and_explicit_values_win() {
    let config = load(&fixture("usgov-dod.yaml"), &[]).expect("valid");
    assert_eq!(config.tenant.cloud, Cloud::UsGovDod);
    assert_eq!(
        config.tenant.authority_host.as_str(),
        "https://login.microsoftonline.us/"
    );
    assert_eq!(
        config.tenant.graph_endpoint.as_str(),
        "https://dod-graph.microsoft.us/"
    );
    assert_eq!(
        config.tenant.scope(),
        "https://dod-graph.microsoft.us/.default"
    );

    let china = format!("{MINIMAL}  cloud: china\n  graphEndpoint: https://graph.proxy.example\n");
    let config = load(&china, &[]).expect("valid");
    assert_eq!(
        config.tenant.authority_host.as_str(),
        "https://login.chinacloudapi.cn/"
    );
    assert_eq!(
        config.tenant.graph_endpoint.as_str(),
        "https://graph.proxy.example/"
    );

    let usgov = load(MINIMAL, &[("GUESTOPS_TENANT_CLOUD", "usgov")]).expect("valid");
    assert_eq!(
        usgov.tenant.graph_endpoint.as_str(),
        "https://graph.microsoft.us/"
    );
}

#[test]
fn loopback_http_endpoints_are_accepted() {
    let config = load(&fixture("loopback.yaml"), &[]).expect("loopback http is allowed");
    assert_eq!(
        config.tenant.authority_host.as_str(),
        "http://127.0.0.1:8080/"
    );
    assert_eq!(config.tenant.graph_endpoint.as_str(), "http://[::1]:8080/");
    assert_eq!(config.portal.base_url.as_str(), "http://localhost:8080/");
}

#[test]
fn environment_overrides_each_form() {
    let env = [
        (
            "GUESTOPS_TENANT_CLIENT_ID",
            "99999999-8888-7777-6666-555555555555",
        ),
        ("GUESTOPS_POLICY_MAX_DELETIONS", "12"),
        ("GUESTOPS_POLICY_ALLOWED_DOMAINS", "A.example, b.example,,"),
        (
            "GUESTOPS_TENANT_CREDENTIAL_SECRET_FILE",
            "/etc/guestops/graph",
        ),
        ("GUESTOPS_PORTAL_ROLE_CODES_ADMINISTRATOR", "10"),
        ("GUESTOPS_PORTAL_ROLE_CODES_WORKSPACE_CONTRIBUTOR", "40"),
        ("GUESTOPS_SOURCE_POLL_INTERVAL", "30s"),
        ("GUESTOPS_POLICY_PRUNE", "true"),
        ("GUESTOPS_POLICY_RESEND_AFTER", "0"),
        ("GUESTOPS_SERVER_LISTEN", "[::1]:9999"),
    ];
    let config = load(&fixture("full.yaml"), &env).expect("overrides are valid");
    assert_eq!(
        config.tenant.client_id,
        "99999999-8888-7777-6666-555555555555"
    );
    assert_eq!(config.policy.max_deletions, 12);
    assert_eq!(
        config.policy.allowed_domains,
        vec!["a.example", "b.example"]
    );
    assert_eq!(
        config.tenant.client_secret,
        SecretSource::File("/etc/guestops/graph".into())
    );
    assert_eq!(config.portal.role_codes.administrator, 10);
    assert_eq!(config.portal.role_codes.workspace_contributor, 40);
    assert_eq!(config.portal.role_codes.contributor, 2);
    assert_eq!(config.source.poll_interval, Duration::from_secs(30));
    assert!(config.policy.prune);
    assert_eq!(config.policy.resend_after, None);
    assert_eq!(config.server.listen.to_string(), "[::1]:9999");
}

/// Write-only flags are "not stated" unless set: never a default of `false` (design §5).
#[test]
fn write_only_flags_are_stated_one_by_one_and_unset_means_not_sent() {
    let unset = load(MINIMAL, &[]).expect("valid");
    assert_eq!(unset.portal.write_only_flags, WriteOnlyFlags::default());
    assert!(
        unset
            .portal
            .portal_settings()
            .write_only_flags
            .stated()
            .is_empty()
    );

    let one = load(
        &format!("{MINIMAL}portal:\n  writeOnlyFlags:\n    bypassFirewall: false\n"),
        &[],
    )
    .expect("valid");
    assert_eq!(
        one.portal.write_only_flags,
        WriteOnlyFlags {
            bypass_firewall: Some(false),
            can_export_report_other_pages: None,
        }
    );
    assert_eq!(
        one.portal.write_only_flags.unstated(),
        vec!["canExportReportOtherPages"]
    );
    let yaml = one.to_yaml();
    assert!(yaml.contains("bypassFirewall: false"), "{yaml}");
    assert_eq!(load(&yaml, &[]).expect("renders back"), one);

    let env = load(
        MINIMAL,
        &[(
            "GUESTOPS_PORTAL_WRITE_ONLY_FLAGS_CAN_EXPORT_REPORT_OTHER_PAGES",
            "true",
        )],
    )
    .expect("valid");
    assert_eq!(
        env.portal.write_only_flags.stated(),
        vec![("canExportReportOtherPages", true)]
    );

    let err = load(
        &format!("{MINIMAL}portal:\n  writeOnlyFlags: {{ bypassFirewall: yes }}\n"),
        &[],
    )
    .expect_err("yes is not a boolean here");
    assert!(
        err.to_string()
            .contains("portal.writeOnlyFlags.bypassFirewall"),
        "{err}"
    );
}

#[test]
fn an_empty_variable_resets_the_key_to_its_default() {
    let config = load(
        &fixture("full.yaml"),
        &[
            ("GUESTOPS_POLICY_ALLOWED_DOMAINS", ""),
            ("GUESTOPS_SOURCE_REPO", ""),
            ("GUESTOPS_PORTAL_API_KEY_FILE", ""),
        ],
    )
    .expect("valid");
    assert!(config.policy.allowed_domains.is_empty());
    assert_eq!(config.source.repo, None);
    assert!(matches!(
        config.portal.api_key,
        SecretSource::CredentialOrEnv { .. }
    ));
}

/// Every key listed by `override_variables` is really overridden by its variable.
#[test]
fn every_key_has_a_working_override() {
    let values: &[(&str, &str)] = &[
        ("source.repo", "/srv/admins"),
        ("source.branch", "release"),
        ("source.path", "admins/users.yaml"),
        ("source.pollInterval", "1m"),
        ("source.resyncInterval", "1h"),
        ("source.credentialFile", "/etc/guestops/git-token"),
        ("source.verify.mode", "head"),
        (
            "source.verify.allowedSignersFile",
            "/etc/guestops/allowed_signers",
        ),
        ("source.verify.keyringFile", "/etc/guestops/keyring.asc"),
        ("tenant.tenantId", "fabrikam.onmicrosoft.com"),
        ("tenant.clientId", "99999999-8888-7777-6666-555555555555"),
        ("tenant.credential.kind", "githubActions"),
        ("tenant.credential.secretFile", "/etc/guestops/graph"),
        (
            "tenant.credential.certificateFile",
            "/etc/guestops/graph.pem",
        ),
        (
            "tenant.credential.passwordFile",
            "/etc/guestops/graph.password",
        ),
        ("tenant.credential.sendCertificateChain", "true"),
        ("tenant.credential.assertionAlgorithm", "RS256"),
        ("tenant.credential.tokenFile", "/var/run/secrets/token"),
        (
            "tenant.credential.audience",
            "api://AzureADTokenExchangeUSGov",
        ),
        (
            "tenant.credential.clientId",
            "11111111-2222-3333-4444-555555555555",
        ),
        ("tenant.cloud", "china"),
        ("tenant.authorityHost", "https://login.example"),
        ("tenant.graphEndpoint", "https://graph.example"),
        ("tenant.inviteRedirectUrl", "https://portal.example"),
        ("tenant.concurrency", "3"),
        ("tenant.deltaQuery", "false"),
        ("tenant.fullResyncInterval", "6h"),
        ("tenant.replicationGrace", "90s"),
        ("portal.baseUrl", "https://pe.example"),
        ("portal.apiKeyFile", "/etc/guestops/pe"),
        ("portal.concurrency", "1"),
        ("portal.maxWritesPerSecond", "0.5"),
        ("portal.knownAdmin", "owner@customer.example"),
        ("portal.writeOnlyFlags.bypassFirewall", "true"),
        ("portal.writeOnlyFlags.canExportReportOtherPages", "false"),
        ("portal.roleCodes.administrator", "11"),
        ("portal.roleCodes.contributor", "12"),
        ("portal.roleCodes.viewer", "13"),
        ("portal.roleCodes.workspace-contributor", "14"),
        ("policy.allowedDomains", "only.example"),
        ("policy.prune", "true"),
        ("policy.guestOnRemoval", "delete"),
        ("policy.maxDeletions", "0"),
        ("policy.resendAfter", "2d"),
        ("policy.pendingAlertAfter", "3d"),
        ("policy.expiryNoticeBefore", "0"),
        ("state.dir", "/tmp/guestops"),
        ("server.listen", "0.0.0.0:80"),
        ("server.webhookSecretFile", "/etc/guestops/hook"),
    ];
    // The keys of one credential kind are read with that kind only: compare against the same
    // kind without the key.
    let kind_of = |key: &str| match key {
        "tenant.credential.certificateFile"
        | "tenant.credential.passwordFile"
        | "tenant.credential.sendCertificateChain"
        | "tenant.credential.assertionAlgorithm" => Some("clientCertificate"),
        "tenant.credential.tokenFile" => Some("workloadIdentity"),
        "tenant.credential.audience" => Some("githubActions"),
        "tenant.credential.clientId" => Some("managedIdentity"),
        _ => None,
    };
    let vars = override_variables();
    for (key, var) in &vars {
        let Some((_, value)) = values.iter().find(|(k, _)| k == key) else {
            panic!("no test value for {key} ({var})");
        };
        let mut env = vec![(var.as_str(), *value)];
        let mut base_env = vec![];
        // `mode: head` needs a trust file: the same one on both sides.
        if key == "source.verify.mode" {
            let signers = ("GUESTOPS_SOURCE_VERIFY_ALLOWED_SIGNERS_FILE", "/etc/a_s");
            env.push(signers);
            base_env.push(signers);
        }
        if let Some(kind) = kind_of(key) {
            env.push(("GUESTOPS_TENANT_CREDENTIAL_KIND", kind));
            base_env.push(("GUESTOPS_TENANT_CREDENTIAL_KIND", kind));
        }
        let base = load(MINIMAL, &base_env).unwrap_or_else(|e| panic!("{key}'s kind: {e}"));
        let overridden = load(MINIMAL, &env).unwrap_or_else(|e| panic!("{var}={value}: {e}"));
        assert_ne!(overridden, base, "{var}={value} changed nothing");
    }
    assert_eq!(
        vars.len(),
        values.len(),
        "a test value for a key that does not exist"
    );
    // `notify` is a list set in the file only: no variable overrides it, and one that looks
    // like it is reported as unknown (the command line warns about it).
    assert!(
        vars.iter()
            .all(|(key, var)| !key.starts_with("notify") && !var.starts_with("GUESTOPS_NOTIFY")),
        "{vars:?}"
    );
    assert_eq!(
        guestops::config::unrecognized_variables(["GUESTOPS_NOTIFY", "GUESTOPS_NOTIFY_0_URL_FILE"]),
        ["GUESTOPS_NOTIFY", "GUESTOPS_NOTIFY_0_URL_FILE"]
    );
    let with_notify =
        format!("{MINIMAL}notify:\n  - {{ kind: slack, urlFile: /etc/guestops/slack-url }}\n");
    let from_file = load(&with_notify, &[("GUESTOPS_NOTIFY", "")]).expect("valid");
    assert_eq!(
        from_file.notify.len(),
        1,
        "an empty GUESTOPS_NOTIFY resets nothing"
    );
}

#[test]
fn notifiers_load_with_their_events_and_secret_files() {
    use guestops::service::notify::{EventKind, NotifierKind};
    let config = load(&fixture("full.yaml"), &[]).expect("valid");
    assert_eq!(config.notify.len(), 2);
    let teams = &config.notify[0];
    assert_eq!(teams.kind, NotifierKind::Teams);
    assert_eq!(
        teams.url_file,
        PathBuf::from("/run/credentials/guestops.service/teams-url")
    );
    assert_eq!(teams.secret_file, None);
    assert_eq!(teams.events, EventKind::ALL, "every event by default");
    let hook = &config.notify[1];
    assert_eq!(hook.kind, NotifierKind::Webhook);
    assert_eq!(
        hook.secret_file,
        Some(PathBuf::from(
            "/run/credentials/guestops.service/hook-secret"
        ))
    );
    assert_eq!(
        hook.events,
        [EventKind::Failed, EventKind::Refused],
        "canonical order"
    );
}

#[test]
fn notifier_mistakes_are_reported_with_their_lines() {
    let text = format!(
        "{MINIMAL}notify:
  - kind: pager
    urlFile: /etc/guestops/pager-url
  - kind: teams
  - kind: slack
    urlFile: /etc/guestops/slack-url
    events: [failed, exploded]
  - kind: teams
    urlFile: /etc/guestops/teams-url
    secretFile: /etc/guestops/teams-secret
  - kind: webhook
    urlFile: /etc/guestops/hook-url
    event: [failed]
  - just a string
"
    );
    let problems = problems(load(&text, &[]));
    let p = problem_for(&problems, "notify[0].kind");
    assert_eq!((p.line, p.column), (Some(5), Some(11)), "{p}");
    assert!(
        p.message
            .contains("unknown notifier kind `pager`; expected one of teams, slack, webhook"),
        "{p}"
    );
    let p = problem_for(&problems, "notify[1].urlFile");
    assert_eq!(p.line, Some(7), "the item's line: {p}");
    assert!(p.message.contains("is required"), "{p}");
    let p = problem_for(&problems, "notify[2].events");
    assert_eq!((p.line, p.column), (Some(10), Some(22)), "{p}");
    assert!(p.message.contains("unknown event `exploded`"), "{p}");
    assert!(
        p.message
            .contains("failed, recovered, refused, invalid, pending, expiring, removed"),
        "{p}"
    );
    let p = problem_for(&problems, "notify[3].secretFile");
    assert_eq!(p.line, Some(13), "{p}");
    assert!(p.message.contains("only with kind webhook"), "{p}");
    let p = problem_for(&problems, "notify[4].event");
    assert_eq!(p.line, Some(16), "{p}");
    assert!(p.message.contains("did you mean `events`"), "{p}");
    let p = problem_for(&problems, "notify[5]");
    assert_eq!(p.line, Some(17), "{p}");
    assert!(p.message.contains("must be a mapping"), "{p}");
    assert_eq!(problems.len(), 6, "{problems:#?}");

    let problems = problems_of_section(&format!("{MINIMAL}notify: {{ kind: teams }}\n"));
    let p = problem_for(&problems, "notify");
    assert!(p.message.contains("expected a list of mappings"), "{p}");
    let problems = problems_of_section(&format!(
        "{MINIMAL}notify:\n  - {{ kind: teams, urlFile: /u, events: [] }}\n"
    ));
    assert!(
        problem_for(&problems, "notify[0].events")
            .message
            .contains("lists no event")
    );
}

#[test]
fn a_bad_override_names_the_variable() {
    let problems = problems(load(
        MINIMAL,
        &[
            ("GUESTOPS_POLICY_MAX_DELETIONS", "lots"),
            ("GUESTOPS_PORTAL_BASE_URL", "http://pe.example"),
        ],
    ));
    assert_eq!(problems.len(), 2, "{problems:#?}");
    let p = problem_for(&problems, "policy.maxDeletions");
    assert_eq!(p.env_var.as_deref(), Some("GUESTOPS_POLICY_MAX_DELETIONS"));
    assert!(
        p.to_string().starts_with("GUESTOPS_POLICY_MAX_DELETIONS"),
        "{p}"
    );
    assert!(p.message.contains("lots"));
    let p = problem_for(&problems, "portal.baseUrl");
    assert_eq!(p.env_var.as_deref(), Some("GUESTOPS_PORTAL_BASE_URL"));
}

#[test]
fn unknown_keys_are_reported_with_their_position() {
    let problems = problems(load(&fixture("unknown-keys.yaml"), &[]));
    let p = problem_for(&problems, "tenant.clientID");
    assert_eq!((p.line, p.column), (Some(3), Some(3)));
    assert!(p.message.contains("did you mean `clientId`"), "{p}");
    let p = problem_for(&problems, "polcy");
    assert_eq!(p.line, Some(4));
    assert!(p.message.contains("did you mean `policy`"), "{p}");
    // clientId is then missing: reported too, all at once.
    problem_for(&problems, "tenant.clientId");
}

#[test]
fn all_problems_are_reported_at_once_with_keys_and_lines() {
    let err = load(&fixture("many-problems.yaml"), &[]).expect_err("invalid");
    let text = err.to_string();
    let problems = problems(Err(err));

    let p = problem_for(&problems, "source.pollInterval");
    assert_eq!(p.line, Some(2));
    assert!(p.message.contains("e.g. 30s, 5m, 2h, 7d"), "{p}");

    let p = problem_for(&problems, "tenant.graphEndpoint");
    assert_eq!(p.line, Some(6));
    assert!(p.message.contains("http://"), "{p}");
    assert!(p.message.contains("loopback"), "{p}");

    let p = problem_for(&problems, "tenant.inviteRedirectUrl");
    assert!(p.message.contains("ftp"), "{p}");

    let p = problem_for(&problems, "portal.baseUrl");
    assert_eq!(p.line, Some(9));

    let p = problem_for(&problems, "portal.roleCodes.viewer");
    assert_eq!(p.line, Some(10));
    assert!(p.message.contains("administrator"), "{p}");
    assert!(p.message.contains("distinct"), "{p}");

    let p = problem_for(&problems, "policy.allowedDomains");
    assert_eq!(p.line, Some(12));
    assert!(p.message.contains("without the @"), "{p}");

    let p = problem_for(&problems, "policy.maxDeletions");
    assert_eq!(p.line, Some(13));

    let p = problem_for(&problems, "server.listen");
    assert_eq!(p.line, Some(17));
    assert!(p.message.contains("IP:PORT"), "{p}");

    assert_eq!(problems.len(), 8, "{problems:#?}");
    assert!(
        text.starts_with("the host configuration config.yaml has 8 problems:"),
        "{text}"
    );
    assert!(
        text.contains("line 17, column 11: server.listen:"),
        "{text}"
    );
}

#[test]
fn required_keys_are_named() {
    let problems = problems(load("", &[]));
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problem_for(&problems, "tenant.tenantId")
            .message
            .contains("required")
    );
    assert!(
        problem_for(&problems, "tenant.clientId")
            .message
            .contains("GUID")
    );

    let problems = problems_of_section(
        "tenant:\n  tenantId: contoso.onmicrosoft.com\n  clientId: not-a-guid\n",
    );
    let p = problem_for(&problems, "tenant.clientId");
    assert_eq!(p.line, Some(3));
}

fn problems_of_section(text: &str) -> Vec<Problem> {
    problems(load(text, &[]))
}

#[test]
fn wrong_shapes_and_syntax_errors_have_positions() {
    let problems = problems_of_section(&format!(
        "{MINIMAL}policy:\n  allowedDomains: partner.example\n"
    ));
    let p = problem_for(&problems, "policy.allowedDomains");
    assert_eq!(p.line, Some(5));
    assert!(p.message.contains("expected a list"), "{p}");

    let problems = problems_of_section(&format!("{MINIMAL}portal: https://pe.example\n"));
    assert!(problem_for(&problems, "portal").message.contains("mapping"));

    let problems = problems_of_section(&fixture("not-yaml.yaml"));
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].message.contains("not valid YAML"),
        "{}",
        problems[0]
    );
    assert!(problems[0].line.is_some());

    let problems = problems_of_section(&format!("{MINIMAL}  tenantId: again.example\n"));
    assert!(!problems.is_empty(), "duplicate keys must be refused");
}

#[test]
fn unsupported_values_are_refused() {
    let cases: &[(&str, &str, &str)] = &[
        ("GUESTOPS_TENANT_CLOUD", "azure", "tenant.cloud"),
        (
            "GUESTOPS_TENANT_CREDENTIAL_KIND",
            "certificate",
            "tenant.credential.kind",
        ),
        ("GUESTOPS_TENANT_CONCURRENCY", "0", "tenant.concurrency"),
        ("GUESTOPS_TENANT_DELTA_QUERY", "yes", "tenant.deltaQuery"),
        (
            "GUESTOPS_TENANT_FULL_RESYNC_INTERVAL",
            "0",
            "tenant.fullResyncInterval",
        ),
        (
            "GUESTOPS_PORTAL_MAX_WRITES_PER_SECOND",
            "0",
            "portal.maxWritesPerSecond",
        ),
        (
            "GUESTOPS_PORTAL_MAX_WRITES_PER_SECOND",
            "-1",
            "portal.maxWritesPerSecond",
        ),
        (
            "GUESTOPS_POLICY_GUEST_ON_REMOVAL",
            "purge",
            "policy.guestOnRemoval",
        ),
        ("GUESTOPS_POLICY_PRUNE", "yes please", "policy.prune"),
        (
            "GUESTOPS_SOURCE_RESYNC_INTERVAL",
            "0",
            "source.resyncInterval",
        ),
        (
            "GUESTOPS_SOURCE_REPO",
            "https://x:ghp_token@github.com/c/a.git",
            "source.repo",
        ),
        ("GUESTOPS_SOURCE_PATH", "../etc/passwd", "source.path"),
        (
            "GUESTOPS_TENANT_AUTHORITY_HOST",
            "ftp://127.0.0.1",
            "tenant.authorityHost",
        ),
        (
            "GUESTOPS_TENANT_INVITE_REDIRECT_URL",
            "/relative",
            "tenant.inviteRedirectUrl",
        ),
    ];
    for (var, value, key) in cases {
        let problems = problems(load(MINIMAL, &[(var, value)]));
        assert_eq!(problems.len(), 1, "{var}={value}: {problems:#?}");
        assert_eq!(problems[0].key, *key);
        assert_eq!(problems[0].env_var.as_deref(), Some(*var));
    }
}

#[test]
fn portal_max_writes_per_second_is_a_positive_rate() {
    let with = |value: &str| format!("{MINIMAL}portal:\n  maxWritesPerSecond: {value}\n");

    let config = load(&with("0.5"), &[]).expect("half a write per second is valid");
    assert_eq!(config.portal.max_writes_per_second, 0.5);
    assert_eq!(
        config.portal.portal_settings().write_rate.interval(),
        Duration::from_secs(2),
        "one write every 2 s"
    );
    assert_eq!(
        load(&with("10"), &[])
            .expect("valid")
            .portal
            .max_writes_per_second,
        10.0
    );

    for bad in ["0", "-2", "fast", "1,5", "5000"] {
        let problems = problems(load(&with(bad), &[]));
        assert_eq!(problems.len(), 1, "{bad}: {problems:#?}");
        let p = problem_for(&problems, "portal.maxWritesPerSecond");
        assert_eq!((p.line, p.column), (Some(5), Some(23)), "{bad}: {p}");
        assert!(p.message.contains(bad), "{bad}: {p}");
    }
    let zero = problems(load(&with("0"), &[]));
    assert!(zero[0].message.contains("greater than 0"), "{}", zero[0]);

    // The variable wins over the file, and a bad one is reported naming the variable.
    let config = load(
        &with("0.5"),
        &[("GUESTOPS_PORTAL_MAX_WRITES_PER_SECOND", "4")],
    )
    .expect("valid");
    assert_eq!(config.portal.max_writes_per_second, 4.0);
    let problems = problems(load(
        &with("0.5"),
        &[("GUESTOPS_PORTAL_MAX_WRITES_PER_SECOND", "0")],
    ));
    assert_eq!(
        problems[0].env_var.as_deref(),
        Some("GUESTOPS_PORTAL_MAX_WRITES_PER_SECOND")
    );
}

#[test]
fn load_reads_a_file_and_names_a_missing_one() {
    let config = Config::load(&fixture_path("full.yaml")).expect("valid file");
    assert_eq!(config.tenant.tenant_id, "contoso.onmicrosoft.com");

    let missing = fixture_path("does-not-exist.yaml");
    let err = Config::load(&missing).expect_err("missing file");
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("does-not-exist.yaml"), "{err}");

    let err = Config::load(&fixture_path("unknown-keys.yaml")).expect_err("invalid");
    assert!(err.to_string().contains("unknown-keys.yaml"), "{err}");
}

// ---- secrets ----------------------------------------------------------------------------

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write temp file");
    path
}

#[test]
fn secret_resolution_order_file_then_credential_then_env() {
    let creds = tempfile::tempdir().expect("tempdir");
    let creds_dir = creds.path().to_str().expect("utf-8 temp path");
    let explicit = write(creds.path(), "explicit", "from-file\n");
    write(creds.path(), "graph-secret", "from-credential\n");
    write(creds.path(), "webhook-secret", "hook-from-credential");

    // Explicit file key wins over the credential and the variable.
    let text = format!(
        "{MINIMAL}  credential: {{ kind: clientSecret, secretFile: {} }}\n",
        explicit.display()
    );
    let config = load(&text, &[]).expect("valid");
    let env = env_of(&[
        ("CREDENTIALS_DIRECTORY", creds_dir),
        ("GUESTOPS_TENANT_CLIENT_SECRET", "from-env"),
        ("GUESTOPS_PORTAL_API_KEY", "key-from-env\n"),
    ]);
    let secrets = config.load_secrets_with_env(&env).expect("secrets load");
    assert_eq!(graph_secret(&secrets).secret().expose_secret(), "from-file");
    // No portal-api-key credential file: the variable, one newline trimmed.
    assert_eq!(secrets.portal_api_key.expose_secret(), "key-from-env");
    assert_eq!(
        secrets.webhook_secret.as_ref().map(|s| s.expose_secret()),
        Some("hook-from-credential")
    );

    // Without the file key, the credential wins over the variable.
    let config = load(MINIMAL, &[]).expect("valid");
    let secrets = config.load_secrets_with_env(&env).expect("secrets load");
    assert_eq!(
        graph_secret(&secrets).secret().expose_secret(),
        "from-credential"
    );

    // Without CREDENTIALS_DIRECTORY, the variable.
    let env = env_of(&[
        ("GUESTOPS_TENANT_CLIENT_SECRET", "from-env"),
        ("GUESTOPS_PORTAL_API_KEY", "key"),
    ]);
    let secrets = config.load_secrets_with_env(&env).expect("secrets load");
    assert_eq!(graph_secret(&secrets).secret().expose_secret(), "from-env");
    assert!(
        secrets.webhook_secret.is_none(),
        "no webhook secret anywhere: webhook off"
    );
}

#[test]
fn a_loaded_secret_knows_where_it_came_from() {
    let creds = tempfile::tempdir().expect("tempdir");
    let creds_dir = creds.path().to_str().expect("utf-8 temp path");
    let explicit = write(creds.path(), "explicit", "from-file\n");
    write(creds.path(), "graph-secret", "from-credential\n");
    let env = env_of(&[
        ("CREDENTIALS_DIRECTORY", creds_dir),
        ("GUESTOPS_TENANT_CLIENT_SECRET", "from-env"),
        ("GUESTOPS_PORTAL_API_KEY", "key-from-env"),
    ]);

    let text = format!(
        "{MINIMAL}  credential: {{ kind: clientSecret, secretFile: {} }}\n",
        explicit.display()
    );
    let secrets = load(&text, &[])
        .expect("valid")
        .load_secrets_with_env(&env)
        .expect("secrets load");
    let described = graph_secret(&secrets);
    assert!(
        described.origin().contains(&explicit.display().to_string())
            && described.origin().contains("tenant.credential.secretFile"),
        "{}",
        described.origin()
    );
    assert_eq!(
        secrets.portal_api_key.origin(),
        &SecretOrigin::Env {
            var: "GUESTOPS_PORTAL_API_KEY".to_owned()
        }
    );
    assert_eq!(
        secrets.portal_api_key.credential().origin(),
        "the environment variable GUESTOPS_PORTAL_API_KEY"
    );

    let secrets = load(MINIMAL, &[])
        .expect("valid")
        .load_secrets_with_env(&env)
        .expect("secrets load");
    let origin = graph_secret(&secrets).origin();
    assert!(
        origin.contains("systemd credential graph-secret")
            && origin.contains(&creds.path().join("graph-secret").display().to_string()),
        "{origin}"
    );
    assert!(
        !format!("{:?}", secrets.graph_credential).contains("from-credential"),
        "Debug never shows the value"
    );
}

#[test]
fn only_one_trailing_newline_is_trimmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "s", "line\n\n");
    let secret = SecretSource::File(path)
        .load_with_env(&env_of(&[]))
        .expect("loads");
    assert_eq!(secret.expose_secret(), "line\n");
    let path = write(dir.path(), "crlf", "windows\r\n");
    let secret = SecretSource::File(path)
        .load_with_env(&env_of(&[]))
        .expect("loads");
    assert_eq!(secret.expose_secret(), "windows");
}

#[test]
fn secret_errors_name_the_file_and_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = write(dir.path(), "empty", "\n");
    let text = format!("{MINIMAL}portal:\n  apiKeyFile: {}\n", empty.display());
    let config = load(&text, &[]).expect("valid");
    let env = env_of(&[("GUESTOPS_TENANT_CLIENT_SECRET", "s")]);
    let err = config
        .load_secrets_with_env(&env)
        .expect_err("empty secret");
    assert!(matches!(err, ConfigError::SecretEmpty { .. }), "{err}");
    assert!(
        err.to_string().contains(&empty.display().to_string()),
        "{err}"
    );
    assert!(err.to_string().contains("portal.apiKeyFile"), "{err}");

    let missing = dir.path().join("missing");
    let text = format!("{MINIMAL}portal:\n  apiKeyFile: {}\n", missing.display());
    let config = load(&text, &[]).expect("config loads without reading secrets");
    let env = env_of(&[
        ("GUESTOPS_TENANT_CLIENT_SECRET", "s"),
        ("GUESTOPS_PORTAL_API_KEY", "would-be-ignored"),
    ]);
    let err = config
        .load_secrets_with_env(&env)
        .expect_err("missing file");
    assert!(matches!(err, ConfigError::SecretUnreadable { .. }), "{err}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    let config = load(MINIMAL, &[]).expect("valid");
    let err = config
        .load_secrets_with_env(&env_of(&[]))
        .expect_err("no secret");
    let text = err.to_string();
    assert!(text.contains("Graph client secret"), "{text}");
    assert!(text.contains("tenant.credential.secretFile"), "{text}");
    assert!(text.contains("graph-secret"), "{text}");
    assert!(text.contains("GUESTOPS_TENANT_CLIENT_SECRET"), "{text}");

    let err = config
        .load_secrets_with_env(&env_of(&[
            ("GUESTOPS_TENANT_CLIENT_SECRET", "s"),
            ("GUESTOPS_PORTAL_API_KEY", ""),
        ]))
        .expect_err("empty variable");
    assert!(err.to_string().contains("GUESTOPS_PORTAL_API_KEY"), "{err}");
}

#[test]
fn debug_output_never_contains_a_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "graph", "s3cr3t-graph-value\n");
    let text = format!(
        "{MINIMAL}  credential: {{ kind: clientSecret, secretFile: {} }}\n",
        file.display()
    );
    let env = env_of(&[
        ("GUESTOPS_PORTAL_API_KEY", "s3cr3t-portal-value"),
        ("GUESTOPS_SERVER_WEBHOOK_SECRET", "s3cr3t-hook-value"),
    ]);
    let config = Config::from_yaml_with_env(&text, "config.yaml", &env).expect("valid");
    let secrets = config.load_secrets_with_env(&env).expect("secrets load");
    assert_eq!(
        secrets.portal_api_key.expose_secret(),
        "s3cr3t-portal-value"
    );
    let debug = format!("{config:?} {secrets:?} {:?}", secrets.graph_credential);
    assert!(!debug.contains("s3cr3t"), "{debug}");
    assert!(!config.to_yaml().contains("s3cr3t"));
}

// ---- conversions ------------------------------------------------------------------------

#[test]
fn policy_conversions_carry_the_policy() {
    let config = load(
        &fixture("full.yaml"),
        &[("GUESTOPS_POLICY_GUEST_ON_REMOVAL", "disable")],
    )
    .expect("valid");
    let policy = config.policy(true);
    assert_eq!(
        policy.allowed_domains,
        vec!["partner.example", "vendor.example"]
    );
    assert_eq!(policy.guest_on_removal, GuestOnRemoval::Disable);
    assert_eq!(policy.max_deletions, 5);
    assert!(policy.force);
    assert!(!config.policy(false).force);
    assert_eq!(
        config.spec_policy().allowed_domains,
        vec!["partner.example", "vendor.example"]
    );
}

#[test]
fn to_yaml_loads_back_to_the_same_config() {
    for name in [
        "full.yaml",
        "minimal.yaml",
        "loopback.yaml",
        "usgov-dod.yaml",
    ] {
        let config = load(&fixture(name), &[]).expect("valid");
        let yaml = config.to_yaml();
        let again = load(&yaml, &[]).unwrap_or_else(|e| panic!("{name}: {e}\n{yaml}"));
        assert_eq!(again, config, "{name}:\n{yaml}");
    }
    let odd = load(
        MINIMAL,
        &[
            ("GUESTOPS_SOURCE_BRANCH", "true"),
            ("GUESTOPS_STATE_DIR", "/var/lib/guest ops #1"),
            ("GUESTOPS_SOURCE_POLL_INTERVAL", "90s"),
            ("GUESTOPS_POLICY_RESEND_AFTER", "0"),
            ("GUESTOPS_POLICY_PENDING_ALERT_AFTER", "36h"),
            ("GUESTOPS_POLICY_EXPIRY_NOTICE_BEFORE", "0"),
        ],
    )
    .expect("valid");
    assert_eq!(load(&odd.to_yaml(), &[]).expect("valid"), odd);
}

#[test]
fn simulator_config_points_everything_at_the_simulator() {
    let base = url::Url::parse("http://127.0.0.1:38123/").expect("url");
    let config = Config::for_simulator(&base, Path::new("/tmp/guestops-sim"));
    assert_eq!(config.tenant.tenant_id, "sim.onmicrosoft.com");
    assert_eq!(
        config.tenant.client_id,
        "00000000-0000-0000-0000-00000000c11e"
    );
    assert_eq!(config.tenant.authority_host, base);
    assert_eq!(config.tenant.graph_endpoint, base);
    assert_eq!(config.portal.base_url, base);
    assert_eq!(config.state.dir, PathBuf::from("/tmp/guestops-sim"));
    assert_eq!(
        config.tenant.client_secret,
        SecretSource::Env("GUESTOPS_TENANT_CLIENT_SECRET".into())
    );
    assert_eq!(
        config.portal.api_key,
        SecretSource::Env("GUESTOPS_PORTAL_API_KEY".into())
    );

    // The printed config is valid and says where secrets come from.
    let yaml = config.to_yaml();
    assert!(yaml.contains("GUESTOPS_TENANT_CLIENT_SECRET"), "{yaml}");
    let loaded = load(&yaml, &[]).expect("printed sim config loads");
    assert_eq!(loaded.tenant.graph_endpoint, base);
    assert_eq!(loaded.state.dir, config.state.dir);
    let secrets = loaded
        .load_secrets_with_env(&env_of(&[
            ("GUESTOPS_TENANT_CLIENT_SECRET", "sim-secret"),
            ("GUESTOPS_PORTAL_API_KEY", "sim-portal-api-key"),
        ]))
        .expect("secrets from env");
    assert_eq!(secrets.portal_api_key.expose_secret(), "sim-portal-api-key");
}

// ---- documentation ----------------------------------------------------------------------

#[test]
fn the_commented_example_is_valid() {
    Config::from_yaml_with_env(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.yaml"),
        )
        .expect("examples/config.yaml exists"),
        "examples/config.yaml",
        &env_of(&[]),
    )
    .expect("examples/config.yaml is valid");
}

#[test]
fn the_reference_documents_every_key_and_variable() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.md"))
        .expect("docs/config.md exists");
    for (key, var) in override_variables() {
        assert!(
            doc.contains(&format!("`{key}`")),
            "docs/config.md lacks `{key}`"
        );
        assert!(
            doc.contains(&format!("`{var}`")),
            "docs/config.md lacks `{var}`"
        );
    }
    for extra in [
        "GUESTOPS_TENANT_CLIENT_SECRET",
        "GUESTOPS_PORTAL_API_KEY",
        "GUESTOPS_SERVER_WEBHOOK_SECRET",
        "CREDENTIALS_DIRECTORY",
    ] {
        assert!(doc.contains(extra), "docs/config.md lacks {extra}");
    }
}

// ---- snapshots of what the operator reads -----------------------------------------------

fn snapshot(name: &str, text: &str) {
    insta::with_settings!({snapshot_path => "fixtures/config/snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!(name, text);
    });
}

#[test]
fn error_messages_read_well() {
    let many = load(&fixture("many-problems.yaml"), &[]).expect_err("invalid");
    let unknown = load(&fixture("unknown-keys.yaml"), &[]).expect_err("invalid");
    let syntax = load(&fixture("not-yaml.yaml"), &[]).expect_err("invalid");
    let duplicate =
        load(&format!("{MINIMAL}  tenantId: again.example\n"), &[]).expect_err("invalid");
    let env = load(MINIMAL, &[("GUESTOPS_POLICY_MAX_DELETIONS", "many")]).expect_err("invalid");
    let missing = load(MINIMAL, &[])
        .expect("valid")
        .load_secrets_with_env(&env_of(&[]))
        .expect_err("no secrets");
    snapshot(
        "config-errors",
        &[many, unknown, syntax, duplicate, env, missing]
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n\n"),
    );
}

#[test]
fn simulator_config_renders() {
    let base = url::Url::parse("http://127.0.0.1:38123/").expect("url");
    snapshot(
        "simulator-config",
        &Config::for_simulator(&base, Path::new("/tmp/guestops-sim")).to_yaml(),
    );
}

#[test]
fn mistyped_variables_are_spotted() {
    let names = [
        "GUESTOPS_TENANT_CLIENTID",
        "GUESTOPS_TENANT_CLIENT_ID",
        "GUESTOPS_PORTAL_API_KEY",
        "GUESTOPS_POLICY_MAX_DELETIONS",
        "PATH",
    ];
    assert_eq!(
        guestops::config::unrecognized_variables(names),
        vec!["GUESTOPS_TENANT_CLIENTID"]
    );
}

#[test]
fn an_oversized_config_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.yaml");
    let mut text = String::from(MINIMAL);
    text.push_str(&format!("# {}\n", "x".repeat(1024 * 1024)));
    std::fs::write(&path, text).expect("write");
    let err = Config::load(&path).expect_err("too large");
    assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("big.yaml"), "{err}");
}

// ---- relative paths and booleans --------------------------------------------------------

/// A config file in `dir` with every path relative, loaded with `env` and the process's
/// working directory.
const RELATIVE_PATHS: &str = "\
source:
  repo: ../admins
  credentialFile: secrets/git-token
tenant:
  tenantId: contoso.onmicrosoft.com
  clientId: 11111111-2222-3333-4444-555555555555
  credential: { kind: clientSecret, secretFile: secrets/graph-secret }
portal:
  apiKeyFile: ./secrets/portal-api-key
state:
  dir: ./guestops-state
server:
  webhookSecretFile: secrets/webhook-secret
";

#[test]
fn relative_paths_in_the_file_resolve_against_its_folder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let etc = tmp.path().join("etc");
    std::fs::create_dir(&etc).expect("mkdir");
    let path = write(&etc, "config.yaml", RELATIVE_PATHS);
    let config = Config::load_with_env(&path, &env_of(&[])).expect("valid");
    assert_eq!(config.state.dir, etc.join("guestops-state"));
    assert_eq!(
        config.tenant.client_secret,
        SecretSource::File(etc.join("secrets/graph-secret"))
    );
    assert_eq!(
        config.portal.api_key,
        SecretSource::File(etc.join("secrets/portal-api-key"))
    );
    assert_eq!(
        config.server.webhook_secret,
        Some(SecretSource::File(etc.join("secrets/webhook-secret")))
    );
    assert_eq!(
        config.source.credential_file,
        Some(etc.join("secrets/git-token"))
    );
    assert_eq!(
        config.source.repo.as_deref().map(Path::new),
        Some(etc.join("../admins").as_path())
    );

    // The secret is read from the file next to the config, wherever guestops runs.
    std::fs::create_dir(etc.join("secrets")).expect("mkdir");
    write(
        &etc.join("secrets"),
        "graph-secret",
        "from-the-config-folder\n",
    );
    write(&etc.join("secrets"), "portal-api-key", "key\n");
    write(&etc.join("secrets"), "webhook-secret", "hook\n");
    let secrets = config
        .load_secrets_with_env(&env_of(&[]))
        .expect("the secrets next to the config are read");
    assert_eq!(
        graph_secret(&secrets).secret().expose_secret(),
        "from-the-config-folder"
    );
}

#[test]
fn absolute_paths_and_remote_repositories_are_kept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for repo in [
        "https://github.com/contoso/portal-admins.git",
        "git@github.com:contoso/portal-admins.git",
        "ssh://git@github.com/contoso/portal-admins.git",
        "/srv/git/admins",
    ] {
        let text = format!("{MINIMAL}source:\n  repo: {repo}\nstate:\n  dir: /var/lib/x\n");
        let path = write(tmp.path(), "config.yaml", &text);
        let config = Config::load_with_env(&path, &env_of(&[])).expect("valid");
        assert_eq!(config.source.repo.as_deref(), Some(repo));
        assert_eq!(config.state.dir, Path::new("/var/lib/x"));
    }
}

#[test]
fn relative_paths_from_the_environment_resolve_against_the_working_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = write(tmp.path(), "config.yaml", RELATIVE_PATHS);
    let cwd = std::env::current_dir().expect("working directory");
    let env = env_of(&[
        ("GUESTOPS_STATE_DIR", "env-state"),
        ("GUESTOPS_PORTAL_API_KEY_FILE", "env-secrets/key"),
        ("GUESTOPS_SOURCE_REPO", "env-repo"),
    ]);
    let config = Config::load_with_env(&path, &env).expect("valid");
    assert_eq!(config.state.dir, cwd.join("env-state"));
    assert_eq!(
        config.portal.api_key,
        SecretSource::File(cwd.join("env-secrets/key"))
    );
    assert_eq!(
        config.source.repo.as_deref().map(Path::new),
        Some(cwd.join("env-repo").as_path())
    );
    // The keys the environment does not override still resolve against the file's folder.
    assert_eq!(
        config.tenant.client_secret,
        SecretSource::File(tmp.path().join("secrets/graph-secret"))
    );
}

#[test]
fn booleans_are_true_or_false_only_with_the_line_of_the_key() {
    for spelling in [
        "yes", "Yes", "y", "Y", "on", "On", "True", "TRUE", "no", "n", "off", "False",
    ] {
        let text = format!("{MINIMAL}policy:\n  maxDeletions: 2\n  prune: {spelling}\n");
        let found = problems(load(&text, &[]));
        assert_eq!(found.len(), 1, "`prune: {spelling}`: {found:#?}");
        let problem = problem_for(&found, "policy.prune");
        assert_eq!(problem.line, Some(6), "`prune: {spelling}`: {problem}");
        assert!(
            problem
                .message
                .contains(&format!("expected true or false, got `{spelling}`")),
            "{problem}"
        );
        // A flow mapping is read the same way.
        let text = format!("{MINIMAL}policy: {{ prune: {spelling} }}\n");
        let found = problems(load(&text, &[]));
        assert_eq!(problem_for(&found, "policy.prune").line, Some(4));
    }
    for (spelling, prune) in [("true", true), ("false", false)] {
        let text = format!("{MINIMAL}policy:\n  prune: {spelling}\n");
        assert_eq!(load(&text, &[]).expect("valid").policy.prune, prune);
    }
    // The environment override was already strict.
    let found = problems(load(MINIMAL, &[("GUESTOPS_POLICY_PRUNE", "yes")]));
    assert_eq!(
        problem_for(&found, "policy.prune").env_var.as_deref(),
        Some("GUESTOPS_POLICY_PRUNE")
    );
}

/// The client secret of `secrets` (the config's kind is `clientSecret`).
fn graph_secret(secrets: &guestops::config::Secrets) -> &guestops::remote::Credential {
    match &secrets.graph_credential {
        guestops::remote::graph::CredentialSettings::ClientSecret { secret } => secret,
        other => panic!("expected a client secret, got {}", other.kind()),
    }
}

const NO_IDS: &str = "tenant:\n  tenantId: contoso.onmicrosoft.com\n";

#[test]
fn each_sign_in_kind_loads_with_its_own_keys_only() {
    let text = "tenant:\n  tenantId: contoso.onmicrosoft.com\n  clientId: 11111111-2222-3333-4444-555555555555\n  credential:\n    kind: clientCertificate\n    certificateFile: /etc/guestops/graph.pem\n    assertionAlgorithm: RS256\n    sendCertificateChain: true\n";
    let config = load(text, &[]).expect("valid");
    match &config.tenant.credential {
        guestops::config::CredentialConfig::ClientCertificate {
            certificate_file,
            send_chain,
            algorithm,
            ..
        } => {
            assert_eq!(
                certificate_file.as_deref(),
                Some(Path::new("/etc/guestops/graph.pem"))
            );
            assert!(*send_chain);
            assert_eq!(algorithm.as_str(), "RS256");
        }
        other => panic!("{other:?}"),
    }
    // Renders back to the same configuration.
    let again = load(&config.to_yaml(), &[]).expect("the rendering loads");
    assert_eq!(again, config);

    // A key of another kind is an error, at its line, naming both kinds.
    let wrong = "tenant:\n  tenantId: contoso.onmicrosoft.com\n  clientId: 11111111-2222-3333-4444-555555555555\n  credential:\n    kind: managedIdentity\n    secretFile: /etc/guestops/graph\n";
    let found = problems(load(wrong, &[]));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "tenant.credential.secretFile");
    assert_eq!(found[0].line, Some(6));
    assert!(
        found[0].message.contains("clientSecret") && found[0].message.contains("managedIdentity"),
        "{}",
        found[0].message
    );

    let unknown = problems(load(
        &format!("{MINIMAL}  credential:\n    kind: certificate\n"),
        &[],
    ));
    assert!(
        unknown[0].message.contains("clientCertificate"),
        "{}",
        unknown[0].message
    );
    let algorithm = problems(load(
        &format!(
            "{MINIMAL}  credential:\n    kind: clientCertificate\n    assertionAlgorithm: ES256\n"
        ),
        &[],
    ));
    assert!(
        algorithm[0].message.contains("PS256"),
        "{}",
        algorithm[0].message
    );
}

#[test]
fn a_managed_identity_needs_no_client_id_and_workload_identity_reads_the_aks_variables() {
    let managed = load(
        &format!("{NO_IDS}  credential:\n    kind: managedIdentity\n"),
        &[],
    )
    .expect("no tenant.clientId needed");
    assert_eq!(managed.tenant.client_id, "");
    assert_eq!(load(&managed.to_yaml(), &[]).expect("renders"), managed);
    // Every other kind still needs it.
    let found = problems(load(
        &format!("{NO_IDS}  credential:\n    kind: clientCertificate\n"),
        &[],
    ));
    assert!(
        found.iter().any(|p| p.key == "tenant.clientId"),
        "{found:?}"
    );

    let workload = "tenant:\n  credential:\n    kind: workloadIdentity\n";
    let config = load(
        workload,
        &[
            ("AZURE_CLIENT_ID", "99999999-8888-7777-6666-555555555555"),
            ("AZURE_TENANT_ID", "fabrikam.onmicrosoft.com"),
        ],
    )
    .expect("ids from the AKS webhook's variables");
    assert_eq!(
        config.tenant.client_id,
        "99999999-8888-7777-6666-555555555555"
    );
    assert_eq!(config.tenant.tenant_id, "fabrikam.onmicrosoft.com");
    // The file and the GUESTOPS_* overrides win over them.
    let config = load(
        &format!("{MINIMAL}  credential:\n    kind: workloadIdentity\n"),
        &[("AZURE_CLIENT_ID", "99999999-8888-7777-6666-555555555555")],
    )
    .expect("valid");
    assert_eq!(
        config.tenant.client_id,
        "11111111-2222-3333-4444-555555555555"
    );
    // Not for other kinds.
    let found = problems(load(
        "tenant:\n  tenantId: contoso.onmicrosoft.com\n",
        &[("AZURE_CLIENT_ID", "99999999-8888-7777-6666-555555555555")],
    ));
    assert!(
        found.iter().any(|p| p.key == "tenant.clientId"),
        "{found:?}"
    );
}

#[test]
fn the_credential_of_each_kind_is_read_from_its_sources() {
    use guestops::remote::graph::CredentialSettings;
    use guestops::remote::graph::credential::ManagedIdentitySource;
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().to_str().expect("utf-8").to_owned();
    write(dir.path(), "graph-certificate", "not read here");
    write(dir.path(), "graph-certificate-password", "pw\n");

    // clientCertificate: the systemd credentials when no file key is set.
    let config = load(
        &format!("{MINIMAL}  credential:\n    kind: clientCertificate\n"),
        &[],
    )
    .expect("valid");
    let env = env_of(&[("CREDENTIALS_DIRECTORY", creds.as_str())]);
    match config.load_credential_with_env(&env).expect("loads") {
        CredentialSettings::ClientCertificate(c) => {
            assert_eq!(c.file, dir.path().join("graph-certificate"));
            assert!(c.origin.contains("graph-certificate"), "{}", c.origin);
            let password = c.password.expect("the password credential");
            assert_eq!(password.secret().expose_secret(), "pw");
            assert!(!format!("{password:?}").contains("pw\""));
        }
        other => panic!("{}", other.kind()),
    }
    let missing = config
        .load_credential_with_env(&env_of(&[]))
        .expect_err("no certificate anywhere");
    assert!(
        missing
            .to_string()
            .contains("tenant.credential.certificateFile")
            && missing.to_string().contains("graph-certificate"),
        "{missing}"
    );

    // workloadIdentity: $AZURE_FEDERATED_TOKEN_FILE unless tokenFile is set.
    let config = load(
        &format!("{MINIMAL}  credential:\n    kind: workloadIdentity\n"),
        &[],
    )
    .expect("valid");
    let env = env_of(&[(
        "AZURE_FEDERATED_TOKEN_FILE",
        "/var/run/secrets/azure/tokens/t",
    )]);
    match config.load_credential_with_env(&env).expect("loads") {
        CredentialSettings::WorkloadIdentity { token_file } => {
            assert_eq!(token_file, Path::new("/var/run/secrets/azure/tokens/t"));
        }
        other => panic!("{}", other.kind()),
    }
    let missing = config
        .load_credential_with_env(&env_of(&[]))
        .expect_err("no token file");
    assert!(
        missing.to_string().contains("AZURE_FEDERATED_TOKEN_FILE"),
        "{missing}"
    );

    // githubActions: the runner's variables, and what to do without them.
    let config = load(
        &format!("{MINIMAL}  credential:\n    kind: githubActions\n"),
        &[],
    )
    .expect("valid");
    let env = env_of(&[
        (
            "ACTIONS_ID_TOKEN_REQUEST_URL",
            "https://pipelines.actions.githubusercontent.com/abc/idtoken?api-version=2.0",
        ),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "request-token-value"),
    ]);
    match config.load_credential_with_env(&env).expect("loads") {
        CredentialSettings::GithubActions(g) => {
            assert_eq!(g.audience, "api://AzureADTokenExchange");
            assert_eq!(
                g.request_token.secret().expose_secret(),
                "request-token-value"
            );
            assert!(!format!("{g:?}").contains("request-token-value"));
        }
        other => panic!("{}", other.kind()),
    }
    let missing = config
        .load_credential_with_env(&env_of(&[]))
        .expect_err("not in a job");
    assert!(missing.to_string().contains("id-token: write"), "{missing}");

    // managedIdentity: the endpoint the environment names.
    let config = load(
        &format!("{NO_IDS}  credential:\n    kind: managedIdentity\n    clientId: 11111111-2222-3333-4444-555555555555\n"),
        &[],
    )
    .expect("valid");
    match config
        .load_credential_with_env(&env_of(&[]))
        .expect("loads")
    {
        CredentialSettings::ManagedIdentity(m) => {
            assert_eq!(
                m.client_id.as_deref(),
                Some("11111111-2222-3333-4444-555555555555")
            );
            assert!(matches!(m.source, ManagedIdentitySource::Imds { .. }));
        }
        other => panic!("{}", other.kind()),
    }
}

#[test]
fn verify_head_needs_a_trust_file() {
    let problems = problems(load(MINIMAL, &[("GUESTOPS_SOURCE_VERIFY_MODE", "head")]));
    let p = problem_for(&problems, "source.verify.mode");
    assert!(p.message.contains("allowedSignersFile"), "{p}");
    let problems = problems_of_section("source:\n  verify:\n    mode: signed\n");
    let p = problem_for(&problems, "source.verify.mode");
    assert!(p.message.contains("none or head"), "{p}");
    let config = load(
        MINIMAL,
        &[
            ("GUESTOPS_SOURCE_VERIFY_MODE", "head"),
            (
                "GUESTOPS_SOURCE_VERIFY_KEYRING_FILE",
                "/etc/guestops/keyring.gpg",
            ),
        ],
    )
    .expect("a keyring alone is enough");
    assert!(config.source.verify.is_on());
    assert_eq!(config.source.verify.allowed_signers_file, None);
}
