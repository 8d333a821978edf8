//! Harness of the end-to-end tests: a simulator (Graph + token endpoint + portal) served on a
//! loopback port by a runtime the test keeps alive, a temporary directory with the host config,
//! the two secret files, `users.yaml` and the state directory, and the real `guestops` binary
//! run against them with a clean environment.

#![allow(dead_code)] // each test binary uses a part of the harness

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use guestops::config::{Config, SecretSource};
use guestops::sim::{Counters, Sim, SimState, seed};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// The `guestops` binary built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_guestops"))
}

/// A `guestops` command with nothing of the caller's environment but `PATH` and `HOME`
/// (no `GUESTOPS_*`, `RUST_LOG` or `CREDENTIALS_DIRECTORY` leaks into the run).
pub fn guestops(home: &Path) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(binary());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home);
    cmd
}

/// The same clean environment on a `std::process::Command`, for runs that are killed.
pub fn guestops_std(home: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(binary());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home);
    cmd
}

/// One simulator and one host configuration, alive as long as the value.
pub struct Harness {
    /// Serves the simulator; dropped (and stopped) with the harness.
    rt: tokio::runtime::Runtime,
    shutdown: CancellationToken,
    /// The emulated tenant and portal, for seeding and inspection.
    pub sim: Sim,
    /// Base URL of the simulator.
    pub base: url::Url,
    /// Temporary directory holding config, secrets, users.yaml and state.
    pub dir: TempDir,
    /// The configuration written by [`Harness::write_config`]; tests adjust it first.
    pub config: Config,
}

