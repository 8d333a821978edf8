//! libgit2's network transports for the git source, without OpenSSL or libssh2.
//!
//! libgit2 is built with neither its HTTPS (OpenSSL) nor its SSH (libssh2) backend, so that a
//! build needs no system library. These two custom *smart subtransports* take their place;
//! libgit2 still does all of the git protocol (ref advertisement, negotiation, packfile):
//!
//! - `http://` and `https://`: git's smart HTTP protocol over `reqwest` with rustls, the HTTP
//!   stack the rest of guestops uses (the system's CA certificates, `HTTPS_PROXY`/`NO_PROXY`);
//! - `ssh://`, `git+ssh://`, `ssh+git://` and scp-like `user@host:path`: the system's OpenSSH
//!   client (`ssh`, or the program in `GIT_SSH`), as git itself does, so host keys are checked
//!   against the `known_hosts` files of the user running guestops.
//!
//! Credentials come from the fetch that uses the transport ([`with_fetch`]): libgit2 calls a
//! transport on the thread that fetches, so a thread-local hands them over and brings back
//! whether the server refused authentication.

use std::cell::RefCell;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};
use git2::{Error, ErrorClass, ErrorCode};
use secrecy::{ExposeSecret, SecretString};

use super::SourceError;
use crate::error::chain;

/// User name sent with an HTTPS token (GitHub's convention; others ignore the user name).
pub(super) const TOKEN_USER: &str = "x-access-token";

/// User name for SSH when the URL names none (what every git host expects).
const SSH_DEFAULT_USER: &str = "git";

/// How long connecting may take, and how long the server may stay silent mid-transfer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The `User-Agent` of git requests: hosts such as GitHub serve the smart protocol only to a
/// user agent starting with `git/`.
const USER_AGENT: &str = concat!("git/2.0 (guestops/", env!("CARGO_PKG_VERSION"), ")");

/// Most bytes of `ssh`'s standard error kept for an error message.
const STDERR_LIMIT: usize = 16 * 1024;

/// What one fetch gives the transports, and what they report back.
#[derive(Debug, Default)]
pub(super) struct FetchContext {
    /// `source.credentialFile`: an HTTPS token or an SSH private key.
    pub credential_file: Option<PathBuf>,
    /// The SSH client to run (`ssh` unless `GIT_SSH` names another).
    pub ssh_program: OsString,
    /// The server refused authentication, or asked for credentials and none were configured.
    pub auth_refused: bool,
    /// The credential file could not be read.
    pub credential_error: Option<SourceError>,
}

thread_local! {
    static CONTEXT: RefCell<Option<FetchContext>> = const { RefCell::new(None) };
}

/// The SSH client: `GIT_SSH` when set (a program, as for git), else `ssh` from `PATH`.
pub(super) fn ssh_program() -> OsString {
    std::env::var_os("GIT_SSH")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "ssh".into())
}

/// Runs `fetch` (a libgit2 fetch on this thread) with `context` available to the transports,
/// and returns its result with the context as the transports left it.
pub(super) fn with_fetch<R>(context: FetchContext, fetch: impl FnOnce() -> R) -> (R, FetchContext) {
    CONTEXT.with(|c| c.replace(Some(context)));
    let result = fetch();
    let context = CONTEXT.with(|c| c.take()).unwrap_or_default();
    (result, context)
}

/// Runs `f` on the current fetch's context (a default one outside [`with_fetch`]).
fn context<R>(f: impl FnOnce(&mut FetchContext) -> R) -> R {
    CONTEXT.with(|c| {
        let mut slot = c.borrow_mut();
        let ctx = slot.get_or_insert_with(|| FetchContext {
            ssh_program: ssh_program(),
            ..FetchContext::default()
        });
        f(ctx)
    })
}

/// Registers the transports with libgit2.
///
/// # Safety
/// Must be called once, before any libgit2 remote operation (libgit2's transport registry is
/// not synchronised).
pub(super) unsafe fn register() -> Result<(), Error> {
    // libgit2 takes a scheme and matches URLs starting with `scheme://`.
    for scheme in ["http", "https"] {
        // SAFETY: the caller guarantees that no transport is being created meanwhile.
        unsafe {
            git2::transport::register(scheme, |remote| {
                Transport::smart(remote, true, HttpTransport::default())
            })?;
        }
    }
    // libgit2 hands scp-like URLs (`git@host:org/repo.git`) to the `ssh://` transport too.
    for scheme in ["ssh", "ssh+git", "git+ssh"] {
        // SAFETY: as above.
        unsafe {
            git2::transport::register(scheme, |remote| {
                Transport::smart(remote, false, SshTransport)
            })?;
        }
    }
    Ok(())
}

