//! What makes `guestops run` reconcile between its (long) poll and resync intervals: a signed
//! GitHub push webhook, `SIGHUP` (systemd's `ExecReload=`), and a restart after `SIGTERM`.
//!
//! The real binary follows a real git repository against the simulator on loopback, started
//! as `deploy/systemd/guestops.service` starts it: secrets as systemd credentials in
//! `$CREDENTIALS_DIRECTORY` (the config names no secret file), a `NOTIFY_SOCKET`, a state
//! directory. `pollInterval` and `resyncInterval` are one hour, so only the trigger under test
//! can apply a new commit. Waits are bounded guards against hanging, never assertions on speed.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use guestops::config::{CREDENTIALS_DIRECTORY, Config, SecretSource};
use guestops::service::server::{DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign};
use guestops::service::systemd::{NOTIFY_SOCKET, WATCHDOG_USEC};
use guestops::sim::Sim;
use tokio_util::sync::CancellationToken;

use support::{
    Guestops, NotifySocket, Repo, free_port, parse_exposition, sample, users_yaml, wait_for,
};

const ANA: (&str, &str) = ("ana@partner.example", "Ana");
const BOB: (&str, &str) = ("bob@partner.example", "Bob");

/// The webhook secret shared with "GitHub".
const WEBHOOK_SECRET: &str = "webhook secret shared with GitHub";

/// How long a refused trigger is watched for a reconcile it must not cause.
const QUIET: Duration = Duration::from_millis(1500);

/// Poll and resync intervals: long enough that neither happens during a test.
const LONG: Duration = Duration::from_secs(3600);

/// `guestops run` as a child process, killed if the test ends without stopping it.
/// The simulator on loopback, a config following `repo` that names no secret file, the
/// secrets in a credentials directory, a state directory and a fake `NOTIFY_SOCKET`.
struct Setup {
    sim: Sim,
    _stop_sim: tokio_util::sync::DropGuard,
    dir: tempfile::TempDir,
    config: PathBuf,
    credentials: PathBuf,
    listen: std::net::SocketAddr,
    notify: NotifySocket,
}