impl Harness {
    /// Starts an empty simulator and writes a config pointing at it, with the secrets in files.
    pub fn new() -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime starts");
        let sim = Sim::new();
        let shutdown = CancellationToken::new();
        let base = rt
            .block_on(sim.spawn(SocketAddr::from(([127, 0, 0, 1], 0)), shutdown.clone()))
            .expect("the simulator listens on a loopback port");
        let dir = tempfile::Builder::new()
            .prefix("guestops-e2e-")
            .tempdir()
            .expect("a temporary directory");
        let graph_secret = dir.path().join("graph-secret");
        let api_key = dir.path().join("portal-api-key");
        // Written as `echo` would: the trailing newline is trimmed by guestops.
        std::fs::write(&graph_secret, format!("{}\n", seed::CLIENT_SECRET)).expect("write secret");
        std::fs::write(&api_key, format!("{}\n", seed::API_KEY)).expect("write API key");
        let mut config = Config::for_simulator(&base, &dir.path().join("state"));
        config.tenant.client_secret = SecretSource::File(graph_secret);
        config.portal.api_key = SecretSource::File(api_key);
        let harness = Harness {
            rt,
            shutdown,
            sim,
            base,
            dir,
            config,
        };
        harness.write_config();
        harness
    }

    /// Path of the host configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// Path of users.yaml.
    pub fn users_path(&self) -> PathBuf {
        self.dir.path().join("users.yaml")
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.config.state.dir.clone()
    }

    /// Writes [`Harness::config`] as the config file (after a test changed it).
    pub fn write_config(&self) {
        std::fs::write(self.config_path(), self.config.to_yaml()).expect("write config.yaml");
    }

    /// Changes the configuration with `f`, then writes it.
    pub fn configure(&mut self, f: impl FnOnce(&mut Config)) {
        f(&mut self.config);
        self.write_config();
    }

    /// Writes users.yaml verbatim.
    pub fn write_users_yaml(&self, yaml: &str) {
        std::fs::write(self.users_path(), yaml).expect("write users.yaml");
    }

    /// Writes users.yaml listing `users` as `(email, name, role)`.
    pub fn write_users(&self, users: &[(&str, &str, &str)]) {
        self.write_users_yaml(&users_yaml(users));
    }

    /// A `guestops` command in the clean environment (no arguments yet).
    pub fn cmd(&self) -> assert_cmd::Command {
        guestops(self.dir.path())
    }

    /// Runs `guestops <sub> --config C --desired users.yaml <extra...>`.
    pub fn run(&self, sub: &str, extra: &[&str]) -> Run {
        let output = self
            .cmd()
            .arg(sub)
            .arg("--config")
            .arg(self.config_path())
            .arg("--desired")
            .arg(self.users_path())
            .args(extra)
            .output()
            .expect("guestops runs");
        Run::from(output)
    }

    /// `guestops apply`.
    pub fn apply(&self, extra: &[&str]) -> Run {
        self.run("apply", extra)
    }

    /// `guestops plan`.
    pub fn plan(&self, extra: &[&str]) -> Run {
        self.run("plan", extra)
    }

    /// Locks the simulator state (never held across a run of the binary).
    pub fn state(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.sim.state()
    }

    /// What the simulator served so far.
    pub fn counters(&self) -> Counters {
        self.sim.state().counters.clone()
    }

    /// Successful remote writes so far (invitations, portal creates/updates/deletes, Graph
    /// PATCH/DELETE).
    pub fn writes(&self) -> u64 {
        self.sim.state().counters.writes
    }

    /// Every request that reached the simulator (token, Graph, portal), injected faults included.
    pub fn requests(&self) -> u64 {
        let c = self.counters();
        c.token_requests + c.graph_requests + c.portal_requests
    }

    /// `POST /invitations` naming `email` (any letter case).
    pub fn invitations(&self, email: &str) -> u32 {
        self.sim.state().graph.invitation_count(email)
    }

    /// `POST /api/user` that created `email` (any letter case).
    pub fn creates(&self, email: &str) -> u32 {
        self.sim.state().portal.creates_for(email)
    }

    /// The stored portal user with `email` (any letter case).
    pub fn portal_user(&self, email: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
        self.sim.state().portal.find(email).cloned()
    }

    /// The portal role code stored for `email`.
    pub fn portal_role(&self, email: &str) -> Option<i64> {
        self.portal_user(email)
            .and_then(|u| u.get("role").and_then(serde_json::Value::as_i64))
    }

    /// Runs a future on the harness runtime (e.g. a client call against the simulator).
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.rt.block_on(future)
    }

    /// Asserts that every listed (new) user is converged: invited exactly once, registered
    /// exactly once, and stored in the portal with its role.
    pub fn assert_converged_new(&self, users: &[(&str, &str, &str)]) {
        for (email, _, role) in users {
            assert_eq!(self.invitations(email), 1, "{email} must be invited once");
            assert_eq!(self.creates(email), 1, "{email} must be registered once");
            assert_eq!(
                self.portal_role(email),
                Some(role_code(role)),
                "{email} must be stored in the portal as {role}"
            );
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The documented portal code of a role name.
pub fn role_code(role: &str) -> i64 {
    match role {
        "administrator" => 1,
        "contributor" => 2,
        "viewer" => 3,
        "workspace-contributor" => 4,
        other => panic!("unknown role {other} in a test"),
    }
}

/// A users.yaml listing `users` as `(email, name, role)`.
pub fn users_yaml(users: &[(&str, &str, &str)]) -> String {
    let mut yaml = String::from(
        "apiVersion: guestops/v1\ndefaults:\n  invitation:\n    sendEmail: false\nusers:\n",
    );
    if users.is_empty() {
        return yaml.replace("users:\n", "users: []\n");
    }
    for (email, name, role) in users {
        yaml.push_str(&format!(
            "  - email: \"{email}\"\n    name: \"{name}\"\n    role: {role}\n"
        ));
    }
    yaml
}

/// The outcome of one run of the binary, as text.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts the exit code, showing both streams when it differs; returns `self`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit code\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout,
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked"),
            "guestops panicked:\n{}",
            self.stderr
        );
        self
    }
}