fn net_error(message: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::GenericError,
        ErrorClass::Net,
        message.to_string(),
    )
}

fn auth_error(message: &str) -> Error {
    context(|ctx| ctx.auth_refused = true);
    Error::new(ErrorCode::Auth, ErrorClass::Http, message)
}

fn unsupported(service: Service) -> Error {
    net_error(format!(
        "{service:?}: guestops only fetches; pushing is not supported"
    ))
}

// --- smart HTTP -------------------------------------------------------------------------------

/// Basic credentials for the repository's host.
#[derive(Clone)]
struct BasicAuth {
    user: String,
    password: Option<SecretString>,
}

/// What the ref advertisement established for the requests that follow it.
struct HttpSession {
    client: reqwest::blocking::Client,
    /// The repository URL after redirects, without credentials and without a trailing `/`.
    base: url::Url,
    auth: Option<BasicAuth>,
}

/// Smart HTTP (stateless: one request per libgit2 action).
#[derive(Default)]
struct HttpTransport {
    session: Mutex<Option<Arc<HttpSession>>>,
}

impl SmartSubtransport for HttpTransport {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, Error> {
        match action {
            Service::UploadPackLs => {
                let (session, response) = advertise(url)?;
                *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(session));
                Ok(Box::new(HttpStream::Response(response)))
            }
            Service::UploadPack => {
                let session = self
                    .session
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .ok_or_else(|| {
                        net_error("upload-pack requested before the ref advertisement")
                    })?;
                Ok(Box::new(HttpStream::Request {
                    session,
                    body: Vec::new(),
                }))
            }
            other => Err(unsupported(other)),
        }
    }

    fn close(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// `GET …/info/refs?service=git-upload-pack`, asking the credential file for a token when the
/// server answers 401 (as git does: nothing is sent to a server that asks for nothing).
fn advertise(url: &str) -> Result<(HttpSession, reqwest::blocking::Response), Error> {
    let mut base = url::Url::parse(url).map_err(|e| net_error(format!("invalid URL: {e}")))?;
    // Credentials written into the URL are used from the first request on, never shown.
    let mut auth = (!base.username().is_empty()).then(|| BasicAuth {
        user: percent_decode(base.username()),
        password: base
            .password()
            .map(|p| SecretString::from(percent_decode(p))),
    });
    let _ = base.set_username("");
    let _ = base.set_password(None);
    trim_trailing_slash(&mut base);

    let client = reqwest::blocking::ClientBuilder::from(
        reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let from_https = attempt.previous().iter().any(|u| u.scheme() == "https");
                if from_https && attempt.url().scheme() != "https" {
                    attempt.error("refusing a redirect from https to http")
                } else if attempt.previous().len() > 10 {
                    attempt.error("too many redirects")
                } else {
                    attempt.follow()
                }
            })),
    )
    // No bound on a whole transfer, only on silence (READ_TIMEOUT).
    .timeout(None)
    .build()
    .map_err(|e| net_error(chain(&e)))?;

    let mut info_refs = join(&base, "info/refs");
    info_refs.set_query(Some("service=git-upload-pack"));
    let mut tried_credential_file = false;
    loop {
        let mut request = client.get(info_refs.clone());
        if let Some(auth) = &auth {
            request = request.basic_auth(
                &auth.user,
                auth.password.as_ref().map(|p| p.expose_secret()),
            );
        }
        let response = request.send().map_err(|e| net_error(chain(&e)))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            let file = context(|ctx| ctx.credential_file.clone());
            match file {
                Some(file) if !tried_credential_file => {
                    tried_credential_file = true;
                    match read_token(&file) {
                        Ok(token) => {
                            auth = Some(BasicAuth {
                                user: TOKEN_USER.to_owned(),
                                password: Some(token),
                            });
                            continue;
                        }
                        Err(err) => {
                            context(|ctx| ctx.credential_error = Some(err));
                            return Err(auth_error("the credential file cannot be read"));
                        }
                    }
                }
                Some(_) => {
                    return Err(auth_error(
                        "the repository refused the configured credentials",
                    ));
                }
                None if auth.is_some() => {
                    return Err(auth_error(
                        "the repository refused the credentials in its URL",
                    ));
                }
                None => {
                    return Err(auth_error(
                        "the repository asks for credentials and none are configured",
                    ));
                }
            }
        }
        if status == reqwest::StatusCode::FORBIDDEN {
            return Err(auth_error("the repository refused access (HTTP 403)"));
        }
        check_response(&response, "application/x-git-upload-pack-advertisement")?;
        // Later requests go where the advertisement was finally served from; credentials
        // only to the origin they were configured for (reqwest drops them on such a redirect
        // too).
        let mut served = response.url().clone();
        served.set_query(None);
        if let Some(path) = served.path().strip_suffix("/info/refs").map(str::to_owned) {
            served.set_path(&path);
            if served.origin() != base.origin() {
                auth = None;
            }
            base = served;
        }
        return Ok((HttpSession { client, base, auth }, response));
    }
}

