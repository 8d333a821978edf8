//! Running under systemd: the notification protocol, the unit's sandbox score, and the deploy
//! files (unit + example config) agreeing with each other and with the config loader.

use std::io::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use guestops::config::Config;
use guestops::service::systemd::{NOTIFY_SOCKET, Notifier, WATCHDOG_PID, WATCHDOG_USEC};
use secrecy::ExposeSecret;

/// The highest `systemd-analyze security` exposure the unit may have.
const MAX_EXPOSURE: f64 = 2.0;

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn unit_text() -> String {
    std::fs::read_to_string(repo_path("deploy/systemd/guestops.service")).expect("unit file")
}

/// The values of `key=` in the unit, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|line| line.trim().strip_prefix(prefix.as_str()))
        .map(str::to_owned)
        .collect()
}

fn env_of(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }
}

fn note(message: &str) {
    // Tests may not use eprintln! (clippy.toml); a skipped check still says so.
    let _ = writeln!(std::io::stderr(), "note: {message}");
}

fn receive(listener: &UnixDatagram) -> String {
    let mut buffer = [0_u8; 4096];
    let n = listener
        .recv(&mut buffer)
        .expect("a notification datagram (no datagram within the hang guard)");
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

#[test]
fn notifications_reach_a_path_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&path).expect("bind fake NOTIFY_SOCKET");
    // Only a guard against hanging forever if nothing is sent; not a timing assertion.
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");

    let env = env_of(vec![
        (NOTIFY_SOCKET, path.display().to_string()),
        (WATCHDOG_USEC, "60000000".to_owned()),
        (WATCHDOG_PID, "4242".to_owned()),
    ]);
    let notifier = Notifier::from_env_with(&env, 4242).expect("valid environment");
    assert!(notifier.is_enabled());
    assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(60)));
    assert_eq!(
        notifier.watchdog_ping_interval(),
        Some(Duration::from_secs(30))
    );

    notifier.ready().expect("ready");
    assert_eq!(receive(&listener), "READY=1");
    notifier
        .status("reconciled abc123: 2 changes\ninjected=1")
        .expect("status");
    assert_eq!(
        receive(&listener),
        "STATUS=reconciled abc123: 2 changes injected=1",
        "a status is one line: no assignment can be smuggled in"
    );
    notifier.watchdog().expect("watchdog");
    assert_eq!(receive(&listener), "WATCHDOG=1");
    notifier.reloading().expect("reloading");
    assert_eq!(receive(&listener), "RELOADING=1");
    notifier.stopping().expect("stopping");
    assert_eq!(receive(&listener), "STOPPING=1");
}

#[cfg(target_os = "linux")]
#[test]
fn notifications_reach_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;

    let name = format!(
        "guestops-test-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    );
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let listener = UnixDatagram::bind_addr(&addr).expect("bind abstract socket");
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");

    let env = env_of(vec![(NOTIFY_SOCKET, format!("@{name}"))]);
    let notifier = Notifier::from_env_with(&env, 1).expect("valid environment");
    notifier.ready().expect("ready");
    assert_eq!(receive(&listener), "READY=1");
    assert_eq!(notifier.watchdog_interval(), None, "no WATCHDOG_USEC");
}

#[test]
fn a_vanished_socket_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gone.sock");
    let env = env_of(vec![(NOTIFY_SOCKET, path.display().to_string())]);
    let notifier = Notifier::from_env_with(&env, 1).expect("valid environment");
    let error = notifier.ready().expect_err("nobody listens");
    let message = error.to_string();
    assert!(message.contains("gone.sock"), "{message}");
    assert!(message.contains("READY=1"), "{message}");
}

