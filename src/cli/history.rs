//! `guestops history`: the remote writes recorded in `state.dir/audit.jsonl`, filtered
//! (`docs/history.md`). Reads without the lock: it works while a daemon runs.

use std::io::Write;

use guestops::reconcile::history::{self, Filter, HistoryFormat};

use super::Status;

/// Arguments of `guestops history`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "One row per line of state.dir/audit.jsonl: every remote write (and every \
change of what guestops owns, system `state`) with its time, result, action, user, revision, \
commit author and the remote request id. Filters combine. A last line that is still being \
written is skipped with a warning.

Exit codes: 0 the history was printed (also when nothing matches), 1 error (the config, or \
an audit log that cannot be read or has a bad line, named)."
)]
pub struct Args {
    #[command(flatten)]
    pub config: super::ConfigArg,
    /// Only this user's records (the address, in any letter case).
    #[arg(long, value_name = "EMAIL")]
    pub user: Option<String>,
    /// Only records at or after this date (2026-12-01: midnight UTC) or RFC 3339 time.
    #[arg(long, value_name = "DATE", value_parser = history::parse_since)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only records of revisions starting with REV (a commit id prefix, or sha256:… of a file).
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: HistoryFormat,
}

/// Runs `guestops history`.
pub fn run(args: Args) -> anyhow::Result<Status> {
    let config = super::load_config(&args.config.config)?;
    let filter = Filter {
        user: args.user,
        since: args.since,
        revision: args.revision.filter(|r| !r.is_empty()),
    };
    let log = history::read(&config.state.dir, &filter)?;
    if let Some(line) = log.torn_line {
        let _ = writeln!(
            std::io::stderr(),
            "warning: line {line} of {} is incomplete (being written, or cut off by a crash): skipped",
            config
                .state
                .dir
                .join(guestops::reconcile::state::AUDIT_FILE)
                .display()
        );
    }
    let mut out = std::io::stdout().lock();
    history::render(&log.records, args.format, &mut out)?;
    out.flush()?;
    Ok(Status::Success)
}
