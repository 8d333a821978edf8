//! Helpers of the integration tests: the Prometheus text checker, a scratch git repository,
//! and a raw loopback HTTP server that records what it receives.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use guestops::config::CREDENTIALS_DIRECTORY;
use guestops::service::systemd::{NOTIFY_SOCKET, WATCHDOG_USEC};

/// Checks the OpenMetrics / Prometheus text format line by line: `# HELP`/`# TYPE`/`# UNIT`
/// comments, samples `name{label="value",...} number`, and the final `# EOF`. Returns the
/// samples as (series, value).
pub fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "exposition must end with # EOF"
    );
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split(' ').next().unwrap_or_default();
            assert!(
                ["HELP", "TYPE", "UNIT"].contains(&kind),
                "unknown comment: {line}"
            );
            if kind == "TYPE" {
                let metric_type = comment.split(' ').nth(2).unwrap_or_default();
                assert!(
                    [
                        "counter",
                        "gauge",
                        "histogram",
                        "info",
                        "summary",
                        "unknown"
                    ]
                    .contains(&metric_type),
                    "bad type: {line}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample without value: {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(
                labels.starts_with('{') && labels.ends_with('}'),
                "bad labels in {line:?}"
            );
            let inner = &labels[1..labels.len() - 1];
            // label="value" pairs separated by commas; values may hold escaped quotes.
            let mut rest = inner;
            while !rest.is_empty() {
                let (label, after) = rest
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(
                    label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label name {label:?} in {line:?}"
                );
                let mut end = None;
                let mut escaped = false;
                for (i, c) in after.char_indices() {
                    match (escaped, c) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
                rest = &after[end + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.push((series.to_owned(), value));
    }
    samples
}

/// The value of one series, e.g. `guestops_reconciles_total{result="success"}`.
pub fn sample(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

/// A scratch git repository with a work tree, on branch `main`, driven by the `git` CLI.
pub struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    /// An empty repository.
    pub fn new() -> Repo {
        let dir = tempfile::tempdir().expect("temp dir for the repository");
        let repo = Repo { dir };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    /// The work tree.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `users.yaml` in the work tree.
    pub fn users_yaml(&self) -> PathBuf {
        self.path().join("users.yaml")
    }

    /// Writes `users.yaml` without committing it.
    pub fn edit(&self, content: &str) {
        std::fs::write(self.users_yaml(), content).expect("write users.yaml");
    }

    /// Writes and commits `users.yaml`; returns the new commit id.
    pub fn commit(&self, content: &str, message: &str) -> String {
        self.edit(content);
        self.git(&["add", "users.yaml"]);
        self.git(&[
            "-c",
            "user.name=Test Author",
            "-c",
            "user.email=author@example.com",
            "-c",
            "commit.gpgsign=false",
            "commit",
            "-q",
            "-m",
            message,
        ]);
        self.git(&["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// Runs `git` in the work tree; panics with its stderr when it fails.
    pub fn git(&self, args: &[&str]) -> String {
        let output = Command::new("git")
            .args(args)
            .current_dir(self.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", self.path())
            .output()
            .expect("the git CLI runs");
        assert!(
            output.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// A `users.yaml` listing `users` as `(email, name)`.
pub fn users_yaml(users: &[(&str, &str)]) -> String {
    let mut text = String::from("apiVersion: guestops/v1\nusers:\n");
    for (email, name) in users {
        text.push_str(&format!("  - email: {email}\n    name: {name}\n"));
    }
    text
}

/// A `users.yaml` that is invalid (the second address is not an email address), but that
/// would add `carl@partner.example` if it were applied.
pub fn invalid_users_yaml() -> String {
    "apiVersion: guestops/v1\nusers:\n  - email: ana@partner.example\n    name: Ana\n  - email: carl@partner.example\n    name: Carl\n  - email: not an email\n    name: Broken\n".to_owned()
}

/// A fake `NOTIFY_SOCKET`: a bound datagram socket read by a thread of its own, so that the
/// sender never blocks on a full queue (Linux queues only `max_dgram_qlen` datagrams, often 10).
pub struct NotifySocket {
    path: PathBuf,
    messages: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl NotifySocket {
    /// Binds `path` and starts reading.
    pub fn bind(path: &Path) -> NotifySocket {
        let socket =
            std::os::unix::net::UnixDatagram::bind(path).expect("bind the fake NOTIFY_SOCKET");
        socket
            .set_read_timeout(Some(std::time::Duration::from_millis(50)))
            .expect("read timeout");
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let messages = messages.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buffer = [0_u8; 4096];
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Ok(n) = socket.recv(&mut buffer) {
                        let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                        messages
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(text);
                    }
                }
            })
        };
        NotifySocket {
            path: path.to_path_buf(),
            messages,
            stop,
            reader: Some(reader),
        }
    }

    /// The socket path, for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every datagram received so far, in order.
    pub fn messages(&self) -> Vec<String> {
        self.messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// How long the tests wait for the daemon before giving up.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A running `guestops run`, killed when dropped.
pub struct Guestops {
    /// The process (taken by `terminate`).
    pub child: Option<Child>,
    /// Its stderr, a file.
    pub log: PathBuf,
    /// Its `server.listen`.
    pub listen: std::net::SocketAddr,
}

impl Guestops {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// Sends `signal` (e.g. `-HUP`) with `kill`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Waits for the process to exit on its own (at most [`PATIENCE`], then it is killed),
    /// then the exit code and the log.
    pub async fn terminate_when_done(self) -> (Option<i32>, String) {
        self.wait_for_exit("guestops did not exit").await
    }

    /// `kill -TERM`, then the exit code and the log.
    pub async fn terminate(self) -> (Option<i32>, String) {
        self.signal("-TERM");
        self.wait_for_exit("guestops did not exit after SIGTERM")
            .await
    }

    /// Waits at most [`PATIENCE`] for the process to exit (then kills it and panics with
    /// `stuck` and the log); the exit code and the log.
    async fn wait_for_exit(mut self, stuck: &str) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("running");
        let status = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => return Some(status),
                    Ok(None) if started.elapsed() < PATIENCE => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return None;
                    }
                }
            }
        })
        .await
        .expect("wait task");
        let log = self.log();
        let status = status.unwrap_or_else(|| panic!("{stuck}:\n{log}"));
        (status.code(), log)
    }
}

impl Drop for Guestops {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` until it returns `Some`, for at most [`PATIENCE`]; panics with `what` and
/// the daemon's log otherwise.
pub async fn wait_for<T, F, Fut>(what: &str, guestops: &Guestops, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "gave up waiting for {what}; guestops log:\n{}",
            guestops.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local address")
}

impl Guestops {
    /// Starts `guestops run --config config` plus `args`, logging to a file next to the
    /// config, with `RUST_LOG=guestops=info` (none at all when `envs` sets `RUST_LOG` to the
    /// empty string: the daemon's default level), no `GUESTOPS_*` variable and no systemd
    /// variable of the test process, then `envs`.
    pub fn spawn(
        config: &Path,
        listen: std::net::SocketAddr,
        args: &[&std::ffi::OsStr],
        envs: &[(&str, &std::ffi::OsStr)],
    ) -> Guestops {
        let dir = config.parent().expect("config in a directory");
        let log = dir.join(format!(
            "guestops-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_guestops"));
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "guestops=info")
            .env_remove(NOTIFY_SOCKET)
            .env_remove(WATCHDOG_USEC)
            .env_remove("WATCHDOG_PID")
            .env_remove(CREDENTIALS_DIRECTORY)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (name, _) in std::env::vars() {
            if name.starts_with("GUESTOPS_") {
                command.env_remove(name);
            }
        }
        for (name, value) in envs {
            if *name == "RUST_LOG" && value.is_empty() {
                command.env_remove(name);
            } else {
                command.env(name, value);
            }
        }
        let child = command.spawn().expect("guestops starts");
        Guestops {
            child: Some(child),
            log,
            listen,
        }
    }
}

/// A config file as an operator writes it for the simulator at `base`: secrets in files
/// under `dir/secrets`, state in `dir/state`.
pub fn write_sim_config(dir: &Path, base: &url::Url) -> PathBuf {
    use guestops::config::{Config, SecretSource};
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).expect("secrets dir");
    std::fs::write(
        secrets.join("graph-secret"),
        format!("{}\n", guestops::sim::graph::SIM_CLIENT_SECRET),
    )
    .expect("write the graph secret");
    std::fs::write(
        secrets.join("portal-api-key"),
        guestops::sim::portal::SIM_API_KEY,
    )
    .expect("write the portal key");
    let mut config = Config::for_simulator(base, &dir.join("state"));
    config.tenant.client_secret = SecretSource::File(secrets.join("graph-secret"));
    config.portal.api_key = SecretSource::File(secrets.join("portal-api-key"));
    let path = dir.join("config.yaml");
    std::fs::write(&path, config.to_yaml()).expect("write config.yaml");
    path
}

/// What a finished `guestops` command printed.
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs the `guestops` binary with `args`, without the test process's `GUESTOPS_*` secrets,
/// config path or log filter.
pub async fn guestops(args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_guestops"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("GUESTOPS_CONFIG")
        .env_remove("GUESTOPS_TENANT_CLIENT_SECRET")
        .env_remove("GUESTOPS_PORTAL_API_KEY")
        .output()
        .await
        .expect("run guestops");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A loopback HTTP/1.1 server that records every request head it receives and answers each
/// with `answer` (given the request head).
pub struct RawServer {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl RawServer {
    /// Starts serving on a fresh loopback port.
    pub async fn start(answer: impl Fn(&str) -> String + Send + Sync + 'static) -> RawServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        let answer = std::sync::Arc::new(answer);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    seen.lock().expect("lock").push(head.clone());
                    let _ = stream.write_all(answer(&head).as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        RawServer {
            addr,
            heads,
            _task: task,
        }
    }

    /// Every request head received so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("lock").clone()
    }
}

/// `tests/fixtures/signing/` (see its `make.sh`): commits signed with throw-away keys, their
/// `allowed_signers` file and OpenPGP keyring.
pub fn signing_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/signing")
        .join(name)
}

/// Writes the raw commit object `tests/fixtures/signing/<name>.commit` (with the tree of that
/// folder's `users.yaml` it was made on) into the repository at `repo` and points
/// `refs/heads/<branch>` at it; returns the commit id.
pub fn plant_fixture_commit(repo: &Path, branch: &str, name: &str) -> String {
    plant_commit_bytes(
        repo,
        branch,
        &std::fs::read(signing_fixture(&format!("{name}.commit"))).expect("fixture commit"),
    )
}

/// [`plant_fixture_commit`] with the raw commit bytes given (e.g. a tampered fixture).
pub fn plant_commit_bytes(repo: &Path, branch: &str, raw: &[u8]) -> String {
    let repo = git2::Repository::open(repo).expect("open the repository");
    let users = std::fs::read(signing_fixture("users.yaml")).expect("fixture users.yaml");
    let blob = repo.blob(&users).expect("blob");
    let mut tree = repo.treebuilder(None).expect("treebuilder");
    tree.insert("users.yaml", blob, 0o100_644)
        .expect("tree entry");
    let tree = tree.write().expect("tree");
    let oid = repo
        .odb()
        .expect("odb")
        .write(git2::ObjectType::Commit, raw)
        .expect("write the commit object");
    let commit = repo.find_commit(oid).expect("a commit");
    assert_eq!(
        commit.tree_id(),
        tree,
        "the fixture commit is of users.yaml's tree"
    );
    repo.reference(&format!("refs/heads/{branch}"), oid, true, "fixture")
        .expect("point the branch");
    oid.to_string()
}
