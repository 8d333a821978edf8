//! `guestops import`: write a first `users.yaml` from the portal's admins and their tenant
//! accounts (read-only; bootstrap).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use guestops::desired::spec::{self, OutputFormat};
use guestops::reconcile::import::{self, ImportOptions, Uninvited};

use super::{Status, connect, load_config, reading_notice};

/// Arguments of `guestops import`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Read-only: reads the portal and the tenant, writes nothing remote and no state. The first \
apply adopts the written users (no invitation, no portal write for them).

Exit codes: 0 written, 1 error (config, an incomplete read, or an existing --output file \
without --overwrite).")]
pub struct Args {
    #[command(flatten)]
    pub config: super::ConfigArg,
    /// Write users.yaml to this file instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Replace the --output file when it exists. (Not `--force`: in plan and apply that
    /// overrides the removal guards.)
    #[arg(long)]
    pub overwrite: bool,
    /// Portal admins without an account in the tenant: written commented out (comment),
    /// written (include: the first apply invites them) or left out (skip).
    #[arg(long, value_enum, default_value = "comment")]
    pub uninvited: Uninvited,
}

/// Runs `guestops import`.
pub async fn run(args: Args) -> anyhow::Result<Status> {
    let config = load_config(&args.config.config)?;
    if let Some(path) = &args.output
        && !args.overwrite
        && path.exists()
    {
        anyhow::bail!(
            "{} exists: pass --overwrite to replace it, or choose another --output",
            path.display()
        );
    }
    let clients = connect(&config)?;
    reading_notice();
    let observed =
        import::observe(&clients.tenant, &clients.portal, config.tenant.concurrency).await?;
    let options = ImportOptions {
        allowed_domains: config.policy.allowed_domains.clone(),
        uninvited: args.uninvited,
    };
    let imported = import::build(&observed, &options);
    let yaml = imported.to_yaml();

    // Every entry was validated on its own; the whole file must be valid too.
    let parsed = spec::parse(yaml.as_bytes(), &config.spec_policy());
    if parsed.has_errors() {
        let mut err = std::io::stderr().lock();
        spec::render(
            &parsed.diagnostics,
            yaml.as_bytes(),
            "users.yaml (import)",
            OutputFormat::Human,
            &mut err,
        )?;
        anyhow::bail!(
            "the imported users.yaml is not valid (a bug in guestops import): nothing written"
        );
    }

    match &args.output {
        Some(path) => write_file(path, &yaml, args.overwrite)?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(yaml.as_bytes())?;
            out.flush()?;
        }
    }
    let mut err = std::io::stderr().lock();
    writeln!(err, "{}", imported.summary())?;
    Ok(Status::Success)
}

/// Writes `content` to `path` atomically (temp file in the same directory, then rename);
/// without `overwrite`, an existing file is never replaced.
fn write_file(path: &std::path::Path, content: &str, overwrite: bool) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    let mut temp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    temp.write_all(content.as_bytes())
        .and_then(|()| temp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    if overwrite {
        temp.persist(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    } else {
        temp.persist_noclobber(path).with_context(|| {
            format!(
                "cannot write {} (pass --overwrite to replace an existing file)",
                path.display()
            )
        })?;
    }
    Ok(())
}
