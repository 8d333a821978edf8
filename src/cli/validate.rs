//! `guestops validate [FILE]`: check users.yaml offline.

use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use guestops::config::Config;
use guestops::desired::source::READ_LIMIT;
use guestops::desired::spec::{self, OutputFormat, ParseOptions, SpecPolicy};

use super::Status;

/// Arguments of `guestops validate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
FILE `-` reads users.yaml from stdin. A past `expires` is a warning (GO0208): the file stays \
valid. With --format github or json, a file that cannot be read (or a broken --config) is \
reported in that format too.

Exit codes: 0 the file is valid (warnings allowed), 1 it is invalid, cannot be read, or the \
--config is broken. An address outside policy.allowedDomains is an error here (1); plan and \
apply refuse that user's changes instead (3).")]
pub struct Args {
    /// The file to check (`-`: stdin).
    #[arg(default_value = "users.yaml")]
    pub file: PathBuf,
    /// Output format: human (annotated snippets), github (workflow annotations), json.
    #[arg(long, value_enum, default_value = "human")]
    pub format: OutputFormat,
    /// Also enforce the host policy of this config (policy.allowedDomains). No secrets are read.
    #[arg(long, short, env = "GUESTOPS_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Whether `file` means stdin.
fn is_stdin(file: &Path) -> bool {
    file.as_os_str() == "-"
}

/// Runs `guestops validate`.
pub fn run(args: Args) -> anyhow::Result<Status> {
    let name = if is_stdin(&args.file) {
        "stdin".to_owned()
    } else {
        args.file.display().to_string()
    };
    match check(&args, &name) {
        Ok(status) => Ok(status),
        // A machine asked for its format: it gets the failure in that format too.
        Err(err) if args.format != OutputFormat::Human && !super::is_broken_pipe(&err) => {
            let mut out = std::io::stdout().lock();
            spec::render_failure(
                &name,
                &guestops::error::chain(err.as_ref()),
                args.format,
                &mut out,
            )?;
            out.flush()?;
            Ok(Status::Error)
        }
        Err(err) => Err(err),
    }
}

fn check(args: &Args, name: &str) -> anyhow::Result<Status> {
    let config = args.config.as_deref().map(Config::load).transpose()?;
    let policy = config
        .as_ref()
        .map_or_else(SpecPolicy::default, Config::spec_policy);
    let (bytes, size) = read(&args.file)?;
    let options = ParseOptions {
        today: Some(chrono::Utc::now().date_naive()),
        prune: config.as_ref().map(|c| c.policy.prune),
        size,
    };
    let parsed = spec::parse_with(&bytes, &policy, &options);
    let mut out = std::io::stdout().lock();
    spec::render(&parsed.diagnostics, &bytes, name, args.format, &mut out)?;
    if parsed.has_errors() {
        return Ok(Status::Error);
    }
    if args.format == OutputFormat::Human {
        let users = parsed.desired.as_ref().map_or(0, |d| d.users.len());
        writeln!(
            out,
            "{name}: valid, {users} user{}",
            if users == 1 { "" } else { "s" }
        )?;
    }
    out.flush()?;
    Ok(Status::Success)
}

/// At most [`READ_LIMIT`] bytes of `file` (stdin for `-`), and the whole file's size when it
/// is a regular file (so that a file over the limit is reported with its real size).
fn read(file: &Path) -> anyhow::Result<(Vec<u8>, Option<u64>)> {
    let mut bytes = Vec::new();
    if is_stdin(file) {
        std::io::stdin()
            .lock()
            .take(READ_LIMIT as u64)
            .read_to_end(&mut bytes)
            .context("cannot read users.yaml from stdin")?;
        return Ok((bytes, None));
    }
    let context = || format!("cannot read {}", file.display());
    let handle = std::fs::File::open(file).with_context(context)?;
    let size = handle
        .metadata()
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len());
    handle
        .take(READ_LIMIT as u64)
        .read_to_end(&mut bytes)
        .with_context(context)?;
    Ok((bytes, size))
}