fn check_response(response: &reqwest::blocking::Response, content_type: &str) -> Result<(), Error> {
    let status = response.status();
    if !status.is_success() {
        return Err(net_error(format!(
            "{} answered HTTP {status}",
            response.url()
        )));
    }
    let got = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !got
        .split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(content_type))
    {
        return Err(net_error(format!(
            "{} is not a git smart HTTP server: content type `{got}`, expected `{content_type}`",
            response.url()
        )));
    }
    Ok(())
}

/// A stream of the HTTP transport: a request whose body libgit2 writes and whose response it
/// then reads, or a response only.
enum HttpStream {
    Request {
        session: Arc<HttpSession>,
        body: Vec<u8>,
    },
    Response(reqwest::blocking::Response),
}

impl Read for HttpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let HttpStream::Request { session, body } = self {
            let mut request = session
                .client
                .post(join(&session.base, "git-upload-pack"))
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-git-upload-pack-request",
                )
                .header(
                    reqwest::header::ACCEPT,
                    "application/x-git-upload-pack-result",
                )
                .body(std::mem::take(body));
            if let Some(auth) = &session.auth {
                request = request.basic_auth(
                    &auth.user,
                    auth.password.as_ref().map(|p| p.expose_secret()),
                );
            }
            let response = request.send().map_err(|e| io::Error::other(chain(&e)))?;
            if matches!(
                response.status(),
                reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN
            ) {
                context(|ctx| ctx.auth_refused = true);
            }
            check_response(&response, "application/x-git-upload-pack-result")
                .map_err(|e| io::Error::other(e.message().to_owned()))?;
            *self = HttpStream::Response(response);
        }
        match self {
            HttpStream::Response(response) => response.read(buf),
            HttpStream::Request { .. } => Ok(0),
        }
    }
}

impl Write for HttpStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            HttpStream::Request { body, .. } => {
                body.extend_from_slice(data);
                Ok(data.len())
            }
            _ => Err(io::Error::other(
                "git wrote to an HTTP response stream (a protocol error)",
            )),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `base` with `/segment` appended to its path.