#[test]
fn unit_passes_systemd_analyze_security() {
    let unit = repo_path("deploy/systemd/guestops.service");
    let output = match Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
    {
        Ok(output) => output,
        Err(error) => {
            note(&format!(
                "skipped: systemd-analyze is not available ({error}); install systemd to check the unit's exposure"
            ));
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("unrecognized option") || stderr.contains("Unknown option") {
        note("skipped: this systemd-analyze has no --offline (systemd < 250)");
        return;
    }
    let exposure = stdout
        .lines()
        .find_map(|line| line.split("Overall exposure level for").nth(1))
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse::<f64>().ok())
        .unwrap_or_else(|| {
            panic!("no overall exposure in systemd-analyze output:\n{stdout}\n{stderr}")
        });
    assert!(
        exposure <= MAX_EXPOSURE,
        "the unit's exposure is {exposure}, over {MAX_EXPOSURE}:\n{stdout}"
    );
    // It must still reach Graph and the portal, and notify systemd.
    assert!(
        stdout.contains("Service has access to the host's network"),
        "{stdout}"
    );
}

#[test]
fn unit_is_a_notify_service_with_watchdog_and_credentials() {
    let unit = unit_text();
    assert_eq!(unit_values(&unit, "Type"), ["notify"]);
    assert_eq!(
        unit_values(&unit, "ExecStart"),
        ["/usr/local/bin/guestops run --config /etc/guestops/config.yaml"]
    );
    assert_eq!(
        unit_values(&unit, "ExecReload"),
        ["/bin/kill -HUP $MAINPID"]
    );
    assert_eq!(unit_values(&unit, "Restart"), ["on-failure"]);
    assert_eq!(unit_values(&unit, "DynamicUser"), ["yes"]);
    assert_eq!(unit_values(&unit, "StateDirectory"), ["guestops"]);
    assert_eq!(unit_values(&unit, "WatchdogSec").len(), 1);
    let families = unit_values(&unit, "RestrictAddressFamilies").join(" ");
    for family in ["AF_INET", "AF_INET6", "AF_UNIX"] {
        assert!(families.split(' ').any(|f| f == family), "{families}");
    }
    let credentials: Vec<String> = unit_values(&unit, "LoadCredential")
        .iter()
        .filter_map(|v| v.split(':').next().map(str::to_owned))
        .collect();
    assert_eq!(
        credentials,
        ["graph-secret", "portal-api-key", "webhook-secret"]
    );
}

#[test]
fn example_config_loads_and_fits_the_unit() {
    let path = repo_path("deploy/config.example.yaml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    // StateDirectory=guestops is /var/lib/guestops: the only writable path in the sandbox.
    assert_eq!(config.state.dir, Path::new("/var/lib/guestops"));
    assert!(config.server.listen.ip().is_loopback());
    assert_eq!(config.server.listen.port(), 9464);

    // The secrets come from the credentials the unit loads, with no file key in the config.
    let credentials = tempfile::tempdir().expect("temp dir");
    for (name, value) in [
        ("graph-secret", "graph-value\n"),
        ("portal-api-key", "portal-value\n"),
        ("webhook-secret", "webhook-value\n"),
    ] {
        std::fs::write(credentials.path().join(name), value).expect("write credential");
    }
    let env = env_of(vec![(
        guestops::config::CREDENTIALS_DIRECTORY,
        credentials.path().display().to_string(),
    )]);
    let secrets = config
        .load_secrets_with_env(&env)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        graph_secret(&secrets).secret().expose_secret(),
        "graph-value"
    );
    assert_eq!(secrets.portal_api_key.expose_secret(), "portal-value");
    assert_eq!(
        secrets
            .webhook_secret
            .as_ref()
            .map(|s| s.expose_secret().to_owned()),
        Some("webhook-value".to_owned())
    );
}

/// The client secret of `secrets` (the config's kind is `clientSecret`).
fn graph_secret(secrets: &guestops::config::Secrets) -> &guestops::remote::Credential {
    match &secrets.graph_credential {
        guestops::remote::graph::CredentialSettings::ClientSecret { secret } => secret,
        other => panic!("expected a client secret, got {}", other.kind()),
    }
}

/// Issue 10: deploy/README.md says secrets never go through the environment; its commands
/// must not export one either. The pre-flight runs `guestops doctor` with the unit's
/// credentials, and its `LoadCredential=` lines are the unit's.
#[test]
fn the_deploy_guide_never_puts_a_secret_in_the_environment() {
    let guide = std::fs::read_to_string(repo_path("deploy/README.md")).expect("deploy/README.md");
    for variable in [
        "GUESTOPS_TENANT_CLIENT_SECRET",
        "GUESTOPS_PORTAL_API_KEY",
        "GUESTOPS_SERVER_WEBHOOK_SECRET",
    ] {
        assert!(
            !guide.contains(&format!("{variable}=")),
            "deploy/README.md sets {variable}"
        );
    }
    assert!(
        !guide.contains("$(cat /etc/guestops/"),
        "deploy/README.md reads a secret file into a shell value"
    );
    assert!(
        guide.contains("preflight doctor"),
        "the pre-flight runs doctor"
    );
    let unit = unit_text();
    for credential in ["graph-secret", "portal-api-key"] {
        let line = unit_values(&unit, "LoadCredential")
            .into_iter()
            .find(|v| v.starts_with(&format!("{credential}:")))
            .unwrap_or_else(|| panic!("the unit loads {credential}"));
        assert!(
            guide.contains(&format!("-p LoadCredential={line}")),
            "the pre-flight loads {credential} as the unit does ({line})"
        );
    }
}
