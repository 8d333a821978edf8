//! `guestops doctor`: the preflight checks of `guestops::preflight::doctor`, rendered.

use guestops::config::Config;
use guestops::preflight::{self, doctor};
use guestops::remote::graph::GraphClient;
use guestops::remote::portal::PortalClient;

use super::{ConfigArg, Status};

/// Arguments of `guestops doctor`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Read-only: checks the config and its secrets (never printing a value), the Graph token and its
application permissions, Graph, the tenant's B2B invitation setting, the portal API key, the
portal's role codes (portal.knownAdmin), the git source, state.dir and its lock, and the clock.
One line per check: ✓ ok, ✗ failed, ! warning or unknown; each ✗ and ! says what to do.

Exit codes: 0 no check failed (warnings allowed), 1 a check failed (or a usage error).")]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Output format: text (one line per check) or json (one document, see docs/preflight.md).
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per check.
    Text,
    /// `{"checks": [{"name", "status", "message", "hint"}], "ok": bool}`.
    Json,
}

/// Runs `guestops doctor`.
pub async fn run(args: Args) -> anyhow::Result<Status> {
    let path = &args.config.config;
    let report = match super::load_config(path) {
        Err(err) => doctor::config_failed(path, &guestops::error::chain(err.as_ref())),
        Ok(config) => {
            let env = |name: &str| std::env::var(name).ok();
            doctor::run(doctor::Inputs {
                config: &config,
                config_path: path,
                graph: graph_client(&config).map_err(|e| guestops::error::chain(e.as_ref())),
                portal: portal_client(&config).map_err(|e| guestops::error::chain(e.as_ref())),
                env: &env,
            })
            .await
        }
    };
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Text => preflight::render_text(&report, &mut out)?,
        Format::Json => preflight::render_json(&report, &mut out)?,
    }
    Ok(if report.ok() {
        Status::Success
    } else {
        Status::Error
    })
}

/// The Graph half of [`super::connect`] (the doctor reports each side on its own).
fn graph_client(config: &Config) -> anyhow::Result<GraphClient> {
    super::graph_client(config, config.load_credential()?)
}

/// The portal half of [`super::connect`].
pub fn portal_client(config: &Config) -> anyhow::Result<PortalClient> {
    super::portal_client(config, &config.portal.api_key.load()?)
}