fn join(base: &url::Url, segment: &str) -> url::Url {
    let mut url = base.clone();
    let path = format!("{}/{segment}", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

fn trim_trailing_slash(url: &mut url::Url) {
    let trimmed = url.path().trim_end_matches('/').to_owned();
    url.set_path(&trimmed);
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Reads an HTTPS token: the file's content without surrounding whitespace.
pub(super) fn read_token(file: &std::path::Path) -> Result<SecretString, SourceError> {
    let raw = std::fs::read_to_string(file).map_err(|source| SourceError::CredentialFile {
        path: file.to_path_buf(),
        source,
    })?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(SourceError::CredentialFile {
            path: file.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"),
        });
    }
    Ok(SecretString::from(token.to_owned()))
}

// --- SSH --------------------------------------------------------------------------------------

/// Where an SSH URL points.
#[derive(Debug, PartialEq, Eq)]
struct SshTarget {
    user: String,
    host: String,
    port: Option<u16>,
    /// The repository path as the server's `git-upload-pack` takes it.
    path: String,
}

/// Parses `ssh://[user@]host[:port]/path` (and `git+ssh://`, `ssh+git://`) or scp-like
/// `[user@]host:path`, as git does: `/~user/…` and `/~/…` become home-relative, and an scp-like
/// path is taken as written (relative to the login directory unless it starts with `/`).
fn parse_ssh_url(url: &str) -> Result<SshTarget, Error> {
    let invalid = |why: &str| net_error(format!("invalid SSH URL `{url}`: {why}"));
    let target = if url.contains("://") {
        let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| invalid("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let mut path = percent_decode(parsed.path());
        if path.starts_with("/~") {
            path.remove(0);
        }
        SshTarget {
            user: if parsed.username().is_empty() {
                SSH_DEFAULT_USER.to_owned()
            } else {
                percent_decode(parsed.username())
            },
            host,
            port: parsed.port(),
            path,
        }
    } else {
        let (user, rest) = match url.split_once('@') {
            Some((user, rest)) if !user.contains(':') => (user.to_owned(), rest),
            _ => (SSH_DEFAULT_USER.to_owned(), url),
        };
        let (host, path) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("unclosed `[`"))?;
            let path = after
                .strip_prefix(':')
                .ok_or_else(|| invalid("no `:` after the host"))?;
            (host.to_owned(), path.to_owned())
        } else {
            let (host, path) = rest
                .split_once(':')
                .ok_or_else(|| invalid("no `:` between host and path"))?;
            (host.to_owned(), path.to_owned())
        };
        SshTarget {
            user,
            host,
            port: None,
            path,
        }
    };
    if target.host.is_empty() {
        return Err(invalid("no host"));
    }
    // An argument starting with `-` would be an option of ssh.
    if target.host.starts_with('-') || target.user.starts_with('-') {
        return Err(invalid("a host or user may not start with `-`"));
    }
    if target.path.is_empty() || target.path == "/" {
        return Err(invalid("no repository path"));
    }
    Ok(target)
}

/// `s` quoted for the remote shell, as git quotes it (`'…'`, with `'` and `!` escaped).
fn shell_quote(s: &str) -> String {
    let mut quoted = String::with_capacity(s.len() + 2);
    quoted.push('\'');
    for c in s.chars() {
        if c == '\'' || c == '!' {
            quoted.push_str("'\\");
            quoted.push(c);
            quoted.push('\'');
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

/// The `ssh` command line that runs `git-upload-pack` for `target`.
fn ssh_command(program: &OsString, target: &SshTarget, key: Option<&PathBuf>) -> Command {
    let mut command = Command::new(program);
    // Never prompt (there is nobody to answer); give up on a dead connection.
    command.args(["-o", "BatchMode=yes"]);
    command
        .arg("-o")
        .arg(format!("ConnectTimeout={}", CONNECT_TIMEOUT.as_secs()));
    command.args([
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=8",
    ]);
    if let Some(key) = key {
        command.arg("-i").arg(key);
        command.args(["-o", "IdentitiesOnly=yes"]);
    }
    if let Some(port) = target.port {
        command.arg("-p").arg(port.to_string());
    }
    command.arg(format!("{}@{}", target.user, target.host));
    command.arg(format!("git-upload-pack {}", shell_quote(&target.path)));
    command
}

/// SSH (stateful: one `ssh` process for the advertisement and the negotiation that follows).
struct SshTransport;

impl SmartSubtransport for SshTransport {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, Error> {
        if action != Service::UploadPackLs {
            // libgit2 reuses the stream of the advertisement for UploadPack.
            return Err(unsupported(action));
        }
        let target = parse_ssh_url(url)?;
        let (program, key) = context(|ctx| (ctx.ssh_program.clone(), ctx.credential_file.clone()));
        if let Some(key) = &key
            && let Err(source) = std::fs::File::open(key)
        {
            context(|ctx| {
                ctx.credential_error = Some(SourceError::CredentialFile {
                    path: key.clone(),
                    source,
                });
            });
            return Err(auth_error("the credential file cannot be read"));
        }
        let mut child = ssh_command(&program, &target, key.as_ref())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                net_error(format!(
                    "cannot run the SSH client `{}`: {e} (install OpenSSH's client, or set GIT_SSH)",
                    program.to_string_lossy()
                ))
            })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr_text = Arc::new(Mutex::new(Vec::new()));
        let stderr_reader = child.stderr.take().map(|mut stderr| {
            let text = stderr_text.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut text = text.lock().unwrap_or_else(|e| e.into_inner());
                    let room = STDERR_LIMIT.saturating_sub(text.len());
                    text.extend_from_slice(&buf[..n.min(room)]);
                }
            })
        });
        Ok(Box::new(SshStream {
            child,
            stdin,
            stdout,
            stderr_text,
            stderr_reader,
        }))
    }

    fn close(&self) -> Result<(), Error> {
        Ok(())
    }
}

