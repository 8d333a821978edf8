//! The daemon's control channel (design §9, issue 10): a Unix socket in the state folder,
//! `state.dir/control.sock`, through which `guestops suspend`, `resume`, `reconcile` and
//! `state forget` reach a running daemon, so that the daemon — the holder of the instance
//! lock — makes every change of its state itself (one writer; no file left owned by another
//! user under systemd's `DynamicUser`).
//!
//! - The socket is created by the lock holder only ([`bind`] takes the locked
//!   [`StateStore`]), mode `0600` in the `0700` state folder: the daemon's user and root
//!   reach it, nobody else; it is never on the network. A stale socket (a daemon killed
//!   with `SIGKILL`) is replaced at start; [`SocketGuard`] removes it on a clean exit.
//! - Protocol: one connection per request; the client writes one JSON [`Request`] line, the
//!   daemon answers one JSON [`Response`] line and closes. A request is at most
//!   [`MAX_REQUEST`] bytes, an answer (a reconcile's failures included) at most
//!   [`MAX_RESPONSE`]. The daemon handles requests between reconciles, in its loop: a request sent
//!   during a reconcile is answered after it; `reconcile` is answered when the reconcile it
//!   asked for (never an earlier one) has finished.
//! - The server only parses and forwards: each [`ControlRequest`] goes to the daemon loop
//!   through a channel with a one-shot reply, the peer's uid (from `SO_PEERCRED`) attached.
//!
//! The client half, [`request`], tells "no daemon" ([`ClientError::NoDaemon`]: no socket, or
//! nobody listening) from other failures.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::reconcile::plan::owned::Suspension;
use crate::reconcile::state::StateStore;

/// File name of the control socket inside the state directory.
pub const SOCKET_FILE: &str = "control.sock";

/// The longest request line the daemon reads, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The longest answer line a client reads, in bytes (a reconcile with thousands of failed
/// changes lists each).
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// What a client asks the daemon (one JSON line, `{"command": "…", …}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// Is a daemon there? Answered at once with its pid, revision and suspension.
    Ping,
    /// Stop reconciling (`guestops suspend`); recorded in `state.json`.
    Suspend {
        /// Why (`--reason`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The user name the command runs as.
        by: String,
    },
    /// Reconcile again (`guestops resume`); reconciles at once.
    Resume {
        /// The user name the command runs as.
        by: String,
    },
    /// Reconcile now and answer with its outcome (`guestops reconcile`).
    Reconcile,
    /// Drop ownership of one user no longer in `users.yaml` (`guestops state forget`).
    Forget {
        /// The address.
        email: String,
        /// The user name the command runs as.
        by: String,
    },
}

impl Request {
    /// The command's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Suspend { .. } => "suspend",
            Request::Resume { .. } => "resume",
            Request::Reconcile => "reconcile",
            Request::Forget { .. } => "forget",
        }
    }
}

/// How a request ended; the client's exit code follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    /// Done (a reconcile: every change done, or nothing to do). Exit 0.
    Ok,
    /// A reconcile with a failed change, or a failed reconcile. Exit 1.
    Failed,
    /// A reconcile refused by policy (the refused changes were not made). Exit 3.
    Refused,
    /// Not done because the daemon is suspended (`reconcile`). Exit 1.
    Suspended,
    /// Not done: the request is refused (`forget` of a user still in `users.yaml`, or of a
    /// user guestops does not know). Exit 1.
    Rejected,
    /// The daemon could not do it (the state could not be saved, a malformed request, the
    /// daemon is stopping). Exit 1.
    Error,
}

/// What a reconcile asked for over the socket did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileReport {
    /// The revision reconciled (commit id or file hash).
    pub revision: String,
    /// The summary line, as in the daemon's log.
    pub summary: String,
    /// One line per failed change (`action email: why`), or the reason the reconcile failed.
    #[serde(default)]
    pub failures: Vec<String>,
    /// What policy refused.
    #[serde(default)]
    pub refusals: Vec<String>,
}

/// The daemon's answer (one JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// How it ended.
    pub answer: Answer,
    /// What to tell the person (one or a few sentences).
    pub message: String,
    /// The suspension in force after the request, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<Suspension>,
    /// The reconcile's outcome (`reconcile` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<ReconcileReport>,
}

impl Response {
    /// An answer with `message` and nothing else.
    pub fn new(answer: Answer, message: impl Into<String>) -> Response {
        Response {
            answer,
            message: message.into(),
            suspended: None,
            reconcile: None,
        }
    }
}

/// A request on its way from the socket to the daemon loop.
#[derive(Debug)]
pub struct ControlRequest {
    /// What is asked.
    pub request: Request,
    /// The peer's uid (`SO_PEERCRED`), when the kernel told.
    pub peer_uid: Option<u32>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Response>,
}

impl ControlRequest {
    /// Who asked: `by` as the client named itself, with the uid the socket saw.
    pub fn who(&self, by: &str) -> String {
        match self.peer_uid {
            // A client that knows no user name names itself by its uid already.
            Some(uid) if by != format!("uid {uid}") => format!("{by} (uid {uid})"),
            _ => by.to_owned(),
        }
    }
}

/// The control socket's path in the state directory `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_FILE)
}

