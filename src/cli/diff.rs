//! `guestops diff --from REV --to REV`: what a change of users.yaml grants and revokes.

use std::io::Write;
use std::path::PathBuf;

use guestops::desired::diff::{self, DiffFormat, Side};
use guestops::desired::source::{SourceError, read_at};
use guestops::desired::spec::{self, DesiredState, OutputFormat, SpecPolicy};

use super::Status;

/// Arguments of `guestops diff`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Offline: reads both revisions from a local git repository, no credentials. A file that does \
not exist at the older revision (a change that adds it) is compared as an empty file: every \
user is an addition. With --config, the newer revision is also checked against \
policy.allowedDomains, and removals say what policy.prune does with them.

Exit codes: 0 ok, 1 error (including an invalid users.yaml at either revision, reported with \
positions, or a file missing at the newer revision); with --detailed-exitcode: 0 no change in \
access, 2 changes.")]
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
    /// (`policy.allowedDomains`), as `validate --config` does, and removals are described as
    /// its `policy.prune` decides. No credential is read.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The file at `rev`: `Ok(None)` when it is invalid (diagnostics written to `err`).
fn load(
    args: &Args,
    rev: &str,
    bytes: &[u8],
    policy: &SpecPolicy,
    err: &mut dyn Write,
) -> anyhow::Result<Option<DesiredState>> {
    let parsed = spec::parse(bytes, policy);
    if parsed.has_errors() || parsed.desired.is_none() {
        spec::render(
            &parsed.diagnostics,
            bytes,
            &format!("{rev}:{}", args.path),
            OutputFormat::Human,
            err,
        )?;
        return Ok(None);
    }
    Ok(parsed.desired)
}

/// The file missing at a revision, said with the option that names it (`--path`, not the
/// daemon's `source.path`).
/// The error for `--path` naming something that is not a file at `revision`.
fn not_a_file(args: &Args, revision: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`{}` at revision {revision} is not a file (a directory, a link or a submodule): check --path",
        args.path
    )
}

fn missing(args: &Args, revisions: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`{}` does not exist at {revisions} in {}: check --path (the path of users.yaml inside \
         the repository, default users.yaml) and that the file was committed",
        args.path,
        args.repo.display()
    )
}

/// Runs `guestops diff`.
pub fn run(args: Args) -> anyhow::Result<Status> {
    // The host's policy applies to what the change introduces: the newer revision.
    let config = args.config.as_deref().map(super::load_config).transpose()?;
    let policy = config
        .as_ref()
        .map_or_else(SpecPolicy::default, guestops::config::Config::spec_policy);
    let older = match read_at(&args.repo, &args.from, &args.path) {
        Ok((revision, bytes)) => Some((revision, bytes)),
        // A change that adds the file: compared with an empty file.
        Err(SourceError::PathNotFound { .. }) => None,
        Err(SourceError::NotAFile { revision, .. }) => return Err(not_a_file(&args, &revision)),
        Err(err) => return Err(err.into()),
    };
    let newer = match read_at(&args.repo, &args.to, &args.path) {
        Ok(newer) => newer,
        Err(SourceError::PathNotFound { revision, .. }) => {
            return Err(match older {
                None => missing(&args, &format!("either {} or {revision}", args.from)),
                Some(_) => missing(&args, &format!("revision {revision}")),
            });
        }
        Err(SourceError::NotAFile { revision, .. }) => return Err(not_a_file(&args, &revision)),
        Err(err) => return Err(err.into()),
    };

    let mut stderr = std::io::stderr().lock();
    let (from_side, from) = match older {
        Some((revision, bytes)) => {
            let side = Side {
                rev: args.from.clone(),
                commit: Some(revision.id),
                absent: false,
            };
            let loaded = load(
                &args,
                &args.from,
                &bytes,
                &SpecPolicy::default(),
                &mut stderr,
            )?;
            (side, loaded)
        }
        None => {
            let side = Side {
                rev: args.from.clone(),
                commit: None,
                absent: true,
            };
            (side, Some(DesiredState::default()))
        }
    };
    let (revision, bytes) = newer;
    let to = load(&args, &args.to, &bytes, &policy, &mut stderr)?;
    let (Some(from), Some(to)) = (from, to) else {
        return Ok(Status::Error);
    };
    let to_side = Side {
        rev: args.to.clone(),
        commit: Some(revision.id),
        absent: false,
    };
    let mut result = diff::diff(from_side, &from, to_side, &to);
    result.path = args.path.clone();
    result.prune = config.as_ref().map(|c| c.policy.prune);
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
