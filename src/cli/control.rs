//! `guestops suspend`, `resume` and `reconcile`: requests to the running daemon over its
//! control socket (`state.dir/control.sock`, design §9). With no daemon running, `suspend` and
//! `resume` take the instance lock and edit `state.json` themselves; `reconcile` needs the
//! daemon (`guestops apply` reconciles once without it).

use std::io::Write;
use std::path::Path;

use anyhow::bail;
use guestops::reconcile::operator;
use guestops::reconcile::state::{StateError, StateStore};
use guestops::service::control::{self, Answer, ClientError, Request, Response};

use super::{ConfigArg, Status};

/// Arguments of `guestops suspend`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Recorded in state.json (since, reason, who), so it holds across \
restarts. A running daemon finishes the reconcile in progress, then reconciles nothing: it keeps \
polling the source (so /readyz shows the newest revision and invalid commits are still \
reported), serves /healthz, /readyz (with a `suspended` detail) and /metrics \
(guestops_suspended 1). With no daemon running, the state is edited directly. `plan` works as \
usual; `apply` warns and applies (a manual apply is the operator's explicit act).

Exit codes: 0 suspended (or already suspended: the first suspension is kept), 1 error (the \
state cannot be written, or the state directory is locked by a guestops that does not answer on \
its control socket)."
)]
pub struct SuspendArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Why (shown by /readyz, `guestops state list` and the daemon's log).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// Arguments of `guestops resume`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "A running daemon reconciles at once, without a restart. With no \
daemon running, the state is edited directly.

Exit codes: 0 resumed (or was not suspended), 1 error (the state cannot be written, or the \
state directory is locked by a guestops that does not answer on its control socket)."
)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
}

/// Arguments of `guestops reconcile`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Asks the running daemon (guestops run) to reconcile now, waits for \
that reconcile to finish (not an earlier one; a reconcile in progress finishes first) and \
prints its outcome: the summary line, then every failed change and every refusal.

Exit codes: 0 every change done (or nothing to do), 1 a change failed, the reconcile \
failed, the daemon is suspended, or no daemon runs (then `guestops apply` reconciles once), \
3 refused by policy (the same codes as apply)."
)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub config: ConfigArg,
}

/// The user name this command runs as, for the record (`SUDO_USER`, `USER`, `LOGNAME`, else
/// the uid); the daemon adds the uid its socket saw.
pub fn who() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .or_else(|| own_uid().map(|uid| format!("uid {uid}")))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// This process's uid, as Linux shows it (`/proc/self` is owned by it).
fn own_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// `who()` as recorded when no daemon runs: with the uid, as the daemon records it.
pub fn who_direct() -> String {
    let name = who();
    match own_uid() {
        Some(uid) if !name.starts_with("uid ") => format!("{name} (uid {uid})"),
        _ => name,
    }
}

/// How a request was served.
pub enum Reached {
    /// The daemon answered.
    Daemon(Response),
    /// No daemon runs: the lock is ours, edit the state directly.
    Direct(StateStore),
}

/// Sends `request` to the daemon of `dir`; with no daemon, takes the lock instead. A lock held
/// by a process that does not answer on the socket is an error saying so.
pub async fn reach(dir: &Path, request: &Request) -> anyhow::Result<Reached> {
    match control::request(dir, request).await {
        Ok(response) => Ok(Reached::Daemon(response)),
        Err(ClientError::NoDaemon { path }) => match StateStore::open(dir) {
            Ok(store) => Ok(Reached::Direct(store)),
            Err(StateError::Locked { holder, .. }) => bail!("{}", unanswered(dir, &path, holder)),
            Err(err) => Err(err.into()),
        },
        Err(err) => Err(err.into()),
    }
}