/// Removes the socket file when dropped (a clean exit).
#[derive(Debug)]
pub struct SocketGuard {
    path: PathBuf,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Creates `state.dir/control.sock` (mode `0600`), replacing a stale one: only the holder of
/// the instance lock (`store`) may, so a socket found there belongs to a daemon that is gone.
pub fn bind(store: &StateStore) -> std::io::Result<(UnixListener, SocketGuard)> {
    let path = socket_path(store.dir());
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::info!(path = %path.display(), "replaced a stale control socket"),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let listener = UnixListener::bind(&path)?;
    let guard = SocketGuard { path: path.clone() };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok((listener, guard))
}

/// Accepts connections on `listener` until `shutdown`, forwarding each request to the daemon
/// loop through `daemon`, then waits for the connections in flight.
pub async fn serve(
    listener: UnixListener,
    daemon: mpsc::Sender<ControlRequest>,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "control socket: accept failed");
                    // An accept error (EMFILE …) must not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let daemon = daemon.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = connection(stream, daemon) => {}
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// One connection: one request line in, one response line out.
async fn connection(stream: UnixStream, daemon: mpsc::Sender<ControlRequest>) {
    let peer_uid = stream.peer_cred().ok().map(|cred| cred.uid());
    let (read, mut write) = stream.into_split();
    let response = match read_line(read, MAX_REQUEST).await {
        Err(err) => Response::new(Answer::Error, format!("unreadable request: {err}")),
        Ok(line) => match serde_json::from_str::<Request>(&line) {
            Err(err) => Response::new(Answer::Error, format!("malformed request: {err}")),
            Ok(request) => {
                tracing::debug!(command = request.name(), ?peer_uid, "control request");
                let (reply, answer) = oneshot::channel();
                let sent = daemon
                    .send(ControlRequest {
                        request,
                        peer_uid,
                        reply,
                    })
                    .await;
                match sent {
                    Ok(()) => answer.await.unwrap_or_else(|_| stopping()),
                    Err(_) => stopping(),
                }
            }
        },
    };
    let _ = write_line(&mut write, &response).await;
}

fn stopping() -> Response {
    Response::new(
        Answer::Error,
        "the daemon is stopping; nothing was done: try again once it runs",
    )
}

/// Reads one line of at most `max` bytes (without its newline).
async fn read_line(read: impl tokio::io::AsyncRead + Unpin, max: usize) -> std::io::Result<String> {
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(max as u64 + 1));
    reader.read_line(&mut line).await?;
    if line.len() > max {
        return Err(std::io::Error::other(format!(
            "a line is at most {max} bytes"
        )));
    }
    if !line.ends_with('\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the line ended without a newline",
        ));
    }
    line.pop();
    Ok(line)
}

async fn write_line(
    write: &mut (impl tokio::io::AsyncWrite + Unpin),
    value: &impl Serialize,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.shutdown().await
}

/// Why [`request`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket, or nobody listening on it: no daemon runs (or an older one without it).
    #[error("nothing answers on {}", path.display())]
    NoDaemon {
        /// The socket.
        path: PathBuf,
    },
    /// The socket exists but may not be used by this user.
    #[error(
        "cannot use {}: permission denied; run the command as the daemon's user or as root",
        path.display()
    )]
    PermissionDenied {
        /// The socket.
        path: PathBuf,
    },
    /// The conversation failed (the daemon died mid-request, a malformed answer).
    #[error("the daemon did not answer on {}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// Sends `request` to the daemon of the state directory `dir` and waits for its answer
/// (as long as it takes: a `reconcile` lasts as long as the reconcile).
pub async fn request(dir: &Path, request: &Request) -> Result<Response, ClientError> {
    let path = socket_path(dir);
    let stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(err) => {
            use std::io::ErrorKind;
            return Err(match err.kind() {
                ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                    ClientError::NoDaemon { path }
                }
                ErrorKind::PermissionDenied => ClientError::PermissionDenied { path },
                _ => ClientError::Io { path, source: err },
            });
        }
    };
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let (read, mut write) = stream.into_split();
    write_line(&mut write, request).await.map_err(io)?;
    let line = read_line(read, MAX_RESPONSE).await.map_err(io)?;
    serde_json::from_str(&line).map_err(|err| io(std::io::Error::other(err)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_tagged_json_object() {
        let request = Request::Suspend {
            reason: Some("CHG-1".into()),
            by: "ana".into(),
        };
        let line = serde_json::to_string(&request).unwrap();
        assert_eq!(line, r#"{"command":"suspend","reason":"CHG-1","by":"ana"}"#);
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), request);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"command":"reconcile"}"#).unwrap(),
            Request::Reconcile
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"rm -rf"}"#).is_err());
    }

    #[tokio::test]
    async fn a_request_reaches_the_loop_and_its_answer_comes_back_and_the_socket_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StateStore::open(tmp.path()).unwrap();
        // A stale socket file of a killed daemon is replaced.
        std::fs::write(socket_path(tmp.path()), b"").unwrap();
        let (listener, guard) = bind(&store).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::{FileTypeExt, PermissionsExt};
            let meta = std::fs::metadata(socket_path(tmp.path())).unwrap();
            assert!(meta.file_type().is_socket());
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
        let (tx, mut rx) = mpsc::channel::<ControlRequest>(4);
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, tx, shutdown.clone()));
        let loop_ = tokio::spawn(async move {
            let req = rx.recv().await.expect("a request");
            assert_eq!(req.request, Request::Reconcile);
            assert!(req.peer_uid.is_some(), "the kernel names the peer");
            let _ = req.reply.send(Response::new(Answer::Refused, "no"));
        });
        let answer = request(tmp.path(), &Request::Reconcile).await.unwrap();
        assert_eq!(answer.answer, Answer::Refused);
        assert_eq!(answer.message, "no");
        loop_.await.unwrap();
        shutdown.cancel();
        server.await.unwrap();
        drop(guard);
        assert!(!socket_path(tmp.path()).exists(), "removed on a clean exit");
        assert!(matches!(
            request(tmp.path(), &Request::Ping).await,
            Err(ClientError::NoDaemon { .. })
        ));
    }
}
