//! `guestops state list | show EMAIL | forget EMAIL`: what guestops owns and why, and
//! dropping ownership of one user no longer in `users.yaml`.
//!
//! `list` and `show` read `state.json` (with the journal replayed) without the lock: it is
//! replaced atomically, so they work beside a running daemon and write nothing. `forget` goes
//! through the daemon when one runs (it re-reads the source and changes its own state), else
//! takes the lock and edits the state itself.

use std::io::Write;

use guestops::reconcile::operator;
use guestops::reconcile::state::StateStore;
use guestops::service::control::Request;

use super::Status;
use super::control::{Reached, align_owner, print_answer, reach, who, who_direct};

/// `guestops state` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Every user guestops keeps a record of: guest and portal user owned, how (invited,
    /// registered, adopted, restored) and when, at which revision.
    List(ListArgs),
    /// One user's record in full.
    Show(ShowArgs),
    /// Drop ownership of one user no longer in users.yaml (left untouched remotely, never
    /// removed by guestops afterwards).
    Forget(ForgetArgs),
}

/// Output format of `state list` and `state show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For a terminal.
    Text,
    /// One JSON document.
    Json,
}

/// Arguments of `guestops state list`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Reads state.dir/state.json (and its journal) without taking the lock: \
the file is replaced atomically, so this works beside a running daemon and writes nothing. \
GUEST and PORTAL say how guestops took ownership (invited, registered, adopted, restored, \
enabled), when, and at which revision (@commit); \"owned\" alone is a record older than state \
version 3, which did not record how; \"-\" is not owned.

Exit codes: 0 listed, 1 error (state.json unreadable or corrupt)."
)]
pub struct ListArgs {
    #[command(flatten)]
    pub config: super::ConfigArg,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// Arguments of `guestops state show`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Reads state.json without the lock, as `state list` does.

Exit codes: 0 shown, 1 guestops has no record of EMAIL, or an error.")]
pub struct ShowArgs {
    #[command(flatten)]
    pub config: super::ConfigArg,
    /// The user's address (any capitalization).
    pub email: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// Arguments of `guestops state forget`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Refused while users.yaml at the source's current revision lists the \
user (the next reconcile would adopt them again): remove the entry first. Nothing remote is \
changed; the record (ownership, progress) is dropped, and an audit line (action forget, system \
state) is written. With a daemon running, the daemon re-reads its source, checks and forgets \
(--desired is then ignored: the daemon's source decides); without one, this command takes the \
lock and reads the source itself.

Exit codes: 0 forgotten, 1 refused (still in users.yaml, or no record of EMAIL) or an error."
)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub source: super::plan::SourceArgs,
    /// The user's address (any capitalization).
    pub email: String,
}

/// Runs `guestops state …`.
pub async fn run(command: Command) -> anyhow::Result<Status> {
    match command {
        Command::List(args) => list(args),
        Command::Show(args) => show(args),
        Command::Forget(args) => forget(args).await,
    }
}

fn list(args: ListArgs) -> anyhow::Result<Status> {
    let config = super::load_config(&args.config.config)?;
    super::warn_if_no_state(&config);
    let state = StateStore::read_only(&config.state.dir)?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Text => operator::write_list_text(&state, &mut out)?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &operator::listing(&state))?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(Status::Success)
}

fn show(args: ShowArgs) -> anyhow::Result<Status> {
    let config = super::load_config(&args.config.config)?;
    let state = StateStore::read_only(&config.state.dir)?;
    let Some(entry) = operator::entry(&state, &args.email) else {
        let _ = writeln!(
            std::io::stderr(),
            "error: guestops holds no record of {}: it owns nothing of it (`guestops state list` shows what it owns)",
            args.email
        );
        return Ok(Status::Error);
    };
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Text => operator::write_show_text(&entry, &mut out)?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &entry)?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(Status::Success)
}

async fn forget(args: ForgetArgs) -> anyhow::Result<Status> {
    let config = super::load_config(&args.source.config.config)?;
    let request = Request::Forget {
        email: args.email.clone(),
        by: who(),
    };
    let mut out = std::io::stdout().lock();
    let mut store = match reach(&config.state.dir, &request).await? {
        Reached::Daemon(response) => return print_answer(&response, &mut out),
        Reached::Direct(store) => store,
    };
    // No daemon: this process holds the lock; check against the source's current revision.
    let mut err = std::io::stderr();
    let Some(desired) =
        super::read_desired(args.source.desired.as_deref(), &config, &mut err).await?
    else {
        let _ = writeln!(
            err,
            "error: users.yaml is invalid: cannot tell whether {} is still listed; nothing was forgotten",
            args.email
        );
        return Ok(Status::Error);
    };
    let mut state = store.state().clone();
    let record = match operator::forget(&mut state, &args.email, &desired) {
        Ok(record) => record,
        Err(refused) => {
            let _ = writeln!(err, "error: {refused}");
            return Ok(Status::Error);
        }
    };
    let by = who_direct();
    let audit = operator::forget_audit(&record, &desired.revision.id, &by, chrono::Utc::now());
    *store.state_mut() = state;
    store.save()?;
    store.append_audit(&audit)?;
    align_owner(store.dir());
    writeln!(
        out,
        "forgot {}: {}",
        record.email,
        audit.detail.unwrap_or_default()
    )?;
    Ok(Status::Success)
}