/// The lock is held, nothing answers on the socket.
fn unanswered(
    dir: &Path,
    socket: &Path,
    holder: Option<guestops::reconcile::state::LockHolder>,
) -> String {
    let holder = holder.map_or("its pid is not recorded".to_owned(), |h| {
        format!(
            "pid {}, started {}",
            h.pid,
            h.started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    });
    format!(
        "another guestops ({holder}) holds the state directory {}, but nothing answers on {}: \
         it is a one-shot command such as `guestops apply` (wait for it to finish, then try \
         again), a daemon that could not create its control socket (see its log), or a daemon \
         of an older guestops (restart it with this version); nothing was done",
        dir.display(),
        socket.display()
    )
}

/// Prints the daemon's answer: its message on stdout when done, as `error: …` on stderr
/// otherwise; the exit status of `answer` (as `apply`'s).
pub fn print_answer(response: &Response, out: &mut dyn Write) -> anyhow::Result<Status> {
    let status = status_of(response.answer);
    match response.answer {
        Answer::Ok | Answer::Failed | Answer::Refused => {
            writeln!(out, "{}", response.message)?;
            if let Some(report) = &response.reconcile {
                for failure in &report.failures {
                    writeln!(out, "  failed: {failure}")?;
                }
                for refusal in &report.refusals {
                    writeln!(out, "  refused: {refusal}")?;
                }
            }
            out.flush()?;
        }
        Answer::Suspended | Answer::Rejected | Answer::Error => {
            out.flush()?;
            let _ = writeln!(std::io::stderr(), "error: {}", response.message);
        }
    }
    Ok(status)
}

/// The exit status of an answer (as `apply`'s: 0 done, 1 failed, 3 refused).
pub fn status_of(answer: Answer) -> Status {
    match answer {
        Answer::Ok => Status::Success,
        Answer::Refused => Status::Refused,
        Answer::Failed | Answer::Suspended | Answer::Rejected | Answer::Error => Status::Error,
    }
}

/// After a direct edit by root of a state directory owned by another user (the daemon's,
/// e.g. systemd's `DynamicUser`): gives the files written back to the directory's owner, so
/// that the daemon can still read and replace them.
pub fn align_owner(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    if own_uid() == Some(meta.uid()) {
        return;
    }
    for name in [
        guestops::reconcile::state::STATE_FILE,
        guestops::reconcile::state::AUDIT_FILE,
        guestops::reconcile::state::LOCK_FILE,
        guestops::reconcile::journal::JOURNAL_FILE,
    ] {
        let path = dir.join(name);
        if let Ok(file) = std::fs::metadata(&path)
            && file.uid() != meta.uid()
            && let Err(err) = std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid()))
        {
            tracing::warn!(path = %path.display(), error = %err, "cannot give the file back to the owner of state.dir");
        }
    }
}

/// Runs `guestops suspend`.
pub async fn suspend(args: SuspendArgs) -> anyhow::Result<Status> {
    let config = super::load_config(&args.config.config)?;
    let request = Request::Suspend {
        reason: args.reason.clone(),
        by: who(),
    };
    let mut out = std::io::stdout().lock();
    match reach(&config.state.dir, &request).await? {
        Reached::Daemon(response) => print_answer(&response, &mut out),
        Reached::Direct(mut store) => {
            let now = chrono::Utc::now();
            let suspended =
                store.update(|s| operator::suspend(s, args.reason, who_direct(), now))?;
            align_owner(store.dir());
            match suspended {
                Ok(s) => writeln!(
                    out,
                    "{}; no daemon runs: the next `guestops run` starts suspended and reconciles nothing until `guestops resume`",
                    operator::describe_suspension(&s)
                )?,
                Err(already) => writeln!(
                    out,
                    "already {}; nothing changed",
                    operator::describe_suspension(&already)
                )?,
            }
            Ok(Status::Success)
        }
    }
}

/// Runs `guestops resume`.
pub async fn resume(args: ResumeArgs) -> anyhow::Result<Status> {
    let config = super::load_config(&args.config.config)?;
    let request = Request::Resume { by: who() };
    let mut out = std::io::stdout().lock();
    match reach(&config.state.dir, &request).await? {
        Reached::Daemon(response) => print_answer(&response, &mut out),
        Reached::Direct(mut store) => {
            if store.state().suspended.is_none() {
                writeln!(out, "not suspended; nothing changed")?;
                return Ok(Status::Success);
            }
            let lifted = store.update(operator::resume)?;
            align_owner(store.dir());
            if let Some(s) = lifted {
                writeln!(
                    out,
                    "resumed (reconciles were {}); no daemon runs: the next `guestops run` reconciles as usual",
                    operator::describe_suspension(&s)
                )?;
            }
            Ok(Status::Success)
        }
    }
}

/// Runs `guestops reconcile`.
pub async fn reconcile(args: ReconcileArgs) -> anyhow::Result<Status> {
    let config = super::load_config(&args.config.config)?;
    let dir = &config.state.dir;
    match control::request(dir, &Request::Reconcile).await {
        Ok(response) => print_answer(&response, &mut std::io::stdout().lock()),
        Err(ClientError::NoDaemon { path }) => {
            // Tell "no daemon" from "a lock holder that does not answer", without creating
            // the state directory.
            if dir.exists() {
                match StateStore::open(dir) {
                    Ok(_) => {}
                    Err(StateError::Locked { holder, .. }) => {
                        bail!("{}", unanswered(dir, &path, holder))
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            bail!(
                "no guestops daemon runs for state.dir {} (nothing answers on {}); `guestops apply --config {}` reconciles once",
                dir.display(),
                path.display(),
                args.config.config.display()
            )
        }
        Err(err) => Err(err.into()),
    }
}