impl Setup {
    /// `webhook`: whether the `webhook-secret` credential exists.
    async fn new(repo: &Repo, webhook: bool) -> Setup {
        let sim = Sim::new();
        let stop = CancellationToken::new();
        let base = sim
            .spawn("127.0.0.1:0".parse().expect("address"), stop.clone())
            .await
            .expect("simulator listens");
        let dir = tempfile::tempdir().expect("temp dir");

        // As LoadCredential= provides them.
        let credentials = dir.path().join("credentials");
        std::fs::create_dir(&credentials).expect("credentials directory");
        std::fs::write(
            credentials.join("graph-secret"),
            guestops::sim::graph::SIM_CLIENT_SECRET,
        )
        .expect("graph-secret");
        std::fs::write(
            credentials.join("portal-api-key"),
            guestops::sim::portal::SIM_API_KEY,
        )
        .expect("portal-api-key");
        if webhook {
            std::fs::write(credentials.join("webhook-secret"), WEBHOOK_SECRET)
                .expect("webhook-secret");
        }

        let listen = free_port();
        let mut config = Config::for_simulator(&base, &dir.path().join("state"));
        config.source.repo = Some(repo.path().display().to_string());
        config.source.poll_interval = LONG;
        config.source.resync_interval = LONG;
        config.server.listen = listen;
        let credential =
            |credential: &str, env: &str, file_key: &str| SecretSource::CredentialOrEnv {
                credential: credential.to_owned(),
                env: env.to_owned(),
                file_key: file_key.to_owned(),
            };
        config.tenant.client_secret = credential(
            "graph-secret",
            "GUESTOPS_TENANT_CLIENT_SECRET",
            "tenant.credential.secretFile",
        );
        config.portal.api_key = credential(
            "portal-api-key",
            "GUESTOPS_PORTAL_API_KEY",
            "portal.apiKeyFile",
        );
        config.server.webhook_secret = None;
        // The rendered file holds the secret keys as `~`: drop them, so that the file names
        // no secret at all, as in deploy/.
        let text: String = config
            .to_yaml()
            .lines()
            .filter(|line| !line.contains("File: ~") && !line.contains("webhook"))
            .map(|line| format!("{line}\n"))
            .collect();
        for key in ["secretFile", "apiKeyFile", "webhookSecretFile"] {
            assert!(!text.contains(key), "{key} left in the config:\n{text}");
        }
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, text).expect("config file");
        let notify = NotifySocket::bind(&dir.path().join("notify.sock"));
        Setup {
            sim,
            _stop_sim: stop.drop_guard(),
            dir,
            config: path,
            credentials,
            listen,
            notify,
        }
    }

    /// Starts `guestops run --config config` in a systemd-like environment, with no other
    /// `GUESTOPS_*` variable.
    fn start(&self) -> Guestops {
        Guestops::spawn(
            &self.config,
            self.listen,
            &[],
            &[
                (CREDENTIALS_DIRECTORY, self.credentials.as_os_str()),
                (NOTIFY_SOCKET, self.notify.path().as_os_str()),
                // WatchdogSec=10min.
                (WATCHDOG_USEC, "600000000".as_ref()),
            ],
        )
    }

    fn invitations(&self, email: &str) -> u32 {
        self.sim.state().graph.invitation_count(email)
    }

    fn registrations(&self, email: &str) -> u32 {
        self.sim.state().portal.creates_for(email)
    }

    fn registered(&self, email: &str) -> bool {
        self.sim.state().portal.find(email).is_some()
    }

    fn ready_count(&self) -> usize {
        self.notify
            .messages()
            .iter()
            .filter(|m| m.as_str() == "READY=1")
            .count()
    }

    fn state_json(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.path().join("state/state.json"))
            .expect("state.json exists");
        serde_json::from_str(&text).expect("state.json is valid JSON")
    }
}

async fn reconciles(guestops: &Guestops, result: &str) -> Option<f64> {
    let response = reqwest::get(guestops.url("/metrics")).await.ok()?;
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.ok()?;
    sample(
        &parse_exposition(&text),
        &format!("guestops_reconciles_total{{result=\"{result}\"}}"),
    )
}

/// Waits until the first commit is applied: ana registered, a successful reconcile counted
/// and READY=1 sent `ready` times in all.
async fn wait_converged(setup: &Setup, guestops: &Guestops, ready: usize) {
    wait_for("ana registered in the portal", guestops, || async {
        setup.registered(ANA.0).then_some(())
    })
    .await;
    wait_for("a successful reconcile counted", guestops, || async {
        reconciles(guestops, "success").await.filter(|n| *n >= 1.0)
    })
    .await;
    wait_for("READY=1", guestops, || async {
        (setup.ready_count() >= ready).then_some(())
    })
    .await;
}

