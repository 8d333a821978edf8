//! Every sign-in kind end to end: the real binary's `plan` and `apply` against the simulator,
//! which verifies what Entra verifies (the assertion's signature against the app's registered
//! certificate, the federated token against its issuer's JWKS and the app's federated
//! credentials, the managed identity's endpoint), and the message of each refusal.

use std::path::{Path, PathBuf};

use guestops::config::CredentialConfig;
use guestops::remote::graph::credential::AssertionAlgorithm;
use guestops::sim::entra::{self, SimCertificate, SimFederatedCredential, SimManagedIdentity};

use super::common::{self, Harness};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/credentials");
const ADMIN: (&str, &str, &str) = ("ana.silva@partner.example", "Ana Silva", "administrator");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn fixture_text(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).expect("fixture")
}

/// Lines of base64 from the private keys of the fixtures: none may appear in any output.
fn key_lines() -> Vec<String> {
    ["app.key", "other.key"]
        .iter()
        .flat_map(|name| {
            fixture_text(name)
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Changes what the simulated Entra knows of the app (and the host's identities).
fn app(h: &Harness, change: impl FnOnce(&mut guestops::sim::graph::SimCredentials)) {
    let mut state = h.state();
    let mut creds = state.graph.credentials().clone();
    change(&mut creds);
    state.graph.set_credentials(creds);
}

/// Runs `sub` with `envs` added to the clean environment.
fn run_with(h: &Harness, sub: &str, envs: &[(&str, &str)]) -> common::Run {
    let mut cmd = h.cmd();
    cmd.arg(sub)
        .arg("--config")
        .arg(h.config_path())
        .arg("--desired")
        .arg(h.users_path());
    for (name, value) in envs {
        cmd.env(name, value);
    }
    common::Run::from(cmd.output().expect("guestops runs"))
}

/// Everything guestops wrote or printed: stdout, stderr and every file of the state folder.
fn everything(h: &Harness, runs: &[&common::Run]) -> String {
    let mut text = String::new();
    for run in runs {
        text.push_str(&run.stdout);
        text.push_str(&run.stderr);
    }
    if let Ok(entries) = std::fs::read_dir(h.state_dir()) {
        for entry in entries.flatten() {
            if let Ok(bytes) = std::fs::read(entry.path()) {
                text.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    text
}

fn assert_no_secret(h: &Harness, runs: &[&common::Run], secrets: &[String]) {
    let all = everything(h, runs);
    // Every JWT (assertion, federated token, access token) starts with `eyJ`, the base64 of
    // `{"`: none is printed, logged or stored.
    assert!(
        !all.contains("eyJ"),
        "a JWT appears in the output or the state"
    );
    for secret in key_lines().iter().chain(secrets) {
        assert!(
            !all.contains(secret.as_str()),
            "a secret appears in the output or the state: {secret}"
        );
    }
}

fn certificate(h: &mut Harness, file: &str, password: Option<&str>, algorithm: AssertionAlgorithm) {
    let target = h.dir.path().join(file);
    std::fs::copy(fixture(file), &target).expect("copy the certificate");
    let password = match password {
        Some(text) => {
            let path = h.dir.path().join("certificate-password");
            std::fs::write(&path, format!("{text}\n")).expect("write the password");
            guestops::config::SecretSource::File(path)
        }
        None => guestops::config::SecretSource::Env("GUESTOPS_TENANT_CERTIFICATE_PASSWORD".into()),
    };
    h.configure(|c| {
        c.tenant.credential = CredentialConfig::ClientCertificate {
            certificate_file: Some(target),
            password,
            send_chain: false,
            algorithm,
        };
    });
}

#[test]
fn a_certificate_signs_in_and_a_certificate_entra_does_not_know_is_named_by_its_thumbprints() {
    let mut h = Harness::new();
    app(&h, |creds| {
        // No client secret on the app: only the certificate can sign in.
        creds.client_secret = String::new();
        creds
            .certificates
            .push(SimCertificate::from_pem(&fixture_text("app.crt")).expect("app.crt"));
    });
    h.write_users(&[ADMIN]);

    // PEM, PS256 with x5t#S256 (the default).
    certificate(&mut h, "app.pem", None, AssertionAlgorithm::Ps256);
    let applied = h.apply(&[]);
    applied.expect_code(0);
    assert_eq!(h.invitations(ADMIN.0), 1);
    assert_eq!(h.creates(ADMIN.0), 1);

    // PKCS#12 with its password, RS256 with x5t.
    certificate(
        &mut h,
        "app.p12",
        Some("fixture-password"),
        AssertionAlgorithm::Rs256,
    );
    let tokens_before = h.counters().token_requests;
    let planned = h.plan(&[]);
    planned.expect_code(0);
    assert!(
        h.counters().token_requests > tokens_before,
        "a new token was asked for"
    );

    // A certificate the app does not have: refused by Entra, named by its thumbprints.
    certificate(&mut h, "other.pem", None, AssertionAlgorithm::Ps256);
    let writes = h.writes();
    // With every log line on: nothing secret in the logs either.
    let refused = run_with(&h, "plan", &[("RUST_LOG", "trace")]);
    refused.expect_code(1);
    let other = SimCertificate::from_pem(&fixture_text("other.crt")).expect("other.crt");
    assert!(
        refused.stderr.contains("700027")
            && refused
                .stderr
                .to_ascii_uppercase()
                .contains(&other.thumbprint().to_ascii_uppercase()),
        "the refusal names the code and the thumbprint of the certificate sent:\n{}",
        refused.stderr
    );
    assert_eq!(
        h.writes(),
        writes,
        "nothing is written after a refused sign-in"
    );

    // A PKCS#12 file with a wrong password never reaches Entra.
    certificate(&mut h, "app.p12", Some("wrong"), AssertionAlgorithm::Ps256);
    let tokens = h.counters().token_requests;
    let wrong = h.plan(&[]);
    wrong.expect_code(1);
    assert!(wrong.stderr.contains("password"), "{}", wrong.stderr);
    assert_eq!(h.counters().token_requests, tokens);

    assert_no_secret(&h, &[&applied, &planned, &refused, &wrong], &[]);
}

fn federate(h: &Harness, issuer_name: &str, subject: &str) -> String {
    let issuer = entra::oidc::issuer_url(h.base.as_str(), issuer_name);
    app(h, |creds| {
        creds.client_secret = String::new();
        creds
            .federated
            .push(SimFederatedCredential::new(issuer_name, &issuer, subject));
    });
    issuer
}

#[test]
fn workload_identity_reads_the_token_file_of_each_run_and_a_mismatch_prints_what_was_sent() {
    let mut h = Harness::new();
    let subject = "system:serviceaccount:guestops:guestops";
    federate(&h, "aks", subject);
    h.state().identity.add_issuer(
        "aks",
        entra::oidc::SimIssuer {
            request_token: None,
            ..entra::oidc::SimIssuer::with_subject(subject)
        },
    );
    let token_file = h.dir.path().join("azure-identity-token");
    h.configure(|c| {
        c.tenant.credential = CredentialConfig::WorkloadIdentity { token_file: None };
    });
    h.write_users(&[ADMIN]);
    let file = token_file.display().to_string();
    let env = [("AZURE_FEDERATED_TOKEN_FILE", file.as_str())];

    let good =
        h.sim
            .mint_federated_token(&h.base, "aks", subject, entra::TOKEN_EXCHANGE_AUDIENCE, 600);
    std::fs::write(&token_file, format!("{good}\n")).expect("write the token");
    let applied = run_with(&h, "apply", &env);
    applied.expect_code(0);
    assert_eq!(h.invitations(ADMIN.0), 1);

    // Another service account: no federated credential matches its subject.
    let stranger = "system:serviceaccount:default:intruder";
    let wrong = h.sim.mint_federated_token(
        &h.base,
        "aks",
        stranger,
        entra::TOKEN_EXCHANGE_AUDIENCE,
        600,
    );
    std::fs::write(&token_file, &wrong).expect("write the token");
    let mismatch = run_with(&h, "plan", &[env[0], ("RUST_LOG", "trace")]);
    mismatch.expect_code(1);
    assert!(
        mismatch.stderr.contains("700213")
            && mismatch.stderr.contains(stranger)
            && mismatch.stderr.contains(entra::TOKEN_EXCHANGE_AUDIENCE),
        "the refusal prints the sub and aud guestops sent:\n{}",
        mismatch.stderr
    );

    // A token expired ten minutes ago (beyond the 5 minutes of clock skew Entra allows): the
    // file is not being refreshed.
    let expired = h.sim.mint_federated_token(
        &h.base,
        "aks",
        subject,
        entra::TOKEN_EXCHANGE_AUDIENCE,
        -600,
    );
    std::fs::write(&token_file, &expired).expect("write the token");
    let stale = run_with(&h, "plan", &env);
    stale.expect_code(1);
    assert!(
        stale.stderr.contains("700024") && stale.stderr.contains(&file),
        "{}",
        stale.stderr
    );

    // No file known at all.
    let unknown = h.plan(&[]);
    unknown.expect_code(1);
    assert!(
        unknown.stderr.contains("AZURE_FEDERATED_TOKEN_FILE"),
        "{}",
        unknown.stderr
    );
    assert_no_secret(
        &h,
        &[&applied, &mismatch, &stale, &unknown],
        &[good, wrong, expired],
    );
}

#[test]
fn github_actions_exchanges_the_runner_token_and_a_wrong_audience_is_named() {
    let mut h = Harness::new();
    let subject = "repo:contoso/portal-admins:pull_request";
    federate(&h, "github", subject);
    h.state()
        .identity
        .add_issuer("github", entra::oidc::SimIssuer::with_subject(subject));
    h.configure(|c| {
        c.tenant.credential = CredentialConfig::GithubActions {
            audience: entra::TOKEN_EXCHANGE_AUDIENCE.to_owned(),
        };
    });
    h.write_users(&[ADMIN]);
    let url = entra::oidc::token_request_url(h.base.as_str(), "github");
    let env = [
        ("ACTIONS_ID_TOKEN_REQUEST_URL", url.as_str()),
        (
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
            entra::oidc::DEFAULT_REQUEST_TOKEN,
        ),
    ];
    let planned = run_with(&h, "plan", &[env[0], env[1], ("RUST_LOG", "trace")]);
    planned.expect_code(0);
    assert!(planned.stdout.contains(ADMIN.0), "{}", planned.stdout);
    let applied = run_with(&h, "apply", &env);
    applied.expect_code(0);
    assert_eq!(h.invitations(ADMIN.0), 1);

    // A token asked for another audience: no federated credential lists it.
    h.configure(|c| {
        c.tenant.credential = CredentialConfig::GithubActions {
            audience: "api://SomethingElse".to_owned(),
        };
    });
    let scoped = run_with(&h, "plan", &env);
    scoped.expect_code(1);
    assert!(
        scoped.stderr.contains("700212")
            && scoped.stderr.contains("api://SomethingElse")
            && scoped.stderr.contains(subject),
        "{}",
        scoped.stderr
    );

    // A wrong request token: GitHub refuses it; the job's permissions are named.
    let refused = run_with(
        &h,
        "plan",
        &[
            ("ACTIONS_ID_TOKEN_REQUEST_URL", url.as_str()),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "not-the-runner-token"),
        ],
    );
    refused.expect_code(1);
    assert!(
        refused.stderr.contains("id-token: write"),
        "{}",
        refused.stderr
    );

    // Outside a job.
    let outside = h.plan(&[]);
    outside.expect_code(1);
    assert!(
        outside.stderr.contains("ACTIONS_ID_TOKEN_REQUEST_URL")
            && outside.stderr.contains("id-token: write"),
        "{}",
        outside.stderr
    );
    assert_no_secret(
        &h,
        &[&planned, &applied, &scoped, &refused, &outside],
        &[
            entra::oidc::DEFAULT_REQUEST_TOKEN.to_owned(),
            "not-the-runner-token".to_owned(),
        ],
    );
}

#[test]
fn a_managed_identity_signs_in_through_imds_or_app_service_and_an_unreachable_endpoint_says_so() {
    let mut h = Harness::new();
    app(&h, |creds| {
        creds.managed_identity = Some(SimManagedIdentity::default())
    });
    h.configure(|c| {
        c.tenant.client_id = String::new();
        c.tenant.credential = CredentialConfig::ManagedIdentity { client_id: None };
    });
    h.write_users(&[ADMIN]);
    let base = h.base.as_str().trim_end_matches('/').to_owned();

    // IMDS (its address overridden as Azure's SDKs allow).
    let imds = run_with(
        &h,
        "apply",
        &[
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", &base),
            ("RUST_LOG", "trace"),
        ],
    );
    imds.expect_code(0);
    assert_eq!(h.invitations(ADMIN.0), 1);
    assert!(h.counters().identity_requests >= 1);

    // App Service / Container Apps.
    let endpoint = format!("{base}/msi/token");
    let app = run_with(
        &h,
        "plan",
        &[
            ("IDENTITY_ENDPOINT", &endpoint),
            ("IDENTITY_HEADER", entra::SIM_IDENTITY_HEADER),
        ],
    );
    app.expect_code(0);

    // A user-assigned identity the host does not have.
    h.configure(|c| {
        c.tenant.credential = CredentialConfig::ManagedIdentity {
            client_id: Some("99999999-8888-7777-6666-555555555555".into()),
        };
    });
    let unknown = run_with(&h, "plan", &[("AZURE_POD_IDENTITY_AUTHORITY_HOST", &base)]);
    unknown.expect_code(1);
    assert!(
        unknown
            .stderr
            .contains("99999999-8888-7777-6666-555555555555"),
        "{}",
        unknown.stderr
    );

    // No endpoint answers (not an Azure host).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let nowhere = format!("http://{addr}");
    let unreachable = run_with(
        &h,
        "plan",
        &[("AZURE_POD_IDENTITY_AUTHORITY_HOST", &nowhere)],
    );
    unreachable.expect_code(1);
    assert!(
        unreachable
            .stderr
            .contains("no managed identity endpoint answered")
            && unreachable.stderr.contains(&addr.to_string()),
        "{}",
        unreachable.stderr
    );
    assert_no_secret(
        &h,
        &[&imds, &app, &unknown, &unreachable],
        &[entra::SIM_IDENTITY_HEADER.to_owned()],
    );
}

#[test]
fn in_a_sovereign_cloud_every_kind_asks_for_that_clouds_graph_whatever_the_endpoints() {
    use guestops::config::Cloud;
    use guestops::sim::graph::SimCloud;
    let mut h = Harness::new();
    app(&h, |creds| {
        creds.cloud = SimCloud::UsGov;
        creds
            .certificates
            .push(SimCertificate::from_pem(&fixture_text("app.crt")).expect("app.crt"));
        creds.managed_identity = Some(SimManagedIdentity::default());
    });
    h.write_users(&[ADMIN]);
    let base = h.base.as_str().trim_end_matches('/').to_owned();

    // The global cloud's resource is refused by a US Government tenant.
    h.configure(|c| c.tenant.cloud = Cloud::Global);
    certificate(&mut h, "app.pem", None, AssertionAlgorithm::Ps256);
    let global = h.plan(&[]);
    global.expect_code(1);
    assert!(global.stderr.contains("500011"), "{}", global.stderr);

    // `tenant.cloud: usgov` with the endpoints still pointing at the simulator.
    h.configure(|c| c.tenant.cloud = Cloud::UsGov);
    h.plan(&[]).expect_code(0);
    h.configure(|c| {
        c.tenant.client_id = String::new();
        c.tenant.credential = CredentialConfig::ManagedIdentity { client_id: None };
    });
    run_with(&h, "apply", &[("AZURE_POD_IDENTITY_AUTHORITY_HOST", &base)]).expect_code(0);
    assert_eq!(h.invitations(ADMIN.0), 1);
    h.configure(|c| c.tenant.cloud = Cloud::China);
    let china = run_with(&h, "plan", &[("AZURE_POD_IDENTITY_AUTHORITY_HOST", &base)]);
    china.expect_code(1);
    assert!(
        china.stderr.contains("microsoftgraph.chinacloudapi.cn"),
        "the refused resource is China's Graph:\n{}",
        china.stderr
    );
}
