//! `guestops plan`: observe both systems and print the plan (read-only).

use std::io::Write;
use std::path::PathBuf;

use guestops::config::Config;
use guestops::reconcile::plan::{self, PlanFormat, RenderOptions};
use guestops::reconcile::state::{State, StateStore};
use guestops::reconcile::{Context, Mode, Outcome, Settings, run_once};
use tokio_util::sync::CancellationToken;

use super::{Status, connect, read_desired, stdout_color};

/// Where the config and users.yaml come from (`plan`, `apply`, `status`, `run`).
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    #[command(flatten)]
    pub config: super::ConfigArg,
    /// Read users.yaml from this file instead of the configured git source.
    #[arg(long, value_name = "FILE")]
    pub desired: Option<PathBuf>,
}

/// Arguments shared by `plan` and `apply`.
#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Output format of the plan.
    #[arg(long, value_enum, default_value = "text")]
    pub format: PlanFormat,
    /// Override the maxDeletions and empty-desired guards (never the domain policy).
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `guestops plan`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit codes: 0 ok, 1 error, 3 refused by policy (for some users or the whole \
plan); with --detailed-exitcode: 0 in sync, 2 changes pending."
)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Exit 2 when there are changes, 0 when in sync (as Terraform).
    #[arg(long)]
    pub detailed_exitcode: bool,
}

/// The loaded inputs of `plan` and `apply`.
pub struct Loaded {
    pub config: Config,
    pub desired: super::Desired,
}

/// Loads the config and the desired state; `Ok(None)` when users.yaml is invalid
/// (diagnostics already printed).
pub async fn load(source: &SourceArgs) -> anyhow::Result<Option<Loaded>> {
    let config = super::load_config(&source.config.config)?;
    super::warn_if_no_state(&config);
    let mut stderr = std::io::stderr().lock();
    let Some(desired) = read_desired(source.desired.as_deref(), &config, &mut stderr).await? else {
        return Ok(None);
    };
    Ok(Some(Loaded { config, desired }))
}

/// Runs `guestops plan`.
pub async fn run(args: Args) -> anyhow::Result<Status> {
    let Some(Loaded { config, desired }) = load(&args.target.source).await? else {
        return Ok(Status::Error);
    };
    let state = StateStore::read_only(&config.state.dir)?;
    let outcome = dry_run(&config, &desired, args.target.force, state).await?;
    let mut out = std::io::stdout().lock();
    let options = RenderOptions {
        revision: Some(outcome.revision.clone()),
        color: stdout_color(),
    };
    plan::render_with(&outcome.plan, args.target.format, &options, &mut out)?;
    out.flush()?;
    Ok(Status::of(outcome.verdict(), args.detailed_exitcode))
}

/// One reconcile in dry-run mode against `state`, a snapshot of the state read without the
/// lock (so it works while a daemon holds it): what `plan`, `status` and `apply --dry-run` show.
pub async fn dry_run(
    config: &Config,
    desired: &guestops::reconcile::Desired,
    force: bool,
    state: State,
) -> anyhow::Result<Outcome> {
    let clients = connect(config)?;
    let settings = Settings::from_config(config, force);
    let ctx = Context {
        tenant: &clients.tenant,
        portal: &clients.portal,
        settings: &settings,
    };
    super::reading_notice();
    Ok(run_once(
        &ctx,
        desired,
        Mode::DryRun(state),
        &CancellationToken::new(),
    )
    .await?)
}