/// Watches for [`QUIET`] that `email` gets no invitation; panics with `why` otherwise.
async fn assert_not_invited_for_a_while(
    setup: &Setup,
    guestops: &Guestops,
    email: &str,
    why: &str,
) {
    let started = std::time::Instant::now();
    while started.elapsed() < QUIET {
        assert_eq!(
            setup.invitations(email),
            0,
            "{why}; guestops log:\n{}",
            guestops.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A GitHub push event delivery, answered as (status, body).
async fn deliver_push(
    guestops: &Guestops,
    git_ref: &str,
    after: &str,
    signature: Option<String>,
) -> (u16, String) {
    let body = serde_json::json!({
        "ref": git_ref,
        "before": "0000000000000000000000000000000000000000",
        "after": after,
        "repository": { "full_name": "contoso/portal-admins" },
    })
    .to_string();
    let signature = signature.unwrap_or_else(|| sign(WEBHOOK_SECRET, body.as_bytes()));
    let response = reqwest::Client::new()
        .post(guestops.url("/hooks/github"))
        .header("content-type", "application/json")
        .header(EVENT_HEADER, "push")
        .header(DELIVERY_HEADER, "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await
        .expect("the webhook answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_push_to_the_followed_branch_applies_the_new_commit_and_nothing_else_does() {
    let repo = Repo::new();
    repo.commit(&users_yaml(&[ANA]), "add ana");
    let setup = Setup::new(&repo, true).await;
    // Ana already is a guest: adopted, so that the first reconcile leaves nothing pending.
    setup.sim.state().graph.add_guest(ANA.0, ANA.1);
    let guestops = setup.start();
    wait_converged(&setup, &guestops, 1).await;

    let second = repo.commit(&users_yaml(&[ANA, BOB]), "add bob");

    // A push to another branch is acknowledged but triggers nothing.
    let (status, body) = deliver_push(&guestops, "refs/heads/feature/add-bob", &second, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ignored"), "{body}");
    // A push to the branch with a signature made with another secret is refused.
    let forged = sign("not the shared secret", b"{}");
    let (status, body) = deliver_push(&guestops, "refs/heads/main", &second, Some(forged)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("X-Hub-Signature-256"), "{body}");
    assert_not_invited_for_a_while(
        &setup,
        &guestops,
        BOB.0,
        "bob invited without a verified push to main",
    )
    .await;

    // The verified push to main applies the commit.
    let (status, body) = deliver_push(&guestops, "refs/heads/main", &second, None).await;
    assert_eq!(status, 202, "{body}");
    wait_for("bob invited and registered", &guestops, || async {
        (setup.invitations(BOB.0) == 1 && setup.registered(BOB.0)).then_some(())
    })
    .await;

    let (code, log) = guestops.terminate().await;
    assert_eq!(code, Some(0), "SIGTERM is a clean stop:\n{log}");
    assert!(log.contains("webhook"), "the push is logged:\n{log}");
    assert!(
        !log.contains(WEBHOOK_SECRET),
        "the webhook secret is never logged:\n{log}"
    );
    assert_eq!(setup.state_json()["revision"], second.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_new_commit() {
    let repo = Repo::new();
    repo.commit(&users_yaml(&[ANA]), "add ana");
    let setup = Setup::new(&repo, false).await;
    setup.sim.state().graph.add_guest(ANA.0, ANA.1);
    let guestops = setup.start();
    wait_converged(&setup, &guestops, 1).await;

    // Without a webhook secret there is no webhook.
    let response = reqwest::Client::new()
        .post(guestops.url("/hooks/github"))
        .body("{}")
        .send()
        .await
        .expect("the server answers");
    assert_eq!(response.status().as_u16(), 404);

    let second = repo.commit(&users_yaml(&[ANA, BOB]), "add bob");
    assert_not_invited_for_a_while(
        &setup,
        &guestops,
        BOB.0,
        "bob invited before any trigger (poll and resync are one hour)",
    )
    .await;
    guestops.signal("-HUP");
    wait_for("bob invited and registered", &guestops, || async {
        (setup.invitations(BOB.0) == 1 && setup.registered(BOB.0)).then_some(())
    })
    .await;

    let (code, log) = guestops.terminate().await;
    assert_eq!(code, Some(0), "SIGHUP does not stop the daemon:\n{log}");
    assert_eq!(setup.state_json()["revision"], second.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_sigterm_converges_without_duplicates_and_is_ready_again() {
    let repo = Repo::new();
    let first = repo.commit(&users_yaml(&[ANA, BOB]), "add ana and bob");
    let setup = Setup::new(&repo, false).await;
    let guestops = setup.start();
    wait_converged(&setup, &guestops, 1).await;
    wait_for("bob registered", &guestops, || async {
        setup.registered(BOB.0).then_some(())
    })
    .await;
    let (code, log) = guestops.terminate().await;
    assert_eq!(code, Some(0), "SIGTERM is a clean stop:\n{log}");
    assert_eq!(setup.state_json()["revision"], first.as_str());
    assert_eq!(
        setup.notify.messages().last().map(String::as_str),
        Some("STOPPING=1")
    );

    // The second start reads the same state directory and finds everything in place.
    let guestops = setup.start();
    wait_for("READY=1 of the second start", &guestops, || async {
        (setup.ready_count() >= 2).then_some(())
    })
    .await;
    wait_for("a reconcile of the restarted daemon", &guestops, || async {
        reconciles(&guestops, "success").await.filter(|n| *n >= 1.0)
    })
    .await;
    for email in [ANA.0, BOB.0] {
        assert_eq!(setup.invitations(email), 1, "{email} invited once");
        assert_eq!(setup.registrations(email), 1, "{email} registered once");
    }
    let (code, log) = guestops.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    let messages = setup.notify.messages();
    assert_eq!(
        messages.iter().filter(|m| m.as_str() == "READY=1").count(),
        2,
        "READY=1 once per start: {messages:?}"
    );
    assert_eq!(messages.last().map(String::as_str), Some("STOPPING=1"));
}

/// A user outside `policy.allowedDomains` is refused alone: the daemon invites and registers
/// the others, counts the refused changes, stays ready (a successful reconcile, not a failure
/// or an invalid revision), says at its default log level what it changed and how long the
/// reconcile took, and counts the invitation it just sent as pending at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disallowed_user_is_refused_alone_and_the_daemon_says_what_it_did() {
    const EVE: (&str, &str) = ("eve@elsewhere.example", "Eve");
    let repo = Repo::new();
    repo.commit(&users_yaml(&[ANA, EVE]), "add ana and eve");
    let setup = Setup::new(&repo, false).await;
    let text = std::fs::read_to_string(&setup.config).expect("config");
    assert!(text.contains("allowedDomains: []"), "{text}");
    std::fs::write(
        &setup.config,
        text.replace("allowedDomains: []", "allowedDomains: [partner.example]"),
    )
    .expect("config");
    let guestops = Guestops::spawn(
        &setup.config,
        setup.listen,
        &[],
        &[
            (CREDENTIALS_DIRECTORY, setup.credentials.as_os_str()),
            ("RUST_LOG", "".as_ref()),
        ],
    );
    wait_for("ana invited and registered", &guestops, || async {
        (setup.invitations(ANA.0) == 1 && setup.registered(ANA.0)).then_some(())
    })
    .await;
    let metrics = wait_for("a successful reconcile counted", &guestops, || async {
        let text = reqwest::get(guestops.url("/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let samples = parse_exposition(&text);
        sample(&samples, "guestops_reconciles_total{result=\"success\"}")
            .filter(|n| *n >= 1.0)
            .map(|_| samples)
    })
    .await;
    assert_eq!(setup.invitations(EVE.0), 0, "{}", guestops.log());
    assert!(!setup.registered(EVE.0));
    assert_eq!(
        sample(&metrics, "guestops_refused_changes"),
        Some(2.0),
        "eve's invite and register are refused"
    );
    assert_eq!(
        sample(&metrics, "guestops_pending_invitations"),
        Some(1.0),
        "ana's invitation is pending right after the reconcile that sent it"
    );
    assert_eq!(
        sample(&metrics, "guestops_reconciles_total{result=\"refused\"}"),
        Some(0.0)
    );
    let ready = reqwest::get(guestops.url("/readyz")).await.expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    let body: serde_json::Value = ready.json().await.expect("readyz JSON");
    assert!(
        body["refused"]
            .as_str()
            .is_some_and(|r| r.contains(EVE.0) && r.contains("allowedDomains")),
        "{body}"
    );
    let (code, log) = guestops.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains(&format!("invite {}: done", ANA.0))
            && log.contains(&format!("register {}: done", ANA.0)),
        "each applied change is logged at the default level:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("reconciled:") && l.contains("duration_ms=")),
        "the reconcile line has its duration:\n{log}"
    );
}