struct SshStream {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr_text: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl SshStream {
    /// Waits for `ssh` once it stopped talking; `None` when it exited successfully, else the
    /// error to report: its exit status and what it printed.
    fn finish(&mut self, err: Option<io::Error>) -> Option<io::Error> {
        self.stdin = None;
        let status = self.child.wait();
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        if err.is_none() && status.as_ref().is_ok_and(|s| s.success()) {
            return None;
        }
        let stderr =
            String::from_utf8_lossy(&self.stderr_text.lock().unwrap_or_else(|e| e.into_inner()))
                .trim()
                .to_owned();
        if stderr.contains("Permission denied") || stderr.contains("Host key verification failed") {
            context(|ctx| ctx.auth_refused = true);
        }
        let status = match status {
            Ok(status) => status.to_string(),
            Err(e) => e.to_string(),
        };
        let mut message = format!("ssh stopped ({status})");
        if let Some(err) = err {
            message.push_str(&format!(": {err}"));
        }
        if !stderr.is_empty() {
            message.push_str(": ");
            message.push_str(&stderr);
        }
        Some(io::Error::other(message))
    }
}

impl Read for SshStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(stdout) = self.stdout.as_mut() else {
            return Ok(0);
        };
        match stdout.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.stdout = None;
                match self.finish(None) {
                    Some(err) => Err(err),
                    None => Ok(0),
                }
            }
            Ok(n) => Ok(n),
            Err(err) => Err(self
                .finish(Some(err))
                .unwrap_or_else(|| io::Error::other("ssh failed"))),
        }
    }
}

impl Write for SshStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(io::Error::other("ssh's input is closed"));
        };
        match stdin.write(data) {
            Ok(n) => Ok(n),
            Err(err) => Err(self
                .finish(Some(err))
                .unwrap_or_else(|| io::Error::other("ssh failed"))),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.stdin.as_mut() {
            Some(stdin) => stdin.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for SshStream {
    fn drop(&mut self) {
        // The transfer is over (or abandoned): `git-upload-pack` has nothing more to say.
        self.stdin = None;
        self.stdout = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(user: &str, host: &str, port: Option<u16>, path: &str) -> SshTarget {
        SshTarget {
            user: user.into(),
            host: host.into(),
            port,
            path: path.into(),
        }
    }

    #[test]
    fn ssh_urls_are_parsed_as_git_parses_them() {
        let cases = [
            (
                "git@github.com:org/admins.git",
                target("git", "github.com", None, "org/admins.git"),
            ),
            (
                "deploy@git.example:/srv/git/admins.git",
                target("deploy", "git.example", None, "/srv/git/admins.git"),
            ),
            (
                "git.example:admins.git",
                target("git", "git.example", None, "admins.git"),
            ),
            (
                "ssh://git@git.example:2222/org/admins.git",
                target("git", "git.example", Some(2222), "/org/admins.git"),
            ),
            (
                "ssh://git.example/~/admins.git",
                target("git", "git.example", None, "~/admins.git"),
            ),
            (
                "git+ssh://bot@git.example/org/my%20repo.git",
                target("bot", "git.example", None, "/org/my repo.git"),
            ),
            (
                "ssh://git@[::1]:22/r.git",
                target("git", "::1", Some(22), "/r.git"),
            ),
        ];
        for (url, want) in cases {
            assert_eq!(parse_ssh_url(url).expect(url), want, "{url}");
        }
        for bad in [
            "ssh://-oProxyCommand=x/r.git",
            "-oProxyCommand=x:r.git",
            "host:",
            "ssh://host/",
        ] {
            assert!(parse_ssh_url(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn repository_paths_are_quoted_for_the_remote_shell() {
        assert_eq!(shell_quote("org/admins.git"), "'org/admins.git'");
        assert_eq!(shell_quote("it's!"), "'it'\\''s'\\!''");
    }

    #[test]
    fn the_ssh_command_never_prompts_and_uses_only_the_deploy_key() {
        let key = PathBuf::from("/run/credentials/guestops.service/git-key");
        let command = ssh_command(
            &"ssh".into(),
            &target("git", "git.example", Some(2222), "org/admins.git"),
            Some(&key),
        );
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-o BatchMode=yes"), "{joined}");
        assert!(
            joined.contains("-i /run/credentials/guestops.service/git-key -o IdentitiesOnly=yes"),
            "{joined}"
        );
        assert!(joined.contains("-p 2222"), "{joined}");
        assert_eq!(
            &args[args.len() - 2..],
            ["git@git.example", "git-upload-pack 'org/admins.git'"]
        );
    }
}
