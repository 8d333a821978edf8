//! `guestops diff --from REV --to REV`: what a change of users.yaml grants and revokes.

use std::io::Write;
use std::path::PathBuf;

use guestops::desired::diff::{self, DiffFormat, Side};
use guestops::desired::source::read_at;
use guestops::desired::spec::{self, DesiredState, OutputFormat, SpecPolicy};

use super::Status;

/// Arguments of `guestops diff`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Offline: reads both revisions from a local git repository, no credentials. \
With --config, the newer revision is also checked against policy.allowedDomains. \
Exit codes: 0 ok, 1 error (including an invalid users.yaml at either revision, reported with \
positions); with --detailed-exitcode: 0 no change in access, 2 changes."
)]
pub struct Args {
    /// The older revision (branch, tag, sha, HEAD~1, origin/main…).
    #[arg(long)]
    pub from: String,
    /// The newer revision.
    #[arg(long)]
    pub to: String,
    /// The git repository (bare or not).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Path of users.yaml inside the repository.
    #[arg(long, default_value = "users.yaml")]
    pub path: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: DiffFormat,
    /// Exit 2 when access changes, 0 when not.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Host configuration: the newer revision is also checked against its policy
    /// (`policy.allowedDomains`), as `validate --config` does. No credential is read.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

fn load(
    args: &Args,
    rev: &str,
    policy: &SpecPolicy,
    err: &mut dyn Write,
) -> anyhow::Result<Option<(Side, DesiredState)>> {
    let (revision, bytes) = read_at(&args.repo, rev, &args.path)?;
    let parsed = spec::parse(&bytes, policy);
    if parsed.has_errors() || parsed.desired.is_none() {
        spec::render(
            &parsed.diagnostics,
            &bytes,
            &format!("{rev}:{}", args.path),
            OutputFormat::Human,
            err,
        )?;
        return Ok(None);
    }
    let side = Side {
        rev: rev.to_owned(),
        commit: Some(revision.id),
    };
    Ok(parsed.desired.map(|d| (side, d)))
}

/// Runs `guestops diff`.
pub fn run(args: Args) -> anyhow::Result<Status> {
    // The host's policy applies to what the change introduces: the newer revision.
    let policy = match &args.config {
        Some(path) => super::load_config(path)?.spec_policy(),
        None => SpecPolicy::default(),
    };
    let mut stderr = std::io::stderr().lock();
    let from = load(&args, &args.from, &SpecPolicy::default(), &mut stderr)?;
    let to = load(&args, &args.to, &policy, &mut stderr)?;
    let (Some((from_side, from)), Some((to_side, to))) = (from, to) else {
        return Ok(Status::Error);
    };
    let mut result = diff::diff(from_side, &from, to_side, &to);
    result.path = args.path.clone();
    result.mark_expired(chrono::Utc::now().date_naive());
    let mut out = std::io::stdout().lock();
    diff::render(&result, args.format, &mut out)?;
    out.flush()?;
    Ok(if args.detailed_exitcode && !result.is_empty() {
        Status::Changes
    } else {
        Status::Success
    })
}
