//! `guestops plan`: observe both systems and print the plan (read-only).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;

use guestops::config::Config;
use guestops::reconcile::plan::{self, PlanFormat, RenderOptions};
use guestops::reconcile::saved::{SavedPlan, Target};
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
    /// Only this user's changes are shown and made (repeatable). The policy guards still
    /// count the whole users.yaml: a plan refused as a whole (maxDeletions, an empty desired
    /// state) stays refused even when the targeted user's change is harmless, and a user
    /// outside allowedDomains stays refused. An address neither in users.yaml nor owned by
    /// guestops is an error (exit 1), so that a typo does not silently do nothing.
    #[arg(long, value_name = "EMAIL")]
    pub only: Vec<String>,
}

impl TargetArgs {
    /// `--only`, normalized (trimmed, lower-cased); `None` without it.
    pub fn only(&self) -> Option<BTreeSet<String>> {
        only_set(&self.only)
    }
}

/// Normalized `--only` addresses; `None` when there are none.
pub fn only_set(only: &[String]) -> Option<BTreeSet<String>> {
    (!only.is_empty()).then(|| {
        only.iter()
            .map(|a| guestops::remote::identity::normalized(a).into_owned())
            .collect()
    })
}

/// Fails naming every `--only` address that is neither in users.yaml nor owned.
pub fn check_only(
    only: Option<&BTreeSet<String>>,
    desired: &guestops::reconcile::Desired,
    state: &State,
) -> anyhow::Result<()> {
    let Some(only) = only else {
        return Ok(());
    };
    let unknown = plan::unknown_targets(only, &desired.state, state);
    if unknown.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "--only {}: neither in users.yaml nor owned by guestops; check the spelling (nothing was read or changed)",
        unknown.join(", ")
    )
}

/// What `--only` limits a rendered plan to, for a person (the JSON shows `changes` only).
pub fn only_note(only: &BTreeSet<String>) -> String {
    let list: Vec<&str> = only.iter().map(String::as_str).collect();
    format!(
        "\nLimited by --only to {}: other users' changes are neither shown nor made; the policy guards counted the whole users.yaml.\n",
        list.join(", ")
    )
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
    /// Also save the plan to FILE (mode 0600; docs/plan-file.md): `guestops apply FILE`
    /// applies exactly it, or refuses when it is stale.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
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
    let only = args.target.only();
    check_only(only.as_ref(), &desired, &state)?;
    let mut settings = Settings::from_config(&config, args.target.force);
    settings.policy.only = only.clone();
    settings.facts = args.out.is_some();
    let outcome = dry_run_with(&config, &desired, &settings, state).await?;
    // Saved before it is printed: `guestops plan --out F | head` still saves it.
    if let Some(path) = &args.out {
        let saved = SavedPlan::new(
            Target::of(&config),
            &settings.policy,
            &desired,
            &outcome.plan,
            outcome.facts.clone().unwrap_or_default(),
            (settings.clock)(),
        );
        saved
            .write(path)
            .with_context(|| "the plan was not saved".to_owned())?;
    }
    let mut out = std::io::stdout().lock();
    let options = RenderOptions {
        revision: Some(outcome.revision.clone()),
        color: stdout_color(),
    };
    plan::render_with(&outcome.plan, args.target.format, &options, &mut out)?;
    if let Some(only) = &only
        && args.target.format != PlanFormat::Json
    {
        out.write_all(only_note(only).as_bytes())?;
    }
    out.flush()?;
    if let Some(path) = &args.out {
        let source = &args.target.source;
        let desired_arg = source
            .desired
            .as_ref()
            .map(|d| format!(" --desired {}", d.display()))
            .unwrap_or_default();
        let _ = writeln!(
            std::io::stderr(),
            "Saved the plan to {path}; to make exactly these changes: guestops apply {path} --config {}{desired_arg}",
            source.config.config.display(),
            path = path.display(),
        );
    }
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
    dry_run_with(
        config,
        desired,
        &Settings::from_config(config, force),
        state,
    )
    .await
}

/// [`dry_run`] with `settings` built by the caller (`--only`, facts for a saved plan).
pub async fn dry_run_with(
    config: &Config,
    desired: &guestops::reconcile::Desired,
    settings: &Settings,
    state: State,
) -> anyhow::Result<Outcome> {
    let clients = connect(config)?;
    let ctx = Context {
        tenant: &clients.tenant,
        portal: &clients.portal,
        settings,
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
