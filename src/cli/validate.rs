//! `guestops validate [FILE]`: check users.yaml offline.

use std::io::Write;
use std::path::PathBuf;

use guestops::config::Config;
use guestops::desired::spec::{self, OutputFormat, SpecPolicy};

use super::{Status, read_limited};

/// Arguments of `guestops validate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Exit codes: 0 the file is valid, 1 it is invalid (or cannot be read).")]
pub struct Args {
    /// The file to check.
    #[arg(default_value = "users.yaml")]
    pub file: PathBuf,
    /// Output format: human (annotated snippets), github (workflow annotations), json.
    #[arg(long, value_enum, default_value = "human")]
    pub format: OutputFormat,
    /// Also enforce the host policy of this config (policy.allowedDomains). No secrets are read.
    #[arg(long, short, env = "GUESTOPS_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Runs `guestops validate`.
pub fn run(args: Args) -> anyhow::Result<Status> {
    let policy = match &args.config {
        Some(path) => Config::load(path)?.spec_policy(),
        None => SpecPolicy::default(),
    };
    let bytes = read_limited(&args.file)?;
    let parsed = spec::parse(&bytes, &policy);
    let mut out = std::io::stdout().lock();
    spec::render(
        &parsed.diagnostics,
        &bytes,
        &args.file.display().to_string(),
        args.format,
        &mut out,
    )?;
    if parsed.has_errors() {
        return Ok(Status::Error);
    }
    if args.format == OutputFormat::Human {
        let users = parsed.desired.as_ref().map_or(0, |d| d.users.len());
        writeln!(out, "{}: valid, {users} users", args.file.display())?;
    }
    Ok(Status::Success)
}
